"""Model builder and bundles: shapes, normalisation, channel selection, round trips, validation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from neurorg_core.errors import NeuroRGError  # noqa: E402
from neurorg_core.model import (build_model, get_normalization, load_bundle, load_member_model,  # noqa: E402
                                round_weights_to_float16, save_bundle, update_card)
from neurorg_core.schema import CHANNELS, CLASS_NAMES  # noqa: E402

S = 32


def _crops(n: int = 4, seed: int = 0) -> np.ndarray:
    """Random crops of different brightness (so an untrained net still tells them apart)."""
    scale = np.linspace(0.2, 1.0, n, dtype=np.float32)[:, None, None, None]
    return np.random.default_rng(seed).random((n, S, S, 3), dtype=np.float32) * scale


def _spread_head(model, seed: int = 0) -> None:
    """Random head weights large enough that outputs differ between inputs (not ~uniform)."""
    head = model.get_layer("predictions")
    kernel, bias = head.get_weights()
    head.set_weights([np.random.default_rng(seed).normal(0, 20.0, kernel.shape).astype("float32"), bias])


@pytest.fixture(scope="module")
def tiny():
    import keras

    keras.utils.set_random_seed(1)
    model = build_model("efficientnet_tiny", S, CHANNELS, [0.1, 0.2, 0.3], [0.05, 0.1, 0.2])
    _spread_head(model)
    round_weights_to_float16(model)
    return model


def test_build_gives_softmax_over_six_classes_and_stores_normalisation(tiny):
    probs = np.asarray(tiny.predict(_crops(5), verbose=0))
    assert probs.shape == (5, len(CLASS_NAMES))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert probs.std(0).max() > 1e-3  # the head is not degenerate: inputs give different outputs
    mean, std = get_normalization(tiny)
    np.testing.assert_allclose(mean, [0.1, 0.2, 0.3], rtol=1e-5)
    np.testing.assert_allclose(std, [0.05, 0.1, 0.2], rtol=1e-5)


def test_normalisation_happens_inside_the_model(tiny):
    import keras

    norm = next(layer for layer in tiny.layers if isinstance(layer, keras.layers.Normalization))
    probe = keras.Model(tiny.input, norm.output)
    x = _crops(2)
    z = np.asarray(probe.predict(x, verbose=0))
    np.testing.assert_allclose(z, (x - [0.1, 0.2, 0.3]) / np.array([0.05, 0.1, 0.2]), rtol=1e-4, atol=1e-4)


def test_b0_builds_with_its_published_size():
    model = build_model("efficientnet_b0", S)
    # keras.applications EfficientNetB0 without top has 4,049,571 parameters; + 1280*6+6 head
    assert model.count_params() == 4_049_571 + 1280 * 6 + 6
    assert model.output_shape == (None, 6)


def test_single_channel_model_takes_three_channels_and_uses_only_its_own():
    import keras

    keras.utils.set_random_seed(2)
    model = build_model("efficientnet_tiny", S, ("microglia",), [0.2], [0.1])
    _spread_head(model)
    x = _crops(3)
    y = x.copy()
    y[..., 0] = 1.0 - y[..., 0]   # change nucleus and neuron only
    y[..., 1] = 0.0
    z = x.copy()
    z[..., 2] = 1.0 - z[..., 2]   # change microglia
    px, py, pz = (np.asarray(model.predict(a, verbose=0)) for a in (x, y, z))
    np.testing.assert_array_equal(px, py)
    assert np.abs(px - pz).max() > 1e-4


@pytest.mark.parametrize("kwargs, fragment", [
    ({"arch": "resnet50"}, "efficientnet_tiny"),
    ({"channels": ("nucleus", "neuron")}, "exactly one of"),
    ({"mean": [0.1], "std": [0.1]}, "do not fit channels"),
    ({"input_size": 8}, ">= 32"),
])
def test_build_rejects_bad_arguments_with_the_allowed_values(kwargs, fragment):
    args = {"arch": "efficientnet_tiny", "input_size": S, **kwargs}
    with pytest.raises(NeuroRGError, match=fragment):
        build_model(**args)


def test_save_load_round_trip_gives_identical_outputs(tiny, tmp_path):
    bundle = save_bundle(tmp_path / "b", [tiny], [{"name": "fold1", "fold": 1, "val_plates": ["p1"]}],
                         kind="ensemble", arch="efficientnet_tiny", input_size=S)
    again = load_bundle(tmp_path / "b")
    assert again.id == bundle.id and again.members[0].id == bundle.members[0].id
    assert again.members[0].val_plates == ("p1",) and again.members[0].fold == 1
    loaded = load_member_model(again.members[0])
    x = _crops(6)
    np.testing.assert_array_equal(np.asarray(loaded.predict(x, verbose=0)), np.asarray(tiny.predict(x, verbose=0)))
    card = json.loads((tmp_path / "b" / "card.json").read_text())
    assert card["class_names"] == list(CLASS_NAMES) and card["concentrations_um"][-1] == 20.0
    assert card["members"][0]["channels"] == list(CHANNELS)


def test_float16_storage_keeps_outputs_within_tolerance_of_the_unrounded_model(tmp_path):
    import keras

    keras.utils.set_random_seed(3)
    model = build_model("efficientnet_tiny", S, CHANNELS, [0.1, 0.2, 0.3], [0.05, 0.1, 0.2])
    _spread_head(model)
    x = _crops(6)
    before = np.asarray(model.predict(x, verbose=0))
    bundle = save_bundle(tmp_path / "b", [model], [{"name": "fold1"}], kind="ensemble",
                         arch="efficientnet_tiny", input_size=S)
    after = np.asarray(load_member_model(bundle.members[0]).predict(x, verbose=0))
    assert np.abs(after - before).max() < 5e-3
    assert get_normalization(load_member_model(bundle.members[0]))[1] == pytest.approx([0.05, 0.1, 0.2], rel=1e-6)


def test_ids_are_content_hashes(tiny, tmp_path):
    a = save_bundle(tmp_path / "a", [tiny], [{"name": "fold1"}], kind="ensemble",
                    arch="efficientnet_tiny", input_size=S)
    b = save_bundle(tmp_path / "b", [tiny], [{"name": "fold1"}], kind="ensemble",
                    arch="efficientnet_tiny", input_size=S)
    assert a.id == b.id and a.members[0].id == b.members[0].id
    c = update_card(b, metrics={"well_acc": 0.9})
    assert c.id != a.id                         # the card content changed
    assert c.members[0].id == a.members[0].id   # the member's function did not


@pytest.fixture()
def saved(tiny, tmp_path):
    save_bundle(tmp_path / "b", [tiny], [{"name": "fold1", "fold": 1}], kind="ensemble",
                arch="efficientnet_tiny", input_size=S)
    return tmp_path / "b"


def _edit_card(folder, fn):
    card = json.loads((folder / "card.json").read_text())
    fn(card)
    (folder / "card.json").write_text(json.dumps(card))


@pytest.mark.parametrize("damage, fragment, names", [
    (lambda f: (f / "card.json").unlink(), "no card.json", "card.json"),
    (lambda f: (f / "card.json").write_text("{not json"), "not valid JSON", "card.json"),
    (lambda f: (f / "fold1.weights.npz").unlink(), "missing", "fold1.weights.npz"),
    (lambda f: (f / "fold1.weights.npz").write_bytes(b"corrupt"), "does not match", "fold1.weights.npz"),
    (lambda f: _edit_card(f, lambda c: c.update(class_names=c["class_names"][:5])), "expected 6 classes",
     "card.json"),
    (lambda f: _edit_card(f, lambda c: c["members"][0]["normalization"]["mean"].__setitem__(0, 0.5)),
     "card was edited", "card.json"),
    (lambda f: _edit_card(f, lambda c: c.update(architecture="vgg16")), "unknown architecture", "card.json"),
    (lambda f: _edit_card(f, lambda c: c.pop("members")), "lacks members", "card.json"),
])
def test_load_bundle_rejects_damaged_bundles_naming_the_file(saved, damage, fragment, names):
    folder = saved
    damage(folder)
    with pytest.raises(NeuroRGError, match=fragment) as info:
        load_bundle(folder)
    assert names in str(info.value)


def test_load_bundle_on_a_missing_folder(tmp_path):
    with pytest.raises(NeuroRGError, match="does not exist") as info:
        load_bundle(tmp_path / "nowhere")
    assert "nowhere" in str(info.value)


def _set_member(field, value):
    return lambda c: c["members"][0].__setitem__(field, value)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(input_size="64"),
     r'field input_size is "64" \(a string\); expected an integer >= 32 \(pixels\)'),
    (lambda c: c.update(input_size=True), r"field input_size is true \(true/false\); expected an integer"),
    (lambda c: c.update(members={"fold1": {}}),
     r'field members is \{"fold1": \{\}\} \(an object\); expected a list of member objects'),
    (lambda c: c.update(members=["fold1"]),
     r'field members\[0\] is "fold1" \(a string\); expected an object describing one member'),
    (lambda c: c["members"][0]["normalization"].update(mean=[0.1, 0.2]),
     r"field members\[0\] \(fold1\)\.normalization\.mean is \[0\.1, 0\.2\] \(a list\); expected a list of "
     r"3 finite numbers"),
    (lambda c: c["members"][0]["normalization"].update(std=[0.1, 0.0, 0.2]),
     r"normalization\.std is \[0\.1, 0\.0, 0\.2\] \(a list\); expected a list of 3 finite positive numbers"),
    (lambda c: c["members"][0]["normalization"].update(mean="0.1,0.2,0.3"),
     r"normalization\.mean is .* \(a string\); expected a list of 3"),
    (_set_member("channels", "nucleus"),
     r'members\[0\] \(fold1\)\.channels is "nucleus" \(a string\); expected a list of strings'),
    (_set_member("fold", "1"), r'members\[0\] \(fold1\)\.fold is "1" \(a string\); expected an integer >= 1'),
    (_set_member("weights_sha256", 12), r"weights_sha256 is 12 \(an integer\); expected a SHA-256 hash"),
    (_set_member("weights", "../fold1.weights.npz"), r"weights is .* expected a plain file name"),
    (_set_member("val_plates", "p1"), r'val_plates is "p1" \(a string\); expected a list of strings'),
    (lambda c: c.update(concentrations_um=["0", "0.005", "0.05", "0.5", "5", "20"]),
     r"field concentrations_um is .* \(a list\); expected a list of 6 finite numbers"),
    (lambda c: c.update(class_names="0 uM"), r'field class_names is "0 uM" \(a string\); expected a list'),
    (lambda c: c.update(architecture=["efficientnet_tiny"]), r"field architecture is .* expected a non-empty"),
    (lambda c: c.update(files=["fold1.weights.npz"]), r"field files is .* \(a list\); expected an object"),
    (lambda c: c["files"].update({"../outside.bin": "0" * 64}), r"expected a path inside the bundle folder"),
    (lambda c: c["files"].update({"fold1.weights.npz": "abc"}), r'field files\["fold1\.weights\.npz"\]|'
                                                                r"files\['fold1\.weights\.npz'\] is \"abc\""),
])
def test_wrong_typed_card_fields_name_card_json_and_the_field(saved, edit, message):
    _edit_card(saved, edit)
    with pytest.raises(NeuroRGError, match=message) as info:
        load_bundle(saved)
    assert str(info.value).startswith("card.json: ")


def test_the_card_records_the_hash_of_every_file_it_ships(saved):
    from neurorg_core.model import file_sha256, record_files

    bundle = load_bundle(saved)
    assert bundle.card["files"] == {"fold1.weights.npz": file_sha256(saved / "fold1.weights.npz")}
    (saved / "NOTES.txt").write_text("trained on plates 1-5\n")
    recorded = record_files(bundle, ["NOTES.txt"])
    assert recorded.card["files"]["NOTES.txt"] == file_sha256(saved / "NOTES.txt")
    assert recorded.members[0].id == bundle.members[0].id and recorded.id != bundle.id
    (saved / "NOTES.txt").write_text("edited\n")
    with pytest.raises(NeuroRGError, match=r"^NOTES\.txt: file NOTES\.txt does not match the SHA-256 "
                                           r"recorded in card\.json"):
        load_bundle(saved)
    with pytest.raises(NeuroRGError, match="cannot be updated"):
        update_card(recorded, files={})


def test_a_files_entry_that_disagrees_with_the_member_entry_is_an_edited_card(saved):
    _edit_card(saved, lambda c: c["files"].update({"fold1.weights.npz": "0" * 64}))
    with pytest.raises(NeuroRGError, match=r"^card\.json: the card's files section and member fold1 record "
                                           r"different hashes for fold1\.weights\.npz"):
        load_bundle(saved)


def test_a_single_channel_card_with_a_three_channel_member_is_refused(saved):
    _edit_card(saved, lambda c: c.update(kind="single_channel"))
    with pytest.raises(NeuroRGError, match=r"^card\.json: single-channel member fold1 uses channels "
                                           r"\['nucleus', 'neuron', 'microglia'\]; expected exactly one"):
        load_bundle(saved)

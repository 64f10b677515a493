"""Leave-plate-out folds, augmentation, crop loading, the training settings, the evaluation report
(typed, and agreeing with the screen's well table), and a real (tiny) train -> evaluate run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pandas as pd  # noqa: E402

from neurorg_core.augment import AUGMENTATION, Augmentation  # noqa: E402
from neurorg_core.config import REPO_ROOT  # noqa: E402
from neurorg_core.cropsets import load_crop_set  # noqa: E402
from neurorg_core.errors import NeuroRGError  # noqa: E402
from neurorg_core.evaluate import EvaluationReport, format_report, score_crops  # noqa: E402
from neurorg_core.model import load_bundle  # noqa: E402
from neurorg_core.preprocess import CropGeometry  # noqa: E402
from neurorg_core.schema import (CALLED_CLASS, CROP, FIELD, MEMBER, N_CLASSES, PROB_COLUMNS,  # noqa: E402
                                 VOTE_COLUMNS, WELL)
from neurorg_core.scoring import aggregate_wells, score_wells  # noqa: E402
from neurorg_core.train import (WARMUP_EPOCHS, TrainSettings, build_optimizer,  # noqa: E402
                                channel_stats, fold_split, learning_rate_schedule, split_wells)


@pytest.mark.parametrize("n, expected", [
    (1, [[1]]),
    (2, [[1], [2]]),
    (3, [[1], [2], [3]]),
    (4, [[1], [2], [3], [4]]),
    (5, [[1, 5], [2], [3], [4]]),            # the study's split
    (6, [[1, 5], [2, 6], [3], [4]]),
    (8, [[1, 5], [2, 6], [3, 7], [4, 8]]),
])
def test_fold_split_follows_the_study(n, expected):
    names = [f"plate_{i}" for i in range(n, 0, -1)]    # given in any order
    folds = fold_split(names)
    assert folds == [[f"plate_{i}" for i in fold] for fold in expected]
    assert sorted(p for f in folds for p in f) == sorted(names)   # every plate validates once


def test_fold_split_sorts_naturally_and_rejects_bad_input():
    assert fold_split(["p10", "p2", "p1"]) == [["p1"], ["p2"], ["p10"]]
    with pytest.raises(NeuroRGError, match="no training plates"):
        fold_split([])
    with pytest.raises(NeuroRGError, match="p1 appear more than once"):
        fold_split(["p1", "p1"])


def test_channel_stats_stream_what_numpy_computes_in_memory():
    """Normalisation statistics come from the crop cache in chunks, equal to numpy's over all crops."""
    from neurorg_core.cropcache import CropSource

    rng = np.random.default_rng(4)
    parts = [rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8) for n in (300, 7, 1200)]
    mean, std = channel_stats(CropSource([(p, np.zeros(len(p))) for p in parts]))
    flat = np.concatenate(parts).reshape(-1, 3)
    np.testing.assert_allclose(mean, flat.mean(0, dtype=np.float64) / 255.0, rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(0, dtype=np.float64) / 255.0, rtol=1e-12)


def test_well_calls_mean_probability_and_plurality_vote():
    probs = np.array([[0.6, 0.4, 0, 0, 0, 0], [0.6, 0.4, 0, 0, 0, 0], [0.0, 1.0, 0, 0, 0, 0],
                      [0, 0, 0, 0, 0.2, 0.8]], np.float32)
    wells = np.array(["A01", "A01", "A01", "B01"])
    agg = aggregate_wells(probs, wells)
    assert list(agg.wells) == ["A01", "B01"]
    assert list(agg.called) == [1, 5]      # mean of A01: (0.4, 0.6) -> class 1
    assert list(agg.vote_call) == [0, 5]   # votes of A01: 0, 0, 1 -> class 0
    assert agg.n_crops.tolist() == [3, 1]
    m = score_crops(probs, np.array([0, 0, 0, 5]), wells)
    assert m.crop_acc == 0.75 and m.well_acc == 0.5 and m.well_acc_vote == 1.0 and m.wells_correct == 1
    assert np.sum(m.well_confusion) == 2 and m.well_confusion[0][1] == 1
    with pytest.raises(NeuroRGError, match=r"shape \(4, 5\) with 4 well labels"):
        aggregate_wells(probs[:, :5], wells)


def _crop_table(probs: np.ndarray, wells: np.ndarray, fields: np.ndarray, crops: np.ndarray) -> pd.DataFrame:
    """The crop-level table inference writes, from probabilities (members, crops, 6)."""
    frames = [pd.DataFrame({WELL: wells, FIELD: fields, CROP: crops, MEMBER: f"fold{k + 1}",
                            **dict(zip(PROB_COLUMNS, p.T))}) for k, p in enumerate(probs)]
    return pd.concat(frames).sample(frac=1.0, random_state=0)       # row order must not matter


def test_model_card_well_accuracy_counts_the_calls_of_the_screens_well_table():
    """Evaluation (well_acc, well_acc_vote) and score_wells (Called_class, Vote_class*) call the
    same wells the same way: one ensemble's crops, scored both ways."""
    rng = np.random.default_rng(11)
    n_wells, n_fields, n_crops, n_members = 40, 2, 5, 3
    names = np.array([f"{r}{c:02d}" for r in "ABCDE" for c in range(1, 9)])
    wells = np.repeat(names, n_fields * n_crops)
    fields = np.tile(np.repeat(np.arange(1, n_fields + 1), n_crops), n_wells)
    crops = np.tile(np.arange(n_crops), n_wells * n_fields)
    truth = rng.integers(0, N_CLASSES, n_wells)
    labels = np.repeat(truth, n_fields * n_crops)
    # noisy crops leaning towards the truth: some wells right, some wrong, some where the mean
    # probability and the plurality of crop calls disagree
    logits = rng.normal(0.0, 1.5, (n_members, len(wells), N_CLASSES))
    logits[:, np.arange(len(wells)), labels] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)

    table = score_wells(_crop_table(probs, wells, fields, crops), None).set_index(WELL).loc[names]
    called = table[CALLED_CLASS].to_numpy()
    vote_call = table[list(VOTE_COLUMNS)].to_numpy().argmax(1)
    assert 0 < (called == truth).sum() < n_wells
    assert (called != vote_call).any()                      # the two rules do differ on some wells
    m = score_crops(probs, labels, wells)
    assert m.n_wells == n_wells and m.n_crops == len(wells)
    assert m.wells_correct == int((called == truth).sum())
    assert m.well_acc == round(float((called == truth).mean()), 4)
    assert m.well_acc_vote == round(float((vote_call == truth).mean()), 4)
    assert np.trace(np.array(m.well_confusion)) == m.wells_correct
    agg = aggregate_wells(probs, wells)
    np.testing.assert_allclose(table[list(PROB_COLUMNS)].to_numpy(), agg.probs[np.searchsorted(agg.wells, names)],
                               rtol=0, atol=1e-12)


DEMO = REPO_ROOT / "data" / "models" / "demo"


@pytest.mark.parametrize("kind", ["ensemble", "single_channel"])
def test_shipped_cards_evaluation_reads_back_typed_and_writes_the_same_json(kind):
    from neurorg_core.demo import _summary

    card = load_bundle(DEMO / kind, kind=kind).card
    stored = card["metrics"]["evaluation"]
    report = EvaluationReport.from_dict(stored)
    assert json.dumps(report.as_dict()) == json.dumps(stored)          # same keys, order and values
    assert report.cross_validation is not None and report.unseen is not None
    text = format_report(report)
    pooled = report.cross_validation.pooled
    assert f"cross-validation pooled: crop {pooled.crop_acc:.1%}, well {pooled.well_acc:.1%}" in text
    if kind == "ensemble":
        assert _summary(report) == card["metrics"]["summary"]
        mc = report.unseen.mcnemar_ensemble_vs_best_member
        assert f"McNemar ensemble vs {mc.member}: b = {mc.b}, c = {mc.c}" in text
    else:
        assert report.unseen.ensemble is None and "McNemar" not in text


def test_train_settings_descriptions_are_built_from_what_the_code_does():
    shipped = json.loads((DEMO / "ensemble" / "card.json").read_text())["training"]
    settings = TrainSettings()
    for key in ("optimizer", "schedule", "selection", "augmentation"):
        assert settings.as_dict()[key] == shipped[key]                 # the card keeps its wording
    card_order = list(shipped)
    card_order.insert(2, "crop_edge_px")                                 # added after the demo was built
    assert list(settings.as_dict()) == card_order
    assert AUGMENTATION.describe() == settings.augmentation
    changed = Augmentation(gain_log_sd=0.5, blur_fraction=0.1)
    assert "log-normal sd 0.5" in changed.describe() and "on 10 % of crops" in changed.describe()
    with pytest.raises(TypeError):
        TrainSettings(optimizer="SGD")                                  # a description, not a setting
    # the optimiser and schedule the descriptions name: AdamW, 1 epoch warm-up to the peak, cosine to 0
    steps = 10
    st = TrainSettings(epochs=5, learning_rate=0.01)
    assert type(build_optimizer(st, steps)).__name__ == st.optimizer
    lr = learning_rate_schedule(st, steps)
    at = [float(lr(s)) for s in (0, steps * WARMUP_EPOCHS // 2, steps * WARMUP_EPOCHS, 30, steps * st.epochs)]
    assert at == pytest.approx([0.0, 0.005, 0.01, 0.01 * 0.5 * (1 + np.cos(np.pi * 20 / 40)), 0.0], abs=1e-7)


def test_cli_defaults_come_from_the_settings_objects():
    from neurorg_core.cli import build_parser
    from neurorg_core.demo import DemoRecipe

    parser = build_parser()
    train = parser.parse_args(["train", "--plates", "p", "--out", "o"])
    st = TrainSettings()
    assert (train.arch, train.input_size, train.crop_edge, train.epochs, train.seed, train.batch_size,
            train.lr) == (st.arch, st.input_size, st.crop_edge_px, st.epochs, st.seed, st.batch_size,
                          st.learning_rate)
    demo = parser.parse_args(["build-demo"])
    recipe = DemoRecipe()
    assert (demo.epochs, demo.single_channel_epochs, demo.cell_severity_sd, demo.well_severity_sd,
            demo.seed) == (recipe.ensemble_epochs, recipe.single_channel_epochs, recipe.cell_severity_sd,
                           recipe.well_severity_sd, st.seed)


EDGE32 = CropGeometry("tiles", 32)


@pytest.fixture(scope="module")
def tiny_plates(tmp_path_factory):
    from neurorg_core.synth import write_synthetic_plates

    root = tmp_path_factory.mktemp("plates")
    train = write_synthetic_plates(root / "train", seed=1, n_plates=1, n_fields=1, size=64)
    test = write_synthetic_plates(root / "test", seed=7, n_plates=1, n_fields=1, size=64)
    return train[0], test[0]


def test_load_crop_set_reads_labelled_wells(tiny_plates):
    cs = load_crop_set(tiny_plates[0], 32, geometry=EDGE32, crops_per_well=4)
    assert cs.crops.dtype == np.uint8 and cs.crops.shape[1:] == (32, 32, 3)
    assert len(np.unique(cs.wells)) == 60 and len(cs.labels) == 240
    assert sorted(np.bincount(cs.labels).tolist()) == [40] * 6
    tr, va = split_wells(cs)
    assert set(tr.wells).isdisjoint(va.wells)
    assert np.bincount(va.labels).tolist() == [8] * 6   # every 4th of 10 wells per class, x 4 crops
    other = load_crop_set(tiny_plates[1], 32, geometry=EDGE32, crops_per_well=4)
    assert other.fingerprint != cs.fingerprint


def test_load_crop_set_without_labels_names_the_folder(tmp_path):
    from neurorg_core.synth import write_synthetic_plates

    folder = write_synthetic_plates(tmp_path, seed=3, n_plates=1, n_fields=1, size=64, kind="screen")[0]
    (folder / "platemap.csv").unlink()
    with pytest.raises(NeuroRGError, match="no plate map") as info:
        load_crop_set(folder, 32, geometry=EDGE32)
    assert folder.name in str(info.value)


@pytest.mark.slow
def test_train_and_evaluate_end_to_end_through_the_cli(tiny_plates, tmp_path, capsys):
    from neurorg_core.cli import main
    from neurorg_core.model import load_bundle

    train_dir, test_dir = tiny_plates
    out = tmp_path / "bundle"
    rc = main(["train", "--plates", str(train_dir), "--out", str(out), "--arch", "efficientnet_tiny",
               "--input-size", "32", "--crop-edge", "32", "--epochs", "2", "--seed", "3"])
    assert rc == 0
    bundle = load_bundle(out)
    card = bundle.card
    assert card["kind"] == "ensemble" and len(bundle.members) == 1          # one plate -> one fold
    entry = card["members"][0]
    assert [h["epoch"] for h in entry["history"]] == [1, 2]
    best = max(entry["history"], key=lambda h: (h["crop_acc"], -h["loss"]))
    assert entry["best_epoch"] == best["epoch"]                              # best epoch kept
    assert entry["metrics"]["validation"]["crop_acc"] == pytest.approx(best["crop_acc"], abs=0.02)
    assert card["training"]["epochs"] == 2 and card["training"]["seed"] == 3
    assert card["training_plates"][0]["name"] == train_dir.name
    assert card["crop_geometry"] == {"mode": "tiles", "crop_edge_px": 32, "pixel_size_um": None} or \
        card["crop_geometry"]["crop_edge_px"] == 32       # pixel size: from the files where read
    assert card["synthetic"] is True and card["intensity"]["method"] == "significant_bits"
    assert card["training_runtime"]["precision"] == "float32"                 # the CPU: no bf16, no XLA
    assert card["training_runtime"]["jit_compile"] is False
    assert card["training_runtime"]["augment_on"] == "loader"               # the CPU: numpy on the loader
    assert "model " + bundle.id in capsys.readouterr().out

    report_path = tmp_path / "report.json"
    rc = main(["evaluate", "--plates", str(train_dir), str(test_dir), "--model", str(out),
               "--json", str(report_path), "--backend", "keras"])   # LiteRT is covered elsewhere
    assert rc == 0
    report = json.loads(report_path.read_text())
    status = {p["source"]: p["status"] for p in report["plates"]}
    assert status[str(train_dir)].startswith("training")
    assert status[str(test_dir)] == "unseen"
    ens = report["unseen"]["ensemble"]
    assert ens["n_wells"] == 60 and np.sum(ens["well_confusion"]) == 60
    assert np.sum(ens["crop_confusion"]) == ens["n_crops"] == 900
    assert report["unseen"]["mcnemar_ensemble_vs_best_member"]["b"] == 0   # a 1-member ensemble
    assert "unseen plates, ensemble" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_recognises_validation_training_and_unseen_plates_by_content(tmp_path, tiny_members):
    from neurorg_core.inference import Predictor
    from neurorg_core.model import save_bundle
    from neurorg_core.cropsets import CropSet
    from neurorg_core.evaluate import evaluate_bundle

    rng = np.random.default_rng(0)

    def plate(name, fp):
        labels = np.repeat(np.arange(6), 4)                       # 6 wells x 4 crops
        wells = np.repeat([f"B{c:02d}" for c in range(2, 8)], 4)
        return CropSet(name, fp, tmp_path / fp, rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8),
                       labels, wells)

    p1, p2 = plate("plate_01", "fp1"), plate("plate_02", "fp2")
    new = plate("plate_01", "fp9")        # same name as a training plate, different content
    models = [tiny_members["fold1"], tiny_members["fold2"]]      # random weights, 32 px
    infos = [{"name": "fold1", "fold": 1, "train_plates": ["plate_02"], "val_plates": ["plate_01"]},
             {"name": "fold2", "fold": 2, "train_plates": ["plate_01"], "val_plates": ["plate_02"]}]
    training = [{"name": "plate_01", "fingerprint": "fp1"}, {"name": "plate_02", "fingerprint": "fp2"}]
    bundle = save_bundle(tmp_path / "b", models, infos, kind="ensemble", arch="efficientnet_tiny",
                         input_size=32, extra={"training_plates": training,
                                               "crop_geometry": {"mode": "tiles", "crop_edge_px": 32}})
    report = evaluate_bundle([], bundle, predictor=Predictor(bundle, backend="keras"), sets=[p1, p2, new])
    assert [p.status for p in report.plates] == ["validation of fold1", "validation of fold2", "unseen"]
    cv = report.cross_validation
    assert sorted(cv.folds) == ["fold1", "fold2"]
    assert cv.pooled.n_wells == 12 and cv.pooled.n_crops == 48
    un = report.unseen
    assert un.ensemble.n_wells == 6 and sorted(un.members) == ["fold1", "fold2"]
    mc = un.mcnemar_ensemble_vs_best_member
    assert mc.member in ("fold1", "fold2") and mc.b + mc.c <= 6 and 0.0 <= mc.p <= 1.0
    assert set(report.as_dict()["unseen"]["mcnemar_ensemble_vs_best_member"]) == {"member", "chi2", "p", "b", "c"}

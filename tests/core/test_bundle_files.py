"""Bundle files: hashes on the card, swapped or unrecorded LiteRT files, read-only bundles, and a
bundle of the wrong kind.

Conversions are slow (~10-30 s per member here), so the two test members are converted once per
session (``tiny_ensemble`` in ``tests/core/conftest.py``, cached by ``tests/conftest.py``) and every
test reuses them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from neurorg_core.cli import main  # noqa: E402
from neurorg_core.config import REPO_ROOT, Config  # noqa: E402
from neurorg_core.errors import NeuroRGError  # noqa: E402
from neurorg_core.inference import Predictor, _run_litert, conversion_cache_dir  # noqa: E402
from neurorg_core.model import file_sha256, load_bundle  # noqa: E402
from neurorg_core.pipeline import ScoreOptions, run_plate  # noqa: E402
from neurorg_core.platemap import load_plate_map  # noqa: E402
from neurorg_core.plates import load_plate  # noqa: E402
from neurorg_core.schema import CHANNELS, FIELD_HASH, ROLE  # noqa: E402
from neurorg_core.store import ResultStore  # noqa: E402
from tests.private_mount import run_in_private_mount  # noqa: E402

S = 32


def _crops(n: int, seed: int = 0) -> np.ndarray:
    scale = np.linspace(0.2, 1.0, n, dtype=np.float32)[:, None, None, None]
    return np.random.default_rng(seed).random((n, S, S, 3), dtype=np.float32) * scale


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bundle_files")


@pytest.fixture(scope="module")
def plain(tiny_ensemble_files) -> Path:
    """A 2-member ensemble as training writes it: weights and card, no LiteRT files."""
    return tiny_ensemble_files


@pytest.fixture(scope="module")
def sealed(tiny_ensemble):
    """The same bundle after ``convert_bundle``: LiteRT files inside, every hash on the card."""
    return tiny_ensemble


@pytest.fixture(scope="module")
def expected(sealed) -> np.ndarray:
    """Probabilities from the sealed bundle's own LiteRT files."""
    pred = Predictor(sealed, threads=1)
    assert all(p.parent == sealed.path / "litert" for p in pred.litert_files)
    return pred.predict(_crops(12))


def _listing(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _swapped_copy(sealed, dest: Path) -> Path:
    shutil.copytree(sealed.path, dest)
    a, b = (dest / "litert" / f"{m.id}.tflite" for m in sealed.members)
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    return dest


# --- hashes on the card -------------------------------------------------------------------------

def test_convert_bundle_records_every_file_and_keeps_member_ids(plain, sealed) -> None:
    before = load_bundle(plain)
    files = sealed.card["files"]
    assert sorted(files) == sorted([*(f"fold{i}.weights.npz" for i in (1, 2)),
                                    *(f"litert/{m.id}.tflite" for m in sealed.members)])
    assert all(file_sha256(sealed.path / rel) == digest for rel, digest in files.items())
    assert [m.id for m in sealed.members] == [m.id for m in before.members]
    assert sealed.id != before.id                         # the card changed, so the bundle id did
    assert load_bundle(plain).card["files"] == {f"fold{i}.weights.npz": files[f"fold{i}.weights.npz"]
                                                 for i in (1, 2)}   # training records the weights


def test_a_recorded_file_that_does_not_match_is_refused_naming_it(sealed, tmp_path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(sealed.path, copy)
    (copy / "fold2.weights.npz").write_bytes((copy / "fold1.weights.npz").read_bytes())
    with pytest.raises(NeuroRGError, match=r"^fold2\.weights\.npz: weights hash .* does not match the "
                                           r"card's .* for member fold2; the file is corrupt or was replaced"):
        load_bundle(copy)


# --- swapped and unrecorded LiteRT files ----------------------------------------------------------

def test_swapped_litert_files_are_converted_again_and_give_the_same_probabilities(
        sealed, expected, tmp_path, litert_conversion_cache) -> None:
    copy = _swapped_copy(sealed, tmp_path / "swapped")
    swapped_files = _listing(copy)
    # the test means something: run as named, the swapped files give the other member's answers
    first = copy / "litert" / f"{sealed.members[0].id}.tflite"
    assert np.abs(_run_litert(first.read_bytes(), _crops(12)) - expected[0]).max() > 1e-2

    bundle = load_bundle(copy)
    assert bundle.id == sealed.id                        # the card itself is untouched
    pred = Predictor(bundle, threads=1)
    np.testing.assert_allclose(pred.predict(_crops(12)), expected, atol=1e-5)
    assert all(p.parent == litert_conversion_cache for p in pred.litert_files)
    assert _listing(copy) == swapped_files               # the bundle folder was not written


def test_a_litert_file_whose_hash_the_card_does_not_record_is_not_trusted(
        plain, sealed, expected, tmp_path, litert_conversion_cache) -> None:
    copy = tmp_path / "planted"
    shutil.copytree(plain, copy)
    (copy / "litert").mkdir()
    for mine, other in zip(sealed.members, reversed(sealed.members)):   # each name, the other's file
        shutil.copy(sealed.path / "litert" / f"{other.id}.tflite", copy / "litert" / f"{mine.id}.tflite")
    pred = Predictor(load_bundle(copy), threads=1)
    np.testing.assert_allclose(pred.predict(_crops(12)), expected, atol=1e-5)
    assert all(p.parent == litert_conversion_cache for p in pred.litert_files)


N_WELLS = 12


@pytest.fixture(scope="module")
def plate_dir(root, copy_screen_wells) -> Path:
    """12 imaged wells of the synthetic screen, one 64 px field each."""
    out = root / "plate"
    keep = copy_screen_wells(out, lambda pm: pm[pm[ROLE] != "empty"].head(N_WELLS))
    keep.to_csv(out / "platemap.csv", index=False)
    return out


def _cached_table(store: ResultStore, member_ids: list[str]) -> dict[tuple[str, str], np.ndarray]:
    hashes = [h for plate in store.list_plates()["Metadata_Plate"] for h in store.load_fields(plate)[FIELD_HASH]]
    return {(h, m): p for m in member_ids for h, p in store.cached_predictions(hashes, m).items()}


def test_scoring_with_swapped_litert_files_caches_only_true_predictions(
        sealed, plate_dir, tmp_path) -> None:
    plate, pm = load_plate(plate_dir), load_plate_map(plate_dir / "platemap.csv")
    ids = [m.id for m in sealed.members]
    with ResultStore(tmp_path / "true.duckdb") as good:
        run_plate(plate, pm, sealed, good, name="p", options=ScoreOptions(crops_per_well=4))
        truth = _cached_table(good, ids)
    swapped = load_bundle(_swapped_copy(sealed, tmp_path / "swapped"))
    with ResultStore(tmp_path / "swapped.duckdb") as store:
        result = run_plate(plate, pm, swapped, store, name="p", options=ScoreOptions(crops_per_well=4))
        got = _cached_table(store, ids)
        wells = store.load_well_scores("p")
    assert result.inferred_crops == N_WELLS * 4 * 2
    assert sorted(got) == sorted(truth) and len(got) == N_WELLS * 2
    for key, probs in truth.items():                      # under each member's id, its own answers
        np.testing.assert_allclose(got[key], probs, atol=1e-5)
    assert len(wells) == N_WELLS


# --- a bundle in a read-only folder ---------------------------------------------------------------

_READ_ONLY = """
import json, subprocess, sys
from pathlib import Path
import numpy as np
tmp = Path(sys.argv[1])
ro = tmp / "ro"
subprocess.run(["mount", "--bind", str(ro), str(ro)], check=True)
subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
import dataclasses
from neurorg_core.inference import Predictor
from neurorg_core.model import load_bundle
x = np.load(tmp / "crops.npy")
sealed = load_bundle(ro / "sealed")
shipped = Predictor(sealed, threads=1)
plain = load_bundle(ro / "plain")
one = dataclasses.replace(plain, members=plain.members[:1])    # one conversion keeps the test short
converted = Predictor(one, threads=1)
print(json.dumps({
    "shipped_files": [str(p) for p in shipped.litert_files],
    "converted_files": [str(p) for p in converted.litert_files],
    "shipped_diff": float(np.abs(shipped.predict(x) - np.load(tmp / "expected.npy")).max()),
    "converted_diff": float(np.abs(converted.predict(x) - np.load(tmp / "expected.npy")[:1]).max()),
}))
"""


def test_a_bundle_in_a_read_only_folder_works_and_converts_elsewhere(plain, sealed, expected, tmp_path) -> None:
    """A read-only bind mount (root ignores permission bits; a read-only mount stops it too).

    The data folder is read-only as well and no NEURORG_LITERT_CACHE is set, so the conversion
    cache falls back to the user's cache folder ($XDG_CACHE_HOME/neurorg/litert)."""
    ro = tmp_path / "ro"
    shutil.copytree(plain, ro / "plain")
    shutil.copytree(sealed.path, ro / "sealed")
    (ro / "data").mkdir()
    listing = _listing(ro)
    np.save(tmp_path / "crops.npy", _crops(12))
    np.save(tmp_path / "expected.npy", expected)
    env = {k: v for k, v in os.environ.items() if k != "NEURORG_LITERT_CACHE"}
    env.update(PYTHONPATH=str(REPO_ROOT), NEURORG_DATA_DIR=str(ro / "data"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    out = run_in_private_mount(_READ_ONLY, tmp_path, env=env, timeout=600)
    assert out["shipped_files"] == [str(ro / "sealed" / "litert" / f"{m.id}.tflite") for m in sealed.members]
    assert [Path(p).parent for p in out["converted_files"]] == [tmp_path / "xdg" / "neurorg" / "litert"]
    assert out["shipped_diff"] < 1e-6 and out["converted_diff"] < 1e-5
    assert _listing(ro) == listing


def test_conversion_cache_selection_falls_back_when_a_folder_cannot_be_written(tmp_path, monkeypatch) -> None:
    """Chosen by really creating a file (permission bits do not stop root): a folder under a
    regular file cannot be made by anyone."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert conversion_cache_dir(Config(data_dir=tmp_path / "data", litert_cache=None)) == \
        tmp_path / "data" / "cache" / "litert"
    assert conversion_cache_dir(Config(data_dir=blocker / "data", litert_cache=None)) == \
        tmp_path / "xdg" / "neurorg" / "litert"
    assert conversion_cache_dir(Config(data_dir=blocker, litert_cache=tmp_path / "mine")) == tmp_path / "mine"
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "xdg"))
    with pytest.raises(NeuroRGError, match=r"no writable folder for converted LiteRT models; tried "
                                           r".*a_file/data/cache/litert \(.*\); .*a_file/xdg/neurorg/litert"):
        conversion_cache_dir(Config(data_dir=blocker / "data", litert_cache=None))


# --- a bundle of the wrong kind -------------------------------------------------------------------

@pytest.fixture(scope="module")
def single(root, save_tiny):
    """A single-channel bundle (one member per channel; never run here)."""
    return save_tiny(root / "single", list(CHANNELS), kind="single_channel")


def test_load_bundle_refuses_the_other_kind_when_one_is_asked_for(single, sealed) -> None:
    with pytest.raises(NeuroRGError, match=r"single is a single-channel bundle \(one member per channel\) "
                                           r"with members nucleus, neuron, microglia; this step needs an "
                                           r"ensemble bundle \(3-channel members, one per fold\)"):
        load_bundle(single.path, kind="ensemble")
    with pytest.raises(NeuroRGError, match=r"is an ensemble bundle .*needs a single-channel bundle"):
        load_bundle(sealed.path, kind="single_channel")
    assert load_bundle(single.path, kind="single_channel").id == single.id


def test_cli_score_refuses_a_single_channel_bundle_as_the_model(single, plate_dir, tmp_path, capsys) -> None:
    db = tmp_path / "r.duckdb"
    rc = main(["score", str(plate_dir), "--plate-map", str(plate_dir / "platemap.csv"), "--model",
               str(single.path), "--db", str(db)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: card.json: ") and "is a single-channel bundle" in err
    assert "needs an ensemble bundle" in err and "Traceback" not in err
    assert not db.exists()                                 # refused before the store was touched


def test_run_plate_refuses_swapped_roles(single, sealed, plate_dir, tmp_path) -> None:
    plate, pm = load_plate(plate_dir), load_plate_map(plate_dir / "platemap.csv")
    with ResultStore(tmp_path / "r.duckdb") as store:
        with pytest.raises(NeuroRGError, match="single-channel bundle .*scoring a plate needs an ensemble"):
            run_plate(plate, pm, single, store, name="p", options=ScoreOptions(backend="keras"))
        with pytest.raises(NeuroRGError, match="ensemble bundle .*the channel comparison needs a "
                                               "single-channel bundle"):
            run_plate(plate, pm, sealed, store, name="p", options=ScoreOptions(backend="keras"),
                      single_channel_bundle=sealed)
        assert store.list_runs().empty and store.count_predictions() == 0


def test_the_shipped_demo_bundles_have_every_file_recorded() -> None:
    for kind in ("ensemble", "single_channel"):
        bundle = load_bundle(REPO_ROOT / "data" / "models" / "demo" / kind, kind=kind)
        on_disk = {p.relative_to(bundle.path).as_posix() for p in bundle.path.rglob("*")
                   if p.is_file() and p.name != "card.json"}
        assert set(bundle.card["files"]) == on_disk
        assert all(file_sha256(bundle.path / rel) == h for rel, h in bundle.card["files"].items())
        pred = Predictor(bundle, threads=1)               # the shipped files are used: no conversion
        assert pred.litert_files == [bundle.path / "litert" / f"{m.id}.tflite" for m in bundle.members]

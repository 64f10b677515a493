"""The screen's answers against ground truth, with the shipped demo ensemble, on small fresh plates.

Seeds from 8001 up were never used to build, evaluate or calibrate the demo. Plates are rendered
with the demo recipe's synthetic assay (what the model was trained on) but in other field
geometries, and scored through ``pipeline.run_plate`` into a real DuckDB store. Each test would
fail if its feature broke: crops at the fields' own grid instead of the model's crop edge put the
demo at chance on these geometries; 12-bit data read as 16-bit moves every score; a swapped channel
map leaves every call wrong while Z' can look fine. The figures on whole plates and several seeds
come from ``benchmarks/screen_accuracy.py`` (README, science table).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from neurorg_core.config import REPO_ROOT
from neurorg_core.model import load_bundle
from neurorg_core.pipeline import ScoreOptions, run_plate
from neurorg_core.results import load_plate_results
from neurorg_core.platemap import load_plate_map
from neurorg_core.plates import load_plate
from neurorg_core.schema import (
    CALLED_CLASS, CLASS, COMPOUND, CONVERGED, DOSE, EC50, HIT, INFLAMMATION_SCORE, N_CLASSES, P_CONTROL,
    RESCUE_PCT, ROLE, TRUE_EC50, TRUE_MAX_RESCUE, TRUE_RESCUE, WELL,
)
from neurorg_core.store import ResultStore
from neurorg_core.synth import SYNTH_PIXEL_SIZE_UM, build_plate_table, write_synthetic_plates
from neurorg_core.demo import DemoRecipe

pytestmark = pytest.mark.slow

DEMO = REPO_ROOT / "data" / "models" / "demo" / "ensemble"
PARAMS = DemoRecipe().synth_params()


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEMO)


def _two_per_class(seed: int) -> list[str]:
    table = build_plate_table(seed, 1, 96, "training", PARAMS)
    return [w for k in range(N_CLASSES) for w in table.loc[table[CLASS] == k, WELL].iloc[:2]]


def _render(root: Path, seed: int, **kw) -> Path:
    return write_synthetic_plates(root, seed=seed, params=PARAMS, n_workers=1, **kw)[0]


def _score(folder: Path, bundle, db: Path, name: str = "p", **kw):
    with ResultStore(db) as store:
        result = run_plate(load_plate(folder, kw.pop("channels", None)), load_plate_map(folder / "platemap.csv"),
                           bundle, store, name=name, options=ScoreOptions(**kw))
        return result, load_plate_results(store, name)


def _accuracy(res) -> float:
    w = res.wells.dropna(subset=[CLASS])
    return float((w[CALLED_CLASS] == w[CLASS].astype(int)).mean())


@pytest.mark.parametrize("size,fields,seed", [(512, 1, 8001), (256, 16, 8002), (1024, 1, 8003)])
def test_every_field_geometry_is_cut_at_the_models_crop_edge(tmp_path, bundle, size, fields, seed):
    """Fields of any size and number per well reach the model at the scale it was trained on."""
    folder = _render(tmp_path, seed, n_fields=fields, size=size, wells=_two_per_class(seed))
    result, res = _score(folder, bundle, tmp_path / "r.duckdb")
    assert result.crop_edge_px == 128 and result.n_crops == 12 * 15
    assert _accuracy(res) >= 11 / 12, res.wells[[WELL, CLASS, CALLED_CLASS]]
    assert result.model_fit.verdict == "ok", result.model_fit.summary()


def test_a_magnified_plate_is_resampled_with_its_pixel_size_and_flagged_without(tmp_path, bundle):
    """A plate imaged at 2x (pixel size 0.325 um) scores right when its pixel size is known, and the
    model-fit check says POOR when it is not (the npy layout carries no metadata)."""
    seed = 8004
    folder = _render(tmp_path, seed, n_fields=4, size=512, layout="npy", magnification=2.0,
                     wells=_two_per_class(seed))
    given, res = _score(folder, bundle, tmp_path / "a.duckdb", pixel_size_um=SYNTH_PIXEL_SIZE_UM / 2)
    assert given.crop_edge_px == 256 and _accuracy(res) >= 11 / 12
    assert given.model_fit.verdict == "ok", given.model_fit.summary()
    assert res.run["params"]["crop_geometry"]["pixel_size_source"] == "user"
    unknown, _ = _score(folder, bundle, tmp_path / "b.duckdb")
    assert unknown.crop_edge_px == 128
    assert unknown.model_fit.verdict == "POOR"


def test_a_twelve_bit_plate_scores_alike_stored_as_12_or_16_bits(tmp_path, bundle):
    """12-bit camera values in 16-bit files, and the same values scaled to the full 16 bits (x 16),
    give the same scores within 1e-3. Read as plain 16-bit data (the old scaling, forced here with
    bits=16) the plate is 16 x too dark, and the fit check says so."""
    seed = 8005
    b12 = _render(tmp_path / "b12", seed, n_fields=4, size=256, bit_depth=12, wells=_two_per_class(seed))
    x16 = tmp_path / "x16"
    shutil.copytree(b12, x16)
    for tif in x16.glob("*.tif"):
        tifffile.imwrite(tif, tifffile.imread(tif) * np.uint16(16))
    r12, a = _score(b12, bundle, tmp_path / "a.duckdb")
    r16, b = _score(x16, bundle, tmp_path / "b.duckdb")
    assert (r12.intensity.bits, r16.intensity.bits) == (12, 16)
    for col in (P_CONTROL, INFLAMMATION_SCORE):
        assert np.abs(a.wells[col].to_numpy() - b.wells[col].to_numpy()).max() <= 1e-3
    assert r12.model_fit.verdict == "ok" and _accuracy(a) >= 11 / 12
    dark, _ = _score(b12, bundle, tmp_path / "c.duckdb", bits=16)
    assert dark.model_fit.verdict == "POOR"
    assert any("intensity" in reason for reason in dark.model_fit.reasons)


def _screen_truth(folder: Path) -> pd.DataFrame:
    gt = pd.read_csv(folder / "ground_truth.csv")
    t = gt[gt[ROLE] == "treatment"]
    return t.groupby([COMPOUND, DOSE]).agg(true=(TRUE_RESCUE, "mean"), ec50=(TRUE_EC50, "first"),
                                           active=(TRUE_MAX_RESCUE, "first")).reset_index()


@pytest.mark.parametrize("size,fields,seed", [(256, 4, 8006), (512, 1, 8007)])
def test_screen_hits_rescue_and_ec50s_hold_against_the_truth(tmp_path, bundle, size, fields, seed):
    """The issue's goals on a whole fresh screen: hits for >= 90 % of the doses whose true rescue is
    >= 55 %, none under 35 %; mean |rescue % - true| <= 10 points; every active EC50 within 2x; the
    inactive compound never a hit. P(control), from the same predictions, misses most hits."""
    folder = _render(tmp_path, seed, n_fields=fields, size=size, kind="screen")
    result, res = _score(folder, bundle, tmp_path / "r.duckdb")
    assert result.model_fit.verdict == "ok", result.model_fit.summary()
    assert res.readout == "inflammation_score" and res.qc.z_prime > 0.5
    truth = _screen_truth(folder)
    t = res.treatments.merge(truth, on=[COMPOUND, DOSE], validate="one_to_one")
    should, must_not = t["true"] >= 0.55, t["true"] < 0.35
    assert t.loc[should, HIT].mean() >= 0.9, t[[COMPOUND, DOSE, "true", RESCUE_PCT, HIT]]
    assert not t.loc[must_not, HIT].any()
    assert (t[RESCUE_PCT] - 100 * t["true"]).abs().mean() <= 10
    inactive = truth.loc[truth["active"] == 0, COMPOUND].unique()
    assert len(inactive) == 1 and not t.loc[t[COMPOUND].isin(inactive), HIT].any()
    fits = res.fits.set_index(COMPOUND)
    for cpd, grp in truth[truth["active"] > 0].groupby(COMPOUND):
        true_ec50 = grp["ec50"].iloc[0]
        assert fits.loc[cpd, CONVERGED] and true_ec50 / 2 <= fits.loc[cpd, EC50] <= true_ec50 * 2, cpd
    # the same wells on the saturating readout: rescue far below the truth, most hits missed
    with ResultStore(tmp_path / "r.duckdb", read_only=True) as store:
        p = load_plate_results(store, "p", readout="p_control")
    tp = p.treatments.merge(truth, on=[COMPOUND, DOSE], validate="one_to_one")
    assert tp.loc[should, HIT].sum() < t.loc[should, HIT].sum()
    assert (tp[RESCUE_PCT] - 100 * tp["true"]).abs().mean() > 15


def test_swapped_nucleus_and_microglia_are_flagged_poor(tmp_path, bundle):
    """Swapping two channels in the channel map leaves a plate's calls wrong; the check says POOR,
    and the Treatments' hits are provisional. The right map on the same plate says ok."""
    seed = 8008
    table = build_plate_table(seed, 1, 96, "screen", PARAMS)
    wells = table.loc[table[ROLE].isin(["control", "disease"]) | (table[COMPOUND] == "CPD-003"), WELL]
    folder = _render(tmp_path, seed, n_fields=4, size=256, kind="screen", wells=list(wells))
    right, _ = _score(folder, bundle, tmp_path / "a.duckdb")
    assert right.model_fit.verdict == "ok", right.model_fit.summary()
    swapped, res = _score(folder, bundle, tmp_path / "b.duckdb",
                          channels={"nucleus": "w3", "neuron": "w2", "microglia": "w1"})
    assert swapped.model_fit.verdict == "POOR"
    assert "POOR" in res.hits_provisional

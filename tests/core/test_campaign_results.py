"""campaign_results: plates side by side; cross-plate normalisation on each plate's own controls;
hits and EC50 across plates (hand-made tables with hand-worked answers); filters."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from neurorg_core.campaign_results import (
    CampaignFilter,
    ec50_across_plates,
    hit_matrix,
    hits_across_plates,
    load_campaign_results,
    summarise_campaign,
)
from neurorg_core.errors import NeuroRGError
from neurorg_core.fitcheck import FitCheck, ModelFit
from neurorg_core.schema import (
    BATCH, COMPOUND, CONVERGED, CROP, DOSE, EC50, EC50_FOLD_RANGE, EC50_GEOMEAN, EC50_LOG10_SD, EC50_MAX,
    EC50_MIN, FIELD, FIELD_HASH, HIT, HIT_DOSES, HIT_PLATES, HITS_PROVISIONAL, INFLAMMATION_SCORE, MEAN_CONTROL,
    MEAN_DISEASE, MEMBER, MODEL_FIT, N_PLATES_FIT, N_PLATES_HIT, N_PLATES_TESTED, PLATE, PLATE_MAP_COLUMNS,
    PROB_COLUMNS, RESCUE_PCT, ROLE, SSMD, TRUE_SEVERITY, WELL, Z_PRIME,
)
from neurorg_core.scoring import score_wells
from neurorg_core.store import CampaignEntry, PlateRecord, ResultStore, RunRecord
from neurorg_core.synth import build_plate_table


def test_ec50_across_plates_geometric_mean_and_spread() -> None:
    fits = pd.DataFrame({PLATE: ["a", "b", "c", "d", "a", "b"], COMPOUND: ["X", "X", "X", "X", "Y", "Y"],
                         EC50: [1.0, 10.0, 100.0, np.nan, 2.0, np.nan], CONVERGED: [True, True, True, False, True, False]})
    out = ec50_across_plates(fits).set_index(COMPOUND)
    x, y = out.loc["X"], out.loc["Y"]
    assert (x[N_PLATES_TESTED], x[N_PLATES_FIT]) == (4, 3)
    assert x[EC50_GEOMEAN] == pytest.approx(10.0) and (x[EC50_MIN], x[EC50_MAX]) == (pytest.approx(1), pytest.approx(100))
    assert x[EC50_LOG10_SD] == pytest.approx(1.0)          # log10 EC50 = 0, 1, 2: SD (ddof 1) = 1
    assert x[EC50_FOLD_RANGE] == pytest.approx(100.0)
    assert (y[N_PLATES_FIT], y[EC50_GEOMEAN]) == (1, pytest.approx(2.0)) and np.isnan(y[EC50_LOG10_SD])


def test_hits_across_plates_counts_plates_and_doses() -> None:
    t = pd.DataFrame({PLATE: ["p2", "p2", "p1", "p1", "p3", "p1"], COMPOUND: ["X", "X", "X", "X", "X", "Y"],
                      DOSE: [1.0, 10.0, 1.0, 10.0, 10.0, 5.0], HIT: [False, True, True, True, False, False]})
    out = hits_across_plates(t, ["p2", "p1", "p3"]).set_index(COMPOUND)
    assert out.loc["X", N_PLATES_TESTED] == 3 and out.loc["X", N_PLATES_HIT] == 2
    assert out.loc["X", HIT_DOSES] == "1; 10" and out.loc["X", HIT_PLATES] == "p2; p1"   # acquisition order
    assert (out.loc["Y", N_PLATES_TESTED], out.loc["Y", N_PLATES_HIT], out.loc["Y", HIT_DOSES]) == (1, 0, "")
    m = hit_matrix(t, ["p2", "p1", "p3"])
    assert m.columns.tolist() == ["p2", "p1", "p3"]
    assert m.loc["X"].tolist() == [1.0, 2.0, 0.0] and m.loc["Y", "p1"] == 0 and np.isnan(m.loc["Y", "p2"])


# --- a store with two plates of one layout, the second with a batch effect -------------------------------

SHIFT = 0.3
"""Plate "late" sees every well's probabilities mixed 30 % toward the 20 uM class: its inflammation
score is 0.7 x the first plate's + 1.5, an affine batch effect its own controls remove."""


def _well_scores(shift: float) -> pd.DataFrame:
    table = build_plate_table(5, 1, 96, "screen")
    table = table[table[ROLE] != "empty"]
    rng = np.random.default_rng(0)
    probs = np.zeros((len(table), len(PROB_COLUMNS)))
    severity = table[TRUE_SEVERITY].fillna(0).to_numpy() + rng.normal(0, 0.03, len(table))
    probs[:, 0] = 1 - np.clip(severity, 0, 1)
    probs[:, -1] = np.clip(severity, 0, 1)
    probs = (1 - shift) * probs + shift * np.eye(len(PROB_COLUMNS))[-1]
    crops = pd.DataFrame(probs, columns=list(PROB_COLUMNS))
    crops.insert(0, MEMBER, 1)
    crops.insert(0, CROP, 0)
    crops.insert(0, FIELD, 1)
    crops.insert(0, WELL, table[WELL].to_numpy())
    plate_map = table[[c for c in table.columns if c in PLATE_MAP_COLUMNS]]
    return score_wells(crops, plate_map)


def _store_plate(store: ResultStore, name: str, scores: pd.DataFrame, campaign: str, model: str,
                 fit: ModelFit = ModelFit("ok")) -> None:
    scores = scores.assign(**{PLATE: name})
    store.save_run(
        plate=PlateRecord(name, f"/nowhere/{name}", "imagexpress", 96, (64, 64), "uint8", {}),
        wells=scores[list(PLATE_MAP_COLUMNS)],
        fields=pd.DataFrame({WELL: scores[WELL], FIELD: 1, FIELD_HASH: [f"{name}{w}" for w in scores[WELL]]}),
        well_scores=scores, campaign_id=campaign,
        run=RunRecord(run_id=f"run-{name}", plate=name, model_id=model, bundle_card={"synthetic": True},
                      params={"readout": "inflammation_score", "model_fit": fit.as_params()}, code_version="test"))


POOR_FIT = ModelFit("POOR", (FitCheck("mean intensity", 3.0, "0.5-1.5", False, "brighter than the reference"),))
"""The model-fit verdict stored with plate "late"'s run ("early"'s is ok)."""


@pytest.fixture
def two_plates(tmp_path) -> ResultStore:
    store = ResultStore(tmp_path / "c.duckdb")
    store.register_campaign([
        CampaignEntry("c", 1, "late", "/nowhere/late", "m.csv", "m1", "b2", date(2026, 3, 9)),
        CampaignEntry("c", 2, "early", "/nowhere/early", "m.csv", "m1", "b1", date(2026, 3, 1)),
        CampaignEntry("c", 3, "never", "/nowhere/never", "m.csv", "m1", "b1", date(2026, 3, 5)),
    ])
    _store_plate(store, "early", _well_scores(0.0), "c", "m1")
    _store_plate(store, "late", _well_scores(SHIFT), "c", "m1", fit=POOR_FIT)
    store.mark_campaign_plate("c", "never", "failed", message="no images")
    yield store
    store.close()


def test_each_plate_is_normalised_on_its_own_controls(two_plates) -> None:
    summary = summarise_campaign(load_campaign_results(two_plates, "c"))
    qc = summary.plates.set_index(PLATE)
    assert summary.plates[PLATE].tolist() == ["early", "late"]          # acquisition order, not manifest order
    assert summary.not_stored[PLATE].tolist() == ["never"] and "no images" in summary.not_stored["Message"][0]
    # the raw readout differs by the batch effect ...
    assert qc.loc["late", MEAN_CONTROL] == pytest.approx((1 - SHIFT) * qc.loc["early", MEAN_CONTROL] + 5 * SHIFT)
    assert qc.loc["late", MEAN_DISEASE] == pytest.approx((1 - SHIFT) * qc.loc["early", MEAN_DISEASE] + 5 * SHIFT)
    # ... and each plate's own controls remove it: rescue %, Z', SSMD agree well by well
    w = summary.wells.set_index([PLATE, WELL])
    early, late = w.loc["early"], w.loc["late"]
    np.testing.assert_allclose(late[INFLAMMATION_SCORE], (1 - SHIFT) * early[INFLAMMATION_SCORE] + 5 * SHIFT)
    np.testing.assert_allclose(late[RESCUE_PCT], early[RESCUE_PCT], atol=1e-9)
    assert qc.loc["late", Z_PRIME] == pytest.approx(qc.loc["early", Z_PRIME])
    assert qc.loc["late", SSMD] == pytest.approx(qc.loc["early", SSMD])
    # each plate's own model-fit verdict is flagged beside its QC, and makes its hits provisional
    assert (qc.loc["early", MODEL_FIT], qc.loc["late", MODEL_FIT]) == ("ok", "POOR")
    assert qc.loc["early", HITS_PROVISIONAL] == "" and "brighter than the reference" in qc.loc["late", HITS_PROVISIONAL]
    assert (summary.wells.loc[summary.wells[PLATE] == "late", BATCH] == "b2").all()
    # so the hit calls and EC50s agree across the two plates
    hits = summary.hits.set_index(COMPOUND)
    assert set(hits[N_PLATES_TESTED]) == {2} and set(hits[N_PLATES_HIT]) <= {0, 2}
    fitted = summary.ec50[summary.ec50[N_PLATES_FIT] == 2]
    assert len(fitted) > 0 and (fitted[EC50_FOLD_RANGE] < 1.0 + 1e-3).all()
    assert summary.synthetic_model and not summary.synthetic_plates and summary.readouts == ("inflammation_score",)


def test_filters_by_batch_date_and_model(two_plates) -> None:
    res = load_campaign_results(two_plates, "c")
    assert res.batches == ["b1", "b2"] and res.models == ["m1"] and res.dates == (date(2026, 3, 1), date(2026, 3, 9))
    assert summarise_campaign(res, CampaignFilter(batches=("b2",))).plates[PLATE].tolist() == ["late"]
    by_date = summarise_campaign(res, CampaignFilter(date_from=date(2026, 3, 2), date_to=date(2026, 3, 9)))
    assert by_date.plates[PLATE].tolist() == ["late"] and by_date.not_stored[PLATE].tolist() == ["never"]
    none = summarise_campaign(res, CampaignFilter(models=("other",)))
    assert none.plates.empty and none.hits.empty and none.ec50.empty and none.wells.empty
    one = summarise_campaign(res, CampaignFilter(batches=("b1",)))
    assert one.plates[PLATE].tolist() == ["early"] and one.not_stored[PLATE].tolist() == ["never"]
    assert set(one.table("treatments")[PLATE]) == {"early"}
    with pytest.raises(NeuroRGError, match="is not one of plates, wells"):
        one.table("everything")


def test_an_unknown_campaign_names_those_there_are(two_plates) -> None:
    with pytest.raises(NeuroRGError, match="no campaign 'x' in the result store; campaigns: c"):
        load_campaign_results(two_plates, "x")

import numpy as np
import pandas as pd
import pytest

from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import (
    CALLED_CLASS,
    CHANNEL_P_CONTROL,
    CLASS,
    COL,
    COMPOUND,
    CROP,
    DOSE,
    INFLAMMATION_SCORE,
    FIELD,
    MEMBER,
    N_CLASSES,
    N_CROPS,
    P_CONTROL,
    P_CONTROL_SD,
    PLATE,
    PROB_COLUMNS,
    ROLE,
    ROW,
    VOTE_COLUMNS,
    WELL,
)
from neurorg_core.scoring import inflammation_score, score_channels, score_wells, with_inflammation_score


def _rows(well, member, crops, field=1):
    """Crop rows for one well and member; each crop given as its first few class probabilities."""
    rows = []
    for i, p in enumerate(crops):
        full = list(p) + [0.0] * (N_CLASSES - len(p))
        rows.append({WELL: well, FIELD: field, CROP: i, MEMBER: member, **dict(zip(PROB_COLUMNS, full))})
    return rows


def _random_crop_table(rng, wells, n_members, n_fields, n_crops):
    rows = []
    for w in wells:
        for m in range(n_members):
            for f in range(1, n_fields + 1):
                for c in range(n_crops):
                    p = rng.dirichlet(np.full(N_CLASSES, 0.7))
                    rows.append({WELL: w, FIELD: f, CROP: c, MEMBER: m, **dict(zip(PROB_COLUMNS, p))})
    return pd.DataFrame(rows)


def test_hand_worked_well():
    rows = _rows("A01", 0, [(0.6, 0.4), (0.2, 0.8)]) + _rows("A01", 1, [(0.8, 0.2), (0.5, 0.5)])
    out = score_wells(pd.DataFrame(rows), None)
    assert len(out) == 1
    r = out.iloc[0]
    # member means of class 0: 0.4 and 0.65
    assert r[P_CONTROL] == pytest.approx(0.525)
    assert r["P_class1"] == pytest.approx(0.475)
    assert r[P_CONTROL_SD] == pytest.approx(np.std([0.4, 0.65], ddof=1))
    # crop ensemble means: (0.7, 0.3) -> class 0, (0.35, 0.65) -> class 1
    assert r["Vote_class0"] == pytest.approx(0.5) and r["Vote_class1"] == pytest.approx(0.5)
    assert r[CALLED_CLASS] == 0 and r[N_CROPS] == 2
    assert (r[ROW], r[COL]) == (1, 1)
    # expected class = 0 x 0.525 + 1 x 0.475
    assert r[INFLAMMATION_SCORE] == pytest.approx(0.475)


def test_inflammation_score_by_hand_and_derived_for_stored_tables():
    probs = pd.DataFrame([[0.5, 0, 0, 0, 0, 0.5], [0, 0, 0.25, 0.75, 0, 0], [1, 0, 0, 0, 0, 0]],
                         columns=list(PROB_COLUMNS))
    assert inflammation_score(probs).tolist() == pytest.approx([2.5, 2.75, 0.0])
    assert with_inflammation_score(probs.assign(x=1))[INFLAMMATION_SCORE].tolist() == pytest.approx([2.5, 2.75, 0.0])
    with pytest.raises(NeuroRGError, match="P_class3"):
        inflammation_score(probs.drop(columns=["P_class3"]))


def test_votes_and_mean_call_can_disagree_and_single_member_sd_is_zero():
    rows = _rows("B03", 0, [(0.4, 0.6), (0.4, 0.6), (1.0, 0.0)])
    r = score_wells(pd.DataFrame(rows), None).iloc[0]
    assert r[CALLED_CLASS] == 0 and r[P_CONTROL] == pytest.approx(0.6)
    assert r["Vote_class1"] == pytest.approx(2 / 3) and r["Vote_class0"] == pytest.approx(1 / 3)
    assert r[P_CONTROL_SD] == 0.0
    assert (r[ROW], r[COL]) == (2, 3)


def test_matches_brute_force_over_a_random_plate():
    rng = np.random.default_rng(3)
    wells = ["A01", "A02", "A03", "B01", "B02", "B03"]
    crop = _random_crop_table(rng, wells, n_members=4, n_fields=2, n_crops=3)
    crop = crop.sample(frac=1.0, random_state=1)  # row order must not matter
    out = score_wells(crop, None).set_index(WELL)
    assert list(out.index) == wells
    for w in wells:
        sub = crop[crop[WELL] == w]
        p = np.stack([sub[sub[MEMBER] == m].sort_values([FIELD, CROP])[list(PROB_COLUMNS)].to_numpy()
                      for m in range(4)])  # (members, crops, classes)
        member_p0 = p[:, :, 0].mean(axis=1)
        assert out.loc[w, P_CONTROL] == pytest.approx(member_p0.mean())
        assert out.loc[w, P_CONTROL_SD] == pytest.approx(member_p0.std(ddof=1))
        np.testing.assert_allclose(out.loc[w, list(PROB_COLUMNS)].to_numpy(float), p.mean(axis=(0, 1)))
        calls = p.mean(axis=0).argmax(axis=1)
        expected_votes = np.bincount(calls, minlength=N_CLASSES) / calls.size
        np.testing.assert_allclose(out.loc[w, list(VOTE_COLUMNS)].to_numpy(float), expected_votes)
        assert out.loc[w, CALLED_CLASS] == p.mean(axis=(0, 1)).argmax()
        assert out.loc[w, N_CROPS] == 6
    np.testing.assert_allclose(out[list(VOTE_COLUMNS)].sum(axis=1), 1.0)


def test_plate_map_is_left_joined_on_normalised_wells():
    rng = np.random.default_rng(0)
    crop = _random_crop_table(rng, ["a1", "A2", "B01"], n_members=2, n_fields=1, n_crops=2)
    plate_map = pd.DataFrame({
        PLATE: ["P1"] * 3, WELL: ["A01", "r01c02", "C05"], ROW: [9, 9, 9], COL: [9, 9, 9],
        COMPOUND: ["", "cmpd-1", ""], DOSE: [np.nan, 0.5, np.nan], ROLE: ["control", "treatment", "empty"],
    })
    out = score_wells(crop, plate_map)
    assert list(out[WELL]) == ["A01", "A02", "B01"]  # C05 is in the map only: not scored
    assert list(out[ROW]) == [1, 1, 2] and list(out[COL]) == [1, 2, 1]  # recomputed, not the map's 9s
    assert list(out[ROLE].iloc[:2]) == ["control", "treatment"] and pd.isna(out[ROLE].iloc[2])
    assert out[DOSE].iloc[1] == 0.5
    assert list(out.columns[:7]) == [WELL, ROW, COL, PLATE, COMPOUND, DOSE, ROLE]


def test_a_map_holding_every_well_gives_what_pandas_merge_gives():
    """The map's rows are taken by position when it holds every scored well (a run's case): the
    table, dtypes included, is the left join on the well that score_wells made before (#12)."""
    rng = np.random.default_rng(3)
    crop = _random_crop_table(rng, ["B02", "A01", "A02", "B01"], n_members=3, n_fields=2, n_crops=3)
    plate_map = pd.DataFrame({
        PLATE: ["P1"] * 5, WELL: ["b1", "A02", "C05", "r01c01", "B02"], COMPOUND: ["", "cmpd-1", "", "", "cmpd-2"],
        DOSE: [np.nan, 0.5, np.nan, np.nan, 2.0], ROLE: ["disease", "treatment", "empty", "control", "treatment"],
        CLASS: pd.array([4, pd.NA, pd.NA, 0, pd.NA], dtype="Int64"),
    })
    out = score_wells(crop, plate_map)
    bare = score_wells(crop, None)
    pm = plate_map.assign(**{WELL: ["B01", "A02", "C05", "A01", "B02"]})
    want = bare.merge(pm, on=WELL, how="left", validate="one_to_one")
    meta = [c for c in pm.columns if c != WELL]
    want = want[[WELL, ROW, COL, *meta, *[c for c in bare.columns if c not in (WELL, ROW, COL)]]]
    pd.testing.assert_frame_equal(out, want, check_exact=True)
    assert list(out[ROLE]) == ["control", "treatment", "disease", "treatment"]   # A01 A02 B01 B02
    assert str(out[CLASS].dtype) == "Int64"


def _valid_rows():
    return _rows("A01", 0, [(0.5, 0.5), (0.1, 0.9)]) + _rows("A01", 1, [(0.3, 0.7), (0.2, 0.8)])


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (lambda df: df.drop(columns=[MEMBER]), "Model_Member"),
        (lambda df: df.assign(P_class1=df["P_class1"] * 0.8), "summing to"),
        (lambda df: df.assign(P_class0=np.nan), "missing or outside"),
        (lambda df: pd.concat([df, df.iloc[[0]]]), "duplicated"),
        (lambda df: df.iloc[1:], "lack some ensemble members"),
        (lambda df: df.iloc[:0], "no rows"),
        (lambda df: df.assign(**{WELL: "Z99"}), "not a well name|outside"),
    ],
)
def test_bad_crop_tables_raise(corrupt, match):
    with pytest.raises(NeuroRGError, match=match):
        score_wells(corrupt(pd.DataFrame(_valid_rows())), None)


def test_bad_probability_error_names_the_well():
    df = pd.DataFrame(_valid_rows()).assign(P_class1=0.9)
    with pytest.raises(NeuroRGError, match="well A01"):
        score_wells(df, None)


@pytest.mark.parametrize(
    "plate_map,match",
    [
        (pd.DataFrame({"well": ["A01"]}), "lacks column Metadata_Well"),
        (pd.DataFrame({WELL: ["A01", "a1"], ROLE: ["control", "disease"]}), "more than once"),
        (pd.DataFrame({PLATE: ["P1", "P2"], WELL: ["A01", "A01"]}), "2 plates"),
    ],
)
def test_bad_plate_maps_raise(plate_map, match):
    with pytest.raises(NeuroRGError, match=match):
        score_wells(pd.DataFrame(_valid_rows()), plate_map)


def test_score_channels_side_by_side():
    nucleus = pd.DataFrame(_rows("A02", 0, [(0.2, 0.8)]) + _rows("A01", 0, [(0.9, 0.1)]))
    microglia = pd.DataFrame(_rows("A01", 0, [(0.3, 0.7)]) + _rows("A01", 1, [(0.5, 0.5)]))
    out = score_channels({"microglia": microglia, "nucleus": nucleus})
    assert list(out.columns) == [WELL, CHANNEL_P_CONTROL[0], CHANNEL_P_CONTROL[2]]
    assert list(out[WELL]) == ["A01", "A02"]
    assert out[CHANNEL_P_CONTROL[0]].tolist() == pytest.approx([0.9, 0.2])
    assert out[CHANNEL_P_CONTROL[2]].iloc[0] == pytest.approx(0.4)
    assert pd.isna(out[CHANNEL_P_CONTROL[2]].iloc[1])


@pytest.mark.parametrize("given,match", [({}, "no channel models"), ({"dapi": None}, "'dapi' unknown")])
def test_score_channels_rejects_unknown_channels(given, match):
    with pytest.raises(NeuroRGError, match=match):
        score_channels(given)


def test_plurality_well_call_by_hand():
    """Five fields of one well: three called class 2 by small margins, two called class 0 with
    confidence. The mean probability peaks at class 0; the study's plurality says class 2."""
    fields = [(0.30, 0.0, 0.40, 0.30)] * 3 + [(0.95, 0.0, 0.05)] * 2
    rows = [r for f, p in enumerate(fields, start=1) for r in _rows("B02", 1, [p], field=f)]
    # a tie: two fields each for classes 4 and 1 -> the lower class (1), as scoring.aggregate_wells does
    ties = [(0.0, 0.1, 0.0, 0.0, 0.9)] * 2 + [(0.0, 0.6, 0.0, 0.0, 0.4)] * 2
    rows += [r for f, p in enumerate(ties, start=1) for r in _rows("B03", 1, [p], field=f)]
    table = pd.DataFrame(rows)
    mean = score_wells(table, None).set_index(WELL)
    plural = score_wells(table, None, well_call="plurality").set_index(WELL)
    # B02 mean class 0: (3 x 0.30 + 2 x 0.95) / 5 = 0.56 against class 2: (3 x 0.40 + 2 x 0.05) / 5 = 0.26
    assert mean.loc["B02", P_CONTROL] == pytest.approx(0.56)
    assert mean.loc["B02", CALLED_CLASS] == 0 and plural.loc["B02", CALLED_CLASS] == 2
    assert plural.loc["B02", "Vote_class2"] == pytest.approx(0.6) and plural.loc["B02", "Vote_class0"] == pytest.approx(0.4)
    # B03: mean probabilities (0, 0.35, 0, 0, 0.65) -> class 4; votes 2 and 2 -> the lower, class 1
    assert mean.loc["B03", CALLED_CLASS] == 4 and plural.loc["B03", CALLED_CLASS] == 1
    # everything else is the same table
    pd.testing.assert_frame_equal(mean.drop(columns=CALLED_CLASS), plural.drop(columns=CALLED_CLASS))


def test_unknown_well_call_is_refused_with_the_allowed_ones():
    table = pd.DataFrame(_rows("A01", 0, [(0.5, 0.5)]))
    with pytest.raises(NeuroRGError, match="well call 'majority' is not one of mean_probability, plurality"):
        score_wells(table, None, well_call="majority")

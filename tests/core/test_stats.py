import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import (
    BOTTOM,
    CHANNEL,
    CHANNEL_P_CONTROL,
    COL,
    COMPOUND,
    CONVERGED,
    DOSE,
    EC50,
    EC50_CI_HIGH,
    EC50_CI_LOW,
    HILL,
    HIT,
    MEAN,
    N_WELLS,
    P_CONTROL,
    P_MWU,
    P_WELCH,
    PEARSON_R,
    Q_MWU,
    Q_WELCH,
    RESCUE_PCT,
    ROLE,
    ROW,
    SD,
    T_WELCH,
    TOP,
    U_MWU,
    WELL,
)
from neurorg_core.doseresponse import DoseResponseFit, fit_compounds, fit_dose_response
from neurorg_core.schema import FIT_COLUMNS
from neurorg_core.stats import (
    HitRule,
    TREATMENT_COLUMNS,
    add_rescue,
    benjamini_hochberg,
    channel_comparison,
    channel_correlation,
    compare_treatments,
    mcnemar,
    plate_qc,
    rescue_percent,
)


# --- McNemar ---------------------------------------------------------------------------------

def test_mcnemar_reproduces_the_paper():
    out = mcnemar(32, 1)
    assert out["b"] == 32 and out["c"] == 1
    assert out["chi2"] == pytest.approx(29.12, abs=0.005)
    assert out["p"] == pytest.approx(6.80e-8, rel=0.01)


def test_mcnemar_matches_chi2_by_hand_and_is_symmetric():
    out = mcnemar(10, 4)
    assert out["chi2"] == pytest.approx(36 / 14)
    assert out["p"] == pytest.approx(sps.chi2.sf(36 / 14, 1))
    assert mcnemar(4, 10)["chi2"] == pytest.approx(out["chi2"])
    assert mcnemar(5, 5)["p"] == pytest.approx(1.0)


def test_mcnemar_no_discordant_pairs_is_no_difference():
    assert mcnemar(0, 0) == {"chi2": 0.0, "p": 1.0, "b": 0, "c": 0}


@pytest.mark.parametrize("b,c", [(-1, 3), (2.5, 1)])
def test_mcnemar_rejects_bad_counts(b, c):
    with pytest.raises(NeuroRGError, match="discordant"):
        mcnemar(b, c)


# --- rescue ----------------------------------------------------------------------------------

def test_rescue_percent_by_hand():
    assert rescue_percent(0.5, mean_control=0.9, mean_disease=0.1) == pytest.approx(50.0)
    assert isinstance(rescue_percent(0.9, 0.9, 0.1), float)
    np.testing.assert_allclose(rescue_percent(np.array([0.1, 0.9, 1.3, -0.3]), 0.9, 0.1), [0, 100, 150, -50])
    # a metric that falls with rescue (e.g. a disease score) still maps disease -> 0, control -> 100
    assert rescue_percent(0.25, mean_control=0.0, mean_disease=1.0) == pytest.approx(75.0)


def test_rescue_percent_needs_a_window():
    with pytest.raises(NeuroRGError, match="must be finite and differ"):
        rescue_percent(0.5, 0.4, 0.4)
    with pytest.raises(NeuroRGError, match="more than float noise"):
        rescue_percent(0.5, 0.1666667, 0.1666667 + 4e-9)   # float32 noise of an untrained model
    assert rescue_percent(0.5001, 0.5001, 0.5) == pytest.approx(100.0)   # a small real window is kept


def _float_noise_plate(seed=0):
    """A dead assay: every well's P(control) is 1/6 plus float32-sized noise (an untrained model)."""
    df = _grid()
    df[COMPOUND] = np.where(df[ROLE] == "treatment", "CPD-" + (df[ROW] // 2).astype(str), "")
    df[DOSE] = np.where(df[ROLE] == "treatment", 10.0 ** (df[COL] - 4), np.nan)
    df[P_CONTROL] = 1 / 6 + np.random.default_rng(seed).normal(0, 3e-8, len(df))
    return df


def test_float_noise_gives_no_rescue_tests_or_trends():
    import warnings

    wells = _float_noise_plate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # scipy's "catastrophic cancellation" would fail here
        with pytest.raises(NeuroRGError, match="assay window is empty"):
            compare_treatments(wells, metric=P_CONTROL)
        qc = plate_qc(wells, metric=P_CONTROL)
    assert qc.z_prime < 0             # the window is noise: Z' says the plate failed
    assert np.isnan([qc.edge_p_control, qc.edge_p_disease, qc.trend_p_row, qc.trend_p_col]).all()
    assert not qc.edge_flag


def test_add_rescue_puts_controls_at_100_and_disease_at_0():
    wells = pd.DataFrame({ROLE: ["control", "control", "disease", "disease", "treatment", "empty"],
                          P_CONTROL: [0.8, 1.0, 0.1, 0.3, 0.55, 0.0]})
    out = add_rescue(wells, metric=P_CONTROL)
    assert RESCUE_PCT not in wells.columns  # input untouched
    np.testing.assert_allclose(out[RESCUE_PCT], [85.714286, 114.285714, -14.285714, 14.285714, 50.0, -28.571429])
    assert out.loc[out[ROLE] == "control", RESCUE_PCT].mean() == pytest.approx(100.0)
    assert out.loc[out[ROLE] == "disease", RESCUE_PCT].mean() == pytest.approx(0.0)


# --- plate QC ---------------------------------------------------------------------------------

def _grid(n_rows=6, n_cols=8):
    rows, cols = np.meshgrid(np.arange(1, n_rows + 1), np.arange(1, n_cols + 1), indexing="ij")
    df = pd.DataFrame({ROW: rows.ravel(), COL: cols.ravel()})
    df[WELL] = [f"{chr(64 + r)}{c:02d}" for r, c in zip(df[ROW], df[COL])]
    df[ROLE] = np.select([df[COL] <= 2, df[COL] >= n_cols - 1], ["control", "disease"], "treatment")
    return df


def test_plate_qc_by_hand():
    wells = pd.DataFrame({ROLE: ["control"] * 3 + ["disease"] * 3 + ["treatment"],
                          WELL: ["A01", "B01", "C01", "A12", "B12", "C12", "B06"],
                          P_CONTROL: [0.9, 1.0, 0.95, 0.1, 0.0, 0.05, 0.5]})
    qc = plate_qc(wells, metric=P_CONTROL)
    assert (qc.n_control, qc.n_disease) == (3, 3)
    assert qc.mean_control == pytest.approx(0.95) and qc.sd_control == pytest.approx(0.05)
    assert qc.z_prime == pytest.approx(2 / 3)                      # 1 - 3 * 0.1 / 0.9
    assert qc.ssmd == pytest.approx(0.9 / np.sqrt(0.005))          # 12.73
    assert qc.cv_control_pct == pytest.approx(100 * 0.05 / 0.95)
    assert qc.cv_disease_pct == pytest.approx(100.0)


def test_plate_qc_finds_an_edge_effect_and_matches_welch():
    rng = np.random.default_rng(7)
    wells = _grid()
    edge = (wells[ROW].isin([1, 6]) | wells[COL].isin([1, 8])).to_numpy()
    base = np.where(wells[ROLE] == "control", 0.9, np.where(wells[ROLE] == "disease", 0.1, 0.5))
    clean = wells.assign(**{P_CONTROL: base + rng.normal(0, 0.02, len(wells))})
    qc = plate_qc(clean, metric=P_CONTROL)
    assert qc.edge_flag is False
    assert "control: 8 edge vs 4 interior wells" in qc.edge_note

    dimmed = clean.assign(**{P_CONTROL: clean[P_CONTROL] - 0.15 * edge})
    qc = plate_qc(dimmed, metric=P_CONTROL)
    assert qc.edge_flag is True
    is_c = (dimmed[ROLE] == "control").to_numpy()
    ref = sps.ttest_ind(dimmed.loc[is_c & edge, P_CONTROL], dimmed.loc[is_c & ~edge, P_CONTROL], equal_var=False)
    assert qc.edge_p_control == pytest.approx(ref.pvalue)
    assert qc.edge_diff_control == pytest.approx(-0.15, abs=0.03)


def test_plate_qc_row_trend_is_flagged():
    wells = _grid()
    base = np.where(wells[ROLE] == "control", 0.9, np.where(wells[ROLE] == "disease", 0.1, 0.5))
    wells[P_CONTROL] = base + 0.02 * wells[ROW] + np.random.default_rng(1).normal(0, 0.005, len(wells))
    qc = plate_qc(wells, metric=P_CONTROL)
    assert qc.trend_p_row < 1e-4 and qc.edge_flag is True
    assert qc.trend_p_col > 0.01


def test_plate_qc_names_the_missing_role():
    wells = pd.DataFrame({ROLE: ["disease"] * 5 + ["treatment"] * 2, WELL: [f"A{i:02d}" for i in range(1, 8)],
                          P_CONTROL: np.linspace(0, 1, 7)})
    with pytest.raises(NeuroRGError, match=r"control \(needs 2, has 0\).*disease 5, treatment 2"):
        plate_qc(wells, metric=P_CONTROL)
    with pytest.raises(NeuroRGError, match="'Rescue_pct' is not a numeric column"):
        plate_qc(wells, metric=RESCUE_PCT)


# --- treatments ---------------------------------------------------------------------------

def test_benjamini_hochberg_matches_scipy():
    p = np.random.default_rng(0).uniform(0, 0.2, 25) ** 2
    np.testing.assert_allclose(benjamini_hochberg(p), sps.false_discovery_control(p, method="bh"))
    with_nan = np.array([0.01, np.nan, 0.04, 0.03])
    q = benjamini_hochberg(with_nan)
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2, 3]], sps.false_discovery_control([0.01, 0.04, 0.03]))
    assert np.isnan(benjamini_hochberg([np.nan])).all()
    with pytest.raises(NeuroRGError, match="outside"):
        benjamini_hochberg([0.5, 1.2])


def _screen():
    rows = [("control", "", np.nan, v) for v in (0.90, 0.85, 0.95, 0.88)]
    rows += [("disease", "", np.nan, v) for v in (0.10, 0.15, 0.05, 0.12)]
    rows += [("treatment", "CPD-A", 1.0, v) for v in (0.70, 0.75, 0.80)]   # strong rescue
    rows += [("treatment", "CPD-A", 0.1, v) for v in (0.30, 0.35, 0.25)]   # partial
    rows += [("treatment", "CPD-B", 1.0, v) for v in (0.12, 0.08, 0.11)]   # inactive
    rows += [("treatment", "CPD-C", 5.0, v) for v in (0.90,)]               # single well
    rows += [("empty", "", np.nan, 0.0)]
    df = pd.DataFrame(rows, columns=[ROLE, COMPOUND, DOSE, P_CONTROL])
    df[WELL] = [f"{chr(65 + i // 12)}{i % 12 + 1:02d}" for i in range(len(df))]
    return df


def test_compare_treatments_against_scipy():
    wells = _screen()
    out = compare_treatments(wells, metric=P_CONTROL, hits=HitRule(50.0, 0.05))
    assert list(out.columns) == list(TREATMENT_COLUMNS)
    assert list(zip(out[COMPOUND], out[DOSE])) == [("CPD-A", 0.1), ("CPD-A", 1.0), ("CPD-B", 1.0), ("CPD-C", 5.0)]
    dis = wells.loc[wells[ROLE] == "disease", P_CONTROL].to_numpy()
    mc, md = 0.895, 0.105
    p_welch, p_mwu = [], []
    for _, r in out.iterrows():
        v = wells.loc[(wells[COMPOUND] == r[COMPOUND]) & (wells[DOSE] == r[DOSE]), P_CONTROL].to_numpy()
        assert r[N_WELLS] == v.size and r[MEAN] == pytest.approx(v.mean())
        assert r[RESCUE_PCT] == pytest.approx(100 * (v.mean() - md) / (mc - md))
        mw = sps.mannwhitneyu(v, dis, alternative="two-sided")
        assert r[P_MWU] == pytest.approx(mw.pvalue) and r[U_MWU] == pytest.approx(mw.statistic)
        p_mwu.append(mw.pvalue)
        if v.size >= 2:
            tt = sps.ttest_ind(v, dis, equal_var=False)
            assert r[P_WELCH] == pytest.approx(tt.pvalue) and r[T_WELCH] == pytest.approx(tt.statistic)
            assert r[SD] == pytest.approx(v.std(ddof=1))
            p_welch.append(tt.pvalue)
        else:
            assert np.isnan(r[P_WELCH]) and np.isnan(r[Q_WELCH]) and not r[HIT]
    np.testing.assert_allclose(out[Q_WELCH].iloc[:3], sps.false_discovery_control(p_welch))
    np.testing.assert_allclose(out[Q_MWU], sps.false_discovery_control(p_mwu))
    assert out[HIT].tolist() == [False, True, False, False]   # 0.1 uM: ~25 % rescue; CPD-C untestable
    lenient = compare_treatments(wells, metric=P_CONTROL, hits=HitRule(rescue_pct=20.0))
    assert lenient[HIT].tolist() == [True, True, False, False]


def test_compare_treatments_edge_cases():
    wells = _screen()
    only_refs = wells[wells[ROLE] != "treatment"]
    empty = compare_treatments(only_refs, metric=P_CONTROL)
    assert empty.empty and list(empty.columns) == list(TREATMENT_COLUMNS)
    with pytest.raises(NeuroRGError, match=r"disease \(needs 2, has 0\).*control 4, disease 0, treatment 10"):
        compare_treatments(wells[wells[ROLE] != "disease"], metric=P_CONTROL)
    with pytest.raises(NeuroRGError, match="fdr"):
        HitRule(fdr=0.0)
    nameless = wells.copy()
    nameless.loc[nameless[COMPOUND] == "CPD-B", COMPOUND] = ""
    with pytest.raises(NeuroRGError, match="3 treatment well\\(s\\) have no compound"):
        compare_treatments(nameless, metric=P_CONTROL)


# --- dose-response --------------------------------------------------------------------------

DOSES = np.repeat(0.5 * 10 ** (np.arange(-7, 8) / 4), 2)     # 15 doses, quarter-log, 2 wells each


def _ll4(x, bottom, top, ec50, hill):
    return bottom + (top - bottom) / (1 + (x / ec50) ** hill)


@pytest.mark.parametrize("hill", [-1.5, 0.8])
def test_fit_recovers_exact_4pl(hill):
    fit = fit_dose_response(DOSES, _ll4(DOSES, 0.1, 0.8, 0.5, hill))
    assert fit.converged and fit.message == "ok"
    assert fit.ec50_uM == pytest.approx(0.5, rel=1e-4)
    assert fit.hill == pytest.approx(hill, rel=1e-4)
    assert (fit.top, fit.bottom) == pytest.approx((0.8, 0.1), abs=1e-4)
    assert fit.ec50_ci_low_uM == pytest.approx(0.5, rel=1e-4) and fit.ec50_ci_high_uM == pytest.approx(0.5, rel=1e-4)
    assert (fit.n, fit.n_doses) == (30, 15)
    np.testing.assert_allclose(fit.predict([0.05, 5.0]), _ll4(np.array([0.05, 5.0]), 0.1, 0.8, 0.5, hill), atol=1e-4)
    row = fit.as_row()
    assert row[EC50] == fit.ec50_uM and row[CONVERGED] is True


def test_fit_ci_covers_the_truth_on_noisy_data():
    truth = _ll4(DOSES, 0.1, 0.8, 0.5, -1.5)
    covered = 0
    for seed in range(40):
        fit = fit_dose_response(DOSES, truth + np.random.default_rng(seed).normal(0, 0.03, DOSES.size))
        assert fit.converged
        assert fit.ec50_ci_low_uM < fit.ec50_uM < fit.ec50_ci_high_uM
        covered += fit.ec50_ci_low_uM <= 0.5 <= fit.ec50_ci_high_uM
    assert covered >= 34        # nominal 95 %: 38 of 40 expected


def test_flat_and_ill_posed_data_are_not_reported_as_curves():
    rng = np.random.default_rng(2)
    flat = fit_dose_response(DOSES, np.full(DOSES.size, 0.2))
    noise = fit_dose_response(DOSES, 0.2 + rng.normal(0, 0.03, DOSES.size))
    few = fit_dose_response([0.1, 0.1, 1, 1, 10, 10], [0.1, 0.1, 0.5, 0.5, 0.8, 0.8])
    doses = np.repeat(np.logspace(-2, 0, 6), 2)                       # 0.01 .. 1 uM
    beyond = fit_dose_response(doses, _ll4(doses, 0.1, 0.8, 100.0, -1.0))  # only the curve's foot
    below = fit_dose_response(doses, _ll4(doses, 0.1, 0.8, 0.001, 1.0))    # only its tail
    step = fit_dose_response(doses, np.where(doses >= 1, 0.8, 0.1) + np.tile([0.01, -0.01], 6))
    for fit, why in [(flat, "flat response"), (noise, "flat response"), (few, "too few doses"),
                     (beyond, "outside the tested doses"), (below, "outside the tested doses"),
                     (step, "Hill slope reached its limit")]:
        assert not fit.converged and why in fit.message
        assert np.isnan([fit.ec50_uM, fit.ec50_ci_low_uM, fit.hill, fit.top]).all()
        assert np.isnan(fit.predict(1.0))
    assert noise.p_flat > 0.05


def test_fit_rejects_zero_dose():
    with pytest.raises(NeuroRGError, match="dose 0"):
        fit_dose_response([0.0, 0.1, 1, 10], [0.1, 0.2, 0.5, 0.8])


def test_fit_compounds_over_a_well_table():
    rng = np.random.default_rng(5)
    act = pd.DataFrame({COMPOUND: "CPD-ACT", DOSE: DOSES,
                        P_CONTROL: _ll4(DOSES, 0.1, 0.8, 0.5, -1.5) + rng.normal(0, 0.02, DOSES.size)})
    inact = pd.DataFrame({COMPOUND: "CPD-OFF", DOSE: DOSES, P_CONTROL: 0.1 + rng.normal(0, 0.02, DOSES.size)})
    refs = pd.DataFrame({ROLE: ["control", "disease"], COMPOUND: "", DOSE: np.nan, P_CONTROL: [0.9, 0.1]})
    wells = pd.concat([act.assign(**{ROLE: "treatment"}), inact.assign(**{ROLE: "treatment"}), refs])
    out = fit_compounds(wells, metric=P_CONTROL)
    assert list(out.columns) == list(FIT_COLUMNS)
    assert out[COMPOUND].tolist() == ["CPD-ACT", "CPD-OFF"]
    a, o = out.iloc[0], out.iloc[1]
    assert a[CONVERGED] and a[EC50_CI_LOW] <= 0.5 <= a[EC50_CI_HIGH] and a[N_WELLS] == 30
    assert a[HILL] == pytest.approx(-1.5, rel=0.25)
    assert not o[CONVERGED] and np.isnan(o[EC50]) and np.isnan(o[HILL])
    assert fit_compounds(refs, metric=P_CONTROL).empty
    curve = DoseResponseFit.from_row(out.iloc[0].to_dict())
    np.testing.assert_allclose(curve.predict([a[EC50]]), [(a[TOP] + a[BOTTOM]) / 2])  # midpoint at EC50
    assert np.isnan(DoseResponseFit.from_row(out.iloc[1].to_dict()).predict(0.5))


# --- channels ---------------------------------------------------------------------------------

def test_channel_correlation_matches_scipy():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, 50)
    y = 0.6 * x + rng.normal(0, 0.2, 50)
    out = channel_correlation(x, y)
    ref, lin = sps.pearsonr(x, y), sps.linregress(x, y)
    assert out["r"] == pytest.approx(ref.statistic) and out["p"] == pytest.approx(ref.pvalue)
    assert out["slope"] == pytest.approx(lin.slope) and out["intercept"] == pytest.approx(lin.intercept)
    assert out["n"] == 50
    y_gap = y.copy()
    y_gap[:5] = np.nan
    assert channel_correlation(x, y_gap)["r"] == pytest.approx(sps.pearsonr(x[5:], y[5:]).statistic)
    with pytest.raises(NeuroRGError, match="constant"):
        channel_correlation(x, np.ones(50))
    with pytest.raises(NeuroRGError, match="x is constant .*float noise"):   # an untrained model's scores
        channel_correlation(1 / 6 + rng.normal(0, 3e-8, 50), y)
    with pytest.raises(NeuroRGError, match="at least 3"):
        channel_correlation([1, 2], [3, 4])


def test_channel_comparison_one_row_per_channel():
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, 30)
    wells = pd.DataFrame({P_CONTROL: x, CHANNEL_P_CONTROL[2]: x + rng.normal(0, 0.1, 30),
                          CHANNEL_P_CONTROL[0]: rng.uniform(0, 1, 30)})
    out = channel_comparison(wells)
    assert out[CHANNEL].tolist() == ["nucleus", "microglia"]
    assert out[PEARSON_R].iloc[0] == pytest.approx(sps.pearsonr(x, wells[CHANNEL_P_CONTROL[0]]).statistic)
    assert out[PEARSON_R].iloc[1] > 0.9 and out[N_WELLS].tolist() == [30, 30]
    with pytest.raises(NeuroRGError, match="no single-channel columns"):
        channel_comparison(wells[[P_CONTROL]])


def test_default_readout_is_the_inflammation_score_and_ssmd_is_signed_by_the_control_side():
    """Rescue %, QC and hits read the inflammation score unless told otherwise; SSMD is positive
    on a good plate whichever readout (controls score low on one, high on the other)."""
    from neurorg_core.schema import INFLAMMATION_SCORE

    wells = pd.DataFrame({
        WELL: ["A01", "A02", "A03", "B01", "B02", "B03", "C01", "C02", "C03"],
        ROLE: ["control"] * 3 + ["disease"] * 3 + ["treatment"] * 3,
        COMPOUND: [""] * 6 + ["X"] * 3, DOSE: [np.nan] * 6 + [1.0] * 3,
        INFLAMMATION_SCORE: [0.2, 0.3, 0.25, 4.7, 4.8, 4.75, 2.5, 2.6, 2.4],
        P_CONTROL: [0.8, 0.9, 0.85, 0.01, 0.02, 0.015, 0.02, 0.03, 0.01],
    })
    qc_inf, qc_p = plate_qc(wells), plate_qc(wells, metric=P_CONTROL)
    assert qc_inf.metric == INFLAMMATION_SCORE and qc_inf.ssmd > 0 and qc_p.ssmd > 0
    sd = np.sqrt(wells[INFLAMMATION_SCORE][:3].var() + wells[INFLAMMATION_SCORE][3:6].var())
    assert qc_inf.ssmd == pytest.approx((4.75 - 0.25) / sd)
    # halfway back in phenotype: ~50 % on the inflammation score, ~1 % on the saturated P(control)
    r_inf = add_rescue(wells)[RESCUE_PCT].iloc[6:].mean()
    r_p = add_rescue(wells, metric=P_CONTROL)[RESCUE_PCT].iloc[6:].mean()
    assert r_inf == pytest.approx(100 * (4.75 - 2.5) / (4.75 - 0.25))
    assert r_p < 2
    t = compare_treatments(wells)
    assert t[RESCUE_PCT].iloc[0] == pytest.approx(r_inf)

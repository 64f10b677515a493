"""Screening statistics over per-well tables.

Size (~600 lines): the plate's statistics (rescue %, QC, hit tests, channel correlation) share one
set of input checks (``check_metric``, ``check_roles``) and the guards against degenerate data
(``_resolved``, ``_varies``); each function is short and documented, and splitting them by topic
would scatter those checks. Dose-response fits already live apart (``doseresponse.py``).

Pure functions over numpy arrays and pandas DataFrames (the per-well table of
``scoring.score_wells``, with ``Metadata_Role``, ``Metadata_Compound``, ``Metadata_Dose_uM``):

- ``rescue_percent`` / ``add_rescue``: normalised percent inhibition, disease = 0 %, control = 100 %;
- ``plate_qc``: Z', SSMD, CV % of control and disease wells, and an edge-effect check;
- ``compare_treatments``: per (compound, dose) Welch's t and Mann-Whitney U against the disease
  wells, Benjamini-Hochberg q-values across treatments, and hit calls;
- dose-response fits (4PL, EC50) live in ``doseresponse.py``;
- ``channel_correlation`` / ``channel_comparison``: Pearson r between the 3-channel model and each
  single-channel model;
- ``mcnemar``: paired comparison of two classifiers;
- ``role_bands``: mean and SD of the control and disease wells (the bands drawn behind dose plots).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType

import numpy as np
import pandas as pd
from scipy import stats as sps

from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import (
    CHANNEL,
    CHANNEL_P_CONTROL,
    CHANNELS,
    COL,
    COMPOUND,
    DOSE,
    HIT,
    INFLAMMATION_SCORE,
    INTERCEPT,
    MEAN,
    METRIC_CONTROL_SIDE,
    N_WELLS,
    P_CONTROL,
    P_MWU,
    P_PEARSON,
    P_WELCH,
    PEARSON_R,
    Q_MWU,
    Q_WELCH,
    RESCUE_PCT,
    ROLE,
    ROLES,
    ROW,
    SD,
    SLOPE,
    T_WELCH,
    TREATMENT_COLUMNS,
    U_MWU,
    WELL,
)
from neurorg_core.wells import parse_well

log = logging.getLogger(__name__)

EDGE_ALPHA = 0.05
"""Edge/trend tests flag the plate when any Bonferroni-adjusted p falls below this."""
SCORE_RESOLUTION = 1e-6
"""Well scores that differ by no more than this (times max(1, |score|)) are equal: they are means
of float32 softmax outputs, resolved to ~1e-7. A control-disease window or a spread of wells this
small is float noise (e.g. an untrained model), so no rescue % or t-test is computed from it."""


def _resolved(spread: float, scale: float) -> bool:
    """``spread`` is a real difference between scores of magnitude ``scale``, not float noise."""
    return bool(spread > SCORE_RESOLUTION * max(1.0, abs(scale)))


def _varies(values: np.ndarray) -> bool:
    """The values are not all equal to within float noise."""
    return values.size > 0 and _resolved(float(np.ptp(values)), float(np.abs(values).max()))


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Welch's t and two-sided p of ``a`` vs ``b``, or NaN when their values differ only by float
    noise. scipy's precision-loss warning for a group whose own values are equal to float precision
    (e.g. replicate wells of a saturated score) is silenced: that group's variance is ~0 either way,
    and the test stands on the other group's variance and the difference of means."""
    if not _varies(np.concatenate([a, b])):
        return np.nan, np.nan
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        res = sps.ttest_ind(a, b, equal_var=False)
    return float(res.statistic), float(res.pvalue)


# --- validators ----------------------------------------------------------------------------

def check_metric(wells: pd.DataFrame, metric: str) -> None:
    """Raise unless ``metric`` is a numeric column of ``wells`` (the message lists the numeric ones)."""
    numeric = [c for c in wells.columns if pd.api.types.is_numeric_dtype(wells[c])
               and not pd.api.types.is_bool_dtype(wells[c])]
    if metric not in wells.columns or metric not in numeric:
        raise NeuroRGError(
            f"metric {metric!r} is not a numeric column of the well table; "
            f"expected one of {', '.join(map(str, numeric)) or '(none)'}"
        )


QC_ROLES: Mapping[str, int] = MappingProxyType({"control": 2, "disease": 2})
"""Fewest wells per role plate QC needs (Z', SSMD, CVs); rescue % and the treatment tests need no
more, so a plate map short of these has no QC, rescue % or hits."""


def check_roles(wells: pd.DataFrame, required: Mapping[str, int]) -> dict[str, int]:
    """Count wells per role and raise unless each required role has its minimum number of wells.

    Parameters
    ----------
    wells : DataFrame
        Well table with ``Metadata_Role`` (one of control, disease, treatment, empty).
    required : dict
        Role -> fewest wells needed.

    Returns
    -------
    dict
        Role -> number of wells, for every role in ``schema.ROLES``.
    """
    if ROLE not in wells.columns:
        raise NeuroRGError(
            f"well table lacks column {ROLE}; expected roles {', '.join(ROLES)} from the plate map"
        )
    counts = {r: int((wells[ROLE] == r).sum()) for r in ROLES}
    unknown = sorted(set(wells[ROLE].dropna().astype(str)) - set(ROLES))
    if unknown:
        raise NeuroRGError(f"role(s) {', '.join(map(repr, unknown))} unknown; expected one of {', '.join(ROLES)}")
    short = [f"{r} (needs {n}, has {counts[r]})" for r, n in required.items() if counts[r] < n]
    if short:
        have = ", ".join(f"{r} {n}" for r, n in counts.items())
        raise NeuroRGError(f"too few wells of role {'; '.join(short)}; wells per role: {have}")
    return counts


def _values(wells: pd.DataFrame, metric: str, role: str) -> np.ndarray:
    v = wells.loc[wells[ROLE] == role, metric].to_numpy(dtype=np.float64)
    if not np.isfinite(v).all():
        raise NeuroRGError(f"{int((~np.isfinite(v)).sum())} {role} well(s) have no finite {metric}; "
                           "expected a number for every scored well")
    return v


# --- rescue ---------------------------------------------------------------------------------

def _check_window(mean_control: float, mean_disease: float) -> None:
    finite = np.isfinite(mean_control) and np.isfinite(mean_disease)
    if not finite or not _resolved(abs(mean_control - mean_disease), max(abs(mean_control), abs(mean_disease))):
        raise NeuroRGError(
            f"control mean {mean_control!r} and disease mean {mean_disease!r} must be finite and differ "
            f"by more than float noise ({SCORE_RESOLUTION:g}) to express rescue %; the assay window is empty"
        )


def rescue_percent(x: float | np.ndarray, mean_control: float, mean_disease: float) -> float | np.ndarray:
    """Normalised percent inhibition: 100 * (x - mean_disease) / (mean_control - mean_disease).

    Disease wells score 0 %, control wells 100 %; values outside 0..100 are kept (over-rescue or
    worsening).

    Parameters
    ----------
    x : float or array
        Metric value(s) of the wells to express (e.g. P(control), unitless).
    mean_control, mean_disease : float
        Mean metric of the control and of the disease wells.

    Returns
    -------
    float or ndarray
        Rescue in percent; a float for a scalar ``x``, else an array of ``x``'s shape.

    Raises
    ------
    NeuroRGError
        If the two means are not finite or equal within ``SCORE_RESOLUTION`` (no window to
        normalise over).
    """
    _check_window(mean_control, mean_disease)
    out = 100.0 * (np.asarray(x, dtype=np.float64) - mean_disease) / (mean_control - mean_disease)
    return float(out) if out.ndim == 0 else out


def add_rescue(wells: pd.DataFrame, metric: str = INFLAMMATION_SCORE) -> pd.DataFrame:
    """Copy of ``wells`` with ``Rescue_pct`` for every well, from the plate's control and disease means.

    Raises
    ------
    NeuroRGError
        If the plate has no control or no disease wells, or their means are equal.
    """
    check_metric(wells, metric)
    check_roles(wells, {"control": 1, "disease": 1})
    mc, md = _values(wells, metric, "control").mean(), _values(wells, metric, "disease").mean()
    out = wells.copy()
    out[RESCUE_PCT] = rescue_percent(out[metric].to_numpy(dtype=np.float64), mc, md)
    return out


# --- plate quality ----------------------------------------------------------------------------

def _edge_mask(wells: pd.DataFrame) -> np.ndarray:
    """True for wells on the outer ring of the imaged area (the plate edge on a whole plate)."""
    if ROW in wells.columns and COL in wells.columns:
        rows, cols = wells[ROW].to_numpy(int), wells[COL].to_numpy(int)
    elif WELL in wells.columns:
        rc = np.array([parse_well(w) for w in wells[WELL]])
        rows, cols = rc[:, 0], rc[:, 1]
    else:
        raise NeuroRGError(f"well table lacks {ROW}/{COL} and {WELL}; expected well positions for the edge check")
    return (rows == rows.min()) | (rows == rows.max()) | (cols == cols.min()) | (cols == cols.max())


@dataclass(frozen=True)
class PlateQC:
    """Plate quality between the control and the disease wells of one readout (``plate_qc``).

    ``z_prime`` = 1 - 3 (sd_c + sd_d) / |mean_c - mean_d|; ``ssmd`` signed so that controls on the
    control side are positive; ``cv_*_pct`` = 100 sd / |mean|; ``edge_p_*`` Welch p of the outer ring
    against the interior wells of the role, ``edge_diff_*`` edge mean - interior mean; ``trend_p_*``
    Spearman p of the deviations against row and column (NaN where not testable); ``edge_flag``
    when any Bonferroni-adjusted p is below ``EDGE_ALPHA``; ``edge_note`` says what was tested.
    """

    metric: str
    n_control: int
    n_disease: int
    mean_control: float
    mean_disease: float
    sd_control: float
    sd_disease: float
    cv_control_pct: float
    cv_disease_pct: float
    z_prime: float
    ssmd: float
    edge_p_control: float
    edge_p_disease: float
    edge_diff_control: float
    edge_diff_disease: float
    trend_p_row: float
    trend_p_col: float
    edge_flag: bool
    edge_note: str

    def as_dict(self) -> dict:
        return asdict(self)


def plate_qc(wells: pd.DataFrame, metric: str = INFLAMMATION_SCORE) -> PlateQC:
    """Plate quality between control and disease wells.

    Z' = 1 - 3 (sd_c + sd_d) / |mean_c - mean_d| (Zhang 1999; > 0.5 excellent, 0..0.5 marginal,
    < 0 the two populations overlap); SSMD = s (mean_c - mean_d) / sqrt(sd_c^2 + sd_d^2), signed by
    the side controls should sit on (s = +1 for P(control), -1 for the inflammation score;
    ``schema.METRIC_CONTROL_SIDE``), so a plate whose controls look like controls is positive on any
    readout; CV % = 100 sd / |mean|. SDs are sample SDs (ddof 1).

    Edge effects: wells on the outer ring of the imaged area (the plate edge when the whole plate
    is imaged, the ring nearest the edge on a partial plate) are compared with interior wells of
    the same role by Welch's t-test, for control and disease wells with >= 2 wells on each side.
    Trends: Spearman correlation of each control/disease well's deviation from its role mean with
    its row and with its column. ``edge_flag`` is set when any Bonferroni-adjusted p of these tests
    is below ``EDGE_ALPHA``.

    Parameters
    ----------
    wells : DataFrame
        Per-well table with ``Metadata_Role``, the metric, and ``Metadata_Row``/``Metadata_Col``
        (or ``Metadata_Well``).
    metric : str
        Numeric column to judge the plate by; the inflammation score (the default readout) by default.

    Returns
    -------
    PlateQC

    Raises
    ------
    NeuroRGError
        Fewer than 2 control or 2 disease wells (the message gives the wells per role), or a
        missing / non-numeric metric.
    """
    check_metric(wells, metric)
    check_roles(wells, QC_ROLES)
    c, d = _values(wells, metric, "control"), _values(wells, metric, "disease")
    mc, md = float(c.mean()), float(d.mean())
    sc, sd = float(c.std(ddof=1)), float(d.std(ddof=1))
    window = abs(mc - md)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_prime = float(1.0 - 3.0 * (sc + sd) / window) if window > 0 else -np.inf
        side = METRIC_CONTROL_SIDE.get(metric, 1)
        ssmd = float(side * np.float64(mc - md) / np.sqrt(sc**2 + sd**2))
        cv_c = float(100.0 * sc / abs(mc)) if mc != 0 else np.nan
        cv_d = float(100.0 * sd / abs(md)) if md != 0 else np.nan

    out = {
        "metric": metric, "n_control": int(c.size), "n_disease": int(d.size),
        "mean_control": mc, "mean_disease": md, "sd_control": sc, "sd_disease": sd,
        "cv_control_pct": cv_c, "cv_disease_pct": cv_d, "z_prime": z_prime, "ssmd": ssmd,
    }
    out.update(_edge_effects(wells, metric))
    log.info("plate QC on %s: Z' %.3f, SSMD %.2f, edge flag %s", metric, z_prime, ssmd, out["edge_flag"])
    return PlateQC(**out)


def _edge_effects(wells: pd.DataFrame, metric: str) -> dict:
    edge = _edge_mask(wells)
    ps: list[float] = []
    notes: list[str] = []
    out: dict = {}
    for role in ("control", "disease"):
        is_role = (wells[ROLE] == role).to_numpy()
        e = wells.loc[is_role & edge, metric].to_numpy(np.float64)
        i = wells.loc[is_role & ~edge, metric].to_numpy(np.float64)
        p, diff = np.nan, np.nan
        if e.size >= 2 and i.size >= 2:
            diff = float(e.mean() - i.mean())
            p = _welch(e, i)[1]
            if np.isfinite(p):
                ps.append(p)
            notes.append(f"{role}: {e.size} edge vs {i.size} interior wells")
        else:
            notes.append(f"{role}: not tested ({e.size} edge, {i.size} interior wells; needs 2 each)")
        out[f"edge_p_{role}"], out[f"edge_diff_{role}"] = p, diff

    qc = wells[wells[ROLE].isin(["control", "disease"])]
    resid = qc[metric].to_numpy(np.float64) - qc.groupby(ROLE)[metric].transform("mean").to_numpy(np.float64)
    if ROW in qc.columns and COL in qc.columns:
        rows, cols = qc[ROW].to_numpy(int), qc[COL].to_numpy(int)
    else:
        rc = np.array([parse_well(w) for w in qc[WELL]])
        rows, cols = rc[:, 0], rc[:, 1]
    scale = float(qc[metric].abs().max()) if len(qc) else 0.0
    for name, pos in (("row", rows), ("col", cols)):
        p = np.nan
        if resid.size >= 4 and np.ptp(pos) > 0 and _resolved(float(np.ptp(resid)), scale):
            p = float(sps.spearmanr(pos, resid).pvalue)
            ps.append(p)
        out[f"trend_p_{name}"] = p
    adjusted = [min(1.0, p * len(ps)) for p in ps]
    out["edge_flag"] = bool(adjusted and min(adjusted) < EDGE_ALPHA)
    out["edge_note"] = "; ".join(notes) + f"; {len(ps)} test(s), Bonferroni at {EDGE_ALPHA}"
    return out


# --- treatments vs disease ----------------------------------------------------------------

def benjamini_hochberg(p: np.ndarray | list[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order.

    q_(i) = min over j >= i of p_(j) * m / j for the sorted p-values, capped at 1. NaN p-values
    (untestable treatments) are left out of m and stay NaN.

    Raises
    ------
    NeuroRGError
        If a p-value lies outside [0, 1].
    """
    p = np.asarray(p, dtype=np.float64)
    finite = np.isfinite(p)
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise NeuroRGError(f"p-values {p[finite & ((p < 0) | (p > 1))][:5].tolist()} lie outside [0, 1]")
    q = np.full(p.shape, np.nan)
    vals = p[finite]
    m = vals.size
    if m == 0:
        return q
    order = np.argsort(vals)
    scaled = vals[order] * m / np.arange(1, m + 1)
    adj = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    out = np.empty(m)
    out[order] = adj
    q[finite] = out
    return q


@dataclass(frozen=True)
class HitRule:
    """When a treatment (compound, dose) is a hit: the rescue % of its mean is at least
    ``rescue_pct`` and the Benjamini-Hochberg q of Welch's test against the disease wells is at most
    ``fdr``. ``Config.hit_rule`` builds it from ``NEURORG_HIT_RESCUE_PCT`` / ``NEURORG_HIT_FDR``."""

    rescue_pct: float = 50.0
    fdr: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.fdr < 1:
            raise NeuroRGError(f"fdr {self.fdr!r} is outside (0, 1); expected e.g. 0.05")
        if not np.isfinite(self.rescue_pct):
            raise NeuroRGError(f"rescue threshold {self.rescue_pct!r} %; expected a finite percentage")

    def describe(self) -> str:
        return f"rescue >= {self.rescue_pct:g} % and q (Welch, Benjamini-Hochberg) <= {self.fdr:g}"


def compare_treatments(
    wells: pd.DataFrame,
    metric: str = INFLAMMATION_SCORE,
    hits: HitRule = HitRule(),
) -> pd.DataFrame:
    """Test every (compound, dose) against the disease wells and call hits.

    Parameters
    ----------
    wells : DataFrame
        Per-well table with ``Metadata_Role``, ``Metadata_Compound``, ``Metadata_Dose_uM`` (uM)
        and the metric.
    metric : str
        Numeric column compared; the inflammation score (the default readout) by default.
    hits : HitRule
        When a treatment is a hit (rescue % and false discovery rate).

    Returns
    -------
    DataFrame
        One row per (compound, dose), sorted by compound then dose, columns ``TREATMENT_COLUMNS``:
        n wells, mean and SD of the metric, rescue % of the mean, Welch's t and two-sided p,
        Mann-Whitney U and two-sided p (treatment vs disease wells), BH q of each test across all
        treatments, and ``Hit`` by ``hits`` (rescue >= threshold and q_welch <= fdr). A treatment with a
        single well has no Welch p (NaN, left out of the BH family) and is never a hit. No
        treatment wells: an empty table with these columns.

    Raises
    ------
    NeuroRGError
        No control wells, fewer than 2 disease wells, treatment wells without a compound, or
        options out of range.
    """
    check_metric(wells, metric)
    check_roles(wells, {"control": 1, "disease": 2})
    for col in (COMPOUND, DOSE):
        if col not in wells.columns:
            raise NeuroRGError(f"well table lacks column {col}; expected it from the plate map")
    ctrl, dis = _values(wells, metric, "control"), _values(wells, metric, "disease")
    mc, md = float(ctrl.mean()), float(dis.mean())
    _check_window(mc, md)   # before any test: rescue % and hits need a window
    treat = wells[wells[ROLE] == "treatment"]
    no_cpd = treat[COMPOUND].isna() | (treat[COMPOUND].astype(str).str.strip() == "")
    if no_cpd.any():
        where = treat.loc[no_cpd, WELL].iloc[0] if WELL in treat.columns else None
        raise NeuroRGError(f"{int(no_cpd.sum())} treatment well(s) have no compound; expected a name",
                           well=where)
    if treat.empty:
        log.info("no treatment wells: nothing to compare")
        return pd.DataFrame({c: pd.Series(dtype=float) for c in TREATMENT_COLUMNS})

    rows = []
    for (cpd, dose), grp in treat.groupby([COMPOUND, DOSE], sort=True, dropna=False):
        v = grp[metric].to_numpy(np.float64)
        if not np.isfinite(v).all():
            raise NeuroRGError(f"treatment {cpd} at {dose} uM has wells without a finite {metric}")
        t, p_t = _welch(v, dis) if v.size >= 2 else (np.nan, np.nan)
        mw = sps.mannwhitneyu(v, dis, alternative="two-sided")
        rows.append({
            COMPOUND: cpd, DOSE: float(dose), N_WELLS: int(v.size), MEAN: float(v.mean()),
            SD: float(v.std(ddof=1)) if v.size >= 2 else np.nan,
            RESCUE_PCT: rescue_percent(float(v.mean()), mc, md),
            T_WELCH: t, P_WELCH: p_t, U_MWU: float(mw.statistic), P_MWU: float(mw.pvalue),
        })
    out = pd.DataFrame(rows)
    out[Q_WELCH] = benjamini_hochberg(out[P_WELCH].to_numpy())
    out[Q_MWU] = benjamini_hochberg(out[P_MWU].to_numpy())
    out[HIT] = (out[RESCUE_PCT] >= hits.rescue_pct) & (out[Q_WELCH] <= hits.fdr)
    log.info("compared %d treatments; %d hits", len(out), int(out[HIT].sum()))
    return out[list(TREATMENT_COLUMNS)]


# --- channel models ---------------------------------------------------------------------------

def channel_correlation(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> dict:
    """Pearson correlation and least-squares line of y on x.

    Pairs where either value is missing are left out (``n`` counts the pairs used).

    Returns
    -------
    dict
        ``r``, ``p`` (two-sided), ``n``, ``slope``, ``intercept``.

    Raises
    ------
    NeuroRGError
        Different lengths, fewer than 3 complete pairs, or an x or y constant to within
        ``SCORE_RESOLUTION`` (r undefined, or computed from float noise).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size != y.size:
        raise NeuroRGError(f"{x.size} x values and {y.size} y values; expected pairs")
    ok = np.isfinite(x) & np.isfinite(y)
    if (~ok).any():
        log.info("correlation: %d incomplete pair(s) left out", int((~ok).sum()))
    x, y = x[ok], y[ok]
    if x.size < 3:
        raise NeuroRGError(f"{x.size} complete pair(s); a correlation needs at least 3")
    for name, v in (("x", x), ("y", y)):
        if not _varies(v):
            raise NeuroRGError(f"{name} is constant ({v[0]:g}, to within float noise {SCORE_RESOLUTION:g}); "
                               "the correlation is undefined")
    r = sps.pearsonr(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    return {"r": float(r.statistic), "p": float(r.pvalue), "n": int(x.size),
            "slope": float(slope), "intercept": float(intercept)}


def channel_comparison(wells: pd.DataFrame, reference: str = P_CONTROL) -> pd.DataFrame:
    """Correlate each single-channel model's P(control) with the reference model's, per well.

    Parameters
    ----------
    wells : DataFrame
        Per-well table with ``reference`` (x, the 3-channel model) and one or more
        ``P_control_<channel>`` columns (y; from ``scoring.score_channels``).
    reference : str
        Column used as x.

    Returns
    -------
    DataFrame
        One row per channel present, in CHANNELS order: ``Channel``, ``N_wells``, ``Pearson_r``,
        ``P_pearson``, ``Slope``, ``Intercept``.

    Raises
    ------
    NeuroRGError
        No ``P_control_<channel>`` column, or a correlation that cannot be computed.
    """
    check_metric(wells, reference)
    present = [(ch, col) for ch, col in zip(CHANNELS, CHANNEL_P_CONTROL) if col in wells.columns]
    if not present:
        raise NeuroRGError(f"no single-channel columns in the well table; expected some of "
                           f"{', '.join(CHANNEL_P_CONTROL)}")
    rows = []
    for ch, col in present:
        c = channel_correlation(wells[reference].to_numpy(np.float64), wells[col].to_numpy(np.float64))
        rows.append({CHANNEL: ch, N_WELLS: c["n"], PEARSON_R: c["r"], P_PEARSON: c["p"],
                     SLOPE: c["slope"], INTERCEPT: c["intercept"]})
    return pd.DataFrame(rows)


# --- paired classifiers --------------------------------------------------------------------

def mcnemar(b: int, c: int) -> dict:
    """McNemar's test for two classifiers scored on the same items.

    Chi-square without continuity correction, 1 degree of freedom:
    chi2 = (b - c)^2 / (b + c). This is the form the study reports (32 vs 1 discordant pairs
    -> chi2 = 29.12, p = 6.80e-8).

    Parameters
    ----------
    b : int
        Items the first classifier got right and the second got wrong (count).
    c : int
        Items the first classifier got wrong and the second got right (count).

    Returns
    -------
    dict
        ``chi2`` (float), ``p`` (two-sided, float), ``b`` and ``c`` (ints). With no discordant
        pairs (b = c = 0) the two classifiers never disagree: chi2 is 0 and p is 1.

    Raises
    ------
    NeuroRGError
        If a count is negative or not a whole number.
    """
    counts = {}
    for name, value in (("b", b), ("c", c)):
        if isinstance(value, bool) or not float(value).is_integer() or value < 0:
            raise NeuroRGError(
                f"McNemar count {name} = {value!r}; expected a whole number of discordant pairs >= 0"
            )
        counts[name] = int(value)
    b_, c_ = counts["b"], counts["c"]
    if b_ + c_ == 0:
        log.info("McNemar: no discordant pairs; chi2 = 0, p = 1")
        return {"chi2": 0.0, "p": 1.0, "b": 0, "c": 0}
    chi2 = (b_ - c_) ** 2 / (b_ + c_)
    p = float(sps.chi2.sf(chi2, df=1))
    return {"chi2": float(chi2), "p": p, "b": b_, "c": c_}


def role_bands(wells: pd.DataFrame, metric: str) -> dict[str, tuple[float, float]]:
    """Mean and SD (ddof 1) of ``metric`` over the control and the disease wells (roles absent or
    with fewer than two wells are left out)."""
    bands = {}
    for role in ("control", "disease"):
        values = wells.loc[wells[ROLE] == role, metric].dropna().to_numpy(np.float64) \
            if metric in wells.columns else np.zeros(0)
        if len(values) >= 2:
            bands[role] = (float(values.mean()), float(values.std(ddof=1)))
    return bands

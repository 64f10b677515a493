"""Dose-response: the 4-parameter logistic (drc LL.4) fit behind every EC50 on screen.

- ``fit_dose_response(dose_uM, response) -> DoseResponseFit``: EC50 with its 95 % CI (profile of the
  log-EC50), Hill slope, asymptotes, and an F-test against a flat line (``p_flat``);
- ``fit_compounds(wells, metric)``: one fit per compound over its treatment wells (``schema.FIT_COLUMNS``);
  ``results.load_plate_results`` runs it on the run's readout.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import optimize, special
from scipy import stats as sps

from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import (
    BOTTOM,
    COMPOUND,
    CONVERGED,
    DOSE,
    EC50,
    EC50_CI_HIGH,
    EC50_CI_LOW,
    FIT_COLUMNS,
    FIT_MESSAGE,
    HILL,
    INFLAMMATION_SCORE,
    N_DOSES,
    N_WELLS,
    P_FLAT,
    ROLE,
    TOP,
)
from neurorg_core.stats import check_metric, check_roles

log = logging.getLogger(__name__)

MIN_DOSES = 4
"""Fewest distinct doses a 4-parameter logistic is fitted to."""
HILL_LIMIT = 10.0
"""|Hill slope| bound of the 4PL fit; a fit that reaches it is reported as a step, not a curve."""
EC50_MARGIN_DECADES = 1.0
"""How far (log10 units) beyond the tested doses the EC50 may lie before it is called out of range."""
ASYMPTOTE_MARGIN = 1.0
"""Top and bottom are bounded to the observed response range widened by this many ranges."""
MAX_NFEV = 300
"""Function evaluations allowed per 4PL start (a curve needs tens; noise can wander for thousands)."""
FLAT_ALPHA = 0.05
"""A 4PL fit no better than a flat line (F-test p above this) is reported as an inactive compound."""

# --- dose-response ----------------------------------------------------------------------------

@dataclass(frozen=True)
class DoseResponseFit:
    """A 4-parameter logistic fit, f(x) = bottom + (top - bottom) / (1 + (x / EC50)^hill).

    The drc LL.4 form: ``top`` >= ``bottom`` are the asymptotes and ``hill`` carries the
    direction, negative when the response rises with dose (a rescue of P(control)) and positive
    when it falls. When ``converged`` is False the parameters are NaN and ``message`` says why.
    """

    ec50_uM: float
    ec50_ci_low_uM: float     # 95 % CI, t-distribution with n - 4 df on log EC50
    ec50_ci_high_uM: float
    hill: float
    top: float
    bottom: float
    p_flat: float             # extra-sum-of-squares F-test of the fit against a flat line
    n: int                    # observations (wells)
    n_doses: int              # distinct doses
    converged: bool
    message: str

    def predict(self, dose_uM: float | np.ndarray) -> np.ndarray:
        """The fitted response at ``dose_uM`` (uM, > 0); NaN when the fit did not converge."""
        x = np.asarray(dose_uM, dtype=np.float64)
        if not self.converged:
            return np.full(x.shape, np.nan)
        return _ll4(x, self.bottom, self.top, np.log(self.ec50_uM), self.hill)

    def as_row(self) -> dict:
        """The fit as a table row keyed by schema column names."""
        d = asdict(self)
        return {EC50: d["ec50_uM"], EC50_CI_LOW: d["ec50_ci_low_uM"], EC50_CI_HIGH: d["ec50_ci_high_uM"],
                HILL: d["hill"], TOP: d["top"], BOTTOM: d["bottom"], P_FLAT: d["p_flat"],
                N_WELLS: d["n"], N_DOSES: d["n_doses"], CONVERGED: d["converged"], FIT_MESSAGE: d["message"]}

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> DoseResponseFit:
        """Rebuild a fit from a ``fit_compounds`` row (e.g. to draw its curve with ``predict``)."""
        missing = [c for c in FIT_COLUMNS if c != COMPOUND and c not in row]
        if missing:
            raise NeuroRGError(f"fit row lacks {', '.join(missing)}; expected a row of fit_compounds")
        return cls(
            ec50_uM=float(row[EC50]), ec50_ci_low_uM=float(row[EC50_CI_LOW]),
            ec50_ci_high_uM=float(row[EC50_CI_HIGH]), hill=float(row[HILL]), top=float(row[TOP]),
            bottom=float(row[BOTTOM]), p_flat=float(row[P_FLAT]), n=int(row[N_WELLS]),
            n_doses=int(row[N_DOSES]), converged=bool(row[CONVERGED]), message=str(row[FIT_MESSAGE]),
        )


def _ll4(x: np.ndarray, bottom: float, top: float, log_ec50: float, hill: float) -> np.ndarray:
    """LL.4 on natural-log EC50; 1 / (1 + (x/EC50)^h) written as expit(-h (ln x - ln EC50))."""
    return bottom + (top - bottom) * special.expit(-hill * (np.log(x) - log_ec50))


def _grid_start(lx: np.ndarray, y: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Best (bottom, top, ln EC50, hill) on a grid of ln EC50 x hill; asymptotes by linear least squares.

    For fixed EC50 and hill the 4PL is linear in (bottom, top), so a coarse grid over the two
    nonlinear parameters finds the basin of the global optimum cheaply; curve_fit then refines it.
    """
    le = np.linspace(lo, hi, 41)
    hills = np.array([-8, -4, -2, -1.4, -1, -0.7, -0.4, 0.4, 0.7, 1, 1.4, 2, 4, 8], dtype=np.float64)
    z = special.expit(-hills[None, :, None] * (lx[None, None, :] - le[:, None, None]))  # (E, H, n)
    a = 1.0 - z                                    # f = bottom * (1 - z) + top * z
    saa, szz, saz = (a * a).sum(-1), (z * z).sum(-1), (a * z).sum(-1)
    say, szy = (a * y).sum(-1), (z * y).sum(-1)
    det = saa * szz - saz**2
    with np.errstate(divide="ignore", invalid="ignore"):
        bottom = (szz * say - saz * szy) / det
        top = (saa * szy - saz * say) / det
        sse = ((y - bottom[..., None] * a - top[..., None] * z) ** 2).sum(-1)
    sse = np.where(np.isfinite(sse) & (np.abs(det) > 1e-12), sse, np.inf)
    i, j = np.unravel_index(np.argmin(sse), sse.shape)
    return np.array([bottom[i, j], top[i, j], le[i], hills[j]], dtype=np.float64)


def _p_flat(y: np.ndarray, sse: float) -> float:
    """Extra-sum-of-squares F-test p of a 4PL with residual sum ``sse`` against a flat line (NaN if n <= 4)."""
    df_resid = y.size - 4
    if df_resid < 1:
        return float("nan")
    sst = float(np.sum((y - y.mean()) ** 2))
    f = ((sst - sse) / 3.0) / (sse / df_resid) if sse > 0 else np.inf
    return float(sps.f.sf(f, 3, df_resid))


def _failed(n: int, n_doses: int, message: str, p_flat: float = np.nan) -> DoseResponseFit:
    log.info("dose-response not fitted: %s", message)
    nan = float("nan")
    return DoseResponseFit(nan, nan, nan, nan, nan, nan, p_flat, n, n_doses, False, message)


def fit_dose_response(dose_uM: np.ndarray | list[float], response: np.ndarray | list[float]) -> DoseResponseFit:
    """Fit a 4-parameter logistic (drc LL.4) to dose-response data.

    The fit is least squares (``scipy.optimize.curve_fit``, trust-region with bounds) on
    (bottom, top, ln EC50, hill), started from the best point of a grid over ln EC50 and hill.
    ln EC50 is bounded to ``EC50_MARGIN_DECADES`` beyond the tested doses, |hill| to
    ``HILL_LIMIT``, and top and bottom to the observed response range widened by
    ``ASYMPTOTE_MARGIN`` ranges. The 95 % CI of EC50 is exp(ln EC50 +/- t(0.975, n - 4) * se), se from the
    covariance of ln EC50.

    Reported as not converged (parameters NaN, ``message`` says why): fewer than ``MIN_DOSES``
    distinct doses; a flat response (no spread, or the fit is no better than a flat line by the
    extra-sum-of-squares F-test, p > ``FLAT_ALPHA``: an inactive compound); the optimiser failing;
    the Hill slope at its bound (a step between two doses); an EC50 outside the tested doses (a
    partial curve, whose EC50 would be an extrapolation); an EC50 whose CI cannot be estimated.

    Parameters
    ----------
    dose_uM : array
        Dose of each observation, uM, > 0 (a 0 dose has no place on the log axis).
    response : array
        Response of each observation (e.g. P(control) per well), same length.

    Returns
    -------
    DoseResponseFit

    Raises
    ------
    NeuroRGError
        If the arrays differ in length, are empty, hold non-finite values or a dose <= 0.
    """
    x = np.asarray(dose_uM, dtype=np.float64).ravel()
    y = np.asarray(response, dtype=np.float64).ravel()
    if x.size != y.size or x.size == 0:
        raise NeuroRGError(f"{x.size} doses and {y.size} responses; expected the same number, at least one")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise NeuroRGError("doses and responses must all be finite numbers; found NaN or inf")
    if (x <= 0).any():
        raise NeuroRGError(
            f"dose {x[x <= 0][0]!r} uM; expected doses > 0 (a 4PL on log dose cannot use dose 0: "
            "fit the treatment doses only)"
        )
    n, n_doses = int(x.size), int(np.unique(x).size)
    if n_doses < MIN_DOSES:
        return _failed(n, n_doses, f"too few doses: {n_doses} distinct, a 4PL needs >= {MIN_DOSES}")
    scale = max(float(np.abs(y).max()), 1e-12)
    if np.ptp(y) <= 1e-9 * scale:
        return _failed(n, n_doses, "flat response: every observation is the same; inactive", p_flat=1.0)

    lx = np.log(x)
    lo, hi = lx.min() - EC50_MARGIN_DECADES * np.log(10), lx.max() + EC50_MARGIN_DECADES * np.log(10)
    span = float(np.ptp(y))
    y_lo, y_hi = float(y.min()) - ASYMPTOTE_MARGIN * span, float(y.max()) + ASYMPTOTE_MARGIN * span
    bounds = ([y_lo, y_lo, lo, -HILL_LIMIT], [y_hi, y_hi, hi, HILL_LIMIT])
    p0 = np.clip(_grid_start(lx, y, lo, hi), bounds[0], bounds[1])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            popt, pcov = optimize.curve_fit(_ll4, x, y, p0=p0, bounds=bounds, method="trf", max_nfev=MAX_NFEV)
    except (RuntimeError, ValueError) as exc:  # curve_fit: no convergence / bad numbers
        p_grid = _p_flat(y, float(np.sum((y - _ll4(x, *p0)) ** 2)))
        if p_grid > FLAT_ALPHA:  # the best grid curve is no better than a flat line either
            return _failed(n, n_doses, f"flat response: no 4PL is better than a flat line "
                                       f"(F-test p = {p_grid:.3g}); inactive", p_flat=p_grid)
        return _failed(n, n_doses, f"the optimiser did not converge ({exc})", p_flat=p_grid)
    sse = float(np.sum((y - _ll4(x, *popt)) ** 2))
    bottom, top, log_ec50, hill = (float(v) for v in popt)
    if top < bottom:  # same curve: swap the asymptotes and flip the slope (drc: top is the upper one)
        bottom, top, hill = top, bottom, -hill

    df_resid = n - 4
    p_flat = _p_flat(y, sse)
    if df_resid >= 1:
        if p_flat > FLAT_ALPHA:
            return _failed(n, n_doses, f"flat response: the 4PL is no better than a flat line "
                                       f"(F-test p = {p_flat:.3g}); inactive", p_flat=p_flat)
    if abs(hill) >= 0.99 * HILL_LIMIT:
        return _failed(n, n_doses, f"Hill slope reached its limit +/-{HILL_LIMIT:g}: a step between two "
                                   "doses, EC50 not resolved", p_flat=p_flat)
    if not x.min() <= np.exp(log_ec50) <= x.max():
        return _failed(n, n_doses, f"EC50 {np.exp(log_ec50):.3g} uM lies outside the tested doses "
                                   f"({x.min():g}..{x.max():g} uM): the curve's midpoint is not in the "
                                   "data (a partial curve); not reported", p_flat=p_flat)
    ec50 = float(np.exp(log_ec50))
    if df_resid < 1:
        nan = float("nan")
        return DoseResponseFit(ec50, nan, nan, hill, top, bottom, p_flat, n, n_doses, True,
                               "fitted exactly (n = 4): no residual degrees of freedom, no CI")
    se = float(np.sqrt(pcov[2, 2])) if np.isfinite(pcov[2, 2]) and pcov[2, 2] >= 0 else np.nan
    if not np.isfinite(se):
        return _failed(n, n_doses, "the EC50's uncertainty could not be estimated (parameters not "
                                   "identifiable from these doses)", p_flat=p_flat)
    t = float(sps.t.ppf(0.975, df_resid))
    with np.errstate(over="ignore"):
        lo_ci, hi_ci = float(np.exp(log_ec50 - t * se)), float(np.exp(log_ec50 + t * se))
    if not (np.isfinite(hi_ci) and lo_ci > 0):
        return _failed(n, n_doses, f"EC50 not resolved: its 95 % CI is unbounded (se of ln EC50 {se:.3g})",
                       p_flat=p_flat)
    return DoseResponseFit(ec50, lo_ci, hi_ci, hill, top, bottom, p_flat, n, n_doses, True, "ok")


def fit_compounds(wells: pd.DataFrame, metric: str = INFLAMMATION_SCORE) -> pd.DataFrame:
    """Fit a 4PL to each compound's treatment wells (one observation per well).

    Only treatment wells are fitted: the disease wells (dose 0) have no place on the log-dose
    axis, so the no-effect plateau is estimated from the compound's own low doses.

    Parameters
    ----------
    wells : DataFrame
        Per-well table with ``Metadata_Role``, ``Metadata_Compound``, ``Metadata_Dose_uM`` (uM)
        and the metric.
    metric : str
        Numeric column fitted; the inflammation score (the default readout) by default.

    Returns
    -------
    DataFrame
        One row per compound, sorted by name, columns ``FIT_COLUMNS``; empty when there are no
        treatment wells.

    Raises
    ------
    NeuroRGError
        Missing columns, or a treatment well without a compound, a finite dose > 0 or a metric.
    """
    check_metric(wells, metric)
    check_roles(wells, {})
    for col in (COMPOUND, DOSE):
        if col not in wells.columns:
            raise NeuroRGError(f"well table lacks column {col}; expected it from the plate map")
    treat = wells[wells[ROLE] == "treatment"]
    rows = []
    for cpd, grp in treat.groupby(COMPOUND, sort=True, dropna=False):
        if pd.isna(cpd) or str(cpd).strip() == "":
            raise NeuroRGError(f"{len(grp)} treatment well(s) have no compound; expected a name")
        dose = grp[DOSE].to_numpy(np.float64)
        if not (np.isfinite(dose) & (dose > 0)).all():
            raise NeuroRGError(f"compound {cpd} has treatment wells with dose {dose[~(dose > 0)][:3].tolist()} uM; "
                               "expected finite doses > 0")
        fit = fit_dose_response(dose, grp[metric].to_numpy(np.float64))
        rows.append({COMPOUND: cpd, **fit.as_row()})
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=float) for c in FIT_COLUMNS})
    return pd.DataFrame(rows)[list(FIT_COLUMNS)]

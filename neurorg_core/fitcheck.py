"""The model-fit check: does this plate look, to the model, like the plates it was validated on?

A model scored outside what it was trained on (another magnification, swapped channels, 12-bit
data read as 16-bit, another cell type) still returns probabilities, and a plate's Z' can look
excellent while every call is wrong. Every run therefore compares what the model sees on the plate
with what its card says it saw on reference plates (``card["fit_reference"]``: plates it was not
trained on, scored at its own crop geometry):

``control_called_control``
    Share of the control wells called class 0. A model that sees the plate as it should calls
    its unstimulated wells control.
``window``
    Inflammation score (expected class) of the disease wells minus that of the control wells,
    as a share of the reference window. A model that cannot tell stimulated cells (wrong scale,
    swapped channels) squeezes it; Z' on a squeezed window can still look fine.
``confidence``
    Mean top-class probability of the crops, against the reference's mean for the same mix of
    called classes (a screen has more disease-like wells than a balanced training plate).
``disagreement``
    Share of (member, crop) pairs where a member's call differs from the ensemble's, against the
    reference for the same class mix: members trained on other plates disagree more on images
    unlike any of them.
``disagreement_with_low_confidence``
    Both of the last two leaning the same way at once: members disagree more than usual and the
    crops are less confident than expected, each still inside its own limit (a 12-well plate at
    the wrong scale can look like that).
``intensity_<channel>``
    Mean and SD of each channel's scaled intensities against the training crops' (the model's own
    normalisation): a bit depth or gain far from training shows here first.

Each check has its tolerance below; the verdict is ``POOR`` when any check fails, ``ok`` when all
that could be computed pass, and ``unchecked`` when the card has no reference. The tolerances
were set on a few plates per failure mode (wrong scale, swapped channels, 12-bit data as 16-bit)
and validated on fresh seeds by ``benchmarks/screen_accuracy.py`` (README, science table); the
disagreement limit was reset on every check's measured values over ~80 fresh plates right and at
the wrong scale (``benchmarks/fit_margins.py``, ``benchmarks/results/fit_margins_seeds*.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import (
    CALLED_CLASS,
    CHANNELS,
    CONTROL_CLASS,
    INFLAMMATION_SCORE,
    N_CLASSES,
    ROLE,
)
from neurorg_core.scoring import CropProbs

log = logging.getLogger(__name__)

Verdict = Literal["ok", "POOR", "unchecked"]

MIN_CONTROL_CALLED_CONTROL = 0.5
"""Fewest control wells called class 0, as a share (a model that sees the plate right calls nearly
all of them control; 12-bit data read as 16-bit called none)."""
MIN_WINDOW_SHARE = 0.6
"""Smallest disease - control inflammation-score window, as a share of the reference window
(correct scale: 0.9-1.0; swapped nucleus/microglia: ~0; half the trained scale: 0.35)."""
CONFIDENCE_TOLERANCE = 0.1
"""Largest |mean top-class probability - reference| (correct plates within 0.04)."""
DISAGREEMENT_RANGE = (0.5, 1.3)
"""Allowed ratio of member disagreement to the reference. Measured with the demo ensemble by
``benchmarks/fit_margins.py`` (seeds 9101-9141 and 9201-9216, where the limit was chosen): plates
scored right 0.911-1.076 over 41 plates of 60-96 wells (training plates in 7 geometries, 1x and 2x,
and screens) and 0.790-1.122 over 16 plates of 12 wells; wrong scale (2x plates scored as native:
pixel size unknown, or the native size given) 1.500-1.818 over 17 plates of 60-96 wells and
1.383-1.671 over 8 of 12 wells. The limit was 1.5 until a 60-well plate at 1.458 (seed 8213) and two
12-well plates at 1.383 and 1.455 passed. Held out (seeds 9301-9357, the same plates): right
0.872-1.145 (41 plates) and 0.706-1.198 (16 of 12 wells), none flagged; wrong scale 1.489-1.836
(17), all flagged, and 1.277-1.698 (8 of 12 wells), one missed at 1.277. So on 60-96 wells 1.3 sits
~0.15 above every right plate and ~0.19 below every wrong one; on 12 wells the classes nearly touch
(1.198 / 1.277) and the check is weaker. Channel swaps give 1.28-1.54 (the window catches them);
no right plate came under 0.70."""
JOINT_DISAGREEMENT = 1.2
JOINT_CONFIDENCE_DROP = 0.035
"""POOR also when members disagree at least ``JOINT_DISAGREEMENT`` x the reference *and* the crops'
mean top-class probability is at least ``JOINT_CONFIDENCE_DROP`` below the reference's, together
(check ``disagreement_with_low_confidence``): two signs of unfamiliar images that each stay inside
their own limit. Chosen on the 218 plates of ``benchmarks/results/fit_margins_seeds9101-9401*``:
the 4 wrong-scale plates the single limits let through (at their time) sat at 1.277-1.500 x and
-0.047 to -0.073, the 138 right plates at most 1.198 x and at least -0.029, and none of them beyond
both (the nearest: 1.145 x at -0.026, 1.120 x at -0.029). Chosen before the fresh check (seeds
9501-9572, ``benchmarks/results/fit_margins_seeds9501_small.md``): 72 right 12-well plates at
0.748-1.190 x and -0.038 to +0.034, none flagged (the nearest, seed 9531, 1.168 x at -0.038: a
limit of 1.10 or 1.15 x would have flagged it); 36 wrong-scale plates at 1.438-1.909 x, all POOR by
the single limit already, so none of them tested the joint rule."""
INTENSITY_RANGE = (0.4, 2.5)
"""Allowed ratio of a channel's mean (and SD) intensity to the training crops' (plates' own gain
and offset move it by 0.6-1.4; 12-bit data read as 16-bit by 1/16)."""


@dataclass(frozen=True)
class FitStats:
    """What a model saw on one or more plates: the statistics the fit check compares.

    Attributes
    ----------
    n_wells, n_crops
        Wells and crops behind the statistics.
    control_called_control
        Share of control wells called class 0 (NaN without control wells).
    window
        Mean inflammation score of disease wells minus control wells (NaN without both).
    crop_share_by_class, confidence_by_class, disagreement_by_class
        Per ensemble-called class (0..5): share of crops, their mean top-class probability and
        member disagreement (NaN for a class no crop was called).
    intensity_mean, intensity_sd
        Per channel (CHANNELS order), mean over fields of each field's mean and SD of scaled
        intensities (``preprocess.field_channel_stats``).
    """

    n_wells: int
    n_crops: int
    control_called_control: float
    window: float
    crop_share_by_class: tuple[float, ...]
    confidence_by_class: tuple[float, ...]
    disagreement_by_class: tuple[float, ...]
    intensity_mean: tuple[float, ...]
    intensity_sd: tuple[float, ...]

    @property
    def confidence(self) -> float:
        return _weighted(self.confidence_by_class, self.crop_share_by_class)

    @property
    def disagreement(self) -> float:
        return _weighted(self.disagreement_by_class, self.crop_share_by_class)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able (NaN as None), for the model card."""
        return {k: _jsonable(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "fit_reference") -> FitStats:
        """Read a card's ``fit_reference``; raises naming the field that is missing or mistyped."""
        try:
            def vec(name: str, n: int) -> tuple[float, ...]:
                v = d[name]
                if not isinstance(v, (list, tuple)) or len(v) != n:
                    raise NeuroRGError(f"{where}.{name} is {v!r}; expected a list of {n} numbers")
                return tuple(np.nan if x is None else float(x) for x in v)

            def num(name: str) -> float:
                v = d[name]
                return np.nan if v is None else float(v)

            return cls(
                n_wells=int(d["n_wells"]), n_crops=int(d["n_crops"]),
                control_called_control=num("control_called_control"), window=num("window"),
                crop_share_by_class=vec("crop_share_by_class", N_CLASSES),
                confidence_by_class=vec("confidence_by_class", N_CLASSES),
                disagreement_by_class=vec("disagreement_by_class", N_CLASSES),
                intensity_mean=vec("intensity_mean", len(CHANNELS)),
                intensity_sd=vec("intensity_sd", len(CHANNELS)),
            )
        except KeyError as exc:
            raise NeuroRGError(f"{where} lacks {exc.args[0]!r}; expected the fields of FitStats") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, NeuroRGError):
                raise
            raise NeuroRGError(f"{where} holds a value that is not a number ({exc})") from None


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, float):
        return None if not np.isfinite(v) else round(v, 6)
    return v


def _weighted(values: Sequence[float], weights: Sequence[float]) -> float:
    v, w = np.asarray(values, float), np.asarray(weights, float)
    ok = np.isfinite(v) & (w > 0)
    return float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")


def fit_stats(wells: pd.DataFrame, crops: CropProbs, field_stats: np.ndarray) -> FitStats:
    """The fit statistics of one scored plate.

    Parameters
    ----------
    wells
        ``scoring.score_wells`` table with ``Metadata_Role``, ``Called_class`` and
        ``Inflammation_score``.
    crops
        The ensemble's crop probabilities (``scoring.CropProbs``; ``CropProbs.from_table`` of a
        crop table).
    field_stats
        (n_fields, 2, 3): each field's per-channel mean and SD (``preprocess.field_channel_stats``).
    """
    for col in (ROLE, CALLED_CLASS, INFLAMMATION_SCORE):
        if col not in wells.columns:
            raise NeuroRGError(f"well table lacks {col}; expected score_wells's table with the plate map")
    fs = np.asarray(field_stats, dtype=np.float64)
    if fs.ndim != 3 or fs.shape[1:] != (2, len(CHANNELS)) or len(fs) == 0:
        raise NeuroRGError(f"field statistics have shape {fs.shape}; expected (n_fields >= 1, 2, 3)")
    ctrl = wells[wells[ROLE] == "control"]
    dis = wells[wells[ROLE] == "disease"]
    ccc = float((ctrl[CALLED_CLASS] == CONTROL_CLASS).mean()) if len(ctrl) else float("nan")
    window = (float(dis[INFLAMMATION_SCORE].mean() - ctrl[INFLAMMATION_SCORE].mean())
              if len(ctrl) and len(dis) else float("nan"))

    # crops: ensemble-mean probabilities -> call, top probability; each member's call against it
    probs = np.ascontiguousarray(crops.probs.transpose(1, 2, 0))   # (n, 6, m)
    mean = probs.mean(axis=2)
    call = mean.argmax(axis=1)
    top = mean.max(axis=1)
    disagree = (probs.argmax(axis=1) != call[:, None]).mean(axis=1)
    n = len(call)
    share, conf, dis_k = [], [], []
    for k in range(N_CLASSES):
        sel = call == k
        share.append(float(sel.mean()) if n else 0.0)
        conf.append(float(top[sel].mean()) if sel.any() else float("nan"))
        dis_k.append(float(disagree[sel].mean()) if sel.any() else float("nan"))
    return FitStats(
        n_wells=int(len(wells)), n_crops=int(n), control_called_control=ccc, window=window,
        crop_share_by_class=tuple(share), confidence_by_class=tuple(conf), disagreement_by_class=tuple(dis_k),
        intensity_mean=tuple(float(x) for x in fs[:, 0].mean(axis=0)),
        intensity_sd=tuple(float(x) for x in fs[:, 1].mean(axis=0)),
    )


def pool_stats(parts: Sequence[FitStats]) -> FitStats:
    """Several plates' statistics as one reference (weighted by wells and crops)."""
    if not parts:
        raise NeuroRGError("no plates to pool; expected at least one scored reference plate")
    wells = np.array([p.n_wells for p in parts], float)
    crops = np.array([p.n_crops for p in parts], float)

    def mean_of(values: list[float], w: np.ndarray) -> float:
        v = np.asarray(values, float)
        ok = np.isfinite(v) & (w > 0)
        return float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")

    shares = np.array([p.crop_share_by_class for p in parts])        # (plates, 6)
    counts = shares * crops[:, None]                                  # crops per class per plate
    by_class = []
    for attr in ("confidence_by_class", "disagreement_by_class"):
        v = np.array([getattr(p, attr) for p in parts])
        by_class.append(tuple(mean_of(list(v[:, k]), counts[:, k]) for k in range(N_CLASSES)))
    return FitStats(
        n_wells=int(wells.sum()), n_crops=int(crops.sum()),
        control_called_control=mean_of([p.control_called_control for p in parts], wells),
        window=mean_of([p.window for p in parts], wells),
        crop_share_by_class=tuple(float(x) for x in counts.sum(axis=0) / max(crops.sum(), 1)),
        confidence_by_class=by_class[0], disagreement_by_class=by_class[1],
        intensity_mean=tuple(float(x) for x in np.mean([p.intensity_mean for p in parts], axis=0)),
        intensity_sd=tuple(float(x) for x in np.mean([p.intensity_sd for p in parts], axis=0)),
    )


@dataclass(frozen=True)
class FitCheck:
    """One comparison of the fit check."""

    name: str
    value: float
    expected: str     # the allowed range, in words
    passed: bool | None   # None: not checked (e.g. no control wells)
    reason: str = ""      # why it failed or was skipped, for a person


@dataclass(frozen=True)
class ModelFit:
    """The model-fit verdict of one run (stored with the run, shown on every page)."""

    verdict: Verdict
    checks: tuple[FitCheck, ...] = field(default_factory=tuple)
    note: str = ""

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(c.reason for c in self.checks if c.passed is False)

    def summary(self) -> str:
        """``ok``, ``POOR: <reasons>`` or ``not checked (<why>)``: what ``score`` prints."""
        if self.verdict == "POOR":
            return "POOR: " + "; ".join(self.reasons)
        if self.verdict == "unchecked":
            return f"not checked ({self.note})"
        return "ok"

    def as_params(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "note": self.note,
                "checks": [{k: _jsonable(v) for k, v in asdict(c).items()} for c in self.checks]}

    @classmethod
    def from_params(cls, d: Mapping[str, Any] | None) -> ModelFit:
        """Read a stored run's verdict; runs stored before the check existed are ``unchecked``."""
        if not d:
            return cls("unchecked", note="run stored before the model-fit check existed")
        checks = tuple(FitCheck(c["name"], np.nan if c["value"] is None else float(c["value"]), c["expected"],
                                c["passed"], c.get("reason", "")) for c in d.get("checks", []))
        return cls(d["verdict"], checks, d.get("note", ""))


def check_model_fit(stats: FitStats, reference: FitStats | None, *,
                    train_mean: Sequence[float], train_sd: Sequence[float]) -> ModelFit:
    """Compare a plate's statistics with the model's reference (see the module docstring).

    Parameters
    ----------
    stats
        ``fit_stats`` of the plate.
    reference
        The card's ``fit_reference``; ``None`` -> verdict ``unchecked``.
    train_mean, train_sd
        The training crops' per-channel mean and SD (the model's normalisation).
    """
    if reference is None:
        return ModelFit("unchecked", note="the model card has no fit_reference; run "
                        "`python -m neurorg_core calibrate-fit` on plates the model was not trained on")
    checks: list[FitCheck] = []

    ccc = stats.control_called_control
    if np.isfinite(ccc):
        checks.append(FitCheck("control_called_control", ccc, f">= {MIN_CONTROL_CALLED_CONTROL:.0%}",
                               bool(ccc >= MIN_CONTROL_CALLED_CONTROL),
                               f"only {ccc:.0%} of the control wells are called control "
                               f"(reference {reference.control_called_control:.0%})"))
    else:
        checks.append(FitCheck("control_called_control", ccc, "", None, "no control wells"))

    if np.isfinite(stats.window) and np.isfinite(reference.window) and reference.window > 0:
        share = stats.window / reference.window
        checks.append(FitCheck("window", share, f">= {MIN_WINDOW_SHARE:.0%} of the reference "
                               f"{reference.window:.2f}", bool(share >= MIN_WINDOW_SHARE),
                               f"disease and control wells are {stats.window:.2f} apart in inflammation "
                               f"score, {share:.0%} of the {reference.window:.2f} the model shows on its "
                               "reference plates"))
    else:
        checks.append(FitCheck("window", np.nan, "", None, "needs control and disease wells"))

    weights = stats.crop_share_by_class
    exp_conf = _weighted(reference.confidence_by_class, weights)
    drop = exp_conf - stats.confidence   # how much less confident than expected (NaN without a reference)
    if np.isfinite(exp_conf):
        checks.append(FitCheck("confidence", stats.confidence,
                               f"{exp_conf:.2f} +/- {CONFIDENCE_TOLERANCE:.2f}",
                               bool(abs(drop) <= CONFIDENCE_TOLERANCE),
                               f"crop confidence {stats.confidence:.2f}, expected {exp_conf:.2f} for these calls"))
    exp_dis = _weighted(reference.disagreement_by_class, weights)
    if np.isfinite(exp_dis) and exp_dis > 0:
        ratio = stats.disagreement / exp_dis
        lo, hi = DISAGREEMENT_RANGE
        checks.append(FitCheck("disagreement", ratio, f"{lo:g}-{hi:g} x {exp_dis:.3f}",
                               bool(lo <= ratio <= hi),
                               f"ensemble members disagree on {stats.disagreement:.1%} of crop calls, "
                               f"{ratio:.2f} x the {exp_dis:.1%} expected"))
        if np.isfinite(exp_conf):
            checks.append(FitCheck(
                "disagreement_with_low_confidence", ratio,
                f"not >= {JOINT_DISAGREEMENT:g} x together with confidence >= {JOINT_CONFIDENCE_DROP:g} low",
                not bool(ratio >= JOINT_DISAGREEMENT and drop >= JOINT_CONFIDENCE_DROP),
                f"members disagree {ratio:.2f} x the expected and the crops are {drop:.3f} less confident "
                "than expected, together (as on plates scored at the wrong scale)"))

    lo, hi = INTENSITY_RANGE
    for c, name in enumerate(CHANNELS):
        for what, got, want in (("mean", stats.intensity_mean[c], train_mean[c]),
                                ("SD", stats.intensity_sd[c], train_sd[c])):
            ratio = got / want if want > 0 else np.nan
            ok = bool(np.isfinite(ratio) and lo <= ratio <= hi)
            checks.append(FitCheck(f"intensity_{name}_{what.lower()}", ratio, f"{lo:g}-{hi:g} x training",
                                   ok, f"{name} {what} intensity {got:.4f} is {ratio:.2f} x the training "
                                   f"crops' {want:.4f} (bit depth, gain or channel map?)"))
    failed = [c for c in checks if c.passed is False]
    verdict: Verdict = "POOR" if failed else "ok"
    fit = ModelFit(verdict, tuple(checks))
    log.info("model fit: %s", fit.summary())
    return fit

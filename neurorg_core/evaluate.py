"""How well a trained bundle calls crops and wells: the evaluation report on its model card.

``evaluate_bundle`` recognises each plate by its content fingerprint (``cropsets.plate_fingerprint``)
and scores it the way the study did:

- a fold's validation plate with that fold's member (``cross_validation``: per fold and pooled);
- a plate no member trained on (``unseen``) with the ensemble and with each member alone, and
  McNemar's test (``stats.mcnemar``) of the ensemble against the best single member, well by well;
- a plate some member trained on is listed but not scored (that would be training accuracy).

Well calls come from ``scoring.aggregate_wells``, the rule behind the screen's well table
(``Called_class`` = ``well_acc``; the plurality of crop calls = ``well_acc_vote``), so the model
card's well accuracy is that of the calls the screen shows.

The report is typed (``EvaluationReport``); ``as_dict()`` is the JSON the model card holds under
``metrics.evaluation`` and ``EvaluationReport.from_dict`` reads it back.

``calibrate_fit_reference`` scores held-out plates through the pipeline to record what the model
sees on plates it fits (the card's ``fit_reference``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from neurorg_core.cropsets import (CropSet, crops_as_float, find_plate_map, load_crop_set, plate_fingerprint,
                                   plate_labels, well_labels)
from neurorg_core.errors import NeuroRGError
from neurorg_core.model import Bundle
from neurorg_core.preprocess import CropGeometry
from neurorg_core.schema import N_CLASSES
from neurorg_core.scoring import aggregate_wells

if TYPE_CHECKING:   # inference imports the LiteRT interpreter: only when evaluating
    from neurorg_core.inference import Predictor

log = logging.getLogger(__name__)


# --- the typed report -----------------------------------------------------------------------

@dataclass(frozen=True)
class AccuracyMetrics:
    """Crop- and well-level accuracy of one model (or the ensemble) on some plates.

    Confusion matrices: rows are the true class, columns the call. Kappa is Cohen's, ``None``
    where only one class occurs among truth and calls together.
    """

    n_crops: int
    n_wells: int
    crop_acc: float                  # fraction of crops whose arg-max is the label
    well_acc: float                  # fraction of wells whose Called_class (mean probability) is right
    well_acc_vote: float             # ... whose plurality of crop calls is right (the study's method)
    wells_correct: int
    crop_kappa: float | None
    well_kappa: float | None
    crop_confusion: list[list[int]]
    well_confusion: list[list[int]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AccuracyMetrics:
        return cls(**d)


@dataclass(frozen=True)
class PlateStatus:
    """What an evaluated plate was to the bundle: ``validation of <members>``,
    ``training (not scored)`` or ``unseen``."""

    plate: str
    source: str
    fingerprint: str
    status: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CrossValidation:
    """Each member on its own fold's validation plates, and all of them pooled."""

    folds: dict[str, AccuracyMetrics]
    pooled: AccuracyMetrics

    def as_dict(self) -> dict[str, Any]:
        return {"folds": {k: m.as_dict() for k, m in self.folds.items()}, "pooled": self.pooled.as_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CrossValidation:
        return cls({k: AccuracyMetrics.from_dict(m) for k, m in d["folds"].items()},
                   AccuracyMetrics.from_dict(d["pooled"]))


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test of the ensemble against ``member`` over the same wells: ``b`` wells the
    ensemble called right and the member wrong, ``c`` the reverse (``stats.mcnemar``)."""

    member: str
    chi2: float
    p: float
    b: int
    c: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UnseenMetrics:
    """Plates no member trained on: each member alone, the ensemble, and McNemar."""

    plates: list[str]
    members: dict[str, AccuracyMetrics]
    ensemble: AccuracyMetrics | None = None                      # ensemble bundles only
    mcnemar_ensemble_vs_best_member: McNemarResult | None = None  # ensemble bundles only

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"plates": list(self.plates),
                               "members": {k: m.as_dict() for k, m in self.members.items()}}
        if self.ensemble is not None:
            out["ensemble"] = self.ensemble.as_dict()
        if self.mcnemar_ensemble_vs_best_member is not None:
            out["mcnemar_ensemble_vs_best_member"] = self.mcnemar_ensemble_vs_best_member.as_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnseenMetrics:
        mc = d.get("mcnemar_ensemble_vs_best_member")
        return cls(list(d["plates"]), {k: AccuracyMetrics.from_dict(m) for k, m in d["members"].items()},
                   AccuracyMetrics.from_dict(d["ensemble"]) if "ensemble" in d else None,
                   McNemarResult(**mc) if mc is not None else None)


@dataclass(frozen=True)
class EvaluationReport:
    """``evaluate_bundle``'s result; ``as_dict()`` is the card's ``metrics.evaluation``."""

    model_id: str
    plates: list[PlateStatus]
    cross_validation: CrossValidation | None = None   # when some plate was a fold's validation plate
    unseen: UnseenMetrics | None = None               # when some plate was unseen

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_id": self.model_id, "plates": [p.as_dict() for p in self.plates]}
        if self.cross_validation is not None:
            out["cross_validation"] = self.cross_validation.as_dict()
        if self.unseen is not None:
            out["unseen"] = self.unseen.as_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluationReport:
        """Read a card's ``metrics.evaluation`` back."""
        cv, un = d.get("cross_validation"), d.get("unseen")
        return cls(d["model_id"], [PlateStatus(**p) for p in d["plates"]],
                   CrossValidation.from_dict(cv) if cv is not None else None,
                   UnseenMetrics.from_dict(un) if un is not None else None)


# --- metrics ----------------------------------------------------------------------------------

def _confusion(truth: np.ndarray, pred: np.ndarray) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(truth, pred, labels=list(range(N_CLASSES))).tolist()


def _kappa(truth: np.ndarray, pred: np.ndarray) -> float | None:
    from sklearn.metrics import cohen_kappa_score

    if len(np.unique(np.concatenate([truth, pred]))) < 2:
        return None
    return round(float(cohen_kappa_score(truth, pred)), 4)


def score_crops(probs: np.ndarray, labels: np.ndarray, wells: np.ndarray) -> AccuracyMetrics:
    """Crop- and well-level accuracy of crop probabilities against class labels.

    Parameters
    ----------
    probs : array (n, 6) or (m, n, 6)
        One model's crop probabilities, or each ensemble member's (the crops' ensemble-mean
        probabilities are then called, and wells as ``scoring.score_wells`` calls them).
    labels, wells : arrays (n,)
        Each crop's true class (0..5) and well.

    Well calls come from ``scoring.aggregate_wells``: the arg-max of the mean probability
    (``well_acc``, the screen's ``Called_class``) and, as in the study, the plurality vote of crop
    calls (``well_acc_vote``).
    """
    p = np.asarray(probs)
    agg = aggregate_wells(p, wells)
    truth_w = well_labels(labels, wells, agg.wells)
    crop_call = (p.mean(axis=0) if p.ndim == 3 else p).argmax(1)
    mean_call, vote_call = agg.called, agg.vote_call
    return AccuracyMetrics(
        n_crops=int(len(labels)), n_wells=int(len(agg.wells)),
        crop_acc=round(float((crop_call == labels).mean()), 4),
        well_acc=round(float((mean_call == truth_w).mean()), 4),
        well_acc_vote=round(float((vote_call == truth_w).mean()), 4),
        wells_correct=int((mean_call == truth_w).sum()),
        crop_kappa=_kappa(labels, crop_call), well_kappa=_kappa(truth_w, mean_call),
        crop_confusion=_confusion(labels, crop_call),
        well_confusion=_confusion(truth_w, mean_call),
    )


def _well_correct(probs: np.ndarray, labels: np.ndarray, wells: np.ndarray) -> np.ndarray:
    agg = aggregate_wells(probs, wells)
    return agg.called == well_labels(labels, wells, agg.wells)


def _plate_wells(cs: CropSet) -> np.ndarray:
    """Each crop's well prefixed by its plate's fingerprint, so wells of several plates stay apart."""
    return np.char.add(f"{cs.fingerprint}:", cs.wells.astype(str))


# --- evaluating a bundle --------------------------------------------------------------------

def evaluate_bundle(plates: Sequence[str | Path], bundle: Bundle, *, predictor: Predictor | None = None,
                    sets: Sequence[CropSet] | None = None) -> EvaluationReport:
    """Crop / well accuracy, confusion matrices, Cohen's kappa and McNemar for a bundle.

    A plate is recognised by its content fingerprint (not its name). If it was a fold's
    validation plate, that fold's member is scored on it (``cross_validation``: per fold and
    pooled, as in the study). Plates no member trained on are ``unseen``: scored with the
    ensemble (mean probability over members) and with each member alone; McNemar's test
    compares the ensemble with the best single member over the unseen wells (well level).
    Plates some member trained on are listed but not scored (that would be training accuracy).

    Parameters
    ----------
    plates
        Plate folders with class labels (ignored when ``sets`` is given).
    bundle
        The bundle to evaluate.
    predictor
        An ``inference.Predictor`` of ``bundle`` (default: ``backend="auto"``: Keras on a GPU
        when the Keras backend sees one, LiteRT otherwise).
    sets
        Already-loaded crops, cut with the bundle's crop geometry.

    Returns
    -------
    EvaluationReport
        ``plates`` (status of each), ``cross_validation``, ``unseen``; ``as_dict()`` is JSON.
    """
    from neurorg_core.inference import Predictor

    pred = predictor if predictor is not None else Predictor(bundle)
    geometry = CropGeometry.from_card(bundle.card)
    data = list(sets) if sets is not None else [load_crop_set(p, bundle.input_size, geometry=geometry)
                                                for p in plates]
    entries = bundle.card["members"]
    trained_on = {fp for e in entries for fp in _train_fingerprints(bundle, e)}
    statuses: list[PlateStatus] = []
    cv: dict[int, list[tuple[np.ndarray, CropSet]]] = {}
    unseen: list[tuple[np.ndarray, CropSet]] = []
    for cs in data:
        probs = pred.predict(crops_as_float(cs.crops))
        val_members = [k for k, e in enumerate(entries) if cs.fingerprint in _val_fingerprints(bundle, e)]
        if val_members:
            status = "validation of " + ", ".join(entries[k]["name"] for k in val_members)
            for k in val_members:
                cv.setdefault(k, []).append((probs[k], cs))
        elif cs.fingerprint in trained_on:
            status = "training (not scored)"
        else:
            status = "unseen"
            unseen.append((probs, cs))
        statuses.append(PlateStatus(cs.plate, str(cs.source), cs.fingerprint, status))
        log.info("evaluate: %s (%s) is %s", cs.plate, cs.source, status)
    return EvaluationReport(bundle.id, statuses,
                            _cross_validation(cv, entries) if cv else None,
                            _unseen(unseen, entries, bundle.kind) if unseen else None)


def _cross_validation(cv: dict[int, list[tuple[np.ndarray, CropSet]]], entries: list[dict]) -> CrossValidation:
    """Each member on its validation plates (probabilities (n, 6) per plate), then all pooled."""
    folds = {}
    pooled_p, pooled_y, pooled_w = [], [], []
    for k, items in sorted(cv.items()):
        p = np.concatenate([i[0] for i in items])
        y = np.concatenate([i[1].labels for i in items])
        w = np.concatenate([_plate_wells(i[1]) for i in items])
        folds[entries[k]["name"]] = score_crops(p, y, w)
        pooled_p.append(p), pooled_y.append(y), pooled_w.append(w)
    return CrossValidation(folds, score_crops(np.concatenate(pooled_p), np.concatenate(pooled_y),
                                              np.concatenate(pooled_w)))


def _unseen(unseen: list[tuple[np.ndarray, CropSet]], entries: list[dict], kind: str) -> UnseenMetrics:
    """Unseen plates (probabilities (m, n, 6) per plate): each member, the ensemble, McNemar."""
    from neurorg_core.stats import mcnemar

    p_all = np.concatenate([u[0] for u in unseen], axis=1)          # (M, n, 6)
    y = np.concatenate([u[1].labels for u in unseen])
    w = np.concatenate([_plate_wells(u[1]) for u in unseen])
    members = {e["name"]: score_crops(p_all[k], y, w) for k, e in enumerate(entries)}
    plates = [u[1].plate for u in unseen]
    if kind != "ensemble":
        return UnseenMetrics(plates, members)
    best = max(range(len(entries)), key=lambda k: members[entries[k]["name"]].well_acc)
    e_ok, m_ok = _well_correct(p_all, y, w), _well_correct(p_all[best], y, w)
    b, c = int((e_ok & ~m_ok).sum()), int((~e_ok & m_ok).sum())
    return UnseenMetrics(plates, members, score_crops(p_all, y, w),
                         McNemarResult(member=entries[best]["name"], **mcnemar(b, c)))


def _val_fingerprints(bundle: Bundle, entry: dict) -> list[str]:
    by_name = {p["name"]: p["fingerprint"] for p in bundle.card.get("training_plates", [])}
    return [by_name[n] for n in entry.get("val_plates", []) if n in by_name]


def _train_fingerprints(bundle: Bundle, entry: dict) -> list[str]:
    by_name = {p["name"]: p["fingerprint"] for p in bundle.card.get("training_plates", [])}
    return [by_name[n] for n in entry.get("train_plates", []) if n in by_name]


def format_report(report: EvaluationReport) -> str:
    """A short human-readable summary of ``evaluate_bundle``'s report."""
    lines = [f"model {report.model_id}"]
    for p in report.plates:
        lines.append(f"  {p.plate} ({p.source}): {p.status}")
    cv = report.cross_validation
    if cv is not None:
        for name, m in cv.folds.items():
            lines.append(f"  cross-validation {name}: crop {m.crop_acc:.1%}, well {m.well_acc:.1%} "
                         f"(vote {m.well_acc_vote:.1%}), n = {m.n_wells} wells")
        m = cv.pooled
        lines.append(f"  cross-validation pooled: crop {m.crop_acc:.1%}, well {m.well_acc:.1%} "
                     f"({m.wells_correct}/{m.n_wells}), kappa {m.well_kappa}")
    un = report.unseen
    if un is not None:
        if un.ensemble is not None:
            m = un.ensemble
            lines.append(f"  unseen plates, ensemble: crop {m.crop_acc:.1%}, well {m.well_acc:.1%} "
                         f"({m.wells_correct}/{m.n_wells}; vote {m.well_acc_vote:.1%}), "
                         f"well kappa {m.well_kappa}")
        for name, m in un.members.items():
            lines.append(f"  unseen plates, {name}: crop {m.crop_acc:.1%}, well {m.well_acc:.1%}")
        mc = un.mcnemar_ensemble_vs_best_member
        if mc is not None:
            lines.append(f"  McNemar ensemble vs {mc.member}: b = {mc.b}, c = {mc.c}, "
                         f"chi2 = {mc.chi2:.2f}, p = {mc.p:.3g}")
    return "\n".join(lines)


# --- the model-fit reference ----------------------------------------------------------------

def calibrate_fit_reference(plates: Sequence[str | Path], bundle: Bundle, *, work_dir: str | Path,
                            backend: str = "auto") -> dict[str, Any]:
    """Score reference plates with ``bundle`` and pool what it saw into its ``fit_reference``.

    The plates should be ones no member trained on (held-out plates of the same assay, imaged as
    the model's crop geometry expects), with plate maps naming control and disease wells. Each is
    scored by ``pipeline.run_plate`` into a temporary store under ``work_dir``, so the reference is
    computed exactly as every later run's check is.

    Returns
    -------
    dict
        The card's ``fit_reference``: ``fitcheck.FitStats`` as a dict, plus the plates used.
    """
    from neurorg_core.fitcheck import pool_stats
    from neurorg_core.pipeline import ScoreOptions, run_plate
    from neurorg_core.plates import load_plate
    from neurorg_core.platemap import load_plate_map
    from neurorg_core.store import ResultStore

    if not plates:
        raise NeuroRGError("no reference plates given; expected plates the model did not train on")
    trained_on = {fp for e in bundle.card.get("members", []) for fp in _train_fingerprints(bundle, e)}
    parts = []
    with ResultStore(Path(work_dir) / "calibrate.duckdb") as store:
        for path in plates:
            plate = load_plate(path)
            if trained_on and _is_training_plate(plate, path, trained_on):
                raise NeuroRGError("a member of the model trained on this plate; the fit reference needs "
                                   "plates it has not seen", path=path)
            res = run_plate(plate, load_plate_map(find_plate_map(path)), bundle, store,
                            options=ScoreOptions(backend=backend))  # type: ignore[arg-type]
            parts.append(res.fit_stats)
            log.info("fit reference: %s scored (%d wells)", path, res.n_wells)
    return {**pool_stats(parts).as_dict(), "plates": [str(p) for p in plates]}


def _is_training_plate(plate: Any, path: str | Path, trained_on: set[str]) -> bool:
    """Whether a plate's fingerprint is one the bundle trained on (plates without class labels
    cannot have been training plates)."""
    try:
        labels = plate_labels(plate, path)
    except NeuroRGError:
        return False
    return plate_fingerprint(plate, labels) in trained_on

"""The shipped demo bundles (``data/models/demo``): ``python -m neurorg_core build-demo``.

``build_demo`` renders synthetic plates with the ``DemoRecipe``, trains the 3-channel ensemble
(one member per leave-plate-out fold) and the single-channel bundle (``train.py``), converts them
to LiteRT, evaluates both on unseen-seed plates (``evaluate.py``) and compares each channel's
per-well P(control) with the ensemble's on a screening plate; all of it goes on the cards.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from neurorg_core.cropsets import CropSet, crops_as_float, load_crop_set, load_screen_crops
from neurorg_core.evaluate import EvaluationReport, evaluate_bundle, format_report
from neurorg_core.model import Bundle, load_bundle
from neurorg_core.preprocess import CropGeometry
from neurorg_core.scoring import aggregate_wells
from neurorg_core.train import (TrainSettings, load_training_sets, train_bundle, train_single_channel_bundle,
                                training_geometry)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoRecipe:
    """How ``build-demo`` makes ``data/models/demo`` (recorded on both cards)."""

    train_seed: int = 1            # training plates: plate_01..plate_05 of this seed
    n_train_plates: int = 5
    test_seeds: tuple[int, ...] = (101, 102)   # never used in training
    screen_seed: int = 201
    field_size: int = 256          # pixels; 4 fields -> 2 x 2 grid of 128 px tiles -> 64 px crops
    n_fields: int = 4
    ensemble_epochs: int = 20        # a fold member was still improving at 12-17 (2026-11-24 trial)
    single_channel_epochs: int = 5
    cell_severity_sd: float = 0.10  # synth default 0.15: see ``synth_params``
    well_severity_sd: float = 0.02  # synth default 0.03

    def synth_params(self):
        """The synthetic assay used for the demo: the defaults with less cell-to-cell and
        well-to-well severity spread, so a small CPU-trained model can call wells reliably."""
        from neurorg_core.synth import DEFAULT_PARAMS

        return replace(DEFAULT_PARAMS, cell_severity_sd=self.cell_severity_sd,
                       well_severity_sd=self.well_severity_sd)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def per_well_p_control(probs: np.ndarray, wells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(well names, P(control) per well) from crop probabilities (n, 6) of one model or (m, n, 6)
    of an ensemble: class 0 of ``scoring.aggregate_wells``, as the screen's ``P_control``."""
    agg = aggregate_wells(probs, wells)
    return agg.wells, agg.probs[:, 0]


def build_demo(out: str | Path, work_dir: str | Path, *, settings: TrainSettings | None = None,
               recipe: DemoRecipe = DemoRecipe(), reuse: bool = False) -> dict:
    """Render synthetic plates, train the demo ensemble and single-channel bundle, evaluate.

    Writes ``out/ensemble`` (one 3-channel member per fold) and ``out/single_channel``
    (nucleus, neuron, microglia), each with its converted LiteRT files, and puts the evaluation
    on unseen-seed plates and the single-channel Pearson comparison on a screening plate into
    the cards. Plates are rendered under ``work_dir`` (not shipped). ``reuse=True`` keeps
    bundles already trained in ``out`` and only (re-)evaluates them.

    Returns
    -------
    dict
        ``ensemble`` and ``single_channel`` metrics, as written on the cards.
    """
    from neurorg_core.inference import Predictor, convert_bundle
    from neurorg_core.model import update_card

    st = settings or TrainSettings(epochs=recipe.ensemble_epochs)
    out = Path(out)
    t0 = time.perf_counter()
    train_dirs, test_dirs, screen_dir = _render_plates(recipe, Path(work_dir))
    log.info("rendered %d training, %d test and 1 screening plate in %.0f s", len(train_dirs),
             len(test_dirs), time.perf_counter() - t0)
    geometry = training_geometry(train_dirs, st.crop_edge_px)
    sets = load_training_sets(train_dirs, st.input_size, geometry, st.crops_per_well)
    ens, sc = _trained_bundles(out, st, recipe, sets, geometry, reuse)
    log.info("trained both bundles after %.0f s", time.perf_counter() - t0)
    ens, sc = convert_bundle(ens), convert_bundle(sc)   # ship the LiteRT files, hashes on the cards

    ens_pred = Predictor(ens)
    test_sets = [load_crop_set(d, st.input_size, geometry=geometry) for d in test_dirs]
    ens_report = evaluate_bundle([], ens, predictor=ens_pred, sets=[*sets, *test_sets])
    log.info("ensemble:\n%s", format_report(ens_report))
    sc_pred = Predictor(sc)
    sc_report = evaluate_bundle([], sc, predictor=sc_pred, sets=[*sets, *test_sets])
    log.info("single-channel:\n%s", format_report(sc_report))
    pearson = _screen_pearson(ens_pred, sc, sc_pred, load_screen_crops(screen_dir, st.input_size, geometry))

    seconds = round(time.perf_counter() - t0)
    if reuse:  # only evaluated now: keep the training run's build time
        seconds = int(ens.card.get("metrics", {}).get("build_seconds", seconds))
    ens_metrics = {"evaluation": ens_report.as_dict(), "build_seconds": seconds,
                   "summary": _summary(ens_report)}
    ens = update_card(ens, metrics=ens_metrics)
    sc_metrics = {"evaluation": sc_report.as_dict(), "screen_pearson_vs_ensemble": pearson,
                  "screen_plate": f"seed {recipe.screen_seed}", "reference_ensemble": ens.id,
                  "build_seconds": seconds}
    update_card(sc, metrics=sc_metrics)
    return {"ensemble": ens_metrics, "single_channel": sc_metrics}


def _render_plates(recipe: DemoRecipe, work: Path) -> tuple[list[Path], list[Path], Path]:
    """The recipe's training plates, unseen test plates and screening plate, under ``work``."""
    from neurorg_core.synth import write_synthetic_plates

    params = recipe.synth_params()
    common = {"n_fields": recipe.n_fields, "size": recipe.field_size, "params": params}
    train_dirs = write_synthetic_plates(work / f"train_seed{recipe.train_seed}", seed=recipe.train_seed,
                                        n_plates=recipe.n_train_plates, **common)
    test_dirs = [d for s in recipe.test_seeds
                 for d in write_synthetic_plates(work / f"test_seed{s}", seed=s, n_plates=1, **common)]
    screen_dir = write_synthetic_plates(work / f"screen_seed{recipe.screen_seed}", seed=recipe.screen_seed,
                                        n_plates=1, kind="screen", **common)[0]
    return train_dirs, test_dirs, screen_dir


def _provenance(recipe: DemoRecipe) -> dict[str, Any]:
    """Card fields saying how the demo was made."""
    from neurorg_core.synth import DEFAULT_PARAMS

    return {
        "demo_recipe": recipe.as_dict(),
        "synth_params": (f"neurorg_core.synth.DEFAULT_PARAMS except cell_severity_sd "
                         f"{recipe.cell_severity_sd} (default {DEFAULT_PARAMS.cell_severity_sd}) and "
                         f"well_severity_sd {recipe.well_severity_sd} (default "
                         f"{DEFAULT_PARAMS.well_severity_sd})"),
        "why_tiny": ("efficientnet_tiny (EfficientNet compound-scaled below B0: width 0.5, depth 0.5, "
                     "0.67 M parameters) because 7 B0 members would be ~113 MB (over the 40 MB git "
                     "limit) and B0 trains at half the speed on 2 CPU cores; the study used "
                     "ImageNet-pretrained B5 at 1200 px."),
        "command": "python -m neurorg_core build-demo --out data/models/demo",
    }


def _trained_bundles(out: Path, st: TrainSettings, recipe: DemoRecipe, sets: list[CropSet],
                     geometry: CropGeometry, reuse: bool) -> tuple[Bundle, Bundle]:
    """The ensemble and the single-channel bundle: trained now, or (``reuse``) those already in ``out``."""
    provenance = _provenance(recipe)
    if reuse and (out / "ensemble" / "card.json").is_file():
        ens = load_bundle(out / "ensemble")
        log.info("reusing the trained ensemble %s", ens.id)
    else:
        ens = train_bundle([], out / "ensemble", st, sets=sets, geometry=geometry, extra=provenance)
    if reuse and (out / "single_channel" / "card.json").is_file():
        sc = load_bundle(out / "single_channel")
        log.info("reusing the trained single-channel bundle %s", sc.id)
    else:
        single_st = replace(st, epochs=recipe.single_channel_epochs)
        sc = train_single_channel_bundle(out / "single_channel", single_st, sets, geometry=geometry,
                                         extra=provenance)
    return ens, sc


def _screen_pearson(ens_pred: Any, sc: Bundle, sc_pred: Any, screen: CropSet) -> dict[str, dict]:
    """Pearson r of each single-channel member's per-well P(control) against the ensemble's."""
    from neurorg_core.stats import channel_correlation

    x = crops_as_float(screen.crops)
    _, p_ens = per_well_p_control(ens_pred.predict(x), screen.wells)
    sc_probs = sc_pred.predict(x)
    pearson = {}
    for k, m in enumerate(sc.members):
        _, p_ch = per_well_p_control(sc_probs[k], screen.wells)
        c = channel_correlation(p_ens, p_ch)
        pearson[m.name] = {"r": round(c["r"], 4), "p": float(f"{c['p']:.3g}"), "n_wells": c["n"]}
    log.info("screening plate, P(control) per well vs ensemble: %s", pearson)
    return pearson


def _summary(report: EvaluationReport) -> dict:
    """The card's ``metrics.summary``: pooled cross-validation and unseen-plate ensemble accuracy."""
    out: dict[str, Any] = {}
    if report.cross_validation is not None:
        p = report.cross_validation.pooled
        out["cross_validation_pooled"] = {"crop_acc": p.crop_acc, "well_acc": p.well_acc,
                                          "well_acc_vote": p.well_acc_vote}
    if report.unseen is not None and report.unseen.ensemble is not None:
        e = report.unseen.ensemble
        out["unseen_ensemble"] = {"crop_acc": e.crop_acc, "well_acc": e.well_acc,
                                  "well_acc_vote": e.well_acc_vote, "n_wells": e.n_wells}
    return out

"""How far apart are right and wrong-scale plates on each model-fit check? Measured on fresh plates.

``fitcheck`` says POOR when any of its checks leaves its tolerance. The tolerances were set on a few
plates; this benchmark measures, on many fresh seeds, every check's value (``RunResult.model_fit``)
on plates scored right and on plates scored at the wrong scale, with the well accuracy against the
truth, and how many of each a candidate limit would flag.

Plates (the geometries and scoring helpers of ``screen_accuracy.py``), each rendered once and
scored one or more ways with the demo ensemble into a temporary DuckDB store:

* scored right: the training geometries 256 px x 4 and x 16, 512 px x 1 and x 4, 1024 px x 1, a 2x
  plate with its pixel size from the files and one with it given (npy layout); the screens at
  256 px x 4 and 512 px x 1; a 2x screen (512 px x 1) with its pixel size from the files;
* wrong scale: the 2x npy plate scored with its pixel size unknown (``screen_accuracy``'s misuse
  case: the same render as "given"), and the 2x screen scored with the native 0.65 um given by the
  user (the same render as "from the files");
* other misuse, cheap on plates already rendered: each screen scored with nucleus and microglia
  swapped, and each 512 px x 1 training plate given the 2x pixel size (cells seen at half scale);
* small plates (2 wells per class, 12 wells, as the slow tests score): 256 px x 4 scored right, and
  2x npy plates with their pixel size given (right) and unknown (wrong scale): a plate statistic
  over fewer crops is noisier.

Usage::

    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/fit_margins.py [--seeds 3] [--scale-seeds 14] [--small-seeds 8]
        [--first-seed 9101] [--work DIR] [--markdown results.md]

``--seeds`` plates per right geometry (and per screen), ``--scale-seeds`` 2x npy plates (each
scored right and at the wrong scale), ``--small-seeds`` seeds of each small plate. Seeds are
consumed in order from ``--first-seed``; the run prints the range it used. Seeds 7001-8299 were
used by ``screen_accuracy`` runs, 9101-9141 and 9201-9216 by the runs that set the limits
(``benchmarks/results/fit_margins_seeds9101.md``, ``..._seeds9201_small.md``): check limits on a
range nobody tuned on (9301-9357 was the first held-out check, 9401-9424 the second, small plates only,
9501-9572 the check of the joint disagreement-and-confidence rule; start past 9572).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))         # screen_accuracy's helpers
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout  # noqa: E402

from screen_accuracy import SCREENS, TRAINING, Geometry, render, score  # noqa: E402

from neurorg_core import fitcheck  # noqa: E402
from neurorg_core.config import REPO_ROOT  # noqa: E402
from neurorg_core.fitcheck import FitStats  # noqa: E402
from neurorg_core.model import load_bundle  # noqa: E402
from neurorg_core.demo import DemoRecipe  # noqa: E402
from neurorg_core.schema import CALLED_CLASS, CLASS, N_CLASSES, WELL  # noqa: E402
from neurorg_core.store import ResultStore  # noqa: E402
from neurorg_core.synth import SYNTH_PIXEL_SIZE_UM, build_plate_table, write_synthetic_plates  # noqa: E402

RIGHT, WRONG_SCALE, SWAPPED, HALF_SCALE = "right", "wrong scale", "channels swapped", "half scale"
SMALL = ", 12 wells"
CLASSES = (RIGHT, WRONG_SCALE, RIGHT + SMALL, WRONG_SCALE + SMALL, SWAPPED, HALF_SCALE)
SWAP = {"nucleus": "w3", "neuron": "w2", "microglia": "w1"}
SCREEN_2X = Geometry("screen 2x magnification, 512 px x 1 field", 512, 1, 2.0)
SMALL_PER_CLASS = 2
"""Wells per class of the small plates (12 wells: what the slow tests score; class ``SMALL``)."""
CHECKS = ("control_called_control", "window", "confidence_delta", "disagreement")
"""The checks tabulated in full (``confidence_delta``: mean top-class probability minus the
reference's for the plate's class mix; the intensity checks are listed by their extremes)."""


@dataclass(frozen=True)
class Scoring:
    """One way a rendered plate is scored."""

    label: str
    truth: str                       # one of CLASSES
    pixel_size: float | None = None  # given by the user
    channels: dict | None = None


@dataclass(frozen=True)
class Plan:
    """A geometry, its plate kind, how many seeds, and the ways each render is scored."""

    geometry: Geometry
    kind: str
    scorings: tuple[Scoring, ...]
    count: str = "seeds"             # the option that says how many seeds: seeds, scale_seeds, small_seeds
    per_class: int | None = None     # a small plate: this many wells of each class (else the whole plate)


@dataclass
class Plate:
    label: str
    truth: str
    seed: int
    well_acc: float
    n_wells: int
    verdict: str
    values: dict[str, float] = field(default_factory=dict)
    passed: dict[str, bool | None] = field(default_factory=dict)


def plans() -> tuple[Plan, ...]:
    right = Scoring("", RIGHT)
    given_2x = TRAINING[6]    # npy, no metadata: the pixel size given, or unknown (TRAINING[7])
    return (
        *(Plan(g, "training", (right,) + ((Scoring("given the 2x pixel size", HALF_SCALE, SYNTH_PIXEL_SIZE_UM / 2),)
                                          if g.size == 512 and g.fields == 1 else ()))
          for g in TRAINING[:6]),
        Plan(given_2x, "training",
             (Scoring("pixel size given", RIGHT, given_2x.pixel_size),
              Scoring("pixel size unknown", WRONG_SCALE, None)), "scale_seeds"),
        *(Plan(g, "screen", (right, Scoring("nucleus and microglia swapped", SWAPPED, None, SWAP))) for g in SCREENS),
        Plan(SCREEN_2X, "screen", (Scoring("pixel size from the files", RIGHT),
                                   Scoring("given the native 0.65 um", WRONG_SCALE, SYNTH_PIXEL_SIZE_UM))),
        Plan(TRAINING[0], "training", (right,), "small_seeds", SMALL_PER_CLASS),
        Plan(given_2x, "training", (Scoring("pixel size given", RIGHT, given_2x.pixel_size),
                                    Scoring("pixel size unknown", WRONG_SCALE, None)), "small_seeds", SMALL_PER_CLASS),
    )


def render_small(work: Path, g: Geometry, seed: int, per_class: int) -> Path:
    """A small training plate: the first ``per_class`` wells of each class of the seed's plate map."""
    folder = work / f"small{per_class}_{g.size}x{g.fields}_m{g.magnification:g}_{g.layout}_s{seed}"
    params = DemoRecipe().synth_params()
    table = build_plate_table(seed, 1, 96, "training", params)
    wells = [w for k in range(N_CLASSES) for w in table.loc[table[CLASS] == k, WELL].iloc[:per_class]]
    write_synthetic_plates(folder, seed=seed, n_fields=g.fields, size=g.size, layout=g.layout, kind="training",
                           params=params, n_workers=2, magnification=g.magnification, wells=wells)
    return folder / "plate_01"


def plate_label(g: Geometry, s: Scoring, per_class: int | None = None) -> str:
    label = f"{g.label.split(', pixel size')[0]}, {s.label}" if s.label else g.label
    return f"{per_class * N_CLASSES} wells: {label}" if per_class else label


def score_plate(store: ResultStore, bundle, reference: FitStats, folder: Path, g: Geometry, s: Scoring,
                seed: int, per_class: int | None = None) -> Plate:
    label = plate_label(g, s, per_class)
    result, res = score(store, bundle, folder, f"{label}-{seed}", pixel_size=s.pixel_size,
                        channels=s.channels)
    # the truth beside the images (a screen's plate map has no class; its control and disease wells do)
    truth = pd.read_csv(folder / "ground_truth.csv")[[WELL, CLASS]]
    w = res.wells.drop(columns=[CLASS], errors="ignore").merge(truth, on=WELL, validate="one_to_one")
    w = w.dropna(subset=[CLASS])
    fit = result.model_fit
    values = {c.name: float(c.value) for c in fit.checks}
    passed = {c.name: c.passed for c in fit.checks}
    stats = result.fit_stats
    # the confidence check compares with the reference's confidence for this plate's class mix
    expected = fitcheck._weighted(reference.confidence_by_class, stats.crop_share_by_class)
    values["confidence_delta"] = stats.confidence - expected
    passed["confidence_delta"] = passed.pop("confidence", None)
    values.pop("confidence", None)
    acc = float((w[CALLED_CLASS] == w[CLASS].astype(int)).mean())
    return Plate(label, s.truth + (SMALL if per_class else ""), seed, acc, len(w), fit.verdict, values, passed)


def run(bundle, work: Path, counts: dict[str, int], first_seed: int, keep: bool) -> list[Plate]:
    reference = FitStats.from_dict(bundle.card["fit_reference"])
    seed: Iterator[int] = iter(range(first_seed, first_seed + 10_000))
    out: list[Plate] = []
    with ResultStore(work / "results.duckdb") as store:
        for plan in plans():
            for s in [next(seed) for _ in range(counts[plan.count])]:
                folder = (render_small(work, plan.geometry, s, plan.per_class) if plan.per_class
                          else render(work, plan.geometry, s, plan.kind))
                for scoring in plan.scorings:
                    out.append(score_plate(store, bundle, reference, folder, plan.geometry, scoring, s, plan.per_class))
                    p = out[-1]
                    print(f"{p.seed} {p.label} [{p.truth}]: {p.well_acc:.1%} of {p.n_wells} wells, {p.verdict}, "
                          + ", ".join(f"{k} {v:.3f}" for k, v in p.values.items() if k in CHECKS), flush=True)
                if not keep:   # a 2x npy plate is ~190 MB: keep the disk free
                    shutil.rmtree(folder.parent)
    print(f"seeds {first_seed}-{next(seed) - 1}")
    return out


# --- the tables ------------------------------------------------------------------------------------

def _stats(v: Sequence[float]) -> str:
    a = np.asarray([x for x in v if np.isfinite(x)], float)
    if not len(a):
        return "| - | - | - | - | - |"
    p5, p50, p95 = np.percentile(a, [5, 50, 95])
    return f"| {a.min():.3f} | {p5:.3f} | {p50:.3f} | {p95:.3f} | {a.max():.3f} |"


def range_table(plates: list[Plate]) -> list[str]:
    out = ["| check | plates | n | min | 5th pct | median | 95th pct | max | failed at today's limit |",
           "|---|---|---|---|---|---|---|---|---|"]
    names = list(CHECKS) + sorted({k for p in plates for k in p.values if k.startswith("intensity")})
    for name in [*names, "well accuracy"]:
        for truth in CLASSES:
            group = [p for p in plates if p.truth == truth]
            if not group:
                continue
            vals = [p.well_acc if name == "well accuracy" else p.values.get(name, np.nan) for p in group]
            failed = "" if name == "well accuracy" else str(sum(p.passed.get(name) is False for p in group))
            out.append(f"| {name} | {truth} | {len(group)} {_stats(vals)} {failed} |")
    return out


def _value(p: Plate, name: str) -> float | tuple[float, float]:
    if "+" in name:   # a pair of checks
        return tuple(p.values.get(part, np.nan) for part in name.split("+"))
    return p.values.get(name, np.nan)


def fails_under(p: Plate, name: str, ok) -> bool:
    """Whether check ``name`` (or a pair such as ``disagreement+window``) fails the candidate ``ok(value)``."""
    value = _value(p, name)
    return bool(np.all(np.isfinite(value))) and not ok(value)


def verdict_under(p: Plate, name: str, ok) -> bool:
    """POOR when ``name`` fails under the candidate test ``ok(value)`` or any other check failed."""
    parts = set(name.split("+"))
    if {"disagreement", "confidence_delta"} <= parts:   # the candidate replaces today's joint check too
        parts.add("disagreement_with_low_confidence")
    others = any(v is False for k, v in p.passed.items() if k not in parts)
    return others or fails_under(p, name, ok)


def candidate_table(plates: list[Plate]) -> list[str]:
    lo = fitcheck.DISAGREEMENT_RANGE[0]
    candidates = list(
        [("disagreement", f"ratio <= {hi:.2f}", lambda v, hi=hi: lo <= v <= hi)
         for hi in (1.20, 1.25, 1.30, 1.35, 1.40, 1.45, 1.50)]
        + [("window", f"share >= {w:.2f}", lambda v, w=w: v >= w) for w in (0.60, 0.70, 0.75, 0.80, 0.85)]
        + [("confidence_delta", f"abs <= {t:.2f}", lambda v, t=t: abs(v) <= t) for t in (0.10, 0.07, 0.05, 0.03)]
        + [("control_called_control", f">= {c:.2f}", lambda v, c=c: v >= c) for c in (0.5, 0.9, 1.0)]
    )
    both = [(hi, w) for hi in (1.30, 1.35, 1.40, 1.50) for w in (0.80, 0.85, 0.90)]
    candidates += [("disagreement+window", f"ratio <= {hi:.2f} and share >= {w:.2f}",
                    lambda v, hi=hi, w=w: lo <= v[0] <= hi and v[1] >= w) for hi, w in both]
    # today's disagreement and confidence limits, and POOR as well when both signs point the same way
    # together: members disagree more than usual and crops are less confident than expected
    hi_now, tol_now = fitcheck.DISAGREEMENT_RANGE[1], fitcheck.CONFIDENCE_TOLERANCE
    joint = [(d, c) for d in (1.10, 1.15, 1.20) for c in (0.03, 0.035, 0.04, 0.05)]
    candidates += [("disagreement+confidence_delta", f"and not (ratio >= {d:.2f} and delta <= -{c:.3f})",
                    lambda v, d=d, c=c: (lo <= v[0] <= hi_now and abs(v[1]) <= tol_now
                                         and not (v[0] >= d and v[1] <= -c))) for d, c in joint]
    groups = {t: [p for p in plates if p.truth == t] for t in CLASSES}
    groups = {t: g for t, g in groups.items() if g}
    head = " | ".join(f"{t}: POOR / n (by this check alone)" for t in groups)
    out = [f"| check | candidate limit | {head} |", "|---|---|" + "---|" * len(groups)]
    for name, text, ok in candidates:
        cells = []
        for g in groups.values():
            poor = sum(verdict_under(p, name, ok) for p in g)
            alone = sum(fails_under(p, name, ok) for p in g)
            cells.append(f"{poor}/{len(g)} ({alone})")
        out.append(f"| {name} | {text} | {' | '.join(cells)} |")
    return out


def geometry_table(plates: list[Plate]) -> list[str]:
    out = ["| plates | class | n | disagreement min-max | window min-max | well accuracy min-max |",
           "|---|---|---|---|---|---|"]
    for label in dict.fromkeys(p.label for p in plates):
        g = [p for p in plates if p.label == label]

        def span(key: str) -> str:
            v = [p.values.get(key, np.nan) for p in g]
            return f"{np.nanmin(v):.3f}-{np.nanmax(v):.3f}"
        acc = [p.well_acc for p in g]
        out.append(f"| {label} | {g[0].truth} | {len(g)} | {span('disagreement')} | {span('window')} | "
                   f"{min(acc):.1%}-{max(acc):.1%} |")
    return out


def plate_table(plates: list[Plate]) -> list[str]:
    out = ["| seed | plate | class | well accuracy | verdict | controls called control | window | "
           "confidence delta | disagreement |", "|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(plates, key=lambda p: (CLASSES.index(p.truth), p.values.get("disagreement", np.nan))):
        v = p.values
        out.append(f"| {p.seed} | {p.label} | {p.truth} | {p.well_acc:.1%} | {p.verdict} | "
                   f"{v.get('control_called_control', np.nan):.2f} | {v.get('window', np.nan):.3f} | "
                   f"{v.get('confidence_delta', np.nan):+.3f} | {v.get('disagreement', np.nan):.3f} |")
    return out


def markdown(plates: list[Plate], header: str) -> str:
    return "\n".join([
        header, "",
        "### Each check's value, by class of plate (failed: at the limits in fitcheck.py now)", "",
        *range_table(plates), "",
        "### Plates POOR if one limit were changed (the other checks as now); in brackets, flagged by "
        "that check alone", "",
        *candidate_table(plates), "",
        "### By geometry", "", *geometry_table(plates), "",
        "### Every plate (sorted by class, then disagreement)", "", *plate_table(plates),
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO_ROOT / "data" / "models" / "demo" / "ensemble"))
    ap.add_argument("--seeds", type=int, default=3, help="plates per right geometry and per screen")
    ap.add_argument("--scale-seeds", type=int, default=14,
                    help="2x npy plates, each scored with its pixel size given and unknown")
    ap.add_argument("--small-seeds", type=int, default=8,
                    help=f"small plates ({SMALL_PER_CLASS} wells per class) at 256 px x 4 and 2x (given, unknown)")
    ap.add_argument("--first-seed", type=int, default=9101)
    ap.add_argument("--work", help="keep rendered plates here (default: a temporary folder, emptied as it goes)")
    ap.add_argument("--markdown", help="also write the tables to this file")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    bundle = load_bundle(args.model)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fit-margins-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        counts = {"seeds": args.seeds, "scale_seeds": args.scale_seeds, "small_seeds": args.small_seeds}
        plates = run(bundle, work, counts, args.first_seed, keep=bool(args.work))
    seeds = sorted({p.seed for p in plates})
    header = (f"Model {bundle.id}; limits now: disagreement {fitcheck.DISAGREEMENT_RANGE}, window >= "
              f"{fitcheck.MIN_WINDOW_SHARE}, confidence +/- {fitcheck.CONFIDENCE_TOLERANCE}, controls called "
              f"control >= {fitcheck.MIN_CONTROL_CALLED_CONTROL}. Seeds {seeds[0]}-{seeds[-1]} (--seeds "
              f"{args.seeds} --scale-seeds {args.scale_seeds} --small-seeds {args.small_seeds}); "
              f"{time.perf_counter() - t0:.0f} s.")
    table = markdown(plates, header)
    print()
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

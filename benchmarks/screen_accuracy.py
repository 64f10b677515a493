"""Does the screen give the right answers on plates nobody tuned on? Measured against ground truth.

Renders fresh synthetic plates (seeds never used to build or calibrate the demo model) in several
field geometries, scores each through the product path (``pipeline.run_plate`` into a real DuckDB
store, then ``results.load_plate_results``) with the shipped demo ensemble, and compares with the
truth the generator wrote beside the images:

* training plates (60 wells, 10 per class): well accuracy of the called class, and the model-fit
  verdict, for 256 px x 4 and x 16 fields, 512 px x 1 and x 4, 1024 px x 1, and a plate imaged at 2x
  magnification scored with its pixel size (from its files, or given by the user) and without it;
* screening plates (4 compounds x 6 doses x 3 wells, 8 control and 8 disease wells) at 256 px (4
  fields) and 512 px (1 field): per dose, hit calls against the truth (sensitivity over doses whose
  true rescue is >= 55 %, false hits over doses under 35 %), |rescue % - true rescue %|, each active
  compound's EC50 fold error, whether the inactive compound is ever a hit; on both readouts (the
  inflammation score, the default, and P(control)) from the same predictions;
* the model-fit check on plates scored wrongly on purpose: nucleus and microglia swapped in the
  channel map, and the same 12-bit plate stored as 12-bit values and scaled to 16 bits.

Usage::

    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/screen_accuracy.py [--seeds 2] [--screens 3] [--first-seed 7001]
        [--work /tmp/screen_accuracy] [--markdown results.md] [--only "2x magnification" --only ...]

``--only TEXT`` (repeatable) runs only the training geometries and screens whose label contains
TEXT (the misuse cases only without ``--only``); each keeps the seed it gets in a full run.

The synthetic assay is the demo recipe's (``demo.DemoRecipe().synth_params()``: what the demo was
trained on). Seeds from 7001 up were never used for the demo's training (seed 1), evaluation (101,
102), fit calibration (101, 102, 201) or the app's demo plate (2025).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout  # noqa: E402

from neurorg_core.config import REPO_ROOT  # noqa: E402
from neurorg_core.model import load_bundle  # noqa: E402
from neurorg_core.pipeline import ScoreOptions, run_plate  # noqa: E402
from neurorg_core.results import load_plate_results  # noqa: E402
from neurorg_core.platemap import load_plate_map  # noqa: E402
from neurorg_core.plates import load_plate  # noqa: E402
from neurorg_core.schema import (  # noqa: E402
    CALLED_CLASS, CLASS, COMPOUND, CONVERGED, DOSE, EC50, HIT, RESCUE_PCT, ROLE, TRUE_EC50,
    TRUE_MAX_RESCUE, TRUE_RESCUE,
)
from neurorg_core.store import ResultStore  # noqa: E402
from neurorg_core.synth import SYNTH_PIXEL_SIZE_UM, write_synthetic_plates  # noqa: E402
from neurorg_core.demo import DemoRecipe  # noqa: E402

HIT_TRUE = 0.55    # doses whose true rescue is at least this must be called hits
HIT_FALSE = 0.35   # doses whose true rescue is under this must not


@dataclass(frozen=True)
class Geometry:
    label: str
    size: int
    fields: int
    magnification: float = 1.0
    layout: str = "imagexpress"
    pixel_size: float | None = None     # given by the user at scoring
    expect_fit: str = "ok"


TRAINING = (
    Geometry("256 px x 4 fields (the demo's own)", 256, 4),
    Geometry("256 px x 16 fields", 256, 16),
    Geometry("512 px x 1 field", 512, 1),
    Geometry("512 px x 4 fields", 512, 4),
    Geometry("1024 px x 1 field", 1024, 1),
    Geometry("2x magnification, 512 px x 4, pixel size from the files", 512, 4, 2.0),
    Geometry("2x magnification, 512 px x 4, pixel size given", 512, 4, 2.0, "npy", SYNTH_PIXEL_SIZE_UM / 2),
    Geometry("2x magnification, 512 px x 4, pixel size unknown", 512, 4, 2.0, "npy", None, "POOR"),
)
SCREENS = (Geometry("screen 256 px x 4 fields", 256, 4), Geometry("screen 512 px x 1 field", 512, 1))


@dataclass
class Row:
    what: str
    seed: int
    values: dict = field(default_factory=dict)


def render(work: Path, g: Geometry, seed: int, kind: str, bit_depth: int = 8) -> Path:
    folder = work / f"{kind}_{g.size}x{g.fields}_m{g.magnification:g}_{g.layout}_b{bit_depth}_s{seed}"
    if not (folder / "plate_01" / "ground_truth.csv").is_file():
        write_synthetic_plates(folder, seed=seed, n_fields=g.fields, size=g.size, layout=g.layout, kind=kind,
                               params=DemoRecipe().synth_params(), n_workers=2, magnification=g.magnification,
                               bit_depth=bit_depth)
    return folder / "plate_01"


def score(store: ResultStore, bundle, folder: Path, name: str, *, pixel_size=None, channels=None,
          readout="inflammation_score"):
    plate = load_plate(folder, channels)
    result = run_plate(plate, load_plate_map(folder / "platemap.csv"), bundle, store, name=name,
                       options=ScoreOptions(pixel_size_um=pixel_size, readout=readout))
    return result, load_plate_results(store, name)


def training_row(store, bundle, work, g: Geometry, seed: int) -> Row:
    folder = render(work, g, seed, "training")
    t0 = time.perf_counter()
    result, res = score(store, bundle, folder, f"train-{g.label}-{seed}", pixel_size=g.pixel_size)
    w = res.wells.dropna(subset=[CLASS])
    acc = float((w[CALLED_CLASS] == w[CLASS].astype(int)).mean())
    return Row(g.label, seed, {"well_acc": acc, "n_wells": len(w), "fit": result.model_fit.verdict,
                               "fit_expected": g.expect_fit, "edge": result.crop_edge_px,
                               "reasons": "; ".join(result.model_fit.reasons), "seconds": time.perf_counter() - t0})


def screen_truth(folder: Path) -> pd.DataFrame:
    gt = pd.read_csv(folder / "ground_truth.csv")
    t = gt[gt[ROLE] == "treatment"]
    return t.groupby([COMPOUND, DOSE]).agg(true_rescue=(TRUE_RESCUE, "mean"), true_ec50=(TRUE_EC50, "first"),
                                           max_rescue=(TRUE_MAX_RESCUE, "first")).reset_index()


def judge_screen(res, truth: pd.DataFrame) -> dict:
    t = res.treatments.merge(truth, on=[COMPOUND, DOSE], how="inner", validate="one_to_one")
    should = t["true_rescue"] >= HIT_TRUE
    must_not = t["true_rescue"] < HIT_FALSE
    fits = res.fits.set_index(COMPOUND)
    folds = []
    for cpd, grp in truth.groupby(COMPOUND):
        if grp["max_rescue"].iloc[0] == 0:
            continue
        fit = fits.loc[cpd]
        ec50 = float(fit[EC50]) if bool(fit[CONVERGED]) else np.nan
        true = float(grp["true_ec50"].iloc[0])
        folds.append(max(ec50 / true, true / ec50) if np.isfinite(ec50) else np.inf)
    inactive = truth.loc[truth["max_rescue"] == 0, COMPOUND].unique()
    return {
        "sensitivity": float(t.loc[should, HIT].mean()), "n_should": int(should.sum()),
        "hits_found": int(t.loc[should, HIT].sum()),
        "false_hits": int(t.loc[must_not, HIT].sum()), "n_must_not": int(must_not.sum()),
        "rescue_mae": float((t[RESCUE_PCT] - 100 * t["true_rescue"]).abs().mean()),
        "ec50_fold_max": float(max(folds)), "ec50_folds": [round(f, 2) for f in folds],
        "inactive_hit": bool(t.loc[t[COMPOUND].isin(inactive), HIT].any()),
        "z_prime": float(res.qc.z_prime) if res.qc is not None else np.nan,
    }


def screen_rows(store, bundle, work, g: Geometry, seed: int) -> list[Row]:
    folder = render(work, g, seed, "screen")
    truth = screen_truth(folder)
    result, res = score(store, bundle, folder, f"screen-{g.label}-{seed}")
    rows = [Row(f"{g.label}, inflammation score", seed, {**judge_screen(res, truth), "fit": result.model_fit.verdict})]
    res_p = load_plate_results(store, f"screen-{g.label}-{seed}", readout="p_control")
    rows.append(Row(f"{g.label}, P(control) readout", seed, {**judge_screen(res_p, truth),
                                                            "fit": result.model_fit.verdict}))
    return rows


def misuse_rows(store, bundle, work, seed: int) -> list[Row]:
    """Plates scored wrongly on purpose, and the 12-bit plate stored two ways."""
    g = SCREENS[0]
    folder = render(work, g, seed, "screen")
    rows = []
    result, _ = score(store, bundle, folder, f"swap-{seed}", channels={"nucleus": "w3", "neuron": "w2",
                                                                       "microglia": "w1"})
    rows.append(Row("nucleus and microglia swapped", seed, {"fit": result.model_fit.verdict, "fit_expected": "POOR",
                                                            "reasons": "; ".join(result.model_fit.reasons)}))
    b12 = render(work, g, seed, "screen", bit_depth=12)
    scaled = b12.parent.parent / (b12.parent.name + "_x16") / "plate_01"
    if not (scaled / "ground_truth.csv").is_file():
        import tifffile

        shutil.copytree(b12, scaled, dirs_exist_ok=True)
        for tif in scaled.glob("*.tif"):
            with tifffile.TiffFile(tif) as f:
                desc = f.pages[0].description
            tifffile.imwrite(tif, tifffile.imread(tif) * np.uint16(16), description=desc, metadata=None)
    r12, res12 = score(store, bundle, b12, f"b12-{seed}")
    r16, res16 = score(store, bundle, scaled, f"b12x16-{seed}")
    diff = float(np.abs(res12.wells["P_control"].to_numpy() - res16.wells["P_control"].to_numpy()).max())
    rows.append(Row("12-bit plate: as 12-bit values vs scaled to 16 bits", seed, {
        "fit": f"{r12.model_fit.verdict} / {r16.model_fit.verdict}", "fit_expected": "ok / ok",
        "bits": f"{r12.intensity.bits} / {r16.intensity.bits}", "max_p_control_diff": diff}))
    return rows


def markdown(train: list[Row], screens: list[Row], misuse: list[Row]) -> str:
    out = ["### Well accuracy of the demo ensemble on unseen training plates (60 wells each)", "",
           "| geometry | seed | well accuracy | crop edge (px) | model fit (expected) |", "|---|---|---|---|---|"]
    for r in train:
        v = r.values
        fit = v["fit"] + ("" if v["fit"] == v["fit_expected"] else f" (expected {v['fit_expected']})")
        out.append(f"| {r.what} | {r.seed} | {v['well_acc']:.1%} ({round(v['well_acc'] * v['n_wells'])}/"
                   f"{v['n_wells']}) | {v['edge']} | {fit}{': ' + v['reasons'] if v['reasons'] else ''} |")
    out += ["", "### Screens against the truth (24 compound x dose per plate)", "",
            "| plate, readout | seed | hits found (true rescue >= 55 %) | false hits (true < 35 %) | "
            "mean abs rescue error (points) | EC50 fold error, active compounds | inactive a hit | Z' | "
            "model fit |", "|---|---|---|---|---|---|---|---|---|"]
    for r in screens:
        v = r.values
        out.append(f"| {r.what} | {r.seed} | {v['hits_found']}/{v['n_should']} ({v['sensitivity']:.0%}) | "
                   f"{v['false_hits']}/{v['n_must_not']} | {v['rescue_mae']:.1f} | "
                   f"{', '.join(f'{f:g}' for f in v['ec50_folds'])} | {'yes' if v['inactive_hit'] else 'no'} | "
                   f"{v['z_prime']:.2f} | {v['fit']} |")
    out += ["", "### The model-fit check on plates scored wrongly on purpose", "",
            "| case | seed | verdict (expected) | detail |", "|---|---|---|---|"]
    for r in misuse:
        v = r.values
        detail = v.get("reasons") or (f"bits {v['bits']}, max |P(control) difference| {v['max_p_control_diff']:.1e}"
                                      if "bits" in v else "")
        out.append(f"| {r.what} | {r.seed} | {v['fit']} ({v['fit_expected']}) | {detail} |")
    return "\n".join(out)


def summary(train: list[Row], screens: list[Row], misuse: list[Row]) -> str:
    ok_geo = [r for r in train if r.values["fit_expected"] == "ok"]
    inf = [r for r in screens if r.what.endswith("inflammation score")]
    lines = []
    if ok_geo:
        lines.append(f"well accuracy, every geometry scored right: min {min(r.values['well_acc'] for r in ok_geo):.1%} "
                     f"over {len(ok_geo)} plates (goal >= 95 %)")
    judged = train + misuse[:1]
    if judged:
        lines.append(f"fit verdicts as expected: {sum(r.values['fit'] == r.values['fit_expected'] for r in judged)}"
                     f"/{len(judged)}")
    if inf:
        lines.append(
            f"screens (inflammation score): hits found {sum(r.values['hits_found'] for r in inf)}/"
            f"{sum(r.values['n_should'] for r in inf)} (goal >= 90 %), false hits "
            f"{sum(r.values['false_hits'] for r in inf)} (goal 0), worst mean rescue error "
            f"{max(r.values['rescue_mae'] for r in inf):.1f} points (goal <= 10), worst EC50 fold error "
            f"{max(r.values['ec50_fold_max'] for r in inf):.2f} (goal <= 2), inactive a hit "
            f"{sum(r.values['inactive_hit'] for r in inf)} times (goal 0)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO_ROOT / "data" / "models" / "demo" / "ensemble"))
    ap.add_argument("--seeds", type=int, default=2, help="training plates per geometry")
    ap.add_argument("--screens", type=int, default=3, help="screening plates per field size")
    ap.add_argument("--first-seed", type=int, default=7001)
    ap.add_argument("--work", help="keep rendered plates here (default: a temporary folder)")
    ap.add_argument("--markdown", help="also write the tables to this file")
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="run only the geometries and screens whose label contains TEXT (repeatable; "
                         "each keeps its full-run seed; the misuse cases run only without --only)")
    args = ap.parse_args(argv)

    def chosen(label: str) -> bool:
        return not args.only or any(text.lower() in label.lower() for text in args.only)

    logging.basicConfig(level=logging.WARNING)
    bundle = load_bundle(args.model)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="screen-accuracy-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        seed = iter(range(args.first_seed, args.first_seed + 10_000))
        train, screens, misuse = [], [], []
        with ResultStore(work / "results.duckdb") as store:
            seeds_of: dict[str, list[int]] = {}
            for g in TRAINING:
                if g.label.endswith("pixel size unknown"):   # the same plates as "given", scored without it
                    seeds_of[g.label] = seeds_of[TRAINING[6].label]
                else:
                    seeds_of[g.label] = [next(seed) for _ in range(args.seeds)]
                for s in seeds_of[g.label] if chosen(g.label) else []:
                    train.append(training_row(store, bundle, work, g, s))
                    print(train[-1], flush=True)
            for g in SCREENS:
                for s in [next(seed) for _ in range(args.screens)]:
                    if chosen(g.label):
                        screens += screen_rows(store, bundle, work, g, s)
                        print(screens[-2], screens[-1], sep="\n", flush=True)
            misuse_seed = next(seed)
            if not args.only:
                misuse += misuse_rows(store, bundle, work, misuse_seed)
    table = markdown(train, screens, misuse)
    print()
    print(table)
    print()
    print(summary(train, screens, misuse))
    print(f"\n({time.perf_counter() - t0:.0f} s, model {bundle.id})")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n\n" + summary(train, screens, misuse) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

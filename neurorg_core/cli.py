"""`python -m neurorg_core ...` entry points.

Size (~550 lines): one short handler per sub-command (11 of them) and the argument parser that
documents every option in one place (``build_parser``); the handlers only parse, call the core and print.

Each sub-command is a thin handler: parse arguments, call the core's public verbs, print. A
``NeuroRGError`` (bad input) is printed on one line and the exit status is 2; there is never a
traceback for bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from neurorg_core.devices import AUGMENT_CHOICES, BACKENDS, PRECISIONS
from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import (CHANNELS, CROPS_PER_WELL, EXPORT_TABLES, MAX_CROPS_PER_WELL,
                                 READOUT_LABELS, READOUTS, RESCUE_PCT)

if TYPE_CHECKING:   # annotations only: the CLI imports heavy modules inside each handler
    import pandas as pd

    from neurorg_core.config import Config
    from neurorg_core.model import Bundle
    from neurorg_core.pipeline import ScoreOptions
    from neurorg_core.plates import Plate

log = logging.getLogger(__name__)


def _members(bundle: Bundle) -> str:
    n = len(bundle.members)
    return f"{n} member" + ("" if n == 1 else "s")


def _parse_channel_map(text: str | None) -> dict[str, str] | None:
    """'nucleus=w1,neuron=w2,microglia=w3' -> {'nucleus': 'w1', ...}."""
    if not text:
        return None
    mapping: dict[str, str] = {}
    for part in text.split(","):
        role, sep, ident = part.partition("=")
        role, ident = role.strip().lower(), ident.strip()
        if not sep or role not in CHANNELS or not ident:
            raise NeuroRGError(
                f"--channels entry {part!r} is not ROLE=ID with ROLE one of {', '.join(CHANNELS)}"
            )
        mapping[role] = ident
    return mapping


# --- handlers: one per sub-command, each owned by the module it calls -----------------------

def _cmd_synth(args: argparse.Namespace) -> int:
    from neurorg_core.synth import write_synthetic_plates

    paths = write_synthetic_plates(
        out_dir=Path(args.out), seed=args.seed, n_plates=args.plates, n_wells=args.wells,
        n_fields=args.fields, size=args.size, layout=args.layout, kind=args.kind,
        bit_depth=args.bit_depth, n_workers=args.workers, magnification=args.magnification,
    )
    for p in paths:
        print(p)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from neurorg_core.errors import PlateMapError
    from neurorg_core.plates import load_plate
    from neurorg_core.platemap import check_plate_map, load_plate_map, select_plate

    # a zip is extracted into a temporary folder that the plate owns and removes on leaving `with`
    with load_plate(args.path, _parse_channel_map(args.channels)) as plate:
        report = {**plate.summary(), "source": str(args.path)}
        report["file_problems"] = plate.check_files()
        if not report["file_problems"]:
            report["crops"] = _crop_report(args, plate, report["file_problems"])
    report["plate_map_problems"] = []
    if args.plate_map:
        try:
            plate_map = load_plate_map(args.plate_map)
            # a multi-plate map's plate as `score` picks it (the images' folder name)
            report["plate_map_problems"] = check_plate_map(plate_map, plate.wells(),
                                                           plate=select_plate(plate_map, plate.name))
        except PlateMapError as exc:
            report["plate_map_problems"] = exc.problems
    report["scoreable"] = not report["file_problems"] and not report["plate_map_problems"]
    print(json.dumps(report, indent=2))
    if not report["scoreable"]:
        n = len(report["file_problems"]) + len(report["plate_map_problems"])
        first = (report["file_problems"] + report["plate_map_problems"])[0]
        print(f"error: not scoreable, {n} problem(s); first: {first}", file=sys.stderr)
        return 2
    return 0


def _crop_report(args: argparse.Namespace, plate: Plate, problems: list[str]) -> dict:
    """How ``score`` would cut this plate for the model: crop edge, scale, intensity; problems
    (fields smaller than a crop) go into ``problems``."""
    from neurorg_core.config import load_config
    from neurorg_core.model import load_bundle
    from neurorg_core.preprocess import CropGeometry, plate_cropping

    path = Path(args.model) if args.model else load_config().model_dir / "ensemble"
    if args.model is None and not (path / "card.json").is_file():
        note = f"no model at {path} to check the crop scale against; give --model"
        print(f"note: {note}", file=sys.stderr)
        return {"model": None, "notes": [note]}
    bundle = load_bundle(path)
    cropping = plate_cropping(plate, CropGeometry.from_card(bundle.card), pixel_size_um=args.pixel_size,
                              bits=args.bit_depth)
    report = {"model": str(path), **cropping.as_params(), "intensity_bits": cropping.intensity.bits,
              "intensity_source": cropping.intensity.source, "notes": cropping.notes()}
    try:
        plans = {len(plate.fields_of(w)) for w in plate.wells()}
        report["overlapping_tiles"] = any(cropping.plan(n, plate.field_shape).overlapping for n in plans)
    except NeuroRGError as exc:
        problems.append(str(exc))
    for note in report["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return report


def _cmd_train(args: argparse.Namespace) -> int:
    from neurorg_core.train import TrainRuntime, TrainSettings, train_bundle

    settings = TrainSettings(arch=args.arch, input_size=args.input_size, crop_edge_px=args.crop_edge,
                             epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                             seed=args.seed)
    runtime = TrainRuntime(precision=args.precision, jit_compile={"auto": None, "on": True, "off": False}[args.jit],
                           loader_workers=args.loader_workers, augment_on=args.augment_on)
    bundle = train_bundle(args.plates, Path(args.out), settings, channels=args.channels, runtime=runtime)
    print(f"model {bundle.id} ({bundle.kind}, {_members(bundle)}) written to {bundle.path}")
    for m, entry in zip(bundle.members, bundle.card["members"]):
        v = entry["metrics"]["validation"]
        print(f"  {m.name} ({m.id}): best epoch {entry['best_epoch']}, validation crop acc "
              f"{v['crop_acc']:.1%}, well acc {v['well_acc']:.1%}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from neurorg_core.inference import Predictor
    from neurorg_core.model import load_bundle
    from neurorg_core.evaluate import evaluate_bundle, format_report

    bundle = load_bundle(args.model)
    predictor = Predictor(bundle, backend=_backend(args), precision=args.precision)
    report = evaluate_bundle(args.plates, bundle, predictor=predictor)
    print(format_report(report))
    print(f"inference: {predictor.backend} ({predictor.precision}, batch {predictor.batch_size})")
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        print(f"full report (confusion matrices, kappa) written to {args.json}")
    return 0


def _cmd_convert_bundle(args: argparse.Namespace) -> int:
    from neurorg_core.inference import convert_bundle
    from neurorg_core.model import load_bundle

    before = load_bundle(args.model)
    after = convert_bundle(before)
    print(f"model {after.path}: LiteRT files of {_members(after)} checked and recorded; "
          f"bundle id {before.id} -> {after.id} (member ids unchanged)")
    return 0


def _cmd_import_study(args: argparse.Namespace) -> int:
    from neurorg_core.study import import_study

    bundle = import_study(args.state_dict, args.normalization, Path(args.out), arch=args.arch,
                          input_size=args.input_size)
    geo = bundle.card["crop_geometry"]
    print(f"model {bundle.id} ({bundle.card['architecture']}, {_members(bundle)}, "
          f"{bundle.input_size} px whole fields, well call {bundle.card['well_call']}) written to {bundle.path}")
    for m, entry in zip(bundle.members, bundle.card["members"]):
        print(f"  {m.name} ({m.id}) <- {entry['source']['file']} (sha256 {entry['source']['sha256'][:16]})")
    print(f"crop geometry: {geo['mode']} ({geo['field_edge_px']} px); score with: python -m neurorg_core "
          f"score PLATE --plate-map CSV --model {bundle.path}")
    return 0


def _cmd_build_demo(args: argparse.Namespace) -> int:
    import tempfile

    from neurorg_core.demo import DemoRecipe, build_demo
    from neurorg_core.train import TrainSettings

    recipe = DemoRecipe(ensemble_epochs=args.epochs, single_channel_epochs=args.single_channel_epochs,
                        cell_severity_sd=args.cell_severity_sd, well_severity_sd=args.well_severity_sd)
    settings = TrainSettings(epochs=args.epochs, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="neurorg-demo-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        metrics = build_demo(Path(args.out), work, settings=settings, recipe=recipe, reuse=args.reuse)
    print(json.dumps({"ensemble": metrics["ensemble"]["summary"],
                      "single_channel_pearson": metrics["single_channel"]["screen_pearson_vs_ensemble"]},
                     indent=2))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from neurorg_core.config import load_config
    from neurorg_core.platemap import load_plate_map
    from neurorg_core.plates import load_plate

    cfg = load_config()
    options = _score_options(args)   # checked before any file is read
    # a zip is extracted into a temporary folder owned by the plate, removed when scoring ends
    # (the store records the zip as the plate's source)
    with load_plate(Path(args.path), _parse_channel_map(args.channels)) as plate:
        return _score_loaded(args, cfg, plate, load_plate_map(args.plate_map), options)


def _score_options(args: argparse.Namespace) -> ScoreOptions:
    from neurorg_core.config import load_config
    from neurorg_core.pipeline import ScoreOptions

    return ScoreOptions(crops_per_well=args.crops_per_well, pixel_size_um=args.pixel_size, bits=args.bit_depth,
                        readout=args.readout or load_config().readout, backend=_backend(args),
                        precision=args.precision)


def _backend(args: argparse.Namespace) -> str:
    """``--backend``, else ``NEURORG_BACKEND``, else auto."""
    from neurorg_core.config import load_config

    return args.backend or load_config().backend


def _add_backend(s: argparse.ArgumentParser, precision: bool = True) -> None:
    s.add_argument("--backend", choices=BACKENDS, default=None,
                   help="inference: auto (default, or NEURORG_BACKEND) = Keras on a GPU when the Keras backend "
                        "sees one, else LiteRT; litert = the CPU fast path; keras = the Keras models on the "
                        "Keras backend's device")
    if precision:
        s.add_argument("--precision", choices=PRECISIONS, default="float32",
                       help="bfloat16: faster on GPUs that compute it (keras backend only); crop probabilities "
                            "within 0.1 of float32, well means within 0.01")


def _score_loaded(args: argparse.Namespace, cfg: Config, plate: Plate, plate_map: pd.DataFrame,
                  options: ScoreOptions) -> int:
    from neurorg_core.model import load_bundle
    from neurorg_core.pipeline import run_plate
    from neurorg_core.results import load_plate_results
    from neurorg_core.store import ResultStore

    bundle = load_bundle(Path(args.model) if args.model else cfg.model_dir / "ensemble", kind="ensemble")
    db = Path(args.db) if args.db else cfg.db_path
    shown = [-1]

    def progress(done: int, total: int) -> None:
        pct = 100 * done // max(total, 1)
        if pct // 10 != shown[0] // 10 or done == total:
            shown[0] = pct
            print(f"  {done}/{total} crops ({pct} %)", file=sys.stderr, flush=True)

    print(f"scoring {plate.name}: {len(plate.wells())} wells, {len(plate.fields)} fields, "
          f"model {bundle.id} ({_members(bundle)})", file=sys.stderr)
    with ResultStore(db) as store:
        result = run_plate(plate, plate_map, bundle, store, name=args.name or plate.name, options=options,
                           progress=progress)
        res = load_plate_results(store, result.plate, result.run_id, hits=cfg.hit_rule)
    geo = res.run["params"]["crop_geometry"]
    print(f"plate {result.plate}: run {result.run_id} stored in {db}")
    if res.synthetic_model:
        print("model: SYNTHETIC demo model (trained on the synthetic assay, not on real cells)")
    print(f"wells scored: {result.n_wells} ({result.n_fields} fields, {result.n_crops} crops of "
          f"{result.crop_edge_px} px; plate pixel size {geo['plate_pixel_size_um'] or 'unknown'} um"
          f"{' (' + geo['pixel_size_source'] + ')' if geo['pixel_size_source'] else ''}, "
          f"{result.intensity.bits}-bit intensity)")
    print(f"cache hits: {result.cache_hits} fields, misses: {result.cache_misses} "
          f"({result.inferred_crops} crop x member predictions computed"
          f"{' on ' + ', '.join(res.run['params']['backend_ran']) if result.inferred_crops else ''})")
    print(f"model fit: {result.model_fit.summary()}")
    label = READOUT_LABELS[res.readout]
    print(f"readout: {label}")
    if res.qc is not None:
        print(f"Z': {res.qc.z_prime:.3f} (SSMD {res.qc.ssmd:.2f}; control {res.qc.mean_control:.3f}, "
              f"disease {res.qc.mean_disease:.3f} on the {label})")
    else:
        print(f"Z': not computable ({res.problems.get('qc', 'no control/disease wells')})")
    if "treatments" in res.problems:
        print(f"hits: not computable ({res.problems['treatments']})")
    else:
        note = f" (provisional: {res.hits_provisional})" if res.hits_provisional else ""
        print(f"hits: {res.n_hits} of {len(res.treatments)} treatments (compound x dose){note}")
    return 0


def _cmd_score_campaign(args: argparse.Namespace) -> int:
    from neurorg_core.campaign import load_manifest, plates_from_paths, run_campaign
    from neurorg_core.config import load_config
    from neurorg_core.model import load_bundle
    from neurorg_core.store import ResultStore

    cfg = load_config()
    options = _score_options(args)   # checked before any file is read
    if bool(args.manifest) == bool(args.plates):
        raise NeuroRGError("give the plates (PLATE ...) or --manifest CSV, not both and not neither")
    plates = load_manifest(args.manifest) if args.manifest else plates_from_paths(args.plates, args.plate_map)
    bundle = load_bundle(Path(args.model) if args.model else cfg.model_dir / "ensemble", kind="ensemble")
    db = Path(args.db) if args.db else cfg.db_path
    shown = [0.0]

    def progress(p) -> None:
        now = time.monotonic()
        if now - shown[0] >= args.progress_every or p.plates_done == p.plates_total:
            shown[0] = now
            print(f"  {p.line()}", file=sys.stderr, flush=True)

    print(f"campaign of {len(plates)} plate(s), model {bundle.id} ({_members(bundle)}), "
          f"Ray {'at ' + args.ray_address if args.ray_address else 'local'}", file=sys.stderr)
    with ResultStore(db) as store:
        result = run_campaign(plates, bundle, store, campaign_id=args.campaign, options=options,
                              channel_map=_parse_channel_map(args.channels), ray_address=args.ray_address,
                              workers=args.workers, progress=progress)
    print(f"campaign {result.campaign_id}: {len(result.stored)} plate(s) stored, {len(result.skipped)} "
          f"already stored (skipped), {len(result.reused)} merged from earlier Parquet files, "
          f"{len(result.failed)} failed; {result.inferred_crops} crop x member predictions computed")
    print(f"store: {db}; Parquet files: {result.folder}")
    if result.ray_startup_s:
        print(f"time: {result.elapsed_s:.1f} s ({result.ray_startup_s:.1f} s starting Ray and its workers)")
    for name, run_id in result.stored.items():
        print(f"  {name}: run {run_id}")
    for name, why in result.failed.items():
        print(f"error: plate {name}: {why}", file=sys.stderr)
    return 2 if result.failed else 0


def _cmd_calibrate_fit(args: argparse.Namespace) -> int:
    import tempfile

    from neurorg_core.model import load_bundle, update_card
    from neurorg_core.evaluate import calibrate_fit_reference

    bundle = load_bundle(args.model)
    with tempfile.TemporaryDirectory(prefix="neurorg-calibrate-") as tmp:
        ref = calibrate_fit_reference(args.plates, bundle, work_dir=tmp, backend=_backend(args))
    bundle = update_card(bundle, fit_reference=ref)
    print(json.dumps(ref, indent=2))
    print(f"fit reference from {len(args.plates)} plate(s) written to {bundle.path}/card.json "
          f"(bundle id now {bundle.id})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from neurorg_core.config import load_config
    from neurorg_core.results import export_table, load_plate_results
    from neurorg_core.store import ResultStore

    out = Path(args.out)
    with ResultStore(args.db, read_only=True) as store:
        res = load_plate_results(store, args.plate, hits=load_config().hit_rule)
    table = export_table(res, args.table)
    if args.table == "wells" and "rescue" in res.problems:
        print(f"note: no {RESCUE_PCT} column: {res.problems['rescue']}", file=sys.stderr)
    if args.table != "wells" and args.table in res.problems:
        print(f"note: {args.table} not computable: {res.problems[args.table]}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "parquet":
        table.to_parquet(out, index=False)
    else:
        table.to_csv(out, index=False)
    print(f"wrote {len(table)} rows x {table.shape[1]} columns ({args.table}) of plate {args.plate} to {out}")
    return 0


# --- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from neurorg_core.layouts import layout_names

    p = argparse.ArgumentParser(prog="python -m neurorg_core", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="render synthetic plates with ground truth")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--plates", type=int, default=1)
    s.add_argument("--wells", type=int, choices=(96, 384), default=96)
    s.add_argument("--fields", type=int, default=4, help="fields (sites) per well")
    s.add_argument("--size", type=int, default=512, help="field edge, pixels")
    s.add_argument("--layout", choices=layout_names(), default="imagexpress",   # registered ones too
                   help="the instrument's file layout (one spec each: neurorg_core/layouts/)")
    s.add_argument("--kind", choices=("training", "screen"), default="training")
    s.add_argument("--bit-depth", type=int, choices=(8, 12, 16), default=8,
                   help="12-bit camera data in 16-bit files (v * 4095 / 255), or 16-bit = 257 x 8-bit")
    s.add_argument("--magnification", type=float, default=1.0,
                   help="objective magnification relative to the synthetic assay's native scale "
                        "(pixel size 0.65 um / magnification, written into the files)")
    s.add_argument("--workers", type=int, default=1, help="processes rendering wells in parallel")
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("inspect", help="detect a plate's layout and check it can be scored")
    s.add_argument("path")
    s.add_argument("--plate-map")
    s.add_argument("--channels", help="nucleus=ID,neuron=ID,microglia=ID")
    s.add_argument("--model", help="model bundle whose crop geometry to check against "
                   "(default: the shipped ensemble)")
    s.add_argument("--pixel-size", type=float, help="the plate's pixel size, um (wins over the files)")
    s.add_argument("--bit-depth", type=int, choices=(8, 12, 14, 16), help="the images' significant bits")
    s.set_defaults(func=_cmd_inspect)

    from neurorg_core.demo import DemoRecipe  # no TensorFlow: Keras only when training
    from neurorg_core.model import ARCHITECTURES
    from neurorg_core.train import TrainSettings

    s = sub.add_parser("train", help="train a leave-plate-out ensemble (or single-channel model)")
    s.add_argument("--plates", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--arch", choices=ARCHITECTURES, default=TrainSettings.arch)
    s.add_argument("--input-size", type=int, default=TrainSettings.input_size, help="model input edge, pixels")
    s.add_argument("--crop-edge", type=int, default=TrainSettings.crop_edge_px,
                   help="tile edge in the training plates' pixels (resized to --input-size); recorded on "
                        "the card, so every plate is scored at this physical crop size")
    s.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    s.add_argument("--channels", choices=("all", *CHANNELS), default="all")
    s.add_argument("--seed", type=int, default=TrainSettings.seed)
    s.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    s.add_argument("--lr", type=float, default=TrainSettings.learning_rate,
                   help=f"peak {TrainSettings().optimizer} learning rate ({TrainSettings().schedule})")
    s.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                   help="auto: bf16 mixed precision on GPUs that compute it (compute capability >= 8), "
                        "float32 on the CPU")
    s.add_argument("--jit", choices=("auto", "on", "off"), default="auto",
                   help="compile the train step (XLA / jax.jit / torch.compile); auto: on a GPU, and always "
                        "on JAX")
    s.add_argument("--loader-workers", type=int, default=None,
                   help="threads reading (and, with the augmentation on the loader, augmenting) crops from the "
                        "crop cache; default: 2 with the augmentation on the device, half the cores on the loader")
    s.add_argument("--augment-on", choices=AUGMENT_CHOICES, default="auto",
                   help="where the augmentation runs: device = in the compiled train step, loader = numpy on "
                        "the loader threads overlapped with the step; auto: device on a GPU, loader on the CPU")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("evaluate", help="crop/well accuracy, confusion, kappa, McNemar")
    s.add_argument("--plates", nargs="+", required=True)
    s.add_argument("--model", required=True)
    _add_backend(s)
    s.add_argument("--json", help="also write the full report (confusion matrices) here")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("convert-bundle", help="put each member's LiteRT file in the bundle and record "
                       "every file's SHA-256 on its card (once, after training)")
    s.add_argument("model", help="the bundle folder")
    s.set_defaults(func=_cmd_convert_bundle)

    from neurorg_core.study import STUDY_ARCH, STUDY_ARCHITECTURES, STUDY_INPUT_SIZE  # no TensorFlow here

    s = sub.add_parser("import-study", help="import the NeuroRG study's efficientnet_pytorch fold "
                       "state_dicts (and normalize_parameters.pkl) as a bundle, without torch")
    s.add_argument("--state-dict", nargs="+", required=True, metavar="FILE",
                   help="one torch.save(model.state_dict()) file per fold (member fold1, fold2, ... in order)")
    s.add_argument("--normalization", required=True, metavar="PKL",
                   help="the study's normalize_parameters.pkl: {'mean': [3], 'std': [3]} in [0, 1] units")
    s.add_argument("--out", required=True, help="bundle folder to create")
    s.add_argument("--arch", choices=STUDY_ARCHITECTURES, default=STUDY_ARCH,
                   help="efficientnet_pytorch EfficientNet variant the files hold (the study: efficientnet_b5)")
    s.add_argument("--input-size", type=int, default=STUDY_INPUT_SIZE,
                   help="network input edge, pixels (the study: its whole 1200 px field)")
    s.set_defaults(func=_cmd_import_study)

    demo = DemoRecipe()
    s = sub.add_parser("build-demo", help="render synthetic plates, train and evaluate the demo bundles")
    s.add_argument("--out", default="data/models/demo")
    s.add_argument("--work-dir", help="keep the rendered plates here (default: a temporary folder)")
    s.add_argument("--epochs", type=int, default=demo.ensemble_epochs, help="epochs per ensemble member")
    s.add_argument("--single-channel-epochs", type=int, default=demo.single_channel_epochs)
    s.add_argument("--cell-severity-sd", type=float, default=demo.cell_severity_sd,
                   help="synthetic cell-to-cell severity spread used for the demo plates")
    s.add_argument("--well-severity-sd", type=float, default=demo.well_severity_sd)
    s.add_argument("--reuse", action="store_true", help="keep bundles already trained in --out; "
                   "only evaluate them and write the metrics")
    s.add_argument("--seed", type=int, default=TrainSettings.seed)
    s.set_defaults(func=_cmd_build_demo)

    s = sub.add_parser("score", help="score a plate into the result store")
    s.add_argument("path")
    s.add_argument("--plate-map", required=True)
    s.add_argument("--model")
    s.add_argument("--db")
    s.add_argument("--name")
    s.add_argument("--channels", help="nucleus=ID,neuron=ID,microglia=ID")
    s.add_argument("--crops-per-well", type=int, default=CROPS_PER_WELL,
                   help=f"crops scored per well, 1..{MAX_CROPS_PER_WELL} (default {CROPS_PER_WELL}, as the study)")
    _add_backend(s)
    s.add_argument("--pixel-size", type=float, help="the plate's pixel size, um (wins over the files' "
                   "metadata); crops are cut at the model's physical crop size")
    s.add_argument("--bit-depth", type=int, choices=(8, 12, 14, 16),
                   help="the images' significant bits (e.g. 12 for a 12-bit camera); default detected")
    s.add_argument("--readout", choices=READOUTS, default=None,
                   help="well score for rescue %%, hits, QC and EC50 (default NEURORG_READOUT, else "
                        "inflammation_score): " +
                        "; ".join(f"{k} = {v}" for k, v in READOUT_LABELS.items()))
    s.set_defaults(func=_cmd_score)

    s = sub.add_parser("score-campaign", help="score many plates on Ray (local or a cluster) into the store")
    s.add_argument("plates", nargs="*", metavar="PLATE", help="plate folders or zips (or --manifest)")
    s.add_argument("--manifest", help="CSV with columns plate, plate_map[, name, batch, date (YYYY-MM-DD)]")
    s.add_argument("--plate-map", help="with PLATE ...: one plate map for all (default each folder's platemap.csv)")
    s.add_argument("--model")
    s.add_argument("--db")
    s.add_argument("--campaign", help="campaign id (default: a hash of the plates, model and options)")
    s.add_argument("--ray-address", help="a Ray cluster (e.g. ray://head:10001); default an embedded local Ray")
    s.add_argument("--workers", type=int, help="worker actors (default one per CPU, or per GPU of the cluster)")
    s.add_argument("--channels", help="nucleus=ID,neuron=ID,microglia=ID (every plate)")
    s.add_argument("--crops-per-well", type=int, default=CROPS_PER_WELL,
                   help=f"crops scored per well, 1..{MAX_CROPS_PER_WELL} (default {CROPS_PER_WELL})")
    _add_backend(s)
    s.add_argument("--pixel-size", type=float, help="the plates' pixel size, um (wins over metadata)")
    s.add_argument("--bit-depth", type=int, choices=(8, 12, 14, 16), help="the images' significant bits")
    s.add_argument("--readout", choices=READOUTS, default=None, help="well score for rescue %%, hits, QC, EC50")
    s.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")
    s.set_defaults(func=_cmd_score_campaign)

    s = sub.add_parser("calibrate-fit", help="record what a model sees on held-out plates, for the "
                       "model-fit check of every later run")
    s.add_argument("--model", required=True)
    s.add_argument("--plates", nargs="+", required=True,
                   help="plate folders the model did not train on, with plate maps")
    _add_backend(s, precision=False)
    s.set_defaults(func=_cmd_calibrate_fit)

    s = sub.add_parser("export", help="write a scored plate's well table")
    s.add_argument("--db", required=True)
    s.add_argument("--plate", required=True)
    s.add_argument("--format", choices=("csv", "parquet"), default="csv")
    s.add_argument("--table", choices=EXPORT_TABLES, default="wells",
                   help="wells (one row per well), treatments (compound x dose: rescue %%, p, q, Hit) "
                        "or fits (4PL EC50 per compound); each row carries the readout and model fit")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s", stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except NeuroRGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Does a code change alter what scoring a plate stores? This checkout against a reference checkout.

Writes one synthetic screen (96 wells, 4 fields of 256 px, ImageXpress files, as ``score_plate.py``),
then, in one subprocess per checkout (each importing its own ``neurorg_core``), scores it into a
fresh store with the same bundle and scores it again into the same store. Compares:

- the well table (``load_well_scores``): every column; numbers within ``--atol`` (default 0: identical);
- the fields table (content hashes) and every cached crop prediction;
- the fit check's statistics and verdict;
- the rescore: every field from the cache, no crop inferred, the same well table.

Usage::

    git worktree add --detach /tmp/ref main
    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/score_equivalence.py --reference /tmp/ref [--model BUNDLE]

Exit status 0 when everything matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def worker(code: Path, plate: Path, bundle_dir: Path, out: Path) -> None:
    """Score ``plate`` with the ``neurorg_core`` of ``code`` (fresh store, then a rescore); write
    the tables to ``out``."""
    sys.path.insert(0, str(code))
    import numpy as np

    import neurorg_core
    from neurorg_core.model import load_bundle
    from neurorg_core.pipeline import run_plate
    from neurorg_core.platemap import load_plate_map
    from neurorg_core.plates import load_plate
    from neurorg_core.store import ResultStore

    assert Path(neurorg_core.__file__).resolve().is_relative_to(code.resolve()), neurorg_core.__file__
    bundle = load_bundle(bundle_dir)
    plate_map = load_plate_map(plate / "platemap.csv")
    with ResultStore(out / "store.duckdb") as store:
        first = run_plate(load_plate(plate), plate_map, bundle, store, name="check")
        scores = store.load_well_scores("check", first.run_id)
        fields = store.load_fields("check")
        preds = {m.id: store.cached_predictions(fields["Field_Hash"], m.id) for m in bundle.members}
        again = run_plate(load_plate(plate), plate_map, bundle, store, name="check")
        rescored = store.load_well_scores("check", again.run_id)
    scores.to_pickle(out / "scores.pkl")
    rescored.to_pickle(out / "rescored.pkl")
    fields.to_pickle(out / "fields.pkl")
    np.savez(out / "preds.npz", **{f"{m}|{h}": p for m, by_hash in preds.items() for h, p in by_hash.items()})
    (out / "result.json").write_text(json.dumps({
        "module": neurorg_core.__file__,
        "first": {"n_fields": first.n_fields, "n_crops": first.n_crops, "inferred_crops": first.inferred_crops,
                  "cache_hits": first.cache_hits, "fit_verdict": first.model_fit.verdict,
                  "fit_stats": first.fit_stats.as_dict() if hasattr(first.fit_stats, "as_dict") else
                  repr(first.fit_stats)},
        "again": {"cache_hits": again.cache_hits, "inferred_crops": again.inferred_crops},
    }, default=str))


def compare(new: Path, ref: Path, atol: float) -> list[str]:
    """What differs between the two workers' outputs (empty: nothing)."""
    import numpy as np
    import pandas as pd

    problems: list[str] = []
    rn, rr = (json.loads((d / "result.json").read_text()) for d in (new, ref))
    print(f"new: {rn['module']}\nref: {rr['module']}")
    for d, r in (("new", rn), ("ref", rr)):
        a = r["again"]
        if a["inferred_crops"] != 0 or a["cache_hits"] != r["first"]["n_fields"]:
            problems.append(f"{d} rescore: {a['cache_hits']} of {r['first']['n_fields']} fields from the cache, "
                            f"{a['inferred_crops']} crops inferred; expected all cached, none inferred")
    for key in ("n_fields", "n_crops", "inferred_crops", "cache_hits", "fit_verdict", "fit_stats"):
        if rn["first"][key] != rr["first"][key]:
            problems.append(f"{key}: new {rn['first'][key]!r}, reference {rr['first'][key]!r}")
    for name in ("scores", "rescored"):
        a, b = (pd.read_pickle(d / f"{name}.pkl") for d in (new, ref))
        drop = [c for c in ("Run_ID",) if c in a.columns]
        a, b = a.drop(columns=drop), b.drop(columns=drop)
        if list(a.columns) != list(b.columns) or len(a) != len(b):
            problems.append(f"{name}: columns/rows differ: {list(a.columns)} x {len(a)} vs "
                            f"{list(b.columns)} x {len(b)}")
            continue
        worst = 0.0
        for col in a.columns:
            x, y = a[col], b[col]
            if pd.api.types.is_float_dtype(x) and pd.api.types.is_float_dtype(y):
                xv, yv = x.to_numpy(float), y.to_numpy(float)
                if not np.array_equal(np.isnan(xv), np.isnan(yv)):
                    problems.append(f"{name}.{col}: missing values differ")
                    continue
                ok = ~np.isnan(xv)
                diff = float(np.abs(xv[ok] - yv[ok]).max()) if ok.any() else 0.0
                worst = max(worst, diff)
                if diff > atol:
                    problems.append(f"{name}.{col}: max difference {diff:.3g} > {atol:g}")
            elif not x.astype(str).equals(y.astype(str)):
                problems.append(f"{name}.{col}: values differ")
        print(f"{name}: {len(a)} wells x {len(a.columns)} columns, largest numeric difference {worst:.3g}")
    fa, fb = (pd.read_pickle(d / "fields.pkl") for d in (new, ref))
    if not fa.reset_index(drop=True).astype(str).equals(fb.reset_index(drop=True).astype(str)):
        problems.append("fields table (wells, fields, content hashes) differs")
    pa, pb = (np.load(d / "preds.npz") for d in (new, ref))
    if set(pa.files) != set(pb.files):
        problems.append(f"cached predictions: {len(pa.files)} vs {len(pb.files)} (member, field) entries, "
                        "not the same keys")
    else:
        worst = max((float(np.abs(pa[k] - pb[k]).max()) for k in pa.files), default=0.0)
        print(f"cached predictions: {len(pa.files)} (member, field) entries, largest difference {worst:.3g}")
        if worst > atol:
            problems.append(f"cached predictions differ by up to {worst:.3g} > {atol:g}")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", help="the other checkout (e.g. a worktree of main)")
    p.add_argument("--model", help="bundle folder (default: the demo ensemble of this checkout)")
    p.add_argument("--atol", type=float, default=0.0, help="largest number difference accepted")
    p.add_argument("--worker", nargs=4, metavar=("CODE", "PLATE", "BUNDLE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        code, plate, bundle, out = map(Path, args.worker)
        worker(code, plate, bundle, out)
        return 0
    if not args.reference:
        p.error("--reference is required")
    sys.path.insert(0, str(HERE))
    from neurorg_core.config import load_config
    from neurorg_core.synth import write_synthetic_plates

    bundle = Path(args.model) if args.model else load_config().model_dir / "ensemble"
    with tempfile.TemporaryDirectory(prefix="neurorg-equiv-") as tmp:
        work = Path(tmp)
        plate = write_synthetic_plates(work / "plates", seed=0, n_wells=96, n_fields=4, size=256,
                                       layout="imagexpress", kind="screen")[0]
        outs = {}
        for label, code in (("new", HERE), ("ref", Path(args.reference))):
            out = outs[label] = work / label
            out.mkdir()
            env = {**os.environ, "PYTHONPATH": str(code)}
            subprocess.run([sys.executable, __file__, "--worker", str(code), str(plate), str(bundle), str(out)],
                           check=True, env=env)
        problems = compare(outs["new"], outs["ref"], args.atol)
    for line in problems:
        print("DIFFERS:", line)
    print("identical" if not problems else f"{len(problems)} difference(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())

"""Seconds to render one synthetic plate (96 wells, training layout, ImageXpress files).

Run from the repo root:
``python -m benchmarks.synth_speed [--fields 4] [--size 512] [--plates 1] [--workers 1]``.
Prints seconds per plate; the target is under a minute for 4 fields of 512 px.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from neurorg_core.synth import write_synthetic_plates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--plates", type=int, default=1)
    ap.add_argument("--layout", default="imagexpress")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_synthetic_plates(tmp, seed=0, n_plates=args.plates, n_fields=args.fields, size=args.size,
                               layout=args.layout, n_workers=args.workers)
        dt = time.perf_counter() - t0
    print(f"{dt / args.plates:.1f} s per plate (96 wells, {args.fields} fields of {args.size} px, "
          f"{args.layout}, {args.plates} plate(s), {args.workers} worker(s))")


if __name__ == "__main__":
    main()

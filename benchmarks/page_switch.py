"""Seconds to switch dashboard pages with a scored 384-well plate, in a real browser.

Renders a synthetic 384-well screening plate, stores a run whose well scores follow its ground
truth (the model plays no part in page switching, so none is run), starts
``streamlit run dashboard/app.py`` on a free port and drives Chromium: after one warm-up visit of
each page, clicks between pages in the sidebar and prints the time from the click until the
page's chart is drawn.

Run from the repo root: ``python -m benchmarks.page_switch [--rounds 5]``
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from neurorg_core.pipeline import hash_field
from neurorg_core.plates import load_plate
from neurorg_core.platemap import load_plate_map
from neurorg_core.schema import CROP, FIELD, FIELD_HASH, MEMBER, PROB_COLUMNS, TRUE_SEVERITY, WELL
from neurorg_core.scoring import score_wells
from neurorg_core.schema import PLATE_MAP_COLUMNS
from neurorg_core.store import PlateRecord, ResultStore, RunRecord
from neurorg_core.synth import write_synthetic_plates

REPO = Path(__file__).resolve().parents[1]

PLATE = "bench 384"


def _store_truth_run(db: Path, folder: Path) -> None:
    plate = load_plate(folder)
    plate_map = load_plate_map(folder / "platemap.csv")
    truth = pd.read_csv(folder / "ground_truth.csv")
    severity = dict(zip(truth[WELL], truth[TRUE_SEVERITY].fillna(0.0)))
    rng = np.random.default_rng(0)
    rows = []
    for well in plate.wells():
        for crop in range(15):
            p0 = float(np.clip(1.0 - severity[well] + rng.normal(0, 0.05), 0.02, 0.97))
            probs = np.zeros(len(PROB_COLUMNS))
            probs[0], probs[max(1, int(round(severity[well] * 5)))] = p0, 1.0 - p0
            rows.append({WELL: well, FIELD: 1, CROP: crop, MEMBER: 0, **dict(zip(PROB_COLUMNS, probs))})
    scores = score_wells(pd.DataFrame(rows), plate_map)
    fields = pd.DataFrame([{WELL: r.well, FIELD: r.field, FIELD_HASH: hash_field(px)}
                           for r, px in plate.iter_fields()])
    with ResultStore(db) as store:
        store.save_run(
            plate=PlateRecord(PLATE, str(plate.source), plate.layout, plate.plate_format,
                              plate.field_shape, str(plate.dtype), plate.channel_map),
            wells=plate_map[plate_map[WELL].isin(plate.wells())][list(PLATE_MAP_COLUMNS)],
            fields=fields, well_scores=scores,
            run=RunRecord(run_id="bench", plate=PLATE, model_id="ground-truth", bundle_card={},
                          params={}, code_version="bench"),
        )
    print(f"stored {len(scores)} wells of a {plate.plate_format}-well plate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)

    tmp = Path(tempfile.mkdtemp(prefix="neurorg_bench_"))
    folder = write_synthetic_plates(tmp / "plates", seed=11, n_wells=384, n_fields=1, size=64,
                                    kind="screen")[0]
    _store_truth_run(tmp / "store.duckdb", folder)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "NEURORG_DB": str(tmp / "store.duckdb"), "NEURORG_DATA_DIR": str(tmp / "data"),
           "NEURORG_MODEL_DIR": str(tmp / "models"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("NEURORG_PASSWORD", None)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard/app.py",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.headless", "true"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if f":{port}" in line:
            break
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    pages = [("Plate heatmap", ".js-plotly-plot .heatmaplayer"), ("Treatments", ".js-plotly-plot"),
             ("Channels", "h1"), ("Library", "h1")]
    times: dict[str, list[float]] = {name: [] for name, _ in pages}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/plate?plate={PLATE.replace(' ', '+')}")
            expect(page.locator(".js-plotly-plot .heatmaplayer")).to_have_count(1)
            for rnd in range(args.rounds + 1):  # round 0 warms the caches
                for name, selector in pages:
                    start = time.perf_counter()
                    page.get_by_role("link", name=name).click()
                    expect(page.get_by_role("heading", name=name)).to_be_visible()
                    expect(page.locator(selector).first).to_be_visible()
                    page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')")
                    if rnd:
                        times[name].append(time.perf_counter() - start)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    for name, ts in times.items():
        print(f"browser: switch to {name:14s} median {statistics.median(ts):.2f} s  max {max(ts):.2f} s  "
              f"({len(ts)} switches, 384-well plate, click to drawn chart)")
    _server_side(env, args.rounds)


def _server_side(env: dict, rounds: int) -> None:
    """Script time alone (no browser): each page run in-process by AppTest, caches warm."""
    from streamlit.testing.v1 import AppTest

    os.environ.update({k: v for k, v in env.items() if k.startswith("NEURORG_")})
    at = AppTest.from_file(str(REPO / "dashboard" / "main.py"), default_timeout=120)
    at.query_params.update({"page": "plate", "plate": PLATE})
    at.run()
    files = {"Plate heatmap": "plate", "Treatments": "treatments", "Channels": "channels",
             "Library": "library"}
    times: dict[str, list[float]] = {name: [] for name in files}
    for rnd in range(rounds + 1):
        for name, view in files.items():
            start = time.perf_counter()
            at.switch_page(f"views/{view}.py").run()
            if rnd:
                times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        print(f"server:  run {name:14s} median {statistics.median(ts):.2f} s  max {max(ts):.2f} s")


if __name__ == "__main__":
    main()

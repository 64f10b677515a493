"""Helpers shared by the dashboard tests: the app's paths and a ground-truth run writer."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import threading
from datetime import date
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from neurorg_core.pipeline import hash_field
from neurorg_core.plates import load_plate
from neurorg_core.platemap import load_plate_map
from neurorg_core.schema import CROP, FIELD, FIELD_HASH, MEMBER, PROB_COLUMNS, TRUE_SEVERITY, WELL
from neurorg_core.scoring import score_channels, score_wells
from neurorg_core.schema import PLATE_MAP_COLUMNS
from neurorg_core.store import CampaignEntry, PlateRecord, ResultStore, RunRecord

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "dashboard" / "main.py"
"""The pages script (what ``AppTest`` runs)."""
SERVER = REPO / "dashboard" / "app.py"
"""What ``streamlit run`` is given: ``st.App`` serving ``APP`` behind the login gate."""
TRUTH_PLATE = "truth plate"
"""Name of the stored plate whose scores are derived from the ground truth (no model involved)."""


def open_page(page: str, *, timeout: float = 60, **query: str) -> AppTest:
    """Open a page the way a link does (``?page=...``): one script run, which raised nothing."""
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.query_params.update({"page": page, **query})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_server_plate(plate: Path, plate_map: Path, *, timeout: float = 60) -> AppTest:
    """Upload & score with a plate folder and its map given by path on the server, taken without
    an exception or an error message."""
    at = open_page("upload", timeout=timeout)
    at.text_input(key="server_images").set_value(str(plate))
    at.text_input(key="server_platemap").set_value(str(plate_map))
    at.button(key="use_server_path").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def shown(markdown: str) -> str:
    """The text a reader sees in a Markdown element whose names were escaped with
    ``components.plain`` (the backslash escapes and invisible word joiners removed)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u2060", "")


def _truth_probs(wells: list[str], severity: dict[str, float], noise: float, seed: int) -> pd.DataFrame:
    """Crop probabilities whose class-0 mass is 1 - severity (+ noise): a model that sees truth."""
    rng = np.random.default_rng(seed)
    rows = []
    for well in wells:
        s = severity[well]
        for crop in range(3):
            p0 = float(np.clip(1.0 - s + rng.normal(0.0, noise), 0.02, 0.97))
            probs = np.full(len(PROB_COLUMNS), 0.0)
            probs[0] = p0
            probs[max(1, int(round(s * 5)))] = 1.0 - p0
            rows.append({WELL: well, FIELD: 1, CROP: crop, MEMBER: 0, **dict(zip(PROB_COLUMNS, probs))})
    return pd.DataFrame(rows)


def store_truth_run(db_path: Path, plate_dir: Path, name: str = TRUTH_PLATE, params: dict | None = None) -> str:
    """Store a run of ``plate_dir`` whose scores follow its ground truth, with single-channel
    scores (microglia close to truth, neuron noisier, nucleus noise only). ``params`` are added to
    the run's parameters (e.g. a readout or a model-fit verdict). Returns the run id."""
    plate = load_plate(plate_dir)
    plate_map = load_plate_map(plate_dir / "platemap.csv")
    truth = pd.read_csv(plate_dir / "ground_truth.csv")
    severity = dict(zip(truth[WELL], truth[TRUE_SEVERITY].fillna(0.0)))
    wells = plate.wells()
    crop_probs = _truth_probs(wells, severity, 0.03, seed=1)
    scores = score_wells(crop_probs, plate_map)
    rng = np.random.default_rng(2)
    by_channel = {
        "nucleus": _truth_probs(wells, {w: float(rng.uniform()) for w in wells}, 0.05, seed=3),
        "neuron": _truth_probs(wells, severity, 0.25, seed=4),
        "microglia": _truth_probs(wells, severity, 0.05, seed=5),
    }
    fields = pd.DataFrame(
        [{WELL: ref.well, FIELD: ref.field, FIELD_HASH: hash_field(px)} for ref, px in plate.iter_fields()]
    )
    imaged = plate_map[plate_map[WELL].isin(wells)]
    store = ResultStore(db_path)
    try:
        return store.save_run(
            plate=PlateRecord(name=name, source=str(plate.source), layout=plate.layout,
                              plate_format=plate.plate_format, field_shape=plate.field_shape,
                              dtype=str(plate.dtype), channel_map=plate.channel_map),
            wells=imaged[list(PLATE_MAP_COLUMNS)], fields=fields, well_scores=scores,
            run=RunRecord(run_id=f"truth-{name}", plate=name, model_id="ground-truth",
                          bundle_card={"kind": "ground truth"}, params={"crops_per_well": 3, **(params or {})},
                          code_version="test"),
            channel_scores=score_channels(by_channel),
        )
    finally:
        store.close()


def store_campaign(db: Path, plate_dir: Path) -> None:
    """Campaign ``screen`` of plates "second" (batch b2, 2026-03-09), "first" (b1, 2026-03-01): the
    same ground-truth scores of ``plate_dir``; and "broken" (b1), failed."""
    for name in ("first", "second"):
        store_truth_run(db, plate_dir, name=name)
    with ResultStore(db) as s:
        s.register_campaign([
            CampaignEntry("screen", 1, "second", str(plate_dir), "pm.csv", "ground-truth", "b2", date(2026, 3, 9)),
            CampaignEntry("screen", 2, "first", str(plate_dir), "pm.csv", "ground-truth", "b1", date(2026, 3, 1)),
            CampaignEntry("screen", 3, "broken", "/nowhere", "pm.csv", "ground-truth", "b1", None),
        ])
        for name in ("first", "second"):
            s.mark_campaign_plate("screen", name, "stored", run_id=f"truth-{name}")
        s.mark_campaign_plate("screen", "broken", "failed", message="/nowhere (row 3): no images")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a test server: its own store and data folder under ``tmp_path``, no
    password unless ``NEURORG_PASSWORD`` is given in ``extra``. The session's LiteRT and crop caches
    (``tests/conftest.py``) are kept, so a test model converted once is not converted again."""
    keep = ("NEURORG_LITERT_CACHE", "NEURORG_CROP_CACHE")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURORG_") or k in keep}
    env.update({"NEURORG_DB": str(tmp_path / "store.duckdb"), "NEURORG_DATA_DIR": str(tmp_path / "data"),
                "NEURORG_MODEL_DIR": str(tmp_path / "no_models"), "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
    env.update(extra)
    return env


def server_command(port: int, address: str | None) -> list[str]:
    """``streamlit run dashboard/app.py`` on ``port`` (``address`` None: the config file's)."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(SERVER), "--server.port", str(port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    return cmd + (["--server.address", address] if address is not None else [])


@contextmanager
def running_server(env: dict[str, str], log_path: Path, *, address: str | None = "127.0.0.1",
                   port: int | None = None) -> Iterator[str]:
    """Run the real server until the block ends; yields ``http://127.0.0.1:PORT``.

    Streamlit prints its URL once the socket listens; the output is read up to that line (no
    polling, no sleeps), then drained into ``log_path`` so the server never blocks on its pipe.
    """
    port = port or free_port()
    log = open(log_path, "w+")
    proc = subprocess.Popen(server_command(port, address), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    drain = threading.Thread(target=_copy_lines, args=(proc.stdout, log), daemon=True)
    try:
        for line in proc.stdout:
            log.write(line)
            if f":{port}" in line:
                break
        else:
            log.flush()
            pytest.fail(f"streamlit exited before serving: {log_path.read_text()}")
        drain.start()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if drain.is_alive():
            drain.join(timeout=5)
        log.close()


def _copy_lines(src, dst) -> None:
    for line in src:
        dst.write(line)


def websocket_status(base: str, cookie: str | None = None) -> int:
    """The HTTP status of a websocket handshake on the app's stream (101 = opened)."""
    url = urlsplit(base)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = ["GET /_stcore/stream HTTP/1.1", f"Host: {url.netloc}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             "Sec-WebSocket-Protocol: streamlit"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = sock.makefile("rb").readline().decode()
    return int(status_line.split()[1])

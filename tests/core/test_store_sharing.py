"""Two processes on one result store: the CLI scores a plate while this process (standing in for
the app) holds a ``ResultStore`` on the same file, reads from it and writes to it.

The interleaving is forced, not hoped for: once the CLI has printed its first progress line (it
has opened the store and is scoring), this process takes the file in a ``session()``, checks that
the CLI's plate is not stored yet (the CLI cannot finish without the file we hold), writes a run
of its own and reads it back, then lets go. The CLI must then finish and its plate must be
visible to this process's store object.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from neurorg_core.config import REPO_ROOT
from neurorg_core.results import load_plate_results
from neurorg_core.schema import PLATE, RUN_ID
from neurorg_core.store import ResultStore
from neurorg_core.synth import write_synthetic_plates

sys.path.insert(0, str(Path(__file__).parent))
from test_store import save  # noqa: E402

CLI_PLATE = "scored by the CLI"


@pytest.fixture(scope="module")
def small_plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 96-well synthetic screening plate, one 128 px field per well."""
    out = tmp_path_factory.mktemp("sharing")
    return write_synthetic_plates(out, seed=3, n_wells=96, n_fields=1, size=128, kind="screen")[0]


def test_cli_scores_into_a_store_this_process_holds_and_both_see_everything(
        small_plate: Path, tmp_path: Path) -> None:
    db = tmp_path / "shared.duckdb"
    store = ResultStore(db)                   # like the app's store: made once, used all along
    save(store, "app-run-1", 0.9, plate="P1")
    env = {**os.environ, "NEURORG_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO_ROOT)}
    cli = subprocess.Popen(
        [sys.executable, "-m", "neurorg_core", "score", str(small_plate),
         "--plate-map", str(small_plate / "platemap.csv"), "--db", str(db), "--name", CLI_PLATE],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_mid_run: dict[str, object] = {}
    try:
        err_lines = []
        for line in cli.stderr:           # the CLI's log and progress lines, as they come
            err_lines.append(line)
            if "crops (" in line and not seen_mid_run:
                with store.session():     # the CLI is mid-run; now this process holds the file
                    seen_mid_run["cli_plate_stored"] = CLI_PLATE in set(store.list_plates()[PLATE])
                    save(store, "app-run-2", 0.7, plate="P1")
                    seen_mid_run["runs"] = sorted(store.list_runs("P1")[RUN_ID])
        out = cli.stdout.read()
        rc = cli.wait(timeout=600)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert rc == 0, "".join(err_lines[-20:]) + out
    assert seen_mid_run, "the CLI printed no progress line"
    assert seen_mid_run["cli_plate_stored"] is False      # we really wrote while the CLI was scoring
    assert seen_mid_run["runs"] == ["app-run-1", "app-run-2"]
    assert f"stored in {db}" in out
    # the same store object sees the CLI's plate, and the CLI's results are whole
    plates = store.list_plates()
    assert set(plates[PLATE]) == {"P1", CLI_PLATE}
    res = load_plate_results(store, CLI_PLATE)
    assert len(res.wells) == 96 - 8               # a screening plate images 88 wells
    assert sorted(store.list_runs("P1")[RUN_ID]) == ["app-run-1", "app-run-2"]
    # and an export from the CLI works while this store object still exists
    exported = tmp_path / "wells.csv"
    proc = subprocess.run([sys.executable, "-m", "neurorg_core", "export", "--db", str(db), "--plate",
                           CLI_PLATE, "--out", str(exported)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert len(exported.read_text().splitlines()) == 1 + len(res.wells)

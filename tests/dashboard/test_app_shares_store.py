"""The app and the CLI on one result store: a plate scored from the CLI while the app is running
appears in the app, and the app keeps working on the same file afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streamlit.testing.v1 import AppTest

from dashboard_fixtures import APP, REPO, TRUTH_PLATE
from neurorg_core.synth import write_synthetic_plates

CLI_PLATE = "from the CLI"


def test_a_plate_scored_by_the_cli_while_the_app_runs_appears_in_the_app(
        truth_store: Path, tmp_path: Path) -> None:
    # 8 wells of 256 px fields: the demo model's 128 px crops fit (the session's 64 px plate is too small)
    plate = write_synthetic_plates(tmp_path / "cli", seed=11, n_fields=1, size=256, kind="screen",
                                   wells=["A02", "B02", "A11", "B11", "A01", "B01", "A03", "B03"])[0]
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params.update({"page": "library"})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="library_plate").options == [TRUTH_PLATE]

    # the app has read the store (its ResultStore is cached in this process); now the CLI scores
    # into the same file with the shipped demo model
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("NEURORG_MODEL_DIR", None)                  # app_env points the app at no model
    proc = subprocess.run(
        [sys.executable, "-m", "neurorg_core", "score", str(plate), "--plate-map",
         str(plate / "platemap.csv"), "--db", os.environ["NEURORG_DB"], "--name", CLI_PLATE],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]

    at.run()                                            # the user clicks anything: a rerun
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert sorted(at.selectbox(key="library_plate").options) == sorted([TRUTH_PLATE, CLI_PLATE])
    at.selectbox(key="library_plate").set_value(CLI_PLATE).run()
    assert not at.exception and not at.error
    runs = next(df.value for df in at.dataframe if "Parameters" in df.value.columns)   # the runs table
    assert set(runs["Metadata_Plate"]) == {TRUTH_PLATE, CLI_PLATE}

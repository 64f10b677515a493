"""The app refuses a model bundle of the wrong kind in the model folder, with a clear message."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard_fixtures import APP, shown
from neurorg_core.store import ResultStore


def test_a_single_channel_bundle_in_the_ensemble_folder_is_refused(
        app_env: Path, tiny_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = app_env / "models"
    shutil.copytree(tiny_models / "single_channel", models / "ensemble")      # the wrong kind
    monkeypatch.setenv("NEURORG_MODEL_DIR", str(models))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.query_params.update({"page": "overview"})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [shown(e.value) for e in at.error]
    assert len(errors) == 1, errors
    assert "The demo plate could not be made" in errors[0]
    assert f"{models / 'ensemble'} is a single-channel bundle" in errors[0]
    assert "needs an ensemble bundle" in errors[0]
    db = app_env / "store.duckdb"
    assert not db.exists() or ResultStore(db, read_only=True).list_runs().empty   # nothing was scored

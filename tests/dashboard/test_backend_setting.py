"""Upload & score's inference setting: NEURORG_BACKEND is the default, auto says what it runs on
this server, and the chosen backend scores the plate."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboard import resources
from dashboard_fixtures import open_server_plate
from neurorg_core.schema import WELL


@pytest.mark.slow
def test_backend_setting_defaults_to_the_config_and_scores_with_the_choice(
        app_env: Path, tiny_models: Path, tiny_plate: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURORG_MODEL_DIR", str(tiny_models))
    monkeypatch.setenv("NEURORG_BACKEND", "keras")
    at = open_server_plate(tiny_plate, tiny_plate / "platemap.csv", timeout=300)
    select = at.selectbox(key="backend")
    assert select.options == ["auto (here: LiteRT)", "LiteRT (CPU fast path)", "Keras (the Keras backend's device)"]
    assert select.value == "keras"                                   # NEURORG_BACKEND
    assert resources.auto_backend()[0] == "litert"                   # this machine has no GPU
    at.text_input(key="plate_name").set_value("backend plate").run()
    at.button(key="score").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    from neurorg_core.plates import load_plate

    scored = resources.store().load_well_scores("backend plate")[WELL]
    assert sorted(scored) == sorted(load_plate(tiny_plate).wells())          # every imaged well
    # the server's predictor for the model is a Keras one: asking for it again is a cache hit
    cache = resources.predictors()
    before = cache.stats()
    predictor = cache.predictor(resources.bundle(resources.ENSEMBLE_DIR), "keras")
    assert predictor.backend == "keras"
    assert (cache.stats().hits, cache.stats().misses) == (before.hits + 1, before.misses)

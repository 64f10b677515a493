"""Settings for the whole test suite."""

from __future__ import annotations

import gc
import os
from typing import Callable

import pytest

from neurorg_core.schema import CHANNELS

_frozen_for: list[str] = []


def pytest_runtest_setup(item: pytest.Item) -> None:
    """At each new test file: collect garbage, then freeze what is left (``gc.freeze``) so later
    collections skip it. After the training and model tests the process holds ~850k long-lived
    objects (TensorFlow/Keras), and every full collection scanned them: AppTest pages ran 5-8x
    slower in the whole suite than alone (10-11 s vs 1.1-2.9 s, benchmarks/RESULTS.md). Only what
    is still alive is frozen, so nothing a test leaves behind escapes collection for long."""
    module = item.nodeid.split("::")[0]
    if _frozen_for[-1:] != [module]:
        _frozen_for.append(module)
        gc.collect()
        gc.freeze()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Hand the frozen objects back before the interpreter exits (left frozen, DuckDB's bindings
    report its connections as leaked at exit)."""
    gc.unfreeze()
    gc.collect()


@pytest.fixture(scope="session", autouse=True)
def litert_conversion_cache(tmp_path_factory: pytest.TempPathFactory):
    """Members converted to LiteRT while testing are cached under pytest's tmp folder (shared by
    the whole session, so each test model is converted once), never in the repository's data/.
    Subprocesses (the CLI, ``streamlit run``) inherit it through the environment."""
    folder = tmp_path_factory.mktemp("litert_cache")
    before = os.environ.get("NEURORG_LITERT_CACHE")
    os.environ["NEURORG_LITERT_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("NEURORG_LITERT_CACHE", None)
    else:
        os.environ["NEURORG_LITERT_CACHE"] = before


@pytest.fixture(scope="session", autouse=True)
def crop_cache(tmp_path_factory: pytest.TempPathFactory):
    """Training crops cut while testing are cached under pytest's tmp folder (``NEURORG_CROP_CACHE``),
    never in the repository's data/."""
    folder = tmp_path_factory.mktemp("crop_cache")
    before = os.environ.get("NEURORG_CROP_CACHE")
    os.environ["NEURORG_CROP_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("NEURORG_CROP_CACHE", None)
    else:
        os.environ["NEURORG_CROP_CACHE"] = before


@pytest.fixture(scope="session")
def tiny_model() -> Callable:
    """``tiny_model(seed, channels=CHANNELS, head_seed=None)``: a random-weight efficientnet_tiny
    at 32 px (``tests/tiny_models.py``), weights rounded to storage precision (float16 kernels) so
    that the saved member is the model in memory; made once per session for each set of arguments.
    Without ``head_seed``: scaled normalisation and head (distinct outputs on plate crops); with it:
    a random head."""
    made: dict[tuple, object] = {}

    def make(seed: int, channels: tuple[str, ...] = CHANNELS, head_seed: int | None = None):
        key = (seed, tuple(channels), head_seed)
        if key not in made:
            import keras

            from neurorg_core.model import round_weights_to_float16
            from tests.tiny_models import scaled_model, spread_model

            keras.utils.set_random_seed(seed)
            model = (scaled_model(tuple(channels)) if head_seed is None
                     else spread_model(tuple(channels), head_seed))
            round_weights_to_float16(model)
            made[key] = model
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_members(tiny_model: Callable) -> dict:
    """``fold1``, ``fold2``: 3-channel members (scaled); ``microglia``, ``neuron``, ``nucleus``:
    one single-channel member each (random head). Seeds whose outputs vary from crop to crop.
    Shared by tests/core and tests/dashboard: a bundle of these members in either reuses the
    session's LiteRT conversions."""
    return {"fold1": tiny_model(1), "fold2": tiny_model(2),
            "microglia": tiny_model(10, ("microglia",), head_seed=0),
            "neuron": tiny_model(11, ("neuron",), head_seed=1),
            "nucleus": tiny_model(12, ("nucleus",), head_seed=2)}

"""Settings for the whole test suite."""

from __future__ import annotations

import gc
import os

import pytest

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

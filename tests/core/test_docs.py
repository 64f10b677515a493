"""The docs name real functions: every number on screen is findable from docs/ARCHITECTURE.md and the
README's "Where things live" by a name that exists in the code (#12). A rename that leaves the docs
behind (``with_expected_class`` after the score became ``Inflammation_score``) fails here."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import neurorg_core
from neurorg_core.config import REPO_ROOT

DOCS = (REPO_ROOT / "docs" / "ARCHITECTURE.md", REPO_ROOT / "README.md")
DASHBOARD_MODULES = ("dashboard.resources", "dashboard.components", "dashboard.flows", "dashboard.campaign_charts",
                     "dashboard.auth")
NOT_OURS = {"int", "len", "ceil", "p", "P", "cursor", "_key", "_name"}
"""Builtins, maths in the docs' formulas, DuckDB's ``connection.cursor()`` and the helpers of the
"add a layout" example."""


def _modules() -> list[object]:
    names = [m.name for m in pkgutil.walk_packages(neurorg_core.__path__, "neurorg_core.")
             if not m.name.endswith("__main__")]
    return [importlib.import_module(n) for n in (*names, *DASHBOARD_MODULES)]


def _defined(modules: list[object]) -> set[str]:
    """Every name a module defines, and every attribute of the classes it defines."""
    names: set[str] = set()
    for mod in modules:
        for key, value in vars(mod).items():
            names.add(key)
            if inspect.isclass(value):
                for base in value.__mro__:
                    names.update(vars(base), getattr(base, "__annotations__", {}))
    return names


def _resolves(dotted: str) -> bool:
    """``module.attr[.attr]`` of a neurorg_core or dashboard module (``.py`` and folders allowed)."""
    parts = dotted.removesuffix(".py").replace("/", ".").split(".")
    packages = [[]] if parts[0] in ("neurorg_core", "dashboard") else [["neurorg_core"], ["dashboard"]]
    for package in packages:
        full = [*package, *parts]
        for i in range(len(full), len(package), -1):
            try:
                obj = importlib.import_module(".".join(full[:i]))
            except ImportError:
                continue
            for attr in full[i:]:
                if not hasattr(obj, attr):   # a dataclass field without a default is an annotation only
                    return attr in getattr(obj, "__annotations__", {}) and attr == full[-1]
                obj = getattr(obj, attr)
            return True
    return False


def test_every_function_the_docs_call_exists() -> None:
    defined = _defined(_modules())
    called = {name for doc in DOCS for code in re.findall(r"`([^`\n]+)`", doc.read_text())
              for name in re.findall(r"(?:^|[\s.(])([A-Za-z_]\w*)\(", code)}
    assert sorted(called - defined - NOT_OURS) == []


def test_the_every_number_tables_name_real_functions() -> None:
    """Each ``module.function`` in "Every number on screen" and "Where things live" resolves."""
    arch = DOCS[0].read_text().split("## Every number on screen")[1].split("\n## ")[0]
    readme = DOCS[1].read_text().split("## Where things live")[1].split("\n## ")[0]
    modules = {m.__name__.rsplit(".", 1)[-1] for m in _modules()}
    dotted = {name for text in (arch, readme) for name in re.findall(r"`([A-Za-z_][\w./]*)`", text)
              if "." in name and name.replace("neurorg_core/", "").replace("dashboard/", "").split(".")[0] in modules}
    assert len(dotted) > 40
    assert sorted(d for d in dotted if not _resolves(d)) == []

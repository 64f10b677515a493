"""The instrument layouts NeuroRG reads (and ``synth`` writes): one ``LayoutSpec`` each.

``load_plate`` lists a plate's files and asks the registry which layout's ``pattern`` matches
their names (``detect_layout``); the layout then lists the fields, reads them and, for ``synth``,
writes them. Built in, in the order patterns are tried:

``imagexpress`` (``layouts.imagexpress``), ``operetta`` (``layouts.operetta``), ``tiff``
(``layouts.tiff``), ``npy`` (``layouts.npy``).

Adding an instrument is adding one spec: write its module next to these, list it in
``BUILTIN_LAYOUTS`` (the one list of layout names: the CLI, the store and the app read it from
here), and test it (docs/ARCHITECTURE.md, "Adding an instrument layout"). A script or test may
also ``register_layout(spec)`` at run time (``registered_layout(spec)`` for a ``with`` block);
``synth`` then writes it in this process only (``n_workers=1``).

The registry is the one mutable module-level object of this package: it is changed only through
``register_layout`` / ``unregister_layout`` (under a lock), and read as an immutable snapshot.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from neurorg_core.errors import NeuroRGError, printable
from neurorg_core.images import IMAGE_SUFFIXES
from neurorg_core.layouts.base import (
    FieldReader,
    FieldRef,
    FileKey,
    Hit,
    LayoutSpec,
    Listing,
    PlateGeometry,
    Source,
    WriteTarget,
)
from neurorg_core.layouts.imagexpress import IMAGEXPRESS
from neurorg_core.layouts.npy import NPY
from neurorg_core.layouts.operetta import OPERETTA
from neurorg_core.layouts.storage import MultiChannelLayout, PerChannelLayout
from neurorg_core.layouts.tiff import TIFF

__all__ = ["BUILTIN_LAYOUTS", "FieldReader", "FieldRef", "FileKey", "LayoutSpec", "Listing",
           "MultiChannelLayout", "PerChannelLayout", "PlateGeometry", "Source", "WriteTarget",
           "builtin_layout", "detect_layout", "expected_names", "layout_names", "layout_spec",
           "register_layout", "registered_layout", "unregister_layout"]

BUILTIN_LAYOUTS: tuple[LayoutSpec, ...] = (IMAGEXPRESS, OPERETTA, TIFF, NPY)
"""The layouts NeuroRG ships, in the order their patterns are tried."""


class _Registry:
    """The layouts ``load_plate`` detects and ``synth`` writes: the built-ins, then registered ones."""

    def __init__(self, specs: tuple[LayoutSpec, ...]) -> None:
        self._lock = threading.Lock()
        self._specs = specs

    @property
    def specs(self) -> tuple[LayoutSpec, ...]:
        return self._specs

    def register(self, spec: LayoutSpec) -> None:
        if not isinstance(spec, LayoutSpec):
            raise NeuroRGError(f"{spec!r} is not a LayoutSpec")
        with self._lock:
            if any(s.name == spec.name for s in self._specs):
                raise NeuroRGError(f"a layout named {spec.name!r} is already registered; "
                                   f"layouts are {', '.join(s.name for s in self._specs)}")
            self._specs = (*self._specs, spec)

    def unregister(self, name: str) -> None:
        with self._lock:
            if any(s.name == name for s in BUILTIN_LAYOUTS):
                raise NeuroRGError(f"the built-in layout {name!r} cannot be unregistered")
            self._specs = tuple(s for s in self._specs if s.name != name)


_REGISTRY = _Registry(BUILTIN_LAYOUTS)


def register_layout(spec: LayoutSpec) -> None:
    """Make ``spec`` known to ``load_plate`` (tried after the layouts already known) and ``synth``.

    Raises
    ------
    NeuroRGError
        If a layout of that name is already registered.
    """
    _REGISTRY.register(spec)


def unregister_layout(name: str) -> None:
    """Forget a layout registered with ``register_layout`` (built-in layouts stay)."""
    _REGISTRY.unregister(name)


@contextmanager
def registered_layout(spec: LayoutSpec) -> Iterator[LayoutSpec]:
    """``register_layout(spec)`` for the length of a ``with`` block."""
    register_layout(spec)
    try:
        yield spec
    finally:
        unregister_layout(spec.name)


def layout_names() -> tuple[str, ...]:
    """Names of every known layout: the built-ins (``BUILTIN_LAYOUTS``' order), then registered ones."""
    return tuple(spec.name for spec in _REGISTRY.specs)


def layout_spec(name: str) -> LayoutSpec:
    """The layout called ``name``.

    Raises
    ------
    NeuroRGError
        Naming the known layouts when there is none of that name.
    """
    for spec in _REGISTRY.specs:
        if spec.name == name:
            return spec
    raise NeuroRGError(f"layout {name!r} is not one of {', '.join(layout_names())}")


def builtin_layout(name: str) -> bool:
    """Whether ``name`` is a layout NeuroRG ships (importable in any process)."""
    return any(spec.name == name for spec in BUILTIN_LAYOUTS)


def expected_names() -> str:
    """The file names of every known layout, for messages."""
    examples = [spec.example for spec in _REGISTRY.specs]
    return examples[0] if len(examples) == 1 else f"{', '.join(examples[:-1])} or {examples[-1]}"


def detect_layout(where: Path, files: list[Path]) -> tuple[LayoutSpec, list[Hit]]:
    """The one layout whose pattern matches the plate's file names, and its files.

    Each file is matched against the layouts in order; the first that matches claims it. Files
    no layout claims are ignored.

    Raises
    ------
    NeuroRGError
        Naming ``where``: no image files, no name matching a layout, or names of several layouts.
    """
    specs = _REGISTRY.specs
    matches: dict[str, list[Hit]] = {spec.name: [] for spec in specs}
    for path in files:
        for spec in specs:
            m = spec.match(path.name)
            if m:
                matches[spec.name].append((path, m))
                break
    found = {name: hits for name, hits in matches.items() if hits}
    if not found:
        images = [p.name for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            zips = [p.name for p in files if p.suffix.lower() == ".zip"]
            inner = (f"; {printable(zips[0])!r} is a zip inside the zip or folder, not opened: unzip it "
                     "and give its plate" if zips else "")
            raise NeuroRGError(
                f"no image files found (searched subfolders; {len(files)} other files){inner}; "
                f"expected {expected_names()}", path=where,
            )
        raise NeuroRGError(
            f"no file name matches a known layout (e.g. {', '.join(images[:3])}); expected "
            f"{expected_names()}", path=where,
        )
    if len(found) > 1:
        parts = ", ".join(f"{k} ({len(v)} files, e.g. {v[0][0].name})" for k, v in found.items())
        raise NeuroRGError(f"folder mixes layouts: {parts}; put one plate per folder", path=where)
    name, hits = next(iter(found.items()))
    return next(spec for spec in specs if spec.name == name), hits

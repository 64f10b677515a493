"""The project's one exception type.

``NeuroRGError`` is a ``ValueError`` whose message is written for a person: it names the file,
the well, the value it got and what it expected. Views show it with ``st.error``; the CLI prints
it on one line and exits non-zero.
"""

from __future__ import annotations

from pathlib import Path


class NeuroRGError(ValueError):
    """Bad input or a failed precondition, with a message a person can act on."""

    def __init__(self, message: str, *, path: str | Path | None = None, well: str | None = None):
        self.path = str(path) if path is not None else None
        self.well = well
        where = []
        if path is not None:
            where.append(f"{Path(path).name}")
        if well is not None:
            where.append(f"well {well}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(prefix + message)


class PlateMapError(NeuroRGError):
    """A plate map that cannot be read, or that disagrees with the plate. ``problems`` lists all."""

    def __init__(self, problems: list[str], *, path: str | Path | None = None):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems), path=path)

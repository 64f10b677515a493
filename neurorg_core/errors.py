"""The project's one exception type.

``NeuroRGError`` is a ``ValueError`` whose message is written for a person: it names the file,
the well, the value it got and what it expected. Views show it with ``st.error``; the CLI prints
it on one line and exits non-zero.
"""

from __future__ import annotations

from pathlib import Path


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name shown as ``\\xff`` escapes.

    Python reads a non-UTF-8 file name (a byte 0xff, say) into a ``str`` holding a lone surrogate,
    which cannot be printed to a UTF-8 console, sent to a browser or stored in DuckDB. Messages
    naming such a file use this form instead.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class NeuroRGError(ValueError):
    """Bad input or a failed precondition, with a message a person can act on."""

    def __init__(self, message: str, *, path: str | Path | None = None, well: str | None = None):
        self.path = str(path) if path is not None else None
        self.well = well
        where = []
        if path is not None:
            where.append(Path(path).name)
        if well is not None:
            where.append(f"well {well}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(printable(prefix + message))


class PlateMapError(NeuroRGError):
    """A plate map that cannot be read, or that disagrees with the plate. ``problems`` lists all."""

    def __init__(self, problems: list[str], *, path: str | Path | None = None):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems), path=path)

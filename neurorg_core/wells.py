"""Well names and plate geometry.

Internally a well is a 1-based ``(row, col)`` pair (row A = 1). It is shown as ``A01``. Input may
be ``A1``, ``A01``, ``a01``, `` A01 ``, ``r01c01`` (Harmony) or, for 1536-well plates, ``AF48``.
"""

from __future__ import annotations

import re

from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import PLATE_FORMATS

_LETTER_WELL = re.compile(r"^([A-Za-z]{1,2})\s*0*(\d{1,2})$")
_RC_WELL = re.compile(r"^[rR]0*(\d{1,2})[cC]0*(\d{1,2})$")
MAX_ROWS, MAX_COLS = PLATE_FORMATS[1536]


def row_letters(row: int) -> str:
    """1-based row number -> letters: 1 -> 'A', 26 -> 'Z', 27 -> 'AA', 32 -> 'AF'."""
    if not 1 <= row <= MAX_ROWS:
        raise NeuroRGError(f"row {row} is outside 1..{MAX_ROWS}")
    if row <= 26:
        return chr(ord("A") + row - 1)
    return "A" + chr(ord("A") + row - 27)


def format_well(row: int, col: int) -> str:
    """1-based (row, col) -> display name, e.g. (1, 1) -> 'A01', (32, 48) -> 'AF48'."""
    if not 1 <= col <= MAX_COLS:
        raise NeuroRGError(f"column {col} is outside 1..{MAX_COLS}")
    return f"{row_letters(row)}{col:02d}"


def parse_well(text: object) -> tuple[int, int]:
    """Well name in any accepted spelling -> 1-based (row, col).

    Raises
    ------
    NeuroRGError
        If the text is not a well name (the message shows the accepted forms).
    """
    s = str(text).strip()
    m = _RC_WELL.match(s)
    if m:
        row, col = int(m.group(1)), int(m.group(2))
    else:
        m = _LETTER_WELL.match(s)
        if not m:
            raise NeuroRGError(
                f"{text!r} is not a well name; expected e.g. A01, A1, a01 or r01c01"
            )
        letters, col = m.group(1).upper(), int(m.group(2))
        if len(letters) == 1:
            row = ord(letters) - ord("A") + 1
        elif letters[0] == "A":
            row = 26 + ord(letters[1]) - ord("A") + 1
        else:
            raise NeuroRGError(f"{text!r} has an unknown row {letters!r}; rows run A..Z, AA..AF")
    if not (1 <= row <= MAX_ROWS and 1 <= col <= MAX_COLS):
        raise NeuroRGError(
            f"{text!r} is outside the largest plate (1536 wells: rows A..AF, columns 01..48, e.g. A01..AF48)"
        )
    return row, col


def normalize_well(text: object) -> str:
    """Any accepted spelling -> 'A01'."""
    return format_well(*parse_well(text))


def plate_format_for(wells: list[tuple[int, int]] | list[str]) -> int:
    """Smallest standard plate (96, 384 or 1536) that holds every well."""
    rc = [parse_well(w) if isinstance(w, str) else w for w in wells]
    if not rc:
        raise NeuroRGError("no wells given")
    max_row = max(r for r, _ in rc)
    max_col = max(c for _, c in rc)
    for n_wells, (rows, cols) in sorted(PLATE_FORMATS.items()):
        if max_row <= rows and max_col <= cols:
            return n_wells
    raise NeuroRGError(f"well row {max_row} / column {max_col} does not fit a 1536-well plate")


def plate_shape(n_wells: int) -> tuple[int, int]:
    """96 -> (8, 12), 384 -> (16, 24), 1536 -> (32, 48)."""
    if n_wells not in PLATE_FORMATS:
        raise NeuroRGError(f"plate format {n_wells} is not one of {sorted(PLATE_FORMATS)}")
    return PLATE_FORMATS[n_wells]


def all_wells(n_wells: int) -> list[str]:
    """Every well of a plate format in row-major order: A01, A02, ..."""
    rows, cols = plate_shape(n_wells)
    return [format_well(r, c) for r in range(1, rows + 1) for c in range(1, cols + 1)]

"""Plate maps: which compound, dose and role each well has (pycytominer ``Metadata_*`` columns).

Size (~980 lines): most of it is recognising how labs write maps (encodings, separators and decimal
commas, title rows, merged cells and formulas in .xlsx) and spell columns, wells, roles and dose
units, and reporting every problem of a file at once; it has one job. The file reading (``# ---
reading files``) finds the header by the same column names the normalising uses, so the two stay
in one module.

``load_plate_map(path)`` reads a CSV or TSV (delimiter sniffed) or an Excel ``.xlsx`` workbook, maps
common column spellings to the schema names and validates the content; every problem in the file is
reported at once in a ``PlateMapError``. ``check_plate_map(df, imaged_wells)`` lists the problems of
a table (raw or loaded) against the wells that were imaged.

Output columns: ``Metadata_Plate`` (str, "" when the file has none), ``Metadata_Well`` ("A01"),
``Metadata_Row`` / ``Metadata_Col`` (1-based), ``Metadata_Compound`` (str, "" for none),
``Metadata_Dose_uM`` (float, µM, NaN for none), ``Metadata_Role`` (control / disease / treatment /
empty), ``Metadata_Class`` (Int64 0..5, <NA> when absent).

Doses. A column is a dose column when its name says dose or concentration (``dose``, ``conc``,
``concentration``, with ``Metadata_`` / ``final`` / ``compound`` allowed around them) and it may name
its unit: in brackets (``Dose (µM)``, ``Concentration [nM]``) or as the last word (``dose_uM``,
``conc_mM``, ``Metadata_Dose_uM``). Units: pM, nM, µM / uM, mM, M and their ``mol/L`` and word forms
(``DOSE_UNITS_UM``); values are converted to µM. A dose column without a unit (``Dose``,
``Concentration``) is taken as µM, and a warning says so. A cell may carry its own unit
(``500 nM``), and a separate unit column (``Dose unit``, ``Concentration Units``, a plain ``Unit``
beside a dose column) may give one per row. In a semicolon-separated file (European Excel) ``1,5``
is 1.5 (and ``1.000``, which could be European Excel's thousands-formatted 1000, is a problem); in
a tab-separated one too, unless three digits follow the comma (``1,500``: a thousands separator?),
which is a problem, as is any comma in a number of a comma-separated file. A column that looks
like a dose but cannot be understood (an unknown unit such as ``mg/mL``, extra words such as
``Dose group``, text values) is a problem naming the column and the value: a dose column is never
silently dropped. Beside one dose column, a column with extra words (``LPS conc (ng/mL)``: the
stimulus's concentration) is not the dose and is named in a warning.

``-``, ``NA``, ``N/A``, ``none`` (``_NO_VALUE``) in a dose, compound or class cell mean blank.
A map without a well column but with ``Row`` (``B`` or ``2``) and ``Column`` columns has its wells
made of them.

Rows. The header is the first row that names a well column (title and comment rows above it are
skipped), else the first non-blank row. Rows whose every cell is blank (Excel's trailing rows,
spacer rows) and comment rows (first cell ``# ...``) are skipped wherever they are; a row with a
well and nothing else is kept (and then needs a role). Problems name the line (CSV) or the sheet
row (Excel) as a spreadsheet shows it.

Excel. The sheet read is the first one named like a plate map (``Plate map``, ``platemap``,
``Plate layout``, ``Layout``, ``Map``; case, spaces, ``_`` and ``-`` ignored), else the first whose
rows name a well column, else the workbook's first sheet (a warning names other sheets that hold a
map too). Cells are read as values (a formula's last computed value, as Excel saved it; formulas
never computed, a sheet where no formula has a saved value, are a problem); a merged range gives
its value to every cell it covers. Old binary ``.xls`` files are refused: save as ``.xlsx`` or CSV.

A blank or absent role is derived from the class label when there is one: class 0 -> control,
class 5 -> disease, other classes -> treatment (training plates carry class labels only).
Otherwise a blank role is ``treatment`` when the well has a compound and a problem when not.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import pandas as pd

from neurorg_core.errors import NeuroRGError, PlateMapError
from neurorg_core.schema import (
    CLASS, COL, COMPOUND, CONTROL_CLASS, DISEASE_CLASS, DOSE, N_CLASSES, PLATE, PLATE_MAP_COLUMNS, ROLE,
    ROLES, ROW, WELL,
)
from neurorg_core.wells import format_well, parse_well

log = logging.getLogger(__name__)

COLUMN_ALIASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (WELL, ("metadata_well", "well", "wells", "well_name", "wellname", "well_id", "metadata_wellname",
            "well_position")),
    (PLATE, ("metadata_plate", "plate", "plate_id", "plate_name", "barcode", "metadata_barcode")),
    (COMPOUND, ("metadata_compound", "compound", "compound_name", "metadata_compound_name", "drug",
                "drug_name")),
    (ROLE, ("metadata_role", "role", "well_role", "metadata_control_type", "control_type", "well_type")),
    (CLASS, ("metadata_class", "class", "class_label", "label", "metadata_label")),
)
"""Schema column -> accepted input spellings (compared as ``_column_key`` writes a name: lower case,
runs of spaces, ``-`` and ``.`` as one ``_``, so ``Well Name`` is ``well_name``). Dose columns are
recognised by name and unit instead (see the module docstring and ``DOSE_UNITS_UM``)."""

DOSE_UNITS_UM: Mapping[str, float] = MappingProxyType({
    "pm": 1e-6, "nm": 1e-3, "um": 1.0, "mm": 1e3, "m": 1e6,
    "pmol/l": 1e-6, "nmol/l": 1e-3, "umol/l": 1.0, "mmol/l": 1e3, "mol/l": 1e6,
    "picomolar": 1e-6, "nanomolar": 1e-3, "micromolar": 1.0, "millimolar": 1e3, "molar": 1e6,
})
"""Concentration unit (lower case, µ/μ written u, no spaces) -> µM per unit."""

ROLE_ALIASES: Mapping[str, str] = MappingProxyType({
    "ctrl": "control", "ctl": "control", "controls": "control",
    "treated": "treatment", "compound": "treatment", "cmpd": "treatment", "test": "treatment",
})
"""Role spellings (lower case) that can mean one role only. Words that could mean either control or
disease in this assay (``DMSO``, ``vehicle``, ``untreated``, ``LPS``, ``blank``, ``negative control``)
are problems whose message says what each role means."""

OUTPUT_COLUMNS = PLATE_MAP_COLUMNS
"""What ``load_plate_map`` returns (``schema.PLATE_MAP_COLUMNS``)."""
EXCEL_SUFFIXES = (".xlsx", ".xlsm")
PLATE_MAP_SHEET_NAMES = ("platemap", "platelayout", "layout", "map")
"""Sheet names (lower case, without spaces, ``_`` and ``-``) preferred over the first sheet."""

_MAX_LISTED = 10
_DOSE_WORDS = frozenset({"dose", "doses", "conc", "concentration", "concentrations"})
_DOSE_QUALIFIERS = frozenset({"metadata", "final", "compound", "cpd", "drug", "treatment", "working",
                              "nominal"})
_UNIT_WORDS = frozenset({"unit", "units"})
_UNIT_COLUMN = "__dose_unit"
_CELL_WITH_UNIT = re.compile(r"^([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(\D.*)$")
_UNITS_SHOWN = "pM, nM, µM (uM), mM, M, or their mol/L forms"
_NO_VALUE = frozenset({"-", "--", "\u2013", "\u2014", "na", "n/a", "n.a.", "nan", "none", "null"})
"""What labs (and R / pandas exports) write for "no dose", "no compound" (compared in lower case)."""
_POINT_THOUSANDS = re.compile(r"^[-+]?[1-9]\d{0,2}(?:\.\d{3})+(?:\s*[^\d.,\s].*)?$")
_COMMA_NUMBER = re.compile(r"^([-+]?\d+),(\d+)(\s*[^\d.,\s].*)?$")
DecimalComma = Literal["no", "yes", "unless_thousands"]
"""How a file's dose cells treat ``1,5``: an error (comma-separated files: ambiguous), a decimal
comma (semicolon-separated: European Excel), or a decimal comma unless three digits follow it
(tab-separated: ``1,500`` could be either)."""


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _unit_key(text: str) -> str:
    return re.sub(r"\s+", "", str(text).replace("µ", "u").replace("μ", "u").lower())


def unit_to_um(unit: str) -> float | None:
    """µM per ``unit`` ("nM" -> 0.001, "µM" -> 1, "mmol/L" -> 1000), or None when unknown."""
    return DOSE_UNITS_UM.get(_unit_key(unit))


# --- dose columns ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _DoseHeader:
    """What a column name says about doses."""

    kind: str                  # "dose" | "unit" (a per-row unit column) | "bad" | "other" (words
                               # beyond a dose: another concentration, e.g. "LPS conc", or not a dose)
    factor: float | None = None  # µM per unit named in the header; None: no unit named
    unit: str = ""             # the unit as written in the header
    problem: str = ""          # for kinds "bad" and "other": why it cannot be understood


def _dose_header(name: object) -> _DoseHeader | None:
    """Classify a column name: a dose column (with its unit), a unit column, a dose-like column
    that cannot be understood, or None (not about doses)."""
    text = str(name).strip()
    low = text.replace("µ", "u").replace("μ", "u").lower()
    bracket = re.fullmatch(r"(.*?)[\s_]*[(\[{]\s*(.*?)\s*[)\]}]\s*", low)
    words, unit = (bracket.group(1), bracket.group(2)) if bracket else (low, "")
    tokens: list[str] = []
    for t in re.split(r"[\s_.\-:]+", words):
        glued = re.fullmatch(r"(dose|conc|concentration)(units?)", t)
        tokens += [glued.group(1), glued.group(2)] if glued else ([t] if t else [])
    said = [t for t in tokens if t in _DOSE_WORDS]
    if not said:
        return None
    if any(t in _UNIT_WORDS for t in tokens):
        return _DoseHeader("unit")
    if not unit and len(tokens) > 1 and tokens[-1] in DOSE_UNITS_UM:
        unit = tokens.pop()
    rest = [t for t in tokens if t not in _DOSE_WORDS | _DOSE_QUALIFIERS]
    if rest:
        return _DoseHeader("other", problem=(
            f"column {text!r} looks like a dose (it says {said[0]!r}) but {' '.join(rest)!r} is not a "
            f"concentration unit; name the unit as in 'Dose (uM)', 'dose_nM' or 'Concentration [mM]' "
            f"({_UNITS_SHOWN}), or rename the column if it is not a dose"))
    if not unit:
        return _DoseHeader("dose")
    factor = unit_to_um(unit)
    if factor is None:
        return _DoseHeader("bad", unit=unit, problem=(
            f"column {text!r}: unit {unit!r} is not a molar concentration; expected {_UNITS_SHOWN} "
            "(a mass concentration such as mg/mL needs the molar mass: convert it to µM first)"))
    return _DoseHeader("dose", factor=factor, unit=unit)


@dataclass(frozen=True)
class _DoseSpec:
    """The plate map's dose column, the unit its header names, and an optional unit column."""

    column: str
    factor: float | None
    unit_column: str | None


def _dose_columns(columns: Iterable[object]) -> tuple[_DoseSpec | None, list[str]]:
    """Find the dose column (and unit column) among ``columns``; problems for the rest."""
    problems: list[str] = []
    doses: list[tuple[str, _DoseHeader]] = []
    others: list[tuple[str, _DoseHeader]] = []
    units: list[str] = []
    for col in columns:
        header = _dose_header(col)
        if header is None:
            continue
        if header.kind in ("bad", "other"):
            others.append((str(col), header))
        elif header.kind == "unit":
            units.append(str(col))
        else:
            doses.append((str(col), header))
    for col, header in others:
        if header.kind == "other" and len(doses) == 1:   # "LPS conc" beside "Compound conc (uM)"
            log.warning("plate map: column %r is not read (not the dose: that is column %r)", col, doses[0][0])
        else:
            problems.append(header.problem)
    if doses and not units:   # a plain "Unit" column beside a dose column is its unit
        units = [str(c) for c in columns if _column_key(c) in ("unit", "units", "metadata_unit")]
    if len(doses) > 1:
        problems.append(f"columns {doses[0][0]!r} and {doses[1][0]!r} both mean {DOSE}; keep one")
    if len(units) > 1:
        problems.append(f"columns {units[0]!r} and {units[1]!r} both give the dose unit; keep one")
    if not doses:
        if units:
            problems.append(f"column {units[0]!r} gives dose units but there is no dose column "
                            "(e.g. 'Dose' or 'Concentration')")
        return None, problems
    column, header = doses[0]
    unit_column = units[0] if units else None
    if unit_column is not None and header.factor is not None:
        problems.append(f"column {column!r} names its unit ({header.unit}) and column {unit_column!r} "
                        "gives one per row; keep one")
    return _DoseSpec(column, header.factor, unit_column), problems


def _parse_dose(text: str) -> tuple[float, float | None] | None:
    """A dose cell -> (number, µM per unit written in the cell or None); None if not a dose."""
    try:
        return float(text), None
    except ValueError:
        pass
    m = _CELL_WITH_UNIT.match(text)
    if m:
        factor = unit_to_um(m.group(2))
        if factor is not None:
            return float(m.group(1)), factor
    return None


def _to_um(value: float, factor: float | None) -> float:
    """``value`` in a unit of ``factor`` µM (a power of ten; None: µM) -> µM, as the number the same
    dose written in µM reads as (700 nM -> 0.7, not 700 * 0.001 = 0.7000000000000001): treatments
    are grouped by dose, so one dose written in two units must be one number."""
    if factor is None or factor == 1.0:
        return value
    return float(f"{value!r}e{round(math.log10(factor))}")


def _decimal_point(text: str, decimal_comma: DecimalComma) -> str | None:
    """A dose cell with a decimal comma (``1,5``, ``2,5 nM``) written with a point, when the file's
    separator makes the comma a decimal comma; the cell unchanged when it has no such comma; None
    when the comma (or, where commas are decimal, a point: ``1.000``) could as well be a
    thousands separator."""
    if decimal_comma == "yes" and _POINT_THOUSANDS.match(text):
        return None   # 1.000: 1, or European Excel's thousands-formatted 1000?
    m = _COMMA_NUMBER.match(text)
    if m is None:
        return text
    if decimal_comma == "yes" or (decimal_comma == "unless_thousands" and len(m.group(2)) != 3):
        return f"{m.group(1)}.{m.group(2)}{m.group(3) or ''}"
    return None


def _doses(raw: list[str], units: list[str] | None, spec: _DoseSpec,
           line: list[int], decimal_comma: DecimalComma = "no") -> tuple[np.ndarray, list[str]]:
    """Dose cells -> µM (NaN for blank) and the problems, naming the column, line and value."""
    out = np.full(len(raw), np.nan)
    bad, neg, no_unit, bad_unit, comma, assumed, decimal = [], [], [], [], [], 0, 0
    for i, (ln, text) in enumerate(zip(line, raw)):
        if text == "" or text.lower() in _NO_VALUE:
            continue
        number = _decimal_point(text, decimal_comma)
        if number is None:
            comma.append(f"line {ln}: {text!r}")
            continue
        decimal += number != text
        parsed = _parse_dose(number)
        if parsed is None or not math.isfinite(parsed[0]):
            bad.append(f"line {ln}: {text!r}")
            continue
        value, factor = parsed
        if factor is None and units is not None:
            unit = units[i]
            factor = unit_to_um(unit) if unit else None
            if not unit:
                no_unit.append(f"line {ln}")
            elif factor is None:
                bad_unit.append(f"line {ln}: {unit!r}")
            if factor is None:
                continue
        if factor is None and spec.factor is None:
            assumed += 1
        value = _to_um(value, factor if factor is not None else spec.factor)
        if value < 0:
            neg.append(f"line {ln}: {text}")
        out[i] = value
    col = spec.column
    if assumed:
        log.warning("plate map: column %r names no unit; its doses are taken as µM (%d value(s); name "
                    "the unit to be explicit, e.g. 'Dose (nM)')", col, assumed)
    if decimal:
        log.info("plate map: column %r: %d dose(s) with a decimal comma (1,5 = 1.5)", col, decimal)
    problems = []
    if bad:
        problems.append(f"column {col!r}: non-numeric dose(s) (expected a number, e.g. 0.5, or a "
                        f"number with its unit, e.g. '500 nM', or blank): {_listed(bad)}")
    if comma:
        problems.append(f"column {col!r}: is the comma or point in these doses a decimal mark or a "
                        "thousands separator? write the number without thousands separators, e.g. 1.5 "
                        "or 1500 (in a semicolon-separated file, as European Excel writes, 1,5 is 1.5): "
                        f"{_listed(comma)}")
    if neg:
        problems.append(f"column {col!r}: negative dose(s): {_listed(neg)}")
    if no_unit:
        problems.append(f"column {col!r}: dose without a unit in column {spec.unit_column!r}: "
                        f"{_listed(no_unit)}")
    if bad_unit:
        problems.append(f"column {spec.unit_column!r}: unknown dose unit(s) (expected {_UNITS_SHOWN}): "
                        f"{_listed(bad_unit)}")
    return out, problems


# --- columns and rows -----------------------------------------------------------------------

def _column_key(name: object) -> str:
    """A column name as ``COLUMN_ALIASES`` spells it: ``" Well Name "`` -> ``"well_name"``."""
    return re.sub(r"[\s\-.]+", "_", str(name).strip().lower()).strip("_")


def _rename(df: pd.DataFrame) -> tuple[pd.DataFrame, _DoseSpec | None, list[str]]:
    """Map input spellings to schema names; the dose column; problems for a missing well column,
    ambiguous or dose-like columns that cannot be understood. Of two columns meaning the same, the
    second is dropped (its problem is reported), so every schema name is one column."""
    lookup = {alias: target for target, aliases in COLUMN_ALIASES for alias in aliases}
    mapping: dict[Any, str] = {}
    problems: list[str] = []
    spec, dose_problems = _dose_columns(df.columns)
    second: list[int] = []
    for i, col in enumerate(df.columns):
        target = lookup.get(_column_key(col))
        if target is None:
            continue
        clash = [c for c, t in mapping.items() if t == target]
        if clash:
            problems.append(f"columns {clash[0]!r} and {col!r} both mean {target}; keep one")
            second.append(i)
            continue
        mapping[col] = target
    problems += dose_problems
    if spec is not None:
        mapping[next(c for c in df.columns if str(c) == spec.column)] = DOSE
        if spec.unit_column is not None:
            mapping[next(c for c in df.columns if str(c) == spec.unit_column)] = _UNIT_COLUMN
    if WELL not in mapping.values():
        numbered = [str(c).strip() for c in df.columns if str(c).strip().isdigit()]
        grid = len(numbered) >= 3 and numbered == [str(i) for i in range(1, len(numbered) + 1)]
        problems.append(
            f"no well column; expected {WELL} (or well / Well, or Row and Column); columns found: "
            f"{', '.join(map(str, df.columns)) or 'none'}"
            + ("; this looks like a plate-shaped grid (rows A, B, ... by columns 1, 2, ...), which "
               "is not read: write one row per well, with columns Well, Compound, Dose (uM), Role"
               if grid else "")
        )
    unused = [str(c) for i, c in enumerate(df.columns)
              if c not in mapping and i not in second and not str(c).startswith("column ")
              and c not in OUTPUT_COLUMNS   # Metadata_Row / _Col of a map loaded before
              and _dose_header(c) is None]   # a dose-like column not used is a problem already
    if unused:
        log.warning("plate map: column(s) not used: %s (the columns read are well, plate, compound, "
                    "dose, dose unit, role and class, by name; rename a column to be read)",
                    ", ".join(map(repr, unused)))
    if second:
        df = df.iloc[:, [i for i in range(len(df.columns)) if i not in second]]
    return df.rename(columns=mapping), spec, problems


_ROW_COLUMNS = ("row", "well_row", "metadata_row")
_COL_COLUMNS = ("column", "col", "well_column", "well_col", "metadata_col", "metadata_column")
_WELL_COLUMNS = frozenset(alias for target, aliases in COLUMN_ALIASES if target == WELL for alias in aliases)


def _well_from_row_col(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """A table with a row and a column column but no well column (``Row`` ``B``/``2``, ``Column``
    ``3``: instrument exports) -> the table with a well column made of them in their place, and
    a note for the problems of its wells; the table unchanged otherwise."""
    keys = {_column_key(c): c for c in df.columns}
    row = next((keys[k] for k in _ROW_COLUMNS if k in keys), None)
    col = next((keys[k] for k in _COL_COLUMNS if k in keys), None)
    if row is None or col is None or any(k in _WELL_COLUMNS for k in keys):
        return df, ""

    def well(r: str, c: str) -> str:
        return "" if not (r or c) else f"r{r}c{c}" if r.isdigit() else f"{r}{c}"

    made = [well(r, c) for r, c in zip(_text(df[row]), _text(df[col]))]
    log.info("plate map: wells made of columns %r and %r", row, col)
    out = df.drop(columns=[row, col])
    out.insert(0, WELL, np.array(made, object))
    return out, f"made of columns {row!r} and {col!r}"


def _text(series: pd.Series) -> list[str]:
    """Cells as stripped text; missing values (None, NaN, <NA>) become "". A list: plate maps are a
    few hundred rows, where pandas' per-call overhead costs more than the Python loop."""
    return ["" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v).strip()
            for v in series.tolist()]


def _drop_blank_rows(df: pd.DataFrame, line: list[int]) -> tuple[pd.DataFrame, list[int]]:
    """Rows with at least one non-blank cell, and their line numbers."""
    if df.empty or len(df.columns) == 0:
        return df.reset_index(drop=True), line
    cells = [_text(df.iloc[:, col]) for col in range(len(df.columns))]
    filled = np.fromiter((any(row) for row in zip(*cells)), bool, count=len(df))
    skipped = len(df) - int(filled.sum())
    if skipped:
        log.info("plate map: %d blank row(s) skipped", skipped)
    return df[filled].reset_index(drop=True), [ln for ln, keep in zip(line, filled) if keep]


def _normalize(df: pd.DataFrame, line: list[int] | None = None,
               decimal_comma: DecimalComma = "no") -> tuple[pd.DataFrame, list[str]]:
    """Raw table -> schema table plus every content problem (rows named as in a spreadsheet:
    ``line`` gives each row's line; default header on line 1, rows from line 2; ``decimal_comma``:
    how the file's separator reads ``1,5``)."""
    line = list(line) if line is not None else [i + 2 for i in range(len(df))]
    df, line = _drop_blank_rows(df, line)
    df, made_of = _well_from_row_col(df)
    df, spec, problems = _rename(df)
    if WELL not in df.columns:
        return df, problems
    n = len(df)
    plates = _text(df[PLATE]) if PLATE in df.columns else [""] * n

    parsed: list[tuple[int, int] | None] = []
    bad_wells, numbered = [], False
    for ln, text in zip(line, _text(df[WELL])):
        try:
            parsed.append(parse_well(text))
        except NeuroRGError:
            parsed.append(None)
            bad_wells.append(f"line {ln}: {text!r}")
            numbered = numbered or text.isdigit()
    if bad_wells:
        why = ("; wells numbered 1, 2, ... are not read: whether they count by row or by column, and "
               "on which plate size, is not written in the file") if numbered else ""
        problems.append(f"unknown well name(s){' ' + made_of if made_of else ''} (expected e.g. A01, A1, "
                        f"r01c01): {_listed(bad_wells)}{why}")
    wells = [format_well(*rc) if rc else "" for rc in parsed]
    compounds = ([c if c.lower() not in _NO_VALUE else "" for c in _text(df[COMPOUND])]
                 if COMPOUND in df.columns else [""] * n)

    if spec is not None and DOSE in df.columns:
        units = _text(df[_UNIT_COLUMN]) if _UNIT_COLUMN in df.columns else None
        dose, dose_problems = _doses(_text(df[DOSE]), units, spec, line, decimal_comma)
        problems += dose_problems
    else:
        dose = np.full(n, np.nan)

    classes: list[object] = [pd.NA] * n
    if CLASS in df.columns:
        bad = []
        for i, (ln, v) in enumerate(zip(line, _text(df[CLASS]))):
            if v == "" or v.lower() in _NO_VALUE:
                continue
            try:
                num = float(v)
            except ValueError:
                num = float("nan")
            if num.is_integer() and 0 <= num < N_CLASSES:
                classes[i] = int(num)
            else:
                bad.append(f"line {ln}: {v!r}")
        if bad:
            problems.append(f"class label(s) outside 0-{N_CLASSES - 1}: {_listed(bad)}")

    typed_roles = _text(df[ROLE]) if ROLE in df.columns else [""] * n
    roles, bad_roles, blank = [], [], []
    for i, (ln, typed) in enumerate(zip(line, typed_roles)):
        role = " ".join(typed.lower().split())
        role = ROLE_ALIASES.get(role, role)
        if role == "":
            cls = classes[i]
            if cls is not pd.NA:
                role = ("control" if cls == CONTROL_CLASS
                        else "disease" if cls == DISEASE_CLASS else "treatment")
            elif compounds[i] != "":
                role = "treatment"
            else:
                blank.append(f"line {ln}")
        elif role not in ROLES:
            bad_roles.append(f"line {ln}: {typed!r}")
        roles.append(role)
    if bad_roles:
        problems.append(f"unknown role(s) (allowed: {', '.join(ROLES)}: control = unstimulated cells, "
                        "the 100 % rescue reference; disease = stimulated cells without compound, 0 %; "
                        "treatment = stimulated cells with a compound; empty = no cells, not in the "
                        "statistics; a vehicle or DMSO well is control or disease by its stimulus): "
                        f"{_listed(bad_roles)}")
    contradict = [f"line {ln}: {role}, class {cls}" for ln, role, cls in zip(line, roles, classes)
                  if cls is not pd.NA and ((role == "control") != (cls == CONTROL_CLASS))
                  and role in ("control", "disease")]
    if contradict:
        problems.append(f"role and class label disagree (control wells are class {CONTROL_CLASS}, "
                        f"unstimulated; disease wells are stimulated, not class {CONTROL_CLASS}): "
                        f"{_listed(contradict)}")
    if blank:
        problems.append(
            f"no role, class or compound, so the role is unknown (allowed: {', '.join(ROLES)}): "
            f"{_listed(blank)}"
        )

    problems += _plate_and_well_problems(line, plates, wells)
    # object arrays, as pandas' own text columns were: the same column types for an empty map too
    out = pd.DataFrame({
        PLATE: np.array(plates, object), WELL: np.array(wells, object),
        ROW: pd.array([rc[0] if rc else pd.NA for rc in parsed], dtype="Int64"),
        COL: pd.array([rc[1] if rc else pd.NA for rc in parsed], dtype="Int64"),
        COMPOUND: np.array(compounds, object), DOSE: dose, ROLE: np.array(roles, object),
        CLASS: pd.array(classes, dtype="Int64"),
    }, index=range(n))
    return out[list(OUTPUT_COLUMNS)], problems


def _plate_and_well_problems(line: list[int], plates: list[str], wells: list[str]) -> list[str]:
    """Rows without a plate in a map naming several, plate names that differ only in case or
    spaces, and duplicate wells (per plate, with their lines)."""
    problems = []
    if len(set(plates) - {""}) > 1 and "" in plates:
        problems.append("no plate on rows of a map that names several plates (write the plate on every "
                        f"row): {_listed([f'line {ln}' for ln, p in zip(line, plates) if not p])}")
    spellings: dict[str, set[str]] = {}
    for p in plates:
        if p:
            spellings.setdefault(_plate_key(p), set()).add(p)
    clashes = [" / ".join(map(repr, sorted(names))) for names in spellings.values() if len(names) > 1]
    if clashes:
        problems.append(f"plate names that differ only in case, separators or leading zeros (write each "
                        "plate one way): "
                        f"{_listed(clashes)}")
    where: dict[tuple[str, str], list[int]] = {}
    for ln, p, w in zip(line, plates, wells):
        if w:
            where.setdefault((p, w), []).append(ln)
    dups = [f"{p + ' ' if p else ''}{w} (lines {', '.join(map(str, lns))})"
            for (p, w), lns in sorted(where.items()) if len(lns) > 1]
    if dups:
        problems.append(f"duplicate well(s): {_listed(dups)}")
    return problems


# --- reading files --------------------------------------------------------------------------

_EXCEL_ERROR = re.compile(r"#(N/A|REF!|VALUE!|DIV/0!|NAME\?|NUM!|NULL!|SPILL!|CALC!)", re.IGNORECASE)


def _is_comment(row: list[str]) -> bool:
    """A row whose first non-blank cell starts with ``#`` (but is not an Excel error value such as
    ``#N/A``, which is a problem of its row)."""
    first = next((c.strip() for c in row if c.strip()), "")
    return first.startswith("#") and not _EXCEL_ERROR.fullmatch(first)


_TITLE_ROWS = 20
"""How many non-blank rows may stand above the header (a title block, not a page of notes)."""


def _names_wells(row: list[str]) -> bool:
    """Whether a row names a well column, or a row and a column column (``_well_from_row_col``)."""
    keys = {_column_key(c) for c in row}
    return bool(keys & _WELL_COLUMNS) or bool(keys & set(_ROW_COLUMNS) and keys & set(_COL_COLUMNS))


def _header_index(rows: list[list[str]]) -> int | None:
    """The header row: the first of the first ``_TITLE_ROWS`` non-blank rows that names a well
    column (title and comment rows above it are skipped), else the first non-blank row (whose
    columns the "no well column" problem lists)."""
    filled = [i for i, r in enumerate(rows) if any(c.strip() for c in r) and not _is_comment(r)]
    named = next((i for i in filled[:_TITLE_ROWS] if _names_wells(rows[i])), None)
    return named if named is not None else (filled[0] if filled else None)


def _table(rows: list[list[str]], lines: list[int], path: Path) -> tuple[pd.DataFrame, list[int]]:
    """Header (``_header_index``) + data rows -> a table of text, with each row's line. Comment
    rows (``#`` ...) are skipped wherever they are, and said."""
    start = _header_index(rows)
    if start is None:
        raise PlateMapError(["the plate map is empty; expected a header line and one row per well"],
                            path=path)
    if any(c.strip() for r in rows[:start] for c in r):
        log.info("plate map %s: header on line %d (the lines above it skipped)", path.name, lines[start])
    comments = [i for i in range(start + 1, len(rows)) if _is_comment(rows[i])]
    if comments:
        log.info("plate map %s: comment line(s) skipped: %s", path.name,
                 _listed([f"line {lines[i]}" for i in comments]))
        keep = [i for i in range(len(rows)) if i not in set(comments)]
        rows, lines = [rows[i] for i in keep], [lines[i] for i in keep]
    header = [c.strip() for c in rows[start]]
    while header and header[-1] == "" and all(len(r) < len(header) or not r[len(header) - 1].strip()
                                              for r in rows[start + 1:]):
        header.pop()   # trailing columns with neither a name nor a value (Excel, ",,," lines)
    width = len(header)
    data, data_lines, long_rows = [], [], []
    for ln, row in zip(lines[start + 1:], rows[start + 1:]):
        if len(row) > width and any(c.strip() for c in row[width:]):
            long_rows.append(f"line {ln} has {len(row)} cells")
        data.append((row + [""] * width)[:width])
        data_lines.append(ln)
    if long_rows:
        raise PlateMapError([f"malformed plate map: the header has {width} columns but "
                             f"{_listed(long_rows)}"], path=path)
    names = [h or f"column {i + 1}" for i, h in enumerate(header)]
    return pd.DataFrame(data, columns=names, dtype=object), data_lines


def _looks_like_text(text: str) -> bool:
    """No control characters but tab and line ends, and a header line mostly ASCII (column names
    are): what bytes decoded by a guessed encoding must look like to be taken as a plate map."""
    if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text):
        return False
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    return sum(c.isascii() for c in first) >= len(first) / 2


def _decode(path: Path) -> str:
    """A text plate map's characters: UTF-8 (with or without a byte-order mark), UTF-16 with its
    byte-order mark (Excel's "Unicode Text"), else Windows-1252 (Excel's "CSV" on Windows, where µ
    is one byte), which a warning names."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PlateMapError([f"cannot read the plate map ({exc.strerror})"], path=path) from exc
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = raw.decode("utf-16")
        except UnicodeDecodeError:
            text = ""
        if text and _looks_like_text(text):
            return text
        raise PlateMapError(["cannot read the plate map: it starts like UTF-16 text but is not; expected "
                             "a CSV or TSV file (UTF-8, UTF-16 or Windows-1252) or .xlsx"], path=path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        utf8_problem = str(exc)
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError:
        text = ""
    if not text or not _looks_like_text(text):
        raise PlateMapError([f"cannot read the plate map as UTF-8 text ({utf8_problem}), nor as "
                             "Windows-1252; expected a CSV or TSV file or .xlsx"], path=path)
    log.warning("plate map %s is not UTF-8; read as Windows-1252 (Excel's CSV on Windows). If names "
                "look wrong, save it as 'CSV UTF-8'", path.name)
    return text


def _read_text_table(path: Path) -> tuple[pd.DataFrame, list[int], DecimalComma]:
    """A CSV / TSV / semicolon-separated plate map as text cells, with each row's line number and
    how its separator reads a decimal comma."""
    text = _decode(path)
    if not text.strip():
        raise PlateMapError(["the plate map is empty; expected a header line and one row per well"],
                            path=path)
    sample = text[:8192]
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",\t;").delimiter
    except csv.Error:
        first = sample.strip().splitlines()[0]
        delimiter = "\t" if "\t" in first else ";" if ";" in first else ","
    # newline=None: lines may end in \r\n, \n or \r alone (Excel's "CSV (Macintosh)")
    reader = csv.reader(StringIO(text, newline=None), delimiter=delimiter, skipinitialspace=True, strict=True)
    rows, lines = [], []
    try:
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise PlateMapError([f"malformed plate map (line {reader.line_num}: {exc})"], path=path) from exc
    decimal_comma: DecimalComma = {";": "yes", "\t": "unless_thousands"}.get(delimiter, "no")
    return (*_table(rows, lines, path), decimal_comma)


def _cell_text(value: object) -> str:
    """An Excel cell's value as the text a CSV export would hold."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).upper()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, dt.datetime) and value.time() == dt.time():
        return value.date().isoformat()   # a date cell (Excel stores dates as date-times)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def _pick_sheet(sheets: dict[str, list[list[str]]], path: Path) -> str:
    """The sheet named like a plate map, else the first whose rows name a well column, else the
    first sheet; the choice is logged, as a warning when another sheet holds a map too."""
    def key(name: str) -> str:
        return re.sub(r"[\s_\-]+", "", name).lower()
    names = list(sheets)
    maps = [n for n in names if any(_names_wells(r) for r in sheets[n])]
    preferred = [n for n in names if key(n) in PLATE_MAP_SHEET_NAMES]
    sheet = (preferred or maps or names)[0]
    others = [n for n in maps if n != sheet]
    if others:
        log.warning("plate map %s: reading sheet %r; sheet(s) %s hold a plate map too and are not read "
                    "(one plate map per workbook, or one sheet with a plate column)", path.name, sheet,
                    ", ".join(map(repr, others)))
    elif len(names) > 1:
        log.info("plate map %s: reading sheet %r (of %s)", path.name, sheet, ", ".join(names))
    return sheet


def _sheet_rows(sheet: Any) -> list[list[str]]:
    """A worksheet's cells as text; a merged range gives its value to every cell it covers."""
    values = [list(row) for row in sheet.iter_rows(values_only=True)]
    for merged in sheet.merged_cells.ranges:
        top = values[merged.min_row - 1][merged.min_col - 1]
        for r in range(merged.min_row - 1, min(merged.max_row, len(values))):
            for c in range(merged.min_col - 1, min(merged.max_col, len(values[r]))):
                values[r][c] = top
    return [[_cell_text(v) for v in row] for row in values]


def _unsaved_formulas(path: Path, sheet: str, rows: list[list[str]]) -> list[str]:
    """The formula cells of ``sheet`` when none of them has a saved value (a workbook written by a
    program that does not compute formulas, e.g. openpyxl or pandas: ``data_only`` reads them
    blank); [] when any has one (Excel computed the sheet: a blank one computed to "")."""
    import openpyxl
    from openpyxl.utils import get_column_letter

    book = openpyxl.load_workbook(path, read_only=True, data_only=False)
    try:
        found = []
        for r, row in enumerate(book[sheet].iter_rows(values_only=True)):
            for c, value in enumerate(row):
                text = value if isinstance(value, str) else getattr(value, "text", None)
                if not (isinstance(text, str) and text.startswith("=")):
                    continue
                if r < len(rows) and c < len(rows[r]) and rows[r][c] != "":
                    return []
                found.append(f"{get_column_letter(c + 1)}{r + 1}: {text}")
        return found
    finally:
        book.close()


def _read_excel(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """The plate-map sheet of an .xlsx workbook (see the module docstring) as text cells."""
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        # not read_only: merged cells are known only to a full worksheet (plate maps are small)
        book = openpyxl.load_workbook(path, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError, ValueError, TypeError) as exc:
        raise PlateMapError([f"cannot read the Excel workbook ({exc}); expected an .xlsx file, or "
                             "save the plate map as CSV"], path=path) from exc
    try:
        if not book.sheetnames:
            raise PlateMapError(["the workbook has no sheet"], path=path)
        sheets = {name: _sheet_rows(book[name]) for name in book.sheetnames}
    finally:
        book.close()
    sheet = _pick_sheet(sheets, path)
    rows = sheets[sheet]
    unsaved = _unsaved_formulas(path, sheet, rows)
    if unsaved:
        raise PlateMapError([f"sheet {sheet!r}: formula(s) without a saved value (the workbook was "
                             "written by a program that does not compute formulas); open and save "
                             f"it in Excel, or write the values: {_listed(unsaved)}"], path=path)
    table, data_lines = _table(rows, list(range(1, len(rows) + 1)), path)
    return table, data_lines


def _read_any(path: Path) -> tuple[pd.DataFrame, list[int], DecimalComma]:
    suffix = path.suffix.lower()
    if suffix == ".xls":
        raise PlateMapError(["old binary .xls workbooks are not read; save the plate map as .xlsx "
                             "or CSV"], path=path)
    try:
        with open(path, "rb") as fh:
            is_zip = fh.read(4) == b"PK\x03\x04"
    except OSError as exc:
        raise PlateMapError([f"cannot read the plate map ({exc.strerror})"], path=path) from exc
    if suffix in EXCEL_SUFFIXES or is_zip:
        return (*_read_excel(path), "no")   # Excel numbers are numbers; text "1,5" stays ambiguous
    return _read_text_table(path)


def load_plate_map(path: str | Path) -> pd.DataFrame:
    """Read and validate a plate map (CSV, TSV or Excel .xlsx).

    Parameters
    ----------
    path
        CSV / TSV / .xlsx file with a ``Metadata_Well`` (or ``well``) column and optional plate,
        compound, dose, role and class columns (see ``COLUMN_ALIASES`` and, for doses and their
        units, the module docstring). Blank rows are skipped.

    Returns
    -------
    pandas.DataFrame
        One row per well with ``OUTPUT_COLUMNS`` (see the module docstring); doses in µM.

    Raises
    ------
    PlateMapError
        Listing every problem in the file: unreadable or malformed, no well column, bad wells,
        duplicate wells, a dose column that cannot be understood (unknown unit, extra words,
        non-numeric or negative values), unknown roles, class labels outside 0-5.
    """
    path = Path(path)
    if not path.is_file():
        raise PlateMapError(["no such plate map file"], path=path)
    table, lines, decimal_comma = _read_any(path)
    df, problems = _normalize(table, lines, decimal_comma)
    if problems:
        raise PlateMapError(problems, path=path)
    log.info("plate map %s: %d wells", path.name, len(df))
    df = df.reset_index(drop=True)
    df.attrs["source"] = str(path)   # so that problems found later (plate_map_for) name the file
    return df


def check_plate_map(df: pd.DataFrame, imaged_wells: Iterable[str], plate: str | None = None) -> list[str]:
    """Every problem of a plate map, including how it matches the imaged wells.

    Parameters
    ----------
    df
        A loaded plate map, or a raw table with any accepted column spellings.
    imaged_wells
        Wells that have images (any spelling).
    plate
        When the map holds several plates (``Metadata_Plate``), the one that was imaged.

    Returns
    -------
    list of str
        Empty when the map is usable: no unknown or duplicate wells, no imaged well missing from
        the map, no map well (other than role ``empty``) without images, numeric doses, known
        roles (the message lists them), class labels within 0-5.
    """
    return _checked(df, imaged_wells, plate)[1]


def _checked(df: pd.DataFrame, imaged_wells: Iterable[str], plate: str | None) -> tuple[pd.DataFrame, list[str]]:
    """The normalised map (``_normalize``'s table) and every problem ``check_plate_map`` names: one
    normalisation serves the check and ``plate_map_for``'s result."""
    table, problems = _normalize(df.copy())
    return table, problems + _match_problems(table, imaged_wells, plate)


def _match_problems(table: pd.DataFrame, imaged_wells: Iterable[str], plate: str | None) -> list[str]:
    """How a normalised map matches the imaged wells (``_checked``'s second half)."""
    problems: list[str] = []
    if WELL not in table.columns:
        return problems
    plates = sorted(set(table[PLATE]) - {""})
    if plate is not None:
        if plate not in plates:
            problems.append(f"plate {plate!r} is not in the map; plates in it: {', '.join(plates) or 'none'}")
        table = table[table[PLATE] == plate]
    elif len(plates) > 1:
        problems.append(f"the map holds plates {', '.join(plates)}; say which one was imaged")
    imaged = []
    for w in imaged_wells:
        try:
            imaged.append(format_well(*parse_well(w)))
        except NeuroRGError as exc:
            problems.append(f"imaged well: {exc}")
    mapped = set(table.loc[table[WELL] != "", WELL])
    missing = [w for w in dict.fromkeys(imaged) if w not in mapped]
    if missing:
        problems.append(f"imaged well(s) not in the plate map: {_listed(missing)}")
    imaged_set = set(imaged)
    unimaged = [w for w, role in zip(table[WELL], table[ROLE])
                if w and role != "empty" and w not in imaged_set]
    if unimaged:
        problems.append(f"plate-map well(s) without images (mark them role 'empty' if intended): "
                        f"{_listed(unimaged)}")
    return problems


def _plate_key(name: object) -> str:
    """A plate name as compared with a folder's: case, the separators between words (spaces, ``_``,
    ``-``) and leading zeros of numbers ignored (``Plate 01`` is ``plate_1``)."""
    words = re.sub(r"[\s_\-]+", " ", str(name)).strip().casefold()
    return re.sub(r"\d+", lambda m: str(int(m.group())), words)


def map_plates(df: pd.DataFrame) -> list[str]:
    """The plate names a plate map describes (``Metadata_Plate``), sorted; [] when it names none."""
    if PLATE not in df.columns:
        return []
    return sorted({str(p).strip() for p in df[PLATE].dropna() if str(p).strip()})


def select_plate(df: pd.DataFrame, *candidates: str | None) -> str | None:
    """Which plate of a multi-plate map applies: the first candidate name the map holds, compared
    as written, else ignoring case, separators and leading zeros when that finds one plate only
    (``plate 1`` finds ``Plate_01``; ``_plate_key``). Callers give the name the run is stored
    under, then the images' folder name. ``None`` when the map describes at most one plate
    (nothing to choose) or names none of the candidates (then ``check_plate_map`` reports that the
    map holds several plates)."""
    plates = map_plates(df)
    if len(plates) <= 1:
        return None
    for candidate in candidates:
        if candidate is None:
            continue
        if candidate in plates:
            return candidate
        same = [p for p in plates if _plate_key(p) == _plate_key(candidate)]
        if len(same) == 1:
            log.info("plate map: plate %r is the map's %r (case, separators and leading zeros ignored)",
                     candidate, same[0])
            return same[0]
    return None


def plate_rows(df: pd.DataFrame, plate: str) -> pd.DataFrame:
    """The rows of a (normalised) multi-plate map that describe ``plate`` (``Metadata_Plate``); the
    one place a map is reduced to one of its plates (``plate_map_for``, the app's plate choice)."""
    return df[df[PLATE] == plate].reset_index(drop=True)


def plate_map_for(df: pd.DataFrame, imaged_wells: Iterable[str], plate: str | None = None) -> pd.DataFrame:
    """The plate map as a run stores it: one row per imaged well, in plate order.

    This is the one place a plate map is matched to a plate: the map is normalised (any accepted
    spellings, ``OUTPUT_COLUMNS``), checked against the imaged wells (``check_plate_map``), reduced
    to ``plate`` of a multi-plate map, then to the imaged wells, with ``Metadata_Row`` /
    ``Metadata_Col`` as integers.

    Raises
    ------
    PlateMapError
        Every problem ``check_plate_map`` finds, naming the file a ``load_plate_map`` table came
        from (its ``attrs["source"]``).
    """
    wells = list(imaged_wells)
    table, problems = _checked(df, wells, plate)
    if problems:
        raise PlateMapError(problems, path=df.attrs.get("source"))
    if plate is not None:
        table = plate_rows(table, plate)
    imaged = {format_well(*parse_well(w)) for w in wells}
    rows, cols = table[ROW].tolist(), table[COL].tolist()
    # imaged wells in plate order (a stable sort, as sort_values on two columns), in Python: a few
    # hundred rows, where pandas' per-call overhead is most of the cost
    order = sorted((i for i, w in enumerate(table[WELL].tolist()) if w in imaged),
                   key=lambda i: (rows[i], cols[i]))
    table = table.take(order).reset_index(drop=True)
    table[ROW] = np.array([rows[i] for i in order], np.int64)
    table[COL] = np.array([cols[i] for i in order], np.int64)
    return table

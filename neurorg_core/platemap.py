"""Plate maps: which compound, dose and role each well has (pycytominer ``Metadata_*`` columns).

``load_plate_map(path)`` reads a CSV or TSV (delimiter sniffed), maps common column spellings to
the schema names and validates the content; every problem in the file is reported at once in a
``PlateMapError``. ``check_plate_map(df, imaged_wells)`` lists the problems of a table (raw or
loaded) against the wells that were imaged.

Output columns: ``Metadata_Plate`` (str, "" when the file has none), ``Metadata_Well`` ("A01"),
``Metadata_Row`` / ``Metadata_Col`` (1-based), ``Metadata_Compound`` (str, "" for none),
``Metadata_Dose_uM`` (float, uM, NaN for none), ``Metadata_Role`` (control / disease / treatment /
empty), ``Metadata_Class`` (Int64 0..5, <NA> when absent).

A blank or absent role is derived from the class label when there is one: class 0 -> control,
class 5 -> disease, other classes -> treatment (training plates carry class labels only).
Otherwise a blank role is ``treatment`` when the well has a compound and a problem when not.
"""

from __future__ import annotations

import csv
import logging
from io import StringIO
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from neurorg_core.errors import NeuroRGError, PlateMapError
from neurorg_core.schema import (
    CLASS, COL, COMPOUND, CONTROL_CLASS, DISEASE_CLASS, DOSE, N_CLASSES, PLATE, ROLE, ROLES, ROW,
    WELL,
)
from neurorg_core.wells import format_well, parse_well

log = logging.getLogger(__name__)

COLUMN_ALIASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (WELL, ("metadata_well", "well", "wells", "well_name", "wellname", "well_id", "metadata_wellname")),
    (PLATE, ("metadata_plate", "plate", "plate_id", "plate_name", "barcode", "metadata_barcode")),
    (COMPOUND, ("metadata_compound", "compound", "compound_name", "metadata_compound_name", "drug")),
    (DOSE, ("metadata_dose_um", "dose_um", "dose", "dose (um)", "concentration_um", "conc_um",
            "metadata_dose", "metadata_concentration_um")),
    (ROLE, ("metadata_role", "role", "well_role", "metadata_control_type", "control_type")),
    (CLASS, ("metadata_class", "class", "label", "class_label", "metadata_label")),
)
"""Schema column -> accepted input spellings (compared after strip + lower-case). A dose without
a unit is taken to be in uM."""

OUTPUT_COLUMNS = (PLATE, WELL, ROW, COL, COMPOUND, DOSE, ROLE, CLASS)
_MAX_LISTED = 10


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _rename(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Map input spellings to schema names; problems for missing well / ambiguous columns."""
    lookup = {alias: target for target, aliases in COLUMN_ALIASES for alias in aliases}
    mapping: dict[str, str] = {}
    problems: list[str] = []
    for col in df.columns:
        target = lookup.get(str(col).strip().lower())
        if target is None:
            continue
        clash = [c for c, t in mapping.items() if t == target]
        if clash:
            problems.append(f"columns {clash[0]!r} and {col!r} both mean {target}; keep one")
            continue
        mapping[col] = target
    if WELL not in mapping.values():
        problems.append(
            f"no well column; expected {WELL} (or well / Well); columns found: "
            f"{', '.join(map(str, df.columns)) or 'none'}"
        )
    return df.rename(columns=mapping), problems


def _text(series: pd.Series) -> pd.Series:
    """Cells as stripped text; missing values (None, NaN, <NA>) become ""."""
    return series.map(lambda v: "" if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
                      else str(v).strip())


def _normalize(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Raw table -> schema table plus every content problem (rows named as in a spreadsheet)."""
    df, problems = _rename(df)
    if WELL not in df.columns:
        return df, problems
    n = len(df)
    line = [i + 2 for i in range(n)]   # header is line 1
    out = pd.DataFrame(index=range(n))
    out[PLATE] = _text(df[PLATE]).to_numpy() if PLATE in df.columns else ""

    parsed: list[tuple[int, int] | None] = []
    bad_wells = []
    for ln, text in zip(line, _text(df[WELL])):
        try:
            parsed.append(parse_well(text))
        except NeuroRGError:
            parsed.append(None)
            bad_wells.append(f"line {ln}: {text!r}")
    if bad_wells:
        problems.append(f"unknown well name(s) (expected e.g. A01, A1, r01c01): {_listed(bad_wells)}")
    out[WELL] = [format_well(*rc) if rc else "" for rc in parsed]
    out[ROW] = pd.array([rc[0] if rc else pd.NA for rc in parsed], dtype="Int64")
    out[COL] = pd.array([rc[1] if rc else pd.NA for rc in parsed], dtype="Int64")

    out[COMPOUND] = _text(df[COMPOUND]).to_numpy() if COMPOUND in df.columns else ""

    if DOSE in df.columns:
        raw = _text(df[DOSE])
        dose = pd.to_numeric(raw.where(raw != ""), errors="coerce")
        bad = [f"line {ln}: {v!r}" for ln, v, d in zip(line, raw, dose) if v != "" and pd.isna(d)]
        if bad:
            problems.append(f"non-numeric dose(s) (expected a number in uM or blank): {_listed(bad)}")
        neg = [f"line {ln}: {v}" for ln, v in zip(line, dose) if pd.notna(v) and v < 0]
        if neg:
            problems.append(f"negative dose(s): {_listed(neg)}")
        out[DOSE] = dose.astype(float).to_numpy()
    else:
        out[DOSE] = np.nan

    classes: list[object] = [pd.NA] * n
    if CLASS in df.columns:
        bad = []
        for i, (ln, v) in enumerate(zip(line, _text(df[CLASS]))):
            if v == "":
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
    out[CLASS] = pd.array(classes, dtype="Int64")

    raw_roles = _text(df[ROLE]).str.lower() if ROLE in df.columns else pd.Series([""] * n)
    roles, bad_roles, blank = [], [], []
    for i, (ln, role) in enumerate(zip(line, raw_roles)):
        if role == "":
            cls = classes[i]
            if cls is not pd.NA:
                role = ("control" if cls == CONTROL_CLASS
                        else "disease" if cls == DISEASE_CLASS else "treatment")
            elif out.at[i, COMPOUND] != "":
                role = "treatment"
            else:
                blank.append(f"line {ln}")
        elif role not in ROLES:
            bad_roles.append(f"line {ln}: {role!r}")
        roles.append(role)
    if bad_roles:
        problems.append(f"unknown role(s) (allowed: {', '.join(ROLES)}): {_listed(bad_roles)}")
    if blank:
        problems.append(
            f"no role, class or compound, so the role is unknown (allowed: {', '.join(ROLES)}): "
            f"{_listed(blank)}"
        )
    out[ROLE] = roles

    good = out[WELL] != ""
    dup = out[good].duplicated([PLATE, WELL], keep=False)
    if dup.any():
        dups = sorted(set(out[good][dup][WELL]))
        problems.append(f"duplicate well(s): {_listed(dups)}")
    return out[list(OUTPUT_COLUMNS)], problems


def _read_table(path: Path) -> pd.DataFrame:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlateMapError([f"cannot read the plate map as UTF-8 text ({exc})"], path=path) from exc
    if not text.strip():
        raise PlateMapError(["the plate map is empty; expected a header line and one row per well"],
                            path=path)
    sample = text[:8192]
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",\t;").delimiter
    except csv.Error:
        first = sample.splitlines()[0]
        delimiter = "\t" if "\t" in first else ";" if ";" in first else ","
    try:
        return pd.read_csv(StringIO(text), sep=delimiter, dtype=str, keep_default_na=False,
                           skipinitialspace=True)
    except (ValueError, pd.errors.ParserError) as exc:
        raise PlateMapError([f"malformed plate map ({exc})"], path=path) from exc


def load_plate_map(path: str | Path) -> pd.DataFrame:
    """Read and validate a plate map (CSV or TSV).

    Parameters
    ----------
    path
        CSV / TSV file with a ``Metadata_Well`` (or ``well``) column and optional plate,
        compound, dose (uM), role and class columns (see ``COLUMN_ALIASES``).

    Returns
    -------
    pandas.DataFrame
        One row per well with ``OUTPUT_COLUMNS`` (see the module docstring).

    Raises
    ------
    PlateMapError
        Listing every problem in the file: unreadable or malformed, no well column, bad wells,
        duplicate wells, non-numeric or negative doses, unknown roles, class labels outside 0-5.
    """
    path = Path(path)
    if not path.is_file():
        raise PlateMapError(["no such plate map file"], path=path)
    df, problems = _normalize(_read_table(path))
    if problems:
        raise PlateMapError(problems, path=path)
    log.info("plate map %s: %d wells", path.name, len(df))
    return df.reset_index(drop=True)


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
    table, problems = _normalize(df.copy())
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

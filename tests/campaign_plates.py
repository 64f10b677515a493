"""Small synthetic screening plates for the campaign tests: 96-well plates of one 128 px field per
well, imaged in a few rows only (quick to score; enough wells for per-plate QC)."""

from __future__ import annotations

from pathlib import Path

from neurorg_core.schema import ROLE, WELL
from neurorg_core.synth import build_plate_table, write_synthetic_plates


def screen_plates(root: Path, *, seed: int, n_plates: int, rows: str) -> list[Path]:
    """``n_plates`` screening plates of ``seed`` whose non-empty wells in ``rows`` (e.g. "AB") are imaged."""
    table = build_plate_table(seed, 1, 96, "screen")
    wells = table.loc[(table[ROLE] != "empty") & table[WELL].str[0].isin(list(rows)), WELL].tolist()
    return write_synthetic_plates(root, seed=seed, n_plates=n_plates, n_wells=96, n_fields=1, size=128,
                                  kind="screen", wells=wells)

"""Installed model bundles: find them on disk and summarise their cards (the app's model list).

A bundle is any folder holding a ``card.json`` (``model.load_bundle`` validates it fully, weights
hashes included, when it is used). Listing reads the cards only, so it stays fast for large bundles
(the study's B5 ensemble is ~460 MB of weights); a card that cannot be read is listed with the
problem in words instead of being hidden.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from neurorg_core.model import CARD_NAME
from neurorg_core.schema import (
    BUNDLE_ARCH,
    BUNDLE_COLUMNS,
    BUNDLE_GEOMETRY,
    BUNDLE_INPUT,
    BUNDLE_KIND,
    BUNDLE_MEMBERS,
    BUNDLE_ORIGIN,
    BUNDLE_PATH,
    BUNDLE_PROBLEM,
    BUNDLE_TRAINING,
    BUNDLE_VAL_ACC,
    BUNDLE_WELL_CALL,
    DEFAULT_WELL_CALL,
    MODEL_ID,
)

log = logging.getLogger(__name__)

SEARCH_DEPTH = 4
"""Folder levels below a root searched for ``card.json`` (``data/models/demo/ensemble`` is 2)."""

_SKIP_DIRS = {"litert", "__pycache__"}


def find_bundles(roots: Iterable[str | Path], depth: int = SEARCH_DEPTH) -> list[Path]:
    """Every folder holding a ``card.json`` at or below the given roots (missing roots are skipped).

    Returns
    -------
    list of Path
        Resolved folders, each once, sorted. Hidden folders and converted-model caches
        (``litert``) are not searched.
    """
    found: set[Path] = set()
    for root in roots:
        base = Path(root).expanduser()
        if not base.is_dir():
            continue
        for folder, dirs, files in os.walk(base):
            rel = Path(folder).relative_to(base)
            if CARD_NAME in files:
                found.add(Path(folder).resolve())
            if len(rel.parts) >= depth:
                dirs.clear()
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
    return sorted(found)


def _geometry(card: Mapping[str, Any]) -> str:
    g = card.get("crop_geometry")
    if not isinstance(g, Mapping):
        return "not recorded"
    if g.get("mode") == "whole_field":
        edge = g.get("field_edge_px") or card.get("input_size")
        return f"whole field ({edge} px input)"
    px = g.get("pixel_size_um")
    return f"{g.get('crop_edge_px')} px tiles" + (f" at {px:g} um/px" if isinstance(px, (int, float)) else "")


def _validation(card: Mapping[str, Any]) -> str:
    """The card's leave-plate-out validation accuracy (pooled when recorded, else the members' mean)."""
    pooled = (((card.get("metrics") or {}).get("summary") or {}).get("cross_validation_pooled") or {})
    if "well_acc" in pooled:
        return f"wells {pooled['well_acc']:.1%}, crops {pooled['crop_acc']:.1%} (leave-plate-out, pooled)"
    vals = [((m.get("metrics") or {}).get("validation") or {}) for m in card.get("members", [])
            if isinstance(m, Mapping)]
    vals = [v for v in vals if "well_acc" in v and "crop_acc" in v]
    if vals:
        well = sum(v["well_acc"] for v in vals) / len(vals)
        crop = sum(v["crop_acc"] for v in vals) / len(vals)
        return f"wells {well:.1%}, crops {crop:.1%} (mean of {len(vals)} member(s)' validation)"
    return "not on the card"


def _training(card: Mapping[str, Any]) -> str:
    plates = [p.get("name", "?") for p in card.get("training_plates", []) if isinstance(p, Mapping)]
    if plates:
        return f"{len(plates)}: {', '.join(plates)}"
    return "not recorded (imported)" if "imported_from" in card else "not recorded"


def _origin(card: Mapping[str, Any]) -> str:
    imported = card.get("imported_from")
    if isinstance(imported, Mapping):
        files = [f.get("file", "?") for f in imported.get("files", []) if isinstance(f, Mapping)]
        return (f"imported from {imported.get('architecture', '?')} state_dicts ({', '.join(files)}); "
                f"normalisation {((imported.get('normalization') or {}).get('file')) or '?'}")
    if card.get("synthetic"):
        how = f" (`{card['command']}`)" if card.get("command") else ""
        return f"trained here on the SYNTHETIC assay{how}"
    if card.get("training"):
        return "trained here (`python -m neurorg_core train`)"
    return "not recorded"


def summarize_card(card: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """One ``BUNDLE_COLUMNS`` row for a bundle's card."""
    members = card.get("members")
    return {
        BUNDLE_PATH: str(path), MODEL_ID: str(card.get("id", "")), BUNDLE_KIND: str(card.get("kind", "")),
        BUNDLE_ARCH: str(card.get("architecture", "")),
        BUNDLE_INPUT: int(card["input_size"]) if isinstance(card.get("input_size"), int) else None,
        BUNDLE_MEMBERS: len(members) if isinstance(members, list) else 0,
        BUNDLE_GEOMETRY: _geometry(card), BUNDLE_WELL_CALL: str(card.get("well_call", DEFAULT_WELL_CALL)),
        BUNDLE_TRAINING: _training(card), BUNDLE_VAL_ACC: _validation(card), BUNDLE_ORIGIN: _origin(card),
        BUNDLE_PROBLEM: "",
    }


def describe_bundles(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Summaries of the bundles' cards, one row per folder (``schema.BUNDLE_COLUMNS``).

    A folder whose card is missing or not a JSON object with ``kind``, ``architecture`` and
    ``members`` gets a row whose ``Problem`` says so (the weights are checked when the bundle is
    loaded for scoring, not here).
    """
    rows = []
    for path in paths:
        folder = Path(path)
        card_path = folder / CARD_NAME
        try:
            card = json.loads(card_path.read_text())
            if not isinstance(card, dict):
                raise ValueError(f"a JSON {type(card).__name__}, not an object")
            missing = [k for k in ("kind", "architecture", "input_size", "members") if k not in card]
            if missing:
                raise ValueError(f"lacks {', '.join(missing)}")
            rows.append(summarize_card(card, folder))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("model card %s cannot be listed: %s", card_path, exc)
            rows.append({**{c: "" for c in BUNDLE_COLUMNS}, BUNDLE_PATH: str(folder), BUNDLE_INPUT: None,
                         BUNDLE_MEMBERS: 0, BUNDLE_PROBLEM: f"{CARD_NAME} cannot be read: {exc}"})
    out = pd.DataFrame(rows, columns=list(BUNDLE_COLUMNS))
    out[BUNDLE_INPUT] = out[BUNDLE_INPUT].astype("Int64")
    return out

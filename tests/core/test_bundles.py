"""Finding installed bundles and summarising their cards (the app's model list)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from neurorg_core.bundles import describe_bundles, find_bundles
from neurorg_core.config import REPO_ROOT
from neurorg_core.schema import (BUNDLE_ARCH, BUNDLE_COLUMNS, BUNDLE_GEOMETRY, BUNDLE_KIND, BUNDLE_ORIGIN,
                                 BUNDLE_PATH, BUNDLE_PROBLEM, BUNDLE_TRAINING, BUNDLE_VAL_ACC, BUNDLE_WELL_CALL,
                                 MODEL_ID)

DEMO = REPO_ROOT / "data" / "models" / "demo"


def test_the_shipped_demo_bundles_are_found_and_summarised_from_their_cards() -> None:
    found = find_bundles([REPO_ROOT / "data" / "models"])
    assert {DEMO / "ensemble", DEMO / "single_channel"} <= set(found)
    table = describe_bundles([DEMO / "ensemble", DEMO / "single_channel"]).set_index(BUNDLE_PATH)
    assert list(table.reset_index().columns) == list(BUNDLE_COLUMNS)
    ens = table.loc[str(DEMO / "ensemble")]
    card = json.loads((DEMO / "ensemble" / "card.json").read_text())
    assert ens[MODEL_ID] == card["id"] and ens[BUNDLE_KIND] == "ensemble" and ens[BUNDLE_ARCH] == "efficientnet_tiny"
    assert ens[BUNDLE_GEOMETRY] == "128 px tiles at 0.65 um/px" and ens[BUNDLE_WELL_CALL] == "mean_probability"
    pooled = card["metrics"]["summary"]["cross_validation_pooled"]
    assert ens[BUNDLE_VAL_ACC] == (f"wells {pooled['well_acc']:.1%}, crops {pooled['crop_acc']:.1%} "
                                   "(leave-plate-out, pooled)")
    assert ens[BUNDLE_TRAINING].startswith("5: plate_01, plate_02")
    assert ens[BUNDLE_ORIGIN].startswith("trained here on the SYNTHETIC assay")
    assert table.loc[str(DEMO / "single_channel"), BUNDLE_KIND] == "single_channel"
    assert (table[BUNDLE_PROBLEM] == "").all()


def test_search_depth_hidden_and_litert_folders_and_unreadable_cards(tmp_path: Path) -> None:
    shutil.copytree(DEMO / "ensemble", tmp_path / "a" / "b" / "ensemble", ignore=shutil.ignore_patterns("*.npz"))
    (tmp_path / "a" / "b" / "ensemble" / "litert" / "card.json").write_text("{}")   # a cache, not a bundle
    (tmp_path / ".hidden" / "x").mkdir(parents=True)
    (tmp_path / ".hidden" / "x" / "card.json").write_text("{}")
    (tmp_path / "1" / "2" / "3" / "4" / "5").mkdir(parents=True)
    (tmp_path / "1" / "2" / "3" / "4" / "5" / "card.json").write_text("{}")          # deeper than 4 levels
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "card.json").write_text('["not", "an", "object"]')
    found = find_bundles([tmp_path, tmp_path / "absent"])
    assert found == sorted([(tmp_path / "a" / "b" / "ensemble").resolve(), (tmp_path / "bad").resolve()])
    table = describe_bundles(found).set_index(BUNDLE_PATH)
    assert table.loc[str(found[0]), BUNDLE_PROBLEM] == ""   # listing reads the card only
    assert table.loc[str((tmp_path / "bad").resolve()), BUNDLE_PROBLEM] == \
        "card.json cannot be read: a JSON list, not an object"

"""`python -m neurorg_core score` and `export`: summary lines, the cache on a re-run, Metadata_* exports."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from neurorg_core.cli import main
from neurorg_core.schema import P_CONTROL, PLATE, RESCUE_PCT, ROLE, SOURCE, WELL
from neurorg_core.store import ResultStore

N_WELLS = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory, save_tiny, copy_screen_wells) -> dict:
    root = tmp_path_factory.mktemp("cli")
    bundle = save_tiny(root / "bundle", ["fold1"])   # random weights: wells get distinct P(control)
    # two rows of the screen: controls, a compound series and disease wells
    keep = copy_screen_wells(root / "plate", lambda pm: pm[(pm[ROLE] != "empty")
                                                           & pm[WELL].str[0].isin(["A", "B"])].head(N_WELLS))
    keep.to_csv(root / "map.csv", index=False)
    return {"bundle": bundle.path, "plate": root / "plate", "map": root / "map.csv", "db": root / "r.duckdb"}


def score_args(s: dict) -> list[str]:
    return ["score", str(s["plate"]), "--plate-map", str(s["map"]), "--model", str(s["bundle"]),
            "--db", str(s["db"]), "--name", "cli-plate", "--crops-per-well", "4", "--backend", "keras"]


def test_score_prints_summary_and_rerun_hits_the_cache(setup, capsys) -> None:
    assert main(score_args(setup)) == 0
    out = capsys.readouterr()
    assert f"wells scored: {N_WELLS} ({N_WELLS} fields, {N_WELLS * 4} crops of 32 px" in out.out
    assert "model fit: not checked (the model card has no fit_reference" in out.out
    assert "readout: inflammation score (0 = control ... 5 = 20 uM)" in out.out
    assert f"cache hits: 0 fields, misses: {N_WELLS} ({N_WELLS * 4} crop x member predictions computed on keras)" \
        in out.out
    assert "Z': " in out.out and "hits: " in out.out
    assert f"{N_WELLS * 4}/{N_WELLS * 4} crops (100 %)" in out.err

    assert main(score_args(setup)) == 0
    out = capsys.readouterr()
    assert f"cache hits: {N_WELLS} fields, misses: 0 (0 crop x member" in out.out
    with ResultStore(setup["db"], read_only=True) as store:
        assert len(store.list_runs("cli-plate")) == 2


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_writes_one_row_per_well_with_metadata(setup, tmp_path, capsys, fmt) -> None:
    if not setup["db"].exists():
        assert main(score_args(setup)) == 0
    out = tmp_path / f"wells.{fmt}"
    assert main(["export", "--db", str(setup["db"]), "--plate", "cli-plate", "--format", fmt,
                 "--out", str(out)]) == 0
    assert f"wrote {N_WELLS} rows" in capsys.readouterr().out
    table = pd.read_parquet(out) if fmt == "parquet" else pd.read_csv(out)
    assert len(table) == N_WELLS and table[WELL].is_unique
    meta = [c for c in table.columns if c.startswith("Metadata_")]
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_Row", "Metadata_Col", "Metadata_Compound",
            "Metadata_Dose_uM", "Metadata_Role"} <= set(meta)
    # pycytominer treats every non-Metadata column as a numeric feature
    features = table.drop(columns=meta)
    assert P_CONTROL in features.columns and RESCUE_PCT in features.columns
    assert all(pd.api.types.is_numeric_dtype(features[c]) for c in features.columns)
    assert (table[PLATE] == "cli-plate").all()
    assert (table["Metadata_Readout"] == "inflammation_score").all()
    assert (table["Metadata_Model_fit"] == "unchecked").all()
    with ResultStore(setup["db"], read_only=True) as store:
        stored = store.load_well_scores("cli-plate")
    pd.testing.assert_series_equal(table[P_CONTROL], stored[P_CONTROL], check_exact=False, rtol=1e-12)


def test_export_of_an_unknown_plate_fails_cleanly(setup, tmp_path, capsys) -> None:
    if not setup["db"].exists():
        assert main(score_args(setup)) == 0
    code = main(["export", "--db", str(setup["db"]), "--plate", "nope", "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "plate 'nope' has no scored run; stored plates: cli-plate" in err
    assert not (tmp_path / "x.csv").exists()


def test_score_with_a_bad_plate_map_fails_cleanly(setup, tmp_path, capsys) -> None:
    bad = tmp_path / "map.csv"
    pm = pd.read_csv(setup["map"])
    pm.iloc[1:].to_csv(bad, index=False)  # the first imaged well is missing
    args = score_args(setup)
    args[args.index("--plate-map") + 1] = str(bad)
    args[args.index("--db") + 1] = str(tmp_path / "fresh.duckdb")
    assert main(args) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and pm[WELL].iloc[0] in last and "Traceback" not in err


def test_score_of_a_zip_leaves_no_extracted_copy_and_records_the_zip(setup, tmp_path, monkeypatch, capsys) -> None:
    import os
    import tempfile
    import zipfile

    tmp, data = tmp_path / "tmp", tmp_path / "data"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))        # where a temporary extraction would go
    monkeypatch.setenv("NEURORG_DATA_DIR", str(data))         # where the old code left its copy
    zpath = tmp_path / "zipped plate.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(setup["plate"].iterdir()):
            zf.write(p, f"plate/{p.name}")
    args = score_args(setup)
    args[1] = str(zpath)
    args[args.index("--db") + 1] = str(tmp_path / "z.duckdb")
    args[args.index("--name") + 1] = "zipped"
    assert main(args) == 0
    assert f"wells scored: {N_WELLS}" in capsys.readouterr().out
    assert os.listdir(tmp) == [] and not data.exists()
    with ResultStore(tmp_path / "z.duckdb", read_only=True) as store:
        assert store.plate_record("zipped")[SOURCE] == str(zpath)
    assert main(["inspect", str(zpath), "--model", str(setup["bundle"])]) == 0
    assert os.listdir(tmp) == []


def test_crops_per_well_has_an_upper_bound(setup, tmp_path, capsys) -> None:
    args = score_args(setup)
    args[args.index("--db") + 1] = str(tmp_path / "never.duckdb")
    for bad in ("5000", "0"):
        args[args.index("--crops-per-well") + 1] = bad
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"error: crops per well {bad}; expected a whole number from 1 to 1000" in err and "Traceback" not in err
    assert not (tmp_path / "never.duckdb").exists()


def test_non_utf8_names_are_scored_or_refused_before_any_work(setup, tmp_path, capsys) -> None:
    import os

    inner = tmp_path / "inner"
    inner.mkdir()
    for p in sorted(setup["plate"].iterdir()):   # every file name now holds a byte 0xff
        shutil.copy(p, os.fsdecode(os.fsencode(inner) + b"/x\xff_" + p.name.encode()))
    args = score_args(setup)
    args[1] = str(inner)
    args[args.index("--db") + 1] = str(tmp_path / "u.duckdb")
    assert main(args) == 0
    capsys.readouterr()
    with ResultStore(tmp_path / "u.duckdb", read_only=True) as store:
        assert len(store.load_well_scores("cli-plate")) == N_WELLS

    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/pl\xffte"))
    shutil.copytree(setup["plate"], folder)
    args = score_args(setup)
    args[1] = str(folder)
    args[args.index("--db") + 1] = str(tmp_path / "never.duckdb")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pl\\xffte" in err and "is not valid UTF-8 text" in err and "Traceback" not in err
    assert not (tmp_path / "never.duckdb").exists()

"""score-campaign: plates on a real local Ray, a real DuckDB store, real synthetic TIFF plates.

Three synthetic screening plates (rows A-D: two compounds, 4 control and 4 disease wells; one
128 px field per well, one crop per well) scored with the shipped demo ensemble (its LiteRT files
are in the bundle, so no worker converts or imports TensorFlow). One local Ray with 2 CPUs is
started for the module and shared by its campaigns.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest

from neurorg_core.campaign import load_manifest, run_campaign
from neurorg_core.campaign_parquet import WELLS_FILE, read_metadata
from neurorg_core.campaign import plate_folder
from neurorg_core.cli import main
from neurorg_core.config import REPO_ROOT
from neurorg_core.devices import resolve_backend
from neurorg_core.errors import NeuroRGError
from neurorg_core.model import load_bundle
from neurorg_core.plate_inference import ScoreOptions
from neurorg_core.schema import ACQUIRED, BATCH, PLATE, RUN_ID, RUN_STATUS, WELL
from neurorg_core.store import ResultStore
from tests.campaign_plates import screen_plates

DEMO = REPO_ROOT / "data" / "models" / "demo" / "ensemble"
NAMES = ("p1", "p2", "p3")
BATCHES = ("b1", "b1", "b2")
DATES = ("2026-03-02", "2026-03-01", "2026-03-09")   # acquisition order: p2, p1, p3


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def plates(tmp_path_factory) -> list[Path]:
    return screen_plates(tmp_path_factory.mktemp("campaign_plates"), seed=11, n_plates=3, rows="ABCD")


@pytest.fixture(scope="module")
def manifest(plates, tmp_path_factory) -> Path:
    """A manifest with relative paths (read from its own folder), batches and dates."""
    folder = plates[0].parent
    rows = ["plate,plate_map,name,batch,date"]
    for p, name, batch, when in zip(plates, NAMES, BATCHES, DATES):
        rows.append(f"{p.name},{p.name}/platemap.csv,{name},{batch},{when}")
    path = folder / "campaign.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _score_args(db: Path) -> list[str]:
    return ["--model", str(DEMO), "--db", str(db), "--crops-per-well", "1"]


@pytest.fixture(scope="module")
def reference(plates, tmp_path_factory) -> Path:
    """Each plate scored on its own with `score`, into its own store."""
    db = tmp_path_factory.mktemp("reference") / "ref.duckdb"
    for p, name in zip(plates, NAMES):
        assert main(["score", str(p), "--plate-map", str(p / "platemap.csv"), "--name", name,
                     *_score_args(db)]) == 0
    return db


@pytest.fixture(scope="module")
def campaign(ray_local, manifest, tmp_path_factory) -> dict:
    """The campaign scored once through the CLI (copied by tests that change it)."""
    db = tmp_path_factory.mktemp("campaign") / "c.duckdb"
    assert main(["score-campaign", "--manifest", str(manifest), "--campaign", "screen-1", *_score_args(db)]) == 0
    return {"db": db}


def _well_tables(db: Path) -> dict[str, pd.DataFrame]:
    with ResultStore(db, read_only=True) as s:
        return {n: s.load_well_scores(n) for n in NAMES}


def _assert_same_wells(db: Path, reference: Path) -> None:
    mine, ref = _well_tables(db), _well_tables(reference)
    for name in NAMES:
        pd.testing.assert_frame_equal(mine[name], ref[name], check_exact=False, atol=1e-6, rtol=0)


@pytest.mark.slow   # starts Ray (~10 s) and scores plates
def test_campaign_well_tables_equal_score_plate_by_plate(campaign, reference, capsys) -> None:
    _assert_same_wells(campaign["db"], reference)
    with ResultStore(campaign["db"], read_only=True) as s:
        rows = s.load_campaign("screen-1")
        runs = s.list_runs()
        params = [s.load_run(run_id)["params"] for run_id in runs[RUN_ID]]
    assert rows[PLATE].tolist() == ["p2", "p1", "p3"]                  # acquisition order
    assert rows[BATCH].tolist() == ["b1", "b1", "b2"]
    assert [d.date().isoformat() for d in rows[ACQUIRED]] == ["2026-03-01", "2026-03-02", "2026-03-09"]
    assert (rows[RUN_STATUS] == "stored").all() and set(rows[RUN_ID]) == set(runs[RUN_ID])
    assert all(p["backend_ran"] == [resolve_backend("auto")] for p in params)
    assert len(runs) == 3
    # each plate's Parquet files: a finished write, and the stored well table
    folder = campaign["db"].parent / "campaigns" / "screen-1"
    for name in NAMES:
        info = read_metadata(plate_folder(folder, name))
        assert info is not None and info["inferred_crops"] == info["total_crops"] * 4   # 4 members, none cached
        assert info["ran_on"] == [resolve_backend("auto")]             # what auto ran on, carried to the store
        pd.testing.assert_frame_equal(pd.read_parquet(plate_folder(folder, name) / WELLS_FILE),
                                      _well_tables(campaign["db"])[name], check_dtype=False)


@pytest.mark.slow   # starts Ray (~10 s) and scores plates
def test_rerunning_the_campaign_computes_nothing(campaign, manifest, tmp_path, capsys) -> None:
    db = tmp_path / "c.duckdb"
    shutil.copy(campaign["db"], db)
    shutil.copytree(campaign["db"].parent / "campaigns", tmp_path / "campaigns")
    before = _well_tables(db)
    capsys.readouterr()
    assert main(["score-campaign", "--manifest", str(manifest), "--campaign", "screen-1", *_score_args(db)]) == 0
    out = capsys.readouterr().out
    assert "0 plate(s) stored, 3 already stored (skipped), 0 merged from earlier Parquet files, 0 failed; " \
           "0 crop x member predictions computed" in out
    assert "starting Ray" not in out                                   # nothing to infer: Ray not started
    with ResultStore(db, read_only=True) as s:
        assert len(s.list_runs()) == 3
    after = _well_tables(db)
    for name in NAMES:
        pd.testing.assert_frame_equal(after[name], before[name])


@pytest.mark.slow   # starts Ray (~10 s) and scores plates
def test_a_crashed_campaign_resumes_from_its_parquet_files(campaign, manifest, reference, tmp_path) -> None:
    """A crash after a plate's Parquet files were written and before the writer stored it: here,
    that plate's run is deleted. The next run merges its files and reads no pixel."""
    db = tmp_path / "c.duckdb"
    shutil.copy(campaign["db"], db)
    shutil.copytree(campaign["db"].parent / "campaigns", tmp_path / "campaigns")
    with ResultStore(db) as s:
        lost = s.load_campaign("screen-1").set_index(PLATE).loc["p1", RUN_ID]
        s.delete_run(lost)
        assert s.load_campaign("screen-1").set_index(PLATE).loc["p1", RUN_STATUS] == "pending"
        result = run_campaign(load_manifest(manifest), load_bundle(DEMO), s, campaign_id="screen-1",
                              options=ScoreOptions(crops_per_well=1))
        rows = s.load_campaign("screen-1").set_index(PLATE)
    assert result.reused == ["p1"] and sorted(result.skipped) == ["p2", "p3"] and not result.failed
    assert result.inferred_crops == 0 and result.ray_startup_s == 0.0   # no worker was needed
    assert rows.loc["p1", RUN_STATUS] == "stored" and rows.loc["p1", RUN_ID] == result.stored["p1"] != lost
    _assert_same_wells(db, reference)


@pytest.mark.slow   # starts Ray (~10 s) and scores plates
def test_a_worker_killed_mid_campaign_loses_nothing(ray_local, manifest, reference, tmp_path) -> None:
    """The worker scoring p2 kills its own process (SIGKILL) on its first attempt, after it has read
    the plate's first field; Ray restarts the actor and scores p2 again; every plate is stored."""
    marker = tmp_path / "killed.pid"

    def kill_first_attempt(plate: str, done: int, total: int) -> None:
        if plate == "p2" and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    with ResultStore(tmp_path / "k.duckdb") as s:
        result = run_campaign(load_manifest(manifest), load_bundle(DEMO), s, campaign_id="killed",
                              options=ScoreOptions(crops_per_well=1), worker_hook=kill_first_attempt)
        rows = s.load_campaign("killed")
    assert marker.exists(), "the worker was never killed"
    with pytest.raises(ProcessLookupError):
        os.kill(int(marker.read_text()), 0)                               # that process is gone
    assert not result.failed and sorted(result.stored) == sorted(NAMES)
    assert (rows[RUN_STATUS] == "stored").all()
    _assert_same_wells(tmp_path / "k.duckdb", reference)


@pytest.mark.slow   # starts Ray's workers and scores plates
def test_fields_cached_by_score_are_not_computed_again_and_a_plate_whose_map_does_not_match_fails_alone(
        ray_local, plates, reference, tmp_path, capsys) -> None:
    """Two rules in one campaign, to start its workers once.

    `score`'s cache rule on the workers: into a store where `score` already scored p1-p3 (every
    field cached for every member), each of them is stored as a new run and no crop is inferred.

    A plate map missing an imaged well: that plate ("bad", a copy of p2's images) is marked failed
    with the reason and its manifest row; the other plates are stored; the command exits 2."""
    bad_map = tmp_path / "bad_map.csv"
    pm = pd.read_csv(plates[1] / "platemap.csv")
    pm[pm[WELL] != "B03"].to_csv(bad_map, index=False)
    bad_plate = shutil.copytree(plates[1], tmp_path / "bad_plate")
    manifest = tmp_path / "m.csv"
    rows = "".join(f"{p},{p / 'platemap.csv'},{n}\n" for p, n in zip(plates, NAMES))
    manifest.write_text("plate,plate_map,name\n" + rows + f"{bad_plate},{bad_map},bad\n")
    db = tmp_path / "r.duckdb"
    shutil.copy(reference, db)
    with ResultStore(db, read_only=True) as s:
        before = {n: s.latest_run_id(n) for n in NAMES}
    capsys.readouterr()
    assert main(["score-campaign", "--manifest", str(manifest), "--campaign", "cached", *_score_args(db)]) == 2
    captured = capsys.readouterr()
    # the cached plates: stored as new runs, computed from cached predictions on the workers
    assert "3 plate(s) stored, 0 already stored (skipped), 0 merged from earlier Parquet files, 1 failed; " \
           "0 crop x member predictions computed" in captured.out
    assert "s starting Ray and its workers)" in captured.out                 # the workers ran, computed nothing
    with ResultStore(db, read_only=True) as s:
        rows = s.load_campaign("cached").set_index(PLATE)
        assert sorted(s.list_plates()[PLATE]) == sorted(NAMES)              # "bad" was not stored
    folder = db.parent / "campaigns" / "cached"
    for name in NAMES:
        info = read_metadata(plate_folder(folder, name))
        assert info is not None and info["inferred_crops"] == 0 and info["total_crops"] > 0
        assert rows.loc[name, RUN_STATUS] == "stored" and rows.loc[name, RUN_ID] != before[name]   # a new run
    _assert_same_wells(db, reference)
    # the plate whose map does not match: failed alone, with the reason and its row
    assert f"error: plate bad: {bad_plate} (row 4): " in captured.err and "B03" in captured.err
    assert rows.loc["bad", RUN_STATUS] == "failed" and "B03" in rows.loc["bad", "Message"]


def test_another_ray_address_than_the_one_this_process_uses_is_refused(ray_local, manifest, tmp_path, capsys) -> None:
    """Ray runs in this process already (``ray_local``): an address naming another cluster is an
    error naming both, not silently ignored."""
    import ray

    running = ray.get_runtime_context().gcs_address
    db = tmp_path / "a.duckdb"
    args = ["score-campaign", "--manifest", str(manifest), "--campaign", "a", *_score_args(db)]
    assert main([*args, "--ray-address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert f"already connected to Ray at {running}" in err and "cluster at 127.0.0.1:1" in err
    assert "Traceback" not in err


# --- manifest errors: no Ray needed --------------------------------------------------------------------

@pytest.mark.parametrize("row, expected", [
    ("missing_plate,{pm},x,,", "m.csv row 2 (line 3): plate {root}/missing_plate does not exist"),
    ("{plate},bad_map.csv,x,,", "m.csv row 2 (line 3): plate map {root}/bad_map.csv: "),
    ("{plate},{pm},x,,2026-13-45", "m.csv row 2 (line 3): date '2026-13-45' is not a date; expected YYYY-MM-DD"),
    ("{plate},{pm},first,,", "plate name 'first' is used by rows 1, 2"),
    ("{plate},no_such_map.csv,x,,", "m.csv row 2 (line 3): plate map {root}/no_such_map.csv: no such plate map file"),
])
def test_manifest_errors_name_the_file_and_row(plates, tmp_path, capsys, row: str, expected: str) -> None:
    (tmp_path / "bad_map.csv").write_text("Metadata_Well,Metadata_Role\nZ99,control\nA01,sometimes\n")
    first = f"{plates[0]},{plates[0] / 'platemap.csv'},first,,2026-03-01"
    text = row.format(plate=plates[1], pm=plates[1] / "platemap.csv")
    (tmp_path / "m.csv").write_text(f"plate,plate_map,name,batch,date\n{first}\n{text}\n")
    code = main(["score-campaign", "--manifest", str(tmp_path / "m.csv"), "--db", str(tmp_path / "x.duckdb"),
                 "--model", str(DEMO)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert expected.format(root=tmp_path) in err
    assert not (tmp_path / "x.duckdb").exists()                          # refused before anything was written


def test_bad_plate_map_problems_are_quoted(plates, tmp_path) -> None:
    (tmp_path / "bad_map.csv").write_text("Metadata_Well,Metadata_Role\nZ99,control\nA01,sometimes\n")
    (tmp_path / "m.csv").write_text(f"plate,plate_map\n{plates[0]},bad_map.csv\n")
    with pytest.raises(NeuroRGError) as err:
        load_manifest(tmp_path / "m.csv")
    assert "m.csv row 1 (line 2): plate map" in str(err.value)
    assert "Z99" in str(err.value) and "sometimes" in str(err.value)


def test_manifest_without_a_plate_column_lists_what_it_found(tmp_path) -> None:
    (tmp_path / "m.csv").write_text("folder,map\na,b\n")
    with pytest.raises(NeuroRGError, match=r"m.csv: the manifest has no plate or plate_map column \(columns found: "
                                           r"folder, map\)"):
        load_manifest(tmp_path / "m.csv")


def test_campaign_id_follows_what_changes_results_not_when_the_cache_commits(manifest) -> None:
    from neurorg_core.campaign import campaign_id_for

    plates, bundle = load_manifest(manifest), load_bundle(DEMO)
    base = campaign_id_for(plates, bundle, ScoreOptions())
    assert campaign_id_for(plates, bundle, ScoreOptions(flush_every=7, flush_after_s=0.5)) == base
    assert campaign_id_for(plates, bundle, ScoreOptions(readout="p_control")) != base
    assert campaign_id_for(plates, bundle, ScoreOptions(crops_per_well=5)) != base
    assert campaign_id_for(plates[:2], bundle, ScoreOptions()) != base


def test_progress_counts_crops_and_estimates_time_left() -> None:
    """The writer's progress on a hand-driven clock (seconds): 4 plates, one already stored; plates
    not started yet are counted at the mean crops of those known; time left = crops left / crop rate
    since the workers started. Worked out by hand."""
    from neurorg_core.campaign import _Progress

    now = [0.0]
    seen = []
    tracker = _Progress(4, 0.0, seen.append, clock=lambda: now[0])
    tracker.plates_done = 1                                  # skipped: stored by an earlier run
    now[0] = 5.0
    tracker.start_work()
    tracker.worker_state({})
    now[0] = 15.0
    tracker.worker_state({"a": (10, 40), "b": (0, 0)})      # b has not planned its fields yet
    now[0] = 25.0
    tracker.plate_finished("a", 40)
    now[0] = 35.0
    tracker.worker_state({"b": (20, 60)})
    now[0] = 45.0
    tracker.plate_finished("b", 60)
    now[0] = 50.0
    tracker.plate_finished("c", None)                        # failed: its crops never counted
    got = [(p.plates_done, p.crops_done, p.crops_total, p.elapsed_s, p.seconds_left) for p in seen]
    assert got == [
        (1, 0, None, 5.0, None),                             # no plate known: no total, no rate
        (1, 10, 120, 15.0, pytest.approx(110.0)),            # 40 + 2 unknown x 40; 10 crops in 10 s
        (2, 40, 120, 25.0, pytest.approx(40.0)),             # 80 left at 2 crops/s
        (2, 60, 150, 35.0, pytest.approx(45.0)),             # 40 + 60 + 1 unknown x 50; 90 left at 2/s
        (3, 100, 150, 45.0, pytest.approx(20.0)),            # 50 left at 2.5/s
        (4, 100, 100, 50.0, pytest.approx(0.0)),
    ]
    assert [p.line() for p in seen][::3] == ["plates 1/4, crops 0", "plates 2/4, crops 60/150, ~45 s left"]
    assert seen[-1].line() == "plates 4/4, crops 100/100, ~0 s left"

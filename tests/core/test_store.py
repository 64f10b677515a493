"""ResultStore: round trips, one-transaction runs, the prediction cache, threads and a second process."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from neurorg_core.config import REPO_ROOT
from neurorg_core.errors import NeuroRGError
from neurorg_core.schema import (
    CALLED_CLASS,
    CHANNEL_P_CONTROL,
    CLASS,
    COL,
    COMPOUND,
    DOSE,
    FIELD,
    FIELD_HASH,
    N_CROPS,
    N_RUNS,
    P_CONTROL,
    P_CONTROL_SD,
    PLATE,
    PROB_COLUMNS,
    ROLE,
    ROW,
    RUN_ID,
    VOTE_COLUMNS,
    WELL,
)
from neurorg_core.store import PlateRecord, PredictionRow, ResultStore, RunRecord

WELLS = ["A01", "A02", "B01"]


def plate_map(name: str = "P1", compound: str = "cmpA") -> pd.DataFrame:
    return pd.DataFrame({
        PLATE: name, WELL: WELLS, ROW: [1, 1, 2], COL: [1, 2, 1],
        COMPOUND: ["", "", compound], DOSE: [np.nan, np.nan, 0.5],
        ROLE: ["control", "disease", "treatment"], CLASS: pd.array([0, 5, pd.NA], dtype="Int64"),
    })


def scores(p0: float, name: str = "P1") -> pd.DataFrame:
    df = plate_map(name)
    probs = np.array([[p0, 1 - p0, 0, 0, 0, 0], [0.1, 0, 0, 0, 0, 0.9], [0.5, 0.5, 0, 0, 0, 0]])
    for k, c in enumerate(PROB_COLUMNS):
        df[c] = probs[:, k]
        df[VOTE_COLUMNS[k]] = (probs[:, k] > 0.5).astype(float)
    df[P_CONTROL] = probs[:, 0]
    df[CALLED_CLASS] = probs.argmax(axis=1)
    df[P_CONTROL_SD] = [0.01, 0.02, 0.03]
    df[N_CROPS] = 15
    return df


def fields(suffix: str = "") -> pd.DataFrame:
    return pd.DataFrame({WELL: WELLS, FIELD: [1, 1, 1], FIELD_HASH: [f"h{w}{suffix}" for w in WELLS]})


def plate_record(name: str = "P1") -> PlateRecord:
    return PlateRecord(name=name, source="/data/p1", layout="tiff", plate_format=96,
                       field_shape=(64, 48), dtype="uint8",
                       channel_map={"nucleus": "0", "neuron": "1", "microglia": "2"})


def run_record(run_id: str, plate: str = "P1") -> RunRecord:
    return RunRecord(run_id=run_id, plate=plate, model_id="bundle1", bundle_card={"id": "bundle1"},
                     params={"crops_per_well": 15, "input_size": 32}, code_version="test")


def save(store: ResultStore, run_id: str, p0: float, plate: str = "P1") -> str:
    return store.save_run(plate=plate_record(plate), wells=plate_map(plate), fields=fields(),
                          well_scores=scores(p0, plate), run=run_record(run_id, plate))


def snapshot(store: ResultStore) -> dict:
    """Everything a reader can see, for before/after comparisons."""
    out = {
        "runs": store.list_runs().drop(columns=[]).to_dict("list"),
        "plates": store.list_plates().to_dict("list"),
        "n_pred": store.count_predictions(),
    }
    for plate in store.list_plates()[PLATE]:
        out[f"fields {plate}"] = store.load_fields(plate).to_dict("list")
    for run_id, plate in zip(out["runs"][RUN_ID], out["runs"][PLATE]):
        out[f"scores {run_id}"] = store.load_well_scores(plate, run_id).to_json()
    return out


@pytest.fixture
def store(tmp_path: Path):
    s = ResultStore(tmp_path / "sub" / "results.duckdb")
    yield s
    s.close()


def test_well_scores_round_trip_with_schema_columns_and_types(store: ResultStore) -> None:
    save(store, "run-a", 0.9)
    got = store.load_well_scores("P1")
    want = scores(0.9)
    assert list(got[WELL]) == WELLS
    pd.testing.assert_frame_equal(got[want.columns.tolist()], want, check_dtype=False)
    assert str(got[CLASS].dtype) == "Int64" and got[CLASS].isna().tolist() == [False, False, True]
    assert got[COMPOUND].tolist() == ["", "", "cmpA"]
    assert np.isnan(got[DOSE].iloc[0]) and got[DOSE].iloc[2] == 0.5


def test_latest_run_is_default_and_old_runs_stay_readable(store: ResultStore) -> None:
    save(store, "run-a", 0.9)
    save(store, "run-b", 0.7)
    runs = store.list_runs("P1")
    assert runs[RUN_ID].tolist() == ["run-b", "run-a"]
    assert store.load_well_scores("P1")[P_CONTROL].iloc[0] == pytest.approx(0.7)
    assert store.load_well_scores("P1", "run-a")[P_CONTROL].iloc[0] == pytest.approx(0.9)
    assert store.list_plates()[N_RUNS].tolist() == [2]


def test_provenance_is_stored_as_json(store: ResultStore) -> None:
    save(store, "run-a", 0.9)
    rec = store.load_run("run-a")
    assert rec["bundle_card"] == {"id": "bundle1"}
    assert rec["params"] == {"crops_per_well": 15, "input_size": 32}
    assert rec["Code_Version"] == "test" and rec["Status"] == "complete"
    plate = store.plate_record("P1")
    assert plate["channel_map"]["microglia"] == "2" and plate["field_height"] == 64


def test_unknown_plate_or_run_names_what_exists(store: ResultStore) -> None:
    save(store, "run-a", 0.9)
    with pytest.raises(NeuroRGError, match="'P9' has no scored run; stored plates: P1"):
        store.load_well_scores("P9")
    with pytest.raises(NeuroRGError, match="'nope' is not a stored run of plate 'P1'"):
        store.load_well_scores("P1", "nope")
    with pytest.raises(NeuroRGError, match="no run 'nope'"):
        store.load_run("nope")


def test_failed_save_rolls_back_everything(store: ResultStore) -> None:
    save(store, "run-a", 0.9)
    store.put_predictions([PredictionRow("hA01", "m1", "k", np.full((2, 6), 1 / 6, np.float32))])
    before = snapshot(store)
    bad = scores(0.2)
    bad = pd.concat([bad, bad.iloc[[0]]], ignore_index=True)  # a duplicated well violates the key
    with pytest.raises(NeuroRGError, match=r"results.duckdb: .*duplicate key"):
        store.save_run(
            plate=PlateRecord("P1", "/elsewhere", "npy", 384, (8, 8), "uint16", {}),
            wells=plate_map(compound="changed"), fields=fields("-new"), well_scores=bad,
            run=run_record("run-b"),
            predictions=[PredictionRow("hnew", "m1", "k", np.full((2, 6), 1 / 6, np.float32))],
        )
    assert snapshot(store) == before
    assert store.cached_predictions(["hnew"], "m1") == {}
    assert store.plate_record("P1")["Source"] == "/data/p1"


def test_missing_score_column_is_refused_before_writing(store: ResultStore) -> None:
    with pytest.raises(NeuroRGError, match="lacks column.*P_control"):
        store.save_run(plate=plate_record(), wells=plate_map(), fields=fields(),
                       well_scores=scores(0.9).drop(columns=[P_CONTROL]), run=run_record("r"))
    assert store.list_runs().empty and store.list_plates().empty


def test_prediction_cache_round_trip_is_exact(store: ResultStore) -> None:
    rng = np.random.default_rng(0)
    a = rng.dirichlet(np.ones(6), size=15).astype(np.float32)
    b = rng.dirichlet(np.ones(6), size=4).astype(np.float32)
    store.put_predictions([PredictionRow("h1", "m1", "g2:0,1", a), PredictionRow("h2", "m1", "g2:0,1", b),
                           PredictionRow("h1", "m2", "g2:0,1", b)])
    got = store.cached_predictions(["h1", "h2", "h3"], "m1", crop_key="g2:0,1")
    assert set(got) == {"h1", "h2"}
    np.testing.assert_array_equal(got["h1"], a)
    np.testing.assert_array_equal(got["h2"], b)
    np.testing.assert_array_equal(store.cached_predictions(["h1"], "m2")["h1"], b)
    assert store.cached_predictions(["h1"], "m1", crop_key="g3:0") == {}
    m2 = store.cached_keys(["m2"])
    assert len(m2) == 1 and ("h1", "m2", "g2:0,1") in m2 and ("h1", "m1", "g2:0,1") not in m2
    # a second write of the same key keeps the first (content-addressed, immutable)
    store.put_predictions([PredictionRow("h1", "m1", "g2:0,1", b[:2])])
    np.testing.assert_array_equal(store.cached_predictions(["h1"], "m1")["h1"], a)
    with pytest.raises(NeuroRGError, match=r"shape \(15, 5\)"):
        store.put_predictions([PredictionRow("h9", "m1", "k", a[:, :5])])


def test_cached_keys_hold_exactly_the_stored_keys_of_the_members_asked_for(store: ResultStore) -> None:
    """The snapshot a run tests its fields against: every stored key of the members asked for is
    in it, and nothing else: not another member's key, not another crop key's, not a hash that
    shares a prefix or differs in one character, not a key stored after the snapshot was taken.
    Field hashes are any strings (tests and older stores use "h1"; real ones are 32 hex chars)."""
    probs = np.full((2, 6), 1 / 6, np.float32)
    hexa = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    hashes = [hexa, hexa[:-1] + "1", hexa[:16] + "0" * 16, "h1", "h10", "h", "", "é-field", hexa * 2]
    members, keys = ["m1", "m2", "m3"], ["g2:0,1", "g2:0,1,2", "whole"]
    stored = {(h, m, k) for i, h in enumerate(hashes) for j, m in enumerate(members) for n, k in enumerate(keys)
              if (i + j + n) % 3}   # two thirds of every (member, crop key): each hash in some, not in others
    store.put_predictions([PredictionRow(h, m, k, probs) for h, m, k in sorted(stored)])
    snap = store.cached_keys(["m1", "m2"])
    every = [(h, m, k) for h in (*hashes, "h2", hexa.upper(), hexa[:-1]) for m in members for k in (*keys, "g3:0")]
    wrong = [key for key in every if (key in snap) != (key in stored and key[1] != "m3")]
    assert wrong == []
    assert len(snap) == sum(m != "m3" for _, m, _ in stored)
    assert len(store.cached_keys(["m3", "m9"])) == sum(m == "m3" for _, m, _ in stored)
    assert len(store.cached_keys([])) == 0 and len(store.cached_keys(["m9"])) == 0
    missing = next(key for key in every if key not in stored and key[1] == "m1" and key[2] in keys)
    store.put_predictions([PredictionRow(*missing, probs)])
    assert missing not in snap and missing in store.cached_keys(["m1"])   # a snapshot: later keys are not in it
    assert ("h1", "m1") not in snap and "h1" not in snap and (1, "m1", "whole") not in snap


def test_cached_keys_of_a_large_store_agree_with_the_set_of_its_rows_and_pickle_small(store: ResultStore) -> None:
    """20,000 random 32-hex field hashes over 4 members and 3 crop keys: membership agrees with a
    Python set of the rows for every stored key and for 20,000 keys that were not stored (same
    members and crop keys, other hashes); the snapshot pickles in ~16 bytes a key."""
    import pickle

    rng = np.random.default_rng(5)
    probs = np.full((1, 6), 1 / 6, np.float32)
    members, keys = ["ma", "mb", "mc", "md"], ["g2:0,1", "g2:0,1,2,3", "v2/b8/e128g2x2:0,1,2"]

    def key(i: int) -> tuple[str, str, str]:
        return (rng.bytes(16).hex(), members[i % 4], keys[i % 3])
    rows = [key(i) for i in range(20_000)]
    store.put_predictions([PredictionRow(h, m, k, probs) for h, m, k in rows])
    snap = pickle.loads(pickle.dumps(store.cached_keys(members[:3])))   # as a campaign ships it to its workers
    assert len(snap) == sum(m != "md" for _, m, _ in rows)
    assert all((r in snap) == (r[1] != "md") for r in rows)
    rows_set = set(rows)
    others = [key(i) for i in range(20_000)] + [(h, members[(i + 1) % 3], k) for i, (h, _, k) in enumerate(rows)]
    assert not any(r in snap for r in others if r not in rows_set)
    assert len(pickle.dumps(snap)) < 20 * len(snap)


def test_delete_run_and_plate(store: ResultStore) -> None:
    save(store, "run-a", 0.9)
    save(store, "run-b", 0.8)
    save(store, "run-c", 0.7, plate="P2")  # P2 uses the same field hashes as P1
    store.put_predictions([PredictionRow("hA01", "m1", "k", np.full((1, 6), 1 / 6, np.float32)),
                           PredictionRow("only-p1", "m1", "k", np.full((1, 6), 1 / 6, np.float32))])
    store.delete_run("run-b")
    assert store.list_runs("P1")[RUN_ID].tolist() == ["run-a"]
    assert store.load_well_scores("P1")[P_CONTROL].iloc[0] == pytest.approx(0.9)
    store.delete_plate("P1")
    assert store.list_plates()[PLATE].tolist() == ["P2"]
    assert store.list_runs()[RUN_ID].tolist() == ["run-c"]
    assert "hA01" in store.cached_predictions(["hA01"], "m1")  # still used by P2
    with pytest.raises(NeuroRGError, match="no plate 'P1'"):
        store.delete_plate("P1")
    with pytest.raises(NeuroRGError, match="no run 'run-b'"):
        store.delete_run("run-b")


def test_channel_scores_round_trip(store: ResultStore) -> None:
    ch = pd.DataFrame({WELL: WELLS, **{c: [0.1, 0.2, 0.3] for c in CHANNEL_P_CONTROL}})
    store.save_run(plate=plate_record(), wells=plate_map(), fields=fields(), well_scores=scores(0.9),
                   run=run_record("run-a"), channel_scores=ch)
    got = store.load_channel_scores("run-a")
    assert got[WELL].tolist() == WELLS
    assert got[CHANNEL_P_CONTROL[2]].tolist() == pytest.approx([0.1, 0.2, 0.3])


def test_threads_read_while_one_writes(store: ResultStore) -> None:
    save(store, "run-0", 0.5)
    errors: list[BaseException] = []
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                df = store.load_well_scores("P1")
                assert len(df) == 3
                seen.append(len(store.list_runs("P1")))
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    def writer() -> None:
        try:
            for i in range(1, 11):
                save(store, f"run-{i:02d}", 0.5 + i / 100)
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(store.list_runs("P1")) == 11
    assert seen and all(1 <= n <= 11 for n in seen)
    assert store.load_well_scores("P1")[P_CONTROL].iloc[0] == pytest.approx(0.6)


def test_second_process_waits_for_a_held_session_then_gets_in_use_error(tmp_path: Path) -> None:
    """A session holds the file; another process waits its bounded time, then says so."""
    path = tmp_path / "busy.duckdb"
    held = ResultStore(path)
    save(held, "run-a", 0.9)
    with held.session():
        code = (
            "import sys\n"
            "from neurorg_core.store import ResultStore\n"
            "from neurorg_core.errors import NeuroRGError\n"
            "try:\n"
            f"    ResultStore({str(path)!r}, lock_timeout_s=0.3)\n"
            "except NeuroRGError as exc:\n"
            "    print(exc); sys.exit(3)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "busy.duckdb" in proc.stdout and "in use by another process" in proc.stdout
    # once released, the file opens and the data is there
    with ResultStore(path, read_only=True) as ro:
        assert ro.list_runs()[RUN_ID].tolist() == ["run-a"]
        with pytest.raises(NeuroRGError, match="read-only"):
            ro.delete_run("run-a")


def test_read_only_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(NeuroRGError, match="missing.duckdb: no result store here"):
        ResultStore(tmp_path / "missing.duckdb", read_only=True)


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    ResultStore(path).close()
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(NeuroRGError, match="schema version 0; this version of NeuroRG reads version 1"):
        ResultStore(path)


def test_reopening_keeps_data_and_creates_tables_idempotently(tmp_path: Path) -> None:
    path = tmp_path / "r.duckdb"
    with ResultStore(path) as s:
        save(s, "run-a", 0.9)
    with ResultStore(path) as s:
        assert s.list_runs()[RUN_ID].tolist() == ["run-a"]


def test_list_plates_columns_are_the_schemas(tmp_path):
    from neurorg_core.schema import PLATE_LIST_COLUMNS

    with ResultStore(tmp_path / "s.duckdb") as store:
        assert tuple(store.list_plates().columns) == PLATE_LIST_COLUMNS   # empty store too


def test_a_closed_store_opens_again_on_its_next_operation(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.duckdb")
    save(store, "run-a", 0.9)
    store.close()
    store.close()                                    # closing twice is harmless
    assert store.list_runs()[RUN_ID].tolist() == ["run-a"]
    save(store, "run-b", 0.8)
    assert sorted(ResultStore(tmp_path / "r.duckdb", read_only=True).list_runs()[RUN_ID]) == ["run-a", "run-b"]


def _join_release_threads() -> None:
    for t in threading.enumerate():
        if t.name == "neurorg-store-release":
            t.join()


def test_the_file_is_free_between_operations_and_held_in_a_session(tmp_path: Path) -> None:
    """Another process can open the file for writing once an operation of this store is over
    (after a write, once its background release has run), and cannot while a session holds it
    (this process's own store keeps working either way)."""
    path = tmp_path / "r.duckdb"
    store = ResultStore(path)
    save(store, "run-a", 0.9)
    _join_release_threads()
    code = ("import duckdb, sys\n"
            "try:\n"
            "    duckdb.connect(sys.argv[1]).close()\n"
            "except duckdb.IOException as exc:\n"
            "    print('locked' if 'lock' in str(exc).lower() else exc); sys.exit(3)\n")

    def other_process_opens() -> int:
        return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                              timeout=120).returncode

    assert other_process_opens() == 0
    with store.session():
        assert store.list_runs()[RUN_ID].tolist() == ["run-a"]
        assert other_process_opens() == 3
        save(store, "run-b", 0.8)                    # nested operations share the attachment
    _join_release_threads()
    assert other_process_opens() == 0
    assert sorted(store.list_runs()[RUN_ID]) == ["run-a", "run-b"]


def test_a_write_returns_at_its_commit_and_the_file_is_checkpointed_and_released_after(
        tmp_path: Path, monkeypatch) -> None:
    """The checkpoint of a write (its DETACH) runs on a thread after the write returned: an
    operation before that thread runs reuses the attachment, and once it has run the file is
    released and the data are in the file itself (no write-ahead log left)."""
    import types

    import neurorg_core.store as store_module

    path = tmp_path / "r.duckdb"
    store = ResultStore(path)
    held: list[threading.Thread] = []

    class HeldThread(threading.Thread):
        def start(self) -> None:   # run later, by the test
            held.append(self)

    monkeypatch.setattr(store_module, "threading", types.SimpleNamespace(Thread=HeldThread, Lock=threading.Lock))
    save(store, "run-a", 0.9)
    assert [t.name for t in held] == ["neurorg-store-release"]
    assert store._attached and Path(f"{path}.wal").exists()   # committed to the log, not yet released
    assert store.list_runs()[RUN_ID].tolist() == ["run-a"]     # reuses the attachment
    assert store._attached
    for t in held:
        threading.Thread.start(t)
        t.join()
    assert not store._attached
    assert not Path(f"{path}.wal").exists()
    con = duckdb.connect(str(path), read_only=True)   # another program can open it
    assert con.execute(f'SELECT "{RUN_ID}" FROM runs').fetchall() == [("run-a",)]
    con.close()
    store.release()                                   # nothing attached: harmless


def test_a_write_is_durable_at_its_return_even_if_the_process_dies_at_once(tmp_path: Path) -> None:
    """A process killed right after a write returned (before its background checkpoint) keeps
    the write: DuckDB's log holds it and the next open replays it; a process that exits
    normally checkpoints first (Python waits for the release thread)."""
    tests = Path(__file__).parent
    for ending, wal_left in (("os._exit(0)", True), ("", False)):
        path = tmp_path / f"r{len(ending)}.duckdb"
        code = ("import os, sys\n"
                f"sys.path[:0] = [{str(REPO_ROOT)!r}, {str(tests)!r}]\n"
                "from test_store import save\n"
                "from neurorg_core.store import ResultStore\n"
                "save(ResultStore(sys.argv[1]), 'run-a', 0.9)\n"
                f"{ending}\n")
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert Path(f"{path}.wal").exists() is wal_left
        assert ResultStore(path, read_only=True).list_runs()[RUN_ID].tolist() == ["run-a"]


def test_a_second_store_of_one_process_waits_for_the_first(tmp_path: Path) -> None:
    """Two ResultStore objects of one process on one file take turns: the second waits while the
    first holds it (a session, or a write's release) instead of failing."""
    path = tmp_path / "r.duckdb"
    first = ResultStore(path)
    save(first, "run-a", 0.9)
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with first.session():
            held.set()
            done.wait(0.5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    second = ResultStore(path, read_only=True, lock_timeout_s=30)
    assert second.list_runs()[RUN_ID].tolist() == ["run-a"]   # once the first let go
    t.join()

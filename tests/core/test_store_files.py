"""The result store on bad files and bad disks: one clear message naming the file, nothing lost.

Real files and real filesystems: a text file named .duckdb, a truncated DuckDB file, another
program's DuckDB file, a folder that cannot be created, a read-only filesystem (a read-only bind
mount), and a full disk (a 4 MiB tmpfs; and a file-size limit, RLIMIT_FSIZE, which makes writes
fail with EFBIG). Mounts are made in a private mount namespace (``unshare --mount``, plus
``--user --map-root-user`` when not root), so nothing is left mounted if a test dies. Tests run
as root here, and root ignores permission bits, so "unwritable" is made with a read-only mount,
which stops root too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

from neurorg_core.config import REPO_ROOT
from neurorg_core.errors import NeuroRGError
from neurorg_core.store import PredictionRow, ResultStore

sys.path.insert(0, str(Path(__file__).parent))
from test_store import save, snapshot  # noqa: E402  (the same fixtures as the store's own tests)
from tests.private_mount import SCRIPT_HELPERS, run_in_private_mount  # noqa: E402

# --- helpers --------------------------------------------------------------------------------


def _filled_store(path: Path) -> dict:
    """A store holding one run and a cached prediction; returns its snapshot."""
    with ResultStore(path) as s:
        save(s, "run-a", 0.9)
        s.put_predictions([PredictionRow("hA01", "m1", "k", np.full((2, 6), 1 / 6, np.float32))])
        return snapshot(s)


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


def _private_mount(script: str, tmp: Path) -> dict:
    """``run_in_private_mount`` with this folder on the path too (the script imports test_store)."""
    return run_in_private_mount(script, tmp, env={
        **os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(Path(__file__).parent)])})


_PRELUDE = SCRIPT_HELPERS + """
import numpy as np
from neurorg_core.store import PredictionRow, ResultStore
from test_store import save, snapshot
"""

# --- foreign, damaged and unwritable files ----------------------------------------------------


def test_a_text_file_named_duckdb_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.duckdb"
    path.write_text("plate A: looked fine\n" * 50)
    before = _bytes(path)
    for read_only in (False, True):
        with pytest.raises(NeuroRGError, match=r"^notes\.duckdb: is not a DuckDB result store.*not changed"):
            ResultStore(path, read_only=read_only)
    assert _bytes(path) == before


def test_an_empty_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "empty.duckdb"
    path.touch()
    with pytest.raises(NeuroRGError, match=r"^empty\.duckdb: is not a DuckDB result store"):
        ResultStore(path)
    assert path.stat().st_size == 0


@pytest.mark.parametrize("keep", [0.002, 0.5, 0.9])
def test_a_truncated_store_is_refused_before_anything_reads_or_writes_it(tmp_path: Path, keep: float) -> None:
    good = tmp_path / "good.duckdb"
    _filled_store(good)
    data = _bytes(good)
    assert len(data) > 500_000           # several DuckDB blocks, so the cuts land inside the data
    path = tmp_path / "cut.duckdb"
    path.write_bytes(data[: int(len(data) * keep)])
    before = _bytes(path)
    for read_only in (False, True):
        with pytest.raises(NeuroRGError, match=r"^cut\.duckdb: .*(damaged|not a DuckDB)"):
            ResultStore(path, read_only=read_only)
    assert _bytes(path) == before


def test_a_store_truncated_after_opening_is_refused_at_the_next_operation(tmp_path: Path) -> None:
    path = tmp_path / "r.duckdb"
    _filled_store(path)
    store = ResultStore(path)            # the app's store, created before the file was damaged
    data = _bytes(path)
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(NeuroRGError, match=r"^r\.duckdb: is damaged: .* truncated; it was not changed"):
        store.list_plates()
    with pytest.raises(NeuroRGError, match=r"^r\.duckdb: is damaged"):
        save(store, "run-b", 0.5)
    assert _bytes(path) == data[: len(data) * 2 // 3]


def test_another_programs_duckdb_file_is_refused_and_not_changed(tmp_path: Path) -> None:
    path = tmp_path / "lims.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE samples (id INTEGER, name VARCHAR)")
    con.execute("INSERT INTO samples VALUES (1, 'x')")
    con.close()
    before = _bytes(path)
    with pytest.raises(NeuroRGError, match=r"^lims\.duckdb: is a DuckDB file but not a NeuroRG result store "
                                           r"\(it holds tables samples\); it was not changed"):
        ResultStore(path)
    with pytest.raises(NeuroRGError, match=r"^lims\.duckdb: is not a NeuroRG result store"):
        ResultStore(path, read_only=True)
    assert _bytes(path) == before
    con = duckdb.connect(str(path), read_only=True)
    assert [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()] == ["samples"]
    con.close()


def test_the_cli_names_a_foreign_or_truncated_store_in_one_line(tmp_path: Path, capsys) -> None:
    """The store's messages reach the command line as one ``error:`` line, exit 2, no traceback."""
    from neurorg_core.cli import main

    text = tmp_path / "notes.duckdb"
    text.write_text("plate A: looked fine\n" * 50)
    _filled_store(tmp_path / "good.duckdb")
    data = _bytes(tmp_path / "good.duckdb")
    cut = tmp_path / "cut.duckdb"
    cut.write_bytes(data[: len(data) // 2])
    for path, problem in ((text, "is not a DuckDB result store"), (cut, "is damaged")):
        before = _bytes(path)
        out = tmp_path / "wells.csv"
        assert main(["export", "--db", str(path), "--plate", "P1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path.name}: {problem}") and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert _bytes(path) == before and not out.exists()


def test_a_folder_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file where the store's folder should be")
    with pytest.raises(NeuroRGError, match=r"^r\.duckdb: cannot create the folder .*results for the result store"):
        ResultStore(blocker / "r.duckdb")
    with pytest.raises(NeuroRGError, match=r"^r\.duckdb: is a folder"):
        (tmp_path / "r.duckdb").mkdir()
        ResultStore(tmp_path / "r.duckdb")


def test_a_read_only_filesystem_is_refused_for_writing_and_read_for_reading(tmp_path: Path) -> None:
    """A read-only bind mount: even root cannot write there."""
    _filled_store(tmp_path / "ro" / "kept.duckdb")
    out = _private_mount(_PRELUDE + """
ro = tmp / "ro"
mount("--bind", str(ro), str(ro))
mount("-o", "remount,ro,bind", str(ro))
new_file = error_of(lambda: ResultStore(ro / "new.duckdb"))
existing = error_of(lambda: ResultStore(ro / "kept.duckdb"))
with ResultStore(ro / "kept.duckdb", read_only=True) as s:
    runs = s.list_runs()["Run_Id"].tolist()
print(json.dumps({"new_file": new_file, "existing": existing, "runs": runs,
                  "listing": sorted(p.name for p in ro.iterdir())}))
""", tmp_path)
    assert out["new_file"].startswith("new.duckdb: cannot write the folder")
    assert out["existing"].startswith("kept.duckdb: cannot write the file")
    assert out["runs"] == ["run-a"]                   # reading a read-only store still works
    assert out["listing"] == ["kept.duckdb"]


# --- a full disk --------------------------------------------------------------------------------

_FULL_DISK = _PRELUDE + """
disk = tmp / "disk"
disk.mkdir()
mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk))
path = disk / "r.duckdb"
store = ResultStore(path)                           # the app's store, open before the disk fills
save(store, "run-a", 0.9)
store.put_predictions([PredictionRow("hA01", "m1", "k", np.full((2, 6), 1 / 6, np.float32))])
before = snapshot(store)
filler = disk / "filler"
with open(filler, "wb") as f:                       # fill the disk to the last byte
    try:
        while True:
            f.write(b"\\0" * 65536)
            f.flush()
    except OSError:
        pass
rows = [PredictionRow(f"h{i:06d}", "m1", "k", np.full((15, 6), 1 / 6, np.float32)) for i in range(3000)]
errors = {
    "save_run": error_of(lambda: save(store, "run-b", 0.1)),
    "put_predictions": error_of(lambda: store.put_predictions(rows)),
    "delete_plate": error_of(lambda: store.delete_plate("P1")),
    "new_store": error_of(lambda: ResultStore(disk / "other.duckdb")),
}
during = snapshot(store)                            # reads still work on the full disk
filler.unlink()
after = snapshot(ResultStore(path))                 # a fresh process-like open
save(store, "run-b", 0.1)                           # and writing works again with space
print(json.dumps({"errors": errors, "same_during": during == before, "same_after": after == before,
                  "runs_now": sorted(snapshot(store)["runs"]["Run_Id"])}))
"""


def test_a_full_disk_gives_one_clear_message_and_loses_nothing(tmp_path: Path) -> None:
    out = _private_mount(_FULL_DISK, tmp_path)
    errors = out["errors"]
    for what in ("save_run", "put_predictions", "delete_plate"):   # a delete is logged first: needs space
        assert errors[what] is not None, what
        assert errors[what].startswith("r.duckdb: the disk is full"), errors[what]
        assert "what was stored before is intact" in errors[what]
    assert errors["new_store"].startswith("other.duckdb: the disk is full")
    assert out["same_during"] and out["same_after"]
    assert out["runs_now"] == ["run-a", "run-b"]


_FILE_SIZE_LIMIT = """
import json, resource, signal, sys
from pathlib import Path
import numpy as np
from neurorg_core.errors import NeuroRGError
from neurorg_core.store import PredictionRow, ResultStore
from test_store import save, snapshot

path = Path(sys.argv[1]) / "r.duckdb"
store = ResultStore(path)
save(store, "run-a", 0.9)
before = snapshot(store)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)        # a write past the limit fails with EFBIG
limit = 64 * 1024
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
rows = [PredictionRow(f"h{i:06d}", "m1", "k", np.full((15, 6), 1 / 6, np.float32)) for i in range(2000)]
try:
    store.put_predictions(rows)
    error = None
except NeuroRGError as exc:
    error = str(exc)
print(json.dumps({"error": error, "same": snapshot(store) == before}))
"""


def test_a_file_size_limit_gives_the_disk_full_message_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.duckdb"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(Path(__file__).parent)])}
    proc = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMIT, str(tmp_path)], capture_output=True,
                          text=True, cwd=REPO_ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["error"] is not None and out["error"].startswith("r.duckdb: the disk is full"), out
    assert out["same"]
    with ResultStore(path, read_only=True) as s:          # and in a process without the limit
        assert s.list_runs()["Run_Id"].tolist() == ["run-a"]
        assert s.count_predictions() == 0

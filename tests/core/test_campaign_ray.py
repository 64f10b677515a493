"""score-campaign's two ways to Ray, each on a real Ray: the default embedded local Ray (started and
shut down by the campaign, progress printed as it goes), and ``--ray-address``, a running cluster
that another process owns (here a local one that declares one GPU).

Two synthetic screening plates (rows A-B imaged, one 128 px field per well, one crop per well),
the shipped demo ensemble, a real DuckDB store. No Ray may be running in this test process when
these tests start (``test_campaign.py`` shuts its own down at the end of its module).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from neurorg_core.campaign import plate_folder, plates_from_paths, run_campaign
from neurorg_core.campaign_parquet import read_metadata
from neurorg_core.cli import main
from neurorg_core.config import REPO_ROOT
from neurorg_core.model import load_bundle
from neurorg_core.plate_inference import ScoreOptions
from neurorg_core.schema import RUN_STATUS
from neurorg_core.store import ResultStore
from tests.campaign_plates import screen_plates

DEMO = REPO_ROOT / "data" / "models" / "demo" / "ensemble"

CLUSTER = """
import sys, ray
ctx = ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING")
print(ctx.address_info["gcs_address"], flush=True)
sys.stdin.read()          # until the test closes our stdin
ray.shutdown()
"""
"""A Ray cluster owned by a child process: 2 CPUs and one declared GPU (Ray's resource accounting;
this machine has no GPU, so no inference runs on one here)."""


@pytest.fixture(scope="module")
def plates(tmp_path_factory) -> list[Path]:
    return screen_plates(tmp_path_factory.mktemp("campaign_ray_plates"), seed=13, n_plates=2, rows="AB")


def _no_ray_here() -> None:
    import ray

    assert not ray.is_initialized(), "a Ray is already running in this test process"


@pytest.mark.slow   # starts Ray (~10 s) and scores plates
def test_score_campaign_starts_an_embedded_local_ray_and_shuts_it_down(plates, tmp_path, capsys) -> None:
    import ray

    _no_ray_here()
    db = tmp_path / "e.duckdb"
    assert main(["score-campaign", *map(str, plates), "--campaign", "embedded", "--model", str(DEMO), "--db", str(db),
                 "--crops-per-well", "1", "--progress-every", "0"]) == 0
    captured = capsys.readouterr()
    assert not ray.is_initialized()                                    # the campaign's own Ray is shut down
    assert "Ray local" in captured.err and "starting Ray and its workers" in captured.out
    with ResultStore(db, read_only=True) as s:
        assert (s.load_campaign("embedded")[RUN_STATUS] == "stored").all()
        wells = sum(len(s.load_well_scores(p.name)) for p in plates)
    crops = sum(read_metadata(plate_folder(db.parent / "campaigns" / "embedded", p.name))["total_crops"]
                for p in plates)
    assert crops == wells                                              # one field and one crop per imaged well
    # progress: plates and crops done, and the time left once there is a rate
    lines = re.findall(r"plates (\d+)/2, crops ([\d,]*\d)(?:/([\d,]*\d))?(?:, ~(\d+) s left)?", captured.err)
    assert lines, captured.err
    done = [int(p) for p, _, _, _ in lines]
    assert done == sorted(done) and done[0] < 2                        # a line before the last plate was stored
    assert lines[-1] == ("2", f"{crops:,}", f"{crops:,}", "0")        # all crops done, nothing left
    # (the estimate of the time left itself: test_campaign.py::test_progress_counts_crops_and_estimates_time_left)


@pytest.fixture()
def cluster():
    """The child's cluster address; the child (and its Ray) ended by closing its stdin."""
    child = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        address = child.stdout.readline().strip()
        assert re.fullmatch(r"[\d.]+:\d+", address), f"no cluster address from the child: {address!r}"
        yield address, child
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@pytest.mark.slow   # starts Ray (~10 s) and scores plates
def test_ray_address_runs_one_gpu_worker_per_gpu_on_that_cluster(plates, cluster, tmp_path) -> None:
    """The workers run on the cluster at the address (its GCS), one per GPU, each holding a GPU; the
    cluster is left running when the campaign ends."""
    import ray

    _no_ray_here()
    address, child = cluster
    seen = tmp_path / "seen"
    seen.mkdir()

    def record(plate: str, done: int, total: int) -> None:
        ctx = ray.get_runtime_context()
        (seen / f"{plate}.json").write_text(json.dumps({
            "pid": os.getpid(), "gcs": ctx.gcs_address, "gpus": list(ctx.get_accelerator_ids()["GPU"])}))

    with ResultStore(tmp_path / "a.duckdb") as s:
        result = run_campaign(plates_from_paths(plates), load_bundle(DEMO), s, campaign_id="cluster",
                              options=ScoreOptions(crops_per_well=1), ray_address=address, worker_hook=record)
        rows = s.load_campaign("cluster")
    assert not result.failed and sorted(result.stored) == sorted(p.name for p in plates)
    assert (rows[RUN_STATUS] == "stored").all()
    workers = [json.loads((seen / f"{p.name}.json").read_text()) for p in plates]
    assert {w["gcs"] for w in workers} == {address}                    # on the cluster at that address
    assert all(w["gpus"] == ["0"] for w in workers)                    # each worker holds the GPU
    assert len({w["pid"] for w in workers}) == 1                       # one GPU: one worker for both plates
    assert workers[0]["pid"] != os.getpid() and not ray.is_initialized()
    assert child.poll() is None                                        # the cluster is not ours to stop

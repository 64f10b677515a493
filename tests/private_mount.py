"""Running a Python script in a private mount namespace, so a test can mount real file systems
(tmpfs disks, read-only binds) and nothing stays mounted if the test dies: ``unshare --mount``,
plus ``--user --map-root-user`` when not root.

The script gets the test's temporary folder as ``sys.argv[1]`` and prints one JSON line last;
``SCRIPT_HELPERS`` (prepended by the caller) gives it ``mount(...)`` and ``error_of(fn)``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from neurorg_core.config import REPO_ROOT

SCRIPT_HELPERS = """
import json, subprocess, sys
from pathlib import Path
from neurorg_core.errors import NeuroRGError

tmp = Path(sys.argv[1])
def mount(*args):
    subprocess.run(["mount", *args], check=True)
def error_of(fn):
    try:
        fn()
    except NeuroRGError as exc:
        return str(exc)
    return None
"""


def run_in_private_mount(script: str, tmp: Path, *, env: dict[str, str] | None = None,
                         timeout: float = 300) -> dict:
    """Run ``script`` (Python, from the repository root) in a private mount namespace; its last
    printed line, parsed as JSON. ``env`` defaults to this process's, with the repository on
    PYTHONPATH."""
    unshare = shutil.which("unshare")
    assert unshare, "util-linux `unshare` is needed to mount a test filesystem"
    prefix = [unshare, "--mount"] if os.geteuid() == 0 else [unshare, "--user", "--map-root-user", "--mount"]
    proc = subprocess.run([*prefix, sys.executable, "-c", script, str(tmp)], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env if env is not None else {**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])

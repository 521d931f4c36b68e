"""Shared fixtures: one smoke run of the whole pipeline, reused by every test that needs one."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """python stage2.py --preset smoke --steps 4 from an empty folder, killed mid-way, rerun."""
    out = tmp_path_factory.mktemp("smoke")
    cmd = [sys.executable, "stage2.py", "--preset", "smoke", "--steps", "4", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "stage2_N128.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    interrupted = sorted(p.name for p in out.glob("*.pt"))
    teacher_mtime = (out / "teacher.pt").stat().st_mtime_ns
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return out, interrupted, teacher_mtime, r.stdout

"""Shared fixtures: one smoke run of the whole pipeline, reused by every test that needs one, and
`cli`, which runs a script's command line in this process."""
import importlib.util
import runpy
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


@pytest.fixture
def cli(capsys, monkeypatch):
    """cli(argv) runs `python *argv` (a script path, or "-m", module) in this process, as its
    __main__, from the repository root -> an object with returncode, stdout and stderr, like
    subprocess.run's. The same entry point (infra.run_cli) as a new process, without paying
    ~3 s of interpreter start and imports per call; a bug that raises is a test failure."""
    def run(argv):
        argv = [str(a) for a in argv]
        monkeypatch.chdir(ROOT)
        monkeypatch.setattr(sys, "path", [str(ROOT)] + sys.path)
        if argv[0] == "-m":
            path, args = importlib.util.find_spec(argv[1]).origin, argv[2:]
            main = lambda: runpy.run_module(argv[1], run_name="__main__", alter_sys=True)  # noqa
        else:
            path, args = str(ROOT / argv[0]), argv[1:]
            main = lambda: runpy.run_path(path, run_name="__main__")  # noqa: E731
        monkeypatch.setattr(sys, "argv", [path, *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(argv, code, out, err)
    return run

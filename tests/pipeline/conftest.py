"""Shared fixtures: one smoke run of the whole pipeline, reused by every test that needs one, and
`cli`, which runs a script's command line in this process."""
import importlib.util
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """python stage2.py --preset smoke --steps 4 from an empty folder, in one go -> (folder,
    stdout). test_kill_resume.py interrupts the same command and compares with it."""
    out = tmp_path_factory.mktemp("smoke")
    r = subprocess.run(smoke_command(out), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r.stdout


def smoke_command(out):
    return [sys.executable, "stage2.py", "--preset", "smoke", "--steps", "4", "--out", str(out)]


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
            monkeypatch.delitem(sys.modules, argv[1], raising=False)  # run fresh, as python -m

            def main():
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            path, args = str(ROOT / argv[0]), argv[1:]

            def main():
                runpy.run_path(path, run_name="__main__")
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

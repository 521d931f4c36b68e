"""Shared fixtures: one smoke run of the whole pipeline, reused by every test that needs one;
`cli`, which runs a script's command line in this process; `run`, a copy of the smoke run to
spoil; `fails_cleanly`, the bad-input check (one line, exit 2, nothing written)."""
import importlib.util
import runpy
import shutil
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


def _snapshot(folder):
    """name -> (size, mtime) of every file below folder."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture
def run(smoke_run, tmp_path):
    """A copy of the finished smoke run: teacher.pt, stage1.pt, stage2_N*.pt."""
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("teacher.pt", "stage1.pt", "stage2_N4.pt"):
        shutil.copy2(smoke_run[0] / name, folder / name)
    return folder


@pytest.fixture
def fails_cleanly(cli):
    """fails_cleanly(argv, message, folder): exit 2 with one line on stderr holding message, and
    nothing in folder written or changed (after_progress: a progress bar may come first)."""
    def check(argv, message, folder, after_progress=False):
        before = _snapshot(folder)
        r = cli(argv)
        assert r.returncode == 2, (argv, r.returncode, r.stderr[-1500:])
        lines = r.stderr.strip().split("\n")
        assert "Traceback" not in r.stderr and (after_progress or len(lines) == 1), r.stderr[-1500:]
        # -m extensions.edit -> edit.py; benchmarks/headline.py -> headline.py
        script = argv[1].split(".")[-1] + ".py" if argv[0] == "-m" else Path(argv[0]).name
        assert lines[-1].startswith(f"{script}: error: "), lines[-1]
        assert message in r.stderr, (message, r.stderr)
        assert _snapshot(folder) == before, "a file was written or changed"
        return r.stderr
    return check

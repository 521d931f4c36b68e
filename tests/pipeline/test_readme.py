"""The README's two commands work as pasted, on this machine: each program they call exists here,
and setup.sh, which both start with, picks the right way to install (sudo only where this
user is not root) and calls only programs that exist here."""
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def two_commands():
    """The fenced bash blocks of the README's "Two commands" section, as lists of commands."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [[shlex.split(c) for c in block.strip().split("&&")] for block in blocks]


def test_the_readme_commands_call_programs_that_exist_here():
    blocks = two_commands()
    assert len(blocks) == 2, blocks
    for block in blocks:
        for words in block:
            assert shutil.which(words[0]), f"{words[0]} (in {' '.join(words)}) is not on PATH"
            files = [w for w in words[1:] if re.search(r"\.(sh|py|txt)$", w)]
            assert all((ROOT / f).is_file() for f in files), files
    assert blocks[1][-1] == ["python", "-m", "pytest", "-q"]  # what .ci/run runs
    ci = (ROOT / ".ci" / "run").read_text()
    assert " && ".join(shlex.join(w) for w in blocks[1]) in ci


def dry_run(*args, **env):
    r = subprocess.run(["bash", str(ROOT / "setup.sh"), "--dry-run", *args], cwd=ROOT,
                       env={**os.environ, **env}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [shlex.split(line[2:]) for line in r.stdout.splitlines() if line.startswith("+ ")]


def test_setup_installs_without_sudo_as_root_and_calls_only_programs_that_exist(tmp_path):
    # Fashion-MNIST missing (an empty FASHION_DIR): the apt-get step is planned.
    planned = dry_run("--tests", FASHION_DIR=str(tmp_path))
    apt = [c for c in planned if "apt-get" in c]
    pip = [c for c in planned if "pip" in c]
    if shutil.which("apt-get"):
        assert len(apt) == 2 and apt[-1][-1] == "dataset-fashion-mnist", planned
        assert (apt[0][0] == "sudo") == (os.geteuid() != 0), apt  # sudo only for a non-root user
    for words in planned:
        assert shutil.which(words[0]), f"setup.sh would call {words[0]}, not on PATH here"
    assert [w for c in pip for w in c if w.endswith(".txt")] == ["requirements.txt",
                                                                 "requirements-text.txt"]
    # The data present: no apt step, and without --tests only the core's requirements.
    present = tmp_path / "present"
    present.mkdir()
    (present / "train-images-idx3-ubyte.gz").write_bytes(b"")
    assert dry_run(FASHION_DIR=str(present)) == [["python", "-m", "pip", "install", "-q", "-r",
                                                  "requirements.txt"]]

"""Destinations and stored artefacts (README, "Bad input"), one test per family of defects:
every destination is checked before the work (infra.writable_dir / writable_file probe it:
os.access says yes to root under /proc), a refused command leaves nothing behind and replaces
nothing (the export is all or nothing), what the project wrote earlier is read back safely (a
damaged cache or statistics file is rebuilt, a damaged results file is a one-line error), values
the rules used to let through are refused, and the grader is bounded."""
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import readers
from config import UserError, get_config
from extensions.course import ROOT
from tests.formats import write_image_folders

PROC = Path("/proc/distill_guided_x")  # a folder nobody can make, root included
DESTINATIONS = [  # argv with DEST, the folder (or its file) that cannot be made
    ["sample.py", "--ckpt", "RUN/stage2_N4.pt", "--out", "DEST"],
    ["sample.py", "--ckpt", "RUN/stage2_N4.pt", "--out-file", "DEST/g.png"],
    ["guidance.py", "--preset", "smoke", "--out", "DEST"],
    ["stage1.py", "--preset", "smoke", "--out", "DEST"],  # used to train the teacher first
    ["benchmarks/gpu_plan.py", "--out", "DEST/plan.md"],
    ["-m", "extensions.course", "make", "DEST"],
    ["-m", "extensions.course", "export", "RUN", "--out", "DEST"],
    ["-m", "extensions.animate", "RUN", "--out", "DEST"],
    ["-m", "extensions.autoencoder", "train", "--preset", "smoke", "--out", "DEST"],
    ["-m", "extensions.edit", "sdedit", "--ckpt", "RUN/stage2_N4.pt", "--out-file", "DEST/y.png"],
    ["evaluate.py", "--ckpt", "RUN/stage2_N4.pt", "--n", "4", "--stats-dir", "DEST"],
]


def _argv(argv, run, dest):
    return [str(a).replace("RUN", str(run)).replace("DEST", str(dest)) for a in argv]


@pytest.mark.parametrize("where", ["proc", "below a file"])
@pytest.mark.parametrize("argv", DESTINATIONS, ids=lambda a: " ".join(a[:3]))
def test_a_destination_that_cannot_be_made_is_refused_before_any_work(argv, where, run,
                                                                      fails_cleanly):
    if where == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    dest = PROC if where == "proc" else run / "stage1.pt" / "x"  # a folder below a file
    fails_cleanly(_argv(argv, run, dest), "cannot create the folder", run)
    assert not dest.exists()


@pytest.mark.parametrize("argv, message", [
    (["-m", "extensions.course", "make", "RUN/stage1.pt"], "cannot create the folder"),
    (["evaluate.py", "--ckpt", "RUN/stage2_N4.pt", "--n", "4", "--stats-dir", "RUN/stage1.pt"],
     "cannot create the folder"),
    (["sample.py", "--ckpt", "RUN/stage2_N4.pt", "--out-file", "RUN/grid.png"], "that is a folder"),
    (["sample.py", "--ckpt", "RUN/stage2_N4.pt", "--out", ""], "--out is empty"),
    (["sample.py", "--ckpt", "RUN/stage2_N4.pt", "--out-file", ""], "--out-file is empty"),
    (["-m", "extensions.animate", ""], "not a folder"),
    (["evaluate.py", "--run", "RUN", "--n", "4"], "report"),  # RUN/report is a file
    (["benchmarks/headline.py", "--run", "RUN", "--n", "4"], "report"),
    (["-m", "extensions.ablate", "--run", "README.md", "--stage", "stage2"], "not a folder"),
    (["-m", "extensions.ablate", "--run", "RUN", "--stage", "stage2", "--eval-steps", "0"],
     "--eval-steps 0"),
])
def test_files_folders_and_empty_names_are_not_destinations(argv, message, run, fails_cleanly):
    (run / "grid.png").mkdir()
    (run / "report").write_text("a file where the report folder goes")
    r = fails_cleanly(_argv(argv, run, None), message, run)
    assert "stage2.py --steps 0" not in r and "--out README.md" not in r
    assert not (ROOT / "weights" / "samples_stage2_N4_ddim4.png").exists()


def test_a_refused_command_leaves_nothing_and_an_export_is_all_or_nothing(run, cli, tmp_path,
                                                                        fails_cleanly):
    # A folder without the checkpoints, and an edit with a bad --t0: no output folder is made.
    (tmp_path / "empty").mkdir()
    fails_cleanly(["-m", "extensions.animate", tmp_path / "empty", "--out", tmp_path / "gifs"],
                  "no teacher and 4-step student", tmp_path)
    fails_cleanly(["-m", "extensions.edit", "sdedit", "--ckpt", run / "stage2_N4.pt", "--t0", "0",
                   "--out-file", tmp_path / "edits" / "e.png"], "--t0 0", tmp_path)
    assert not (tmp_path / "gifs").exists() and not (tmp_path / "edits").exists()
    # A run whose stage1.pt is in fact a teacher: refused before the reference statistics.
    shutil.copy(run / "teacher.pt", run / "stage1.pt")
    fails_cleanly(["evaluate.py", "--run", run, "--n", "4", "--stats-dir", tmp_path / "stats"],
                  "holds stage 'teacher', but this needs 'stage1'", tmp_path)
    # An export, then a second one of a run with a truncated student: nothing is replaced.
    out = tmp_path / "weights"
    assert cli(["-m", "extensions.course", "export", run, "--out", out]).returncode == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    (bad / "stage2_N4.pt").write_bytes((run / "stage2_N4.pt").read_bytes()[:1000])
    torch.save(torch.load(run / "teacher.pt", weights_only=True) | {"stage": "teacher_x"},
               bad / "teacher.pt")  # a changed teacher: it must not reach out/ either
    fails_cleanly(["-m", "extensions.course", "export", bad, "--out", out], "stage2_N4.pt", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    # A stage-2 checkpoint named teacher.pt is not exported as a teacher.
    shutil.copy(run / "stage2_N4.pt", bad / "teacher.pt")
    fails_cleanly(["-m", "extensions.course", "export", bad, "--out", out],
                  "holds stage 'stage2', but this needs 'teacher'", out)


def test_damaged_caches_are_rebuilt_and_damaged_results_refused(run, tmp_path, cli, capsys,
                                                               fails_cleanly, monkeypatch):
    # Class folders: a truncated cache is decoded again, with a note.
    write_image_folders(tmp_path, np.random.default_rng(7), 1)
    x, _, _ = readers.read_cifar10(tmp_path, True)
    cache = tmp_path / "train.cache.npz"
    cache.write_bytes(cache.read_bytes()[:500])
    x2, _, where = readers.read_cifar10(tmp_path, True)
    assert np.array_equal(x, x2) and "cache written" in where and "cannot be read" in \
        capsys.readouterr().out
    # A file replaced by another of the same size, its time kept (cp -p): noticed.
    a, b = tmp_path / "train" / "cat" / "0000.png", tmp_path / "train" / "dog" / "0000.png"
    stat, rng = a.stat(), np.random.default_rng(8)
    for _ in range(200):  # random pixels until a PNG of the same size: another picture, ...
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
        if len(buffer.getvalue()) == stat.st_size:
            break
    assert len(buffer.getvalue()) == stat.st_size
    a.write_bytes(buffer.getvalue())
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the same time
    x3, _, where = readers.read_cifar10(tmp_path, True)
    assert "decoded" in where and (x3 != x).any()
    # An image Pillow refuses for another reason than OSError: the one-line error naming it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32 x 32 is then a decompression bomb
    with pytest.raises(UserError, match=f"^{re.escape(str(b))}: unreadable image .*Bomb"):
        readers._decode(b, 32)
    monkeypatch.undo()
    # FID statistics: a damaged file is computed again.
    cfg = get_config("smoke", ["eval_ref_n=16"])
    extract = lambda x: (torch.nn.functional.avg_pool2d(x.double(), 4).flatten(1),  # noqa: E731
                         torch.ones(len(x), 3) / 3)  # (B, 4) features, fake probabilities
    first = evaluate.reference_stats(cfg, extract, tmp_path / "stats", "data")
    Path(first["file"]).write_bytes(b"PK\x03\x04 not an npz any more")
    again = evaluate.reference_stats(cfg, extract, tmp_path / "stats", "data")
    assert np.array_equal(first["mu"], again["mu"]) and "computing it again" in \
        capsys.readouterr().out
    # A damaged results file: one line naming it, before any work.
    (run / "report").mkdir()
    (run / "report" / "results.json").write_text('{"rows": [')
    fails_cleanly(["evaluate.py", "--run", run, "--n", "4", "--stats-dir", tmp_path / "s2"],
                  "results.json cannot be read (JSONDecodeError)", tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["guidance.py", "--preset", "smoke", "--set", "ch_mult=(1.5,2)", "--out", "RUN"],
     "tuple of whole numbers"),
    (["guidance.py", "--preset", "smoke", "--set", "attn_head_dim=5", "--out", "RUN"],
     "attn_head_dim dividing"),
    (["evaluate.py", "--ckpt", "RUN/stage2_N4.pt", "--set", "eval_ref_n=1"], "eval_ref_n must be"),
    (["benchmarks/throughput.py", "--preset", "smoke", "--steps", "0"], "--steps 0"),
    (["benchmarks/throughput.py", "--preset", "smoke", "--batch-size", "0"], "batch_size"),
    (["benchmarks/text_to_image.py", "--run", "RUN", "--n", "1"], "--n 1"),
    (["benchmarks/applications.py", "--run", "RUN", "--n", "1"], "--n 1"),
    (["-m", "extensions.text", "captions", "--data", "RUN/captions.pt", "--out", "RUN/c"],
     "holds captions already"),
])
def test_values_the_rules_let_through_are_refused(argv, message, run, fails_cleanly):
    torch.save(dict(x=torch.zeros(2, 1, 8, 8), y=torch.zeros(2, 384),
                    config=dict(dataset="fashion", text={"train": {}})), run / "captions.pt")
    fails_cleanly(_argv(argv, run, None), message, run)


@pytest.mark.skipif(sys.platform == "win32", reason="the time limit needs SIGALRM")
def test_the_grader_has_a_time_limit_and_counts_failures(tmp_path, cli):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in ROOT.glob("*.py"):
        shutil.copy(path, copy)
    source = (copy / "ddpm.py").read_text()  # exercise 3 never answers
    right = "return alpha_s * x_hat + sigma_s * eps_hat"
    (copy / "ddpm.py").write_text(source.replace(right, "while True:\n        pass"))
    r = cli(["-m", "extensions.course", "check", copy, "--exercise", "3", "--exercise", "5",
             "--time-limit", "2"])
    assert r.returncode == 1, r.stdout + r.stderr  # the number of exercises not passed
    assert "exercise 3: no answer in 2 s" in r.stdout and " 5. " in r.stdout, r.stdout
    assert "PASS" in r.stdout.split(" 5. ")[1].splitlines()[0]
    # make prints a grading command that a shell reads back whole (a space in the path).
    r = cli(["-m", "extensions.course", "make", tmp_path / "my copy"])
    assert f"check '{tmp_path / 'my copy'}'" in r.stdout
    # A grader stopped from outside (SIGTERM) removes its temporary folder.
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    grader = subprocess.Popen([sys.executable, "-m", "extensions.course", "check", copy,
                               "--exercise", "3", "--time-limit", "60"], cwd=ROOT,
                              env=os.environ | {"TMPDIR": str(tmp)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    for _ in range(600):  # until the worker has its job (at most 60 s)
        if list(tmp.glob("*/job.json")):
            break
        time.sleep(0.1)
    assert list(tmp.glob("*/job.json")), "the grader never started"
    grader.send_signal(signal.SIGTERM)
    assert grader.wait(timeout=30) == 128 + signal.SIGTERM
    assert not list(tmp.iterdir()), list(tmp.iterdir())

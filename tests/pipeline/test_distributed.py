"""torchrun: 2 gloo processes on the CPU train the same weights as 1 process with the same global
batch (infra.py: every rank draws the whole batch and keeps its slice; DDP averages)."""
import subprocess
import sys
from pathlib import Path

import numpy as np


from infra import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["--preset", "smoke", "--set", "teacher_iters=20", "--set", "ckpt_every=10", "--set",
         "stage1_iters=10",
         "--set", "stage2_iters_small=6", "--set", "distill_ckpt_every=3",
         "--set", "precision=fp32"]  # the split's math, not bf16's batch-size-dependent rounding


def _run(argv, processes):
    """python argv..., or the same under torchrun with `processes` gloo processes."""
    launch = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={processes}"]
    r = subprocess.run(launch + argv, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_processes_train_the_same_pipeline_as_one(tmp_path):
    """Each stage's weights agree to < 5 % of how far that stage moved them (measured: teacher 1e-7,
    stage 1 3e-6, stage-2 rounds 2e-5 against moves of ~2e-3: float summation order). Rounds near
    N = 1024 are not used: there the student starts equal to its teacher, its gradients are float
    noise, and Adam's normalization turns that noise into lr-sized steps in either run."""
    argv = ["stage2.py", *SHORT, "--steps", "2", "--start-steps", "8"]
    _run(argv + ["--out", str(tmp_path / "one")], 1)
    _run(argv + ["--out", str(tmp_path / "two")], 2)
    prev = None
    for name in ["teacher.pt", "stage1.pt", "stage2_N4.pt", "stage2_N2.pt"]:
        a, b = load_checkpoint(tmp_path / "one" / name), load_checkpoint(tmp_path / "two" / name)
        assert a["step"] == b["step"] > 0, name
        diff = _max_diff(a["model"], b["model"])
        # no common init to measure the move from: an absolute bound
        if prev is None or name == "stage1.pt":
            assert diff < 1e-5, (name, diff)
        else:
            moved = _max_diff(a["model"], prev["ema"])
            assert diff < 0.05 * moved, (name, diff, moved)
        prev = a
    # Rank 0 alone wrote the metrics: as many lines as one process wrote.
    lines = lambda d: (d / "metrics.jsonl").read_text().count("\n")  # noqa: E731
    assert lines(tmp_path / "two") == lines(tmp_path / "one")


def test_two_processes_train_the_same_autoencoder_as_one(tmp_path):
    argv = ["-m", "extensions.autoencoder", "train", "--preset", "smoke", "--iters", "20", "--set",
            "ckpt_every=10"]
    _run(argv + ["--out", str(tmp_path / "one")], 1)
    _run(argv + ["--out", str(tmp_path / "two")], 2)
    a, b = (load_checkpoint(tmp_path / d / "autoencoder.pt") for d in ("one", "two"))
    assert a["step"] == b["step"] == 20 and _max_diff(a["model"], b["model"]) < 1e-5


def test_a_batch_that_does_not_split_evenly_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2",
                        "guidance.py", "--preset", "smoke", "--batch-size", "63", "--out",
                        str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "divisible by the 2 process(es)" in r.stderr
    # nothing written
    assert not list((tmp_path / "o").glob("*")) if (tmp_path / "o").exists() else True


def test_two_processes_sample_the_same_images_as_one(smoke_run, tmp_path):
    """sample.py under torchrun: each rank samples its share, rank 0 writes them all; per-image
    seeds make the images those of one process (up to a uint8 step from float summation order)."""
    images = []
    for processes in (1, 2):
        out = tmp_path / f"p{processes}.png"
        _run(["sample.py", "--ckpt", str(smoke_run[0] / "stage2_N4.pt"), "--sampler", "stochastic",
              "--w", "0,2",
              "--rows", "2", "--batch-size", "7", "--out-file", str(out)], processes)
        images.append(np.load(out.with_suffix(".npz"))["x"].astype(int))
    assert images[0].shape == images[1].shape == (40, 1, 8, 8)
    assert np.abs(images[0] - images[1]).max() <= 1
    assert not np.array_equal(images[0][:20], images[0][20:]), "w must change the images"

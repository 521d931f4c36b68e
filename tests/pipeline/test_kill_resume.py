"""Kill and resume: SIGKILL the smoke pipeline at several moments across the teacher, stage 1 and
stage 2, rerun the same command each time, and require (1) that every checkpoint on disk is
readable after every kill, (2) that a finished stage is not trained again, and (3) that the final
weights are bitwise equal to the uninterrupted run of the same command (conftest.py's smoke_run).
Checkpoints are atomic (temp file, fsync, rename); resuming restores weights, optimizer and every
random stream."""
import random
import signal
import subprocess
import time

import torch

from infra import load_checkpoint
from tests.pipeline.conftest import ROOT, smoke_command


def _stage_files(out):  # what the pipeline writes (other tests add encoders to the smoke run)
    return sorted(p.name for p in out.glob("*.pt")
                  if p.name in ("teacher.pt", "stage1.pt") or p.name.startswith("stage2_N"))


def test_sigkill_at_random_moments_then_rerun_gives_bitwise_equal_weights(smoke_run, tmp_path):
    ref = smoke_run[0]  # the same command, uninterrupted

    # Three kills: each once a stage has written its first checkpoint, after a random delay
    # (seeded), so they fall inside the teacher, stage 1 and a late stage-2 round; the same
    # command is rerun each time.
    out, rng, seen = tmp_path / "killed", random.Random(0), []
    for marker in ("teacher.pt", "stage1.pt", "stage2_N16.pt"):
        proc = subprocess.Popen(smoke_command(out), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 900
        while not (out / marker).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert (out / marker).exists(), f"no {marker} after 900 s"
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill ({marker})"
        # a kill never leaves a corrupted checkpoint (a stray .tmp is allowed)
        for p in out.glob("*.pt"):
            load_checkpoint(p)
        seen.append(_stage_files(out))
        if marker == "stage1.pt":  # the teacher has finished: no rerun may touch it again
            teacher_mtime = (out / "teacher.pt").stat().st_mtime_ns
    r = subprocess.run(smoke_command(out), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len({tuple(s) for s in seen}) == 3, seen  # each kill found the pipeline further on
    assert "stage2_N4.pt" not in seen[-1] and "teacher.pt: finished at step 150/150" in r.stdout
    assert (out / "teacher.pt").stat().st_mtime_ns == teacher_mtime, "the teacher was retrained"

    # Every stage's final weights equal the uninterrupted run's, bit for bit.
    assert _stage_files(out) == _stage_files(ref)
    for name in _stage_files(ref):
        a, b = load_checkpoint(ref / name), load_checkpoint(out / name)
        assert a["step"] == b["step"], name
        for key in ("model", "ema"):
            for k, v in a[key].items():
                assert torch.equal(v, b[key][k]), (name, key, k)

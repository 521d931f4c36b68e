"""Stage 1, stage 2 and the samplers against the exact Gaussian-mixture teacher, and the
whole smoke pipeline end to end (test_kill_resume.py interrupts it)."""
import json

import numpy as np
import pytest
import torch

import guidance
import infra
import stage1
import stage2
from config import get_config
from infra import load_checkpoint


def test_stage1_stop_and_resume_is_bitwise_equal_to_one_run(tmp_path, monkeypatch):
    cfg = {**get_config("smoke"), "teacher_iters": 10, "ckpt_every": 10, "stage1_iters": 20,
           "distill_ckpt_every": 10}
    cpu = torch.device("cpu")
    teacher = guidance.train(cfg, tmp_path, cpu, progress=False)
    # One whole run, keeping a copy of the checkpoint it writes half-way ...
    snapshots = {}

    save = infra.save_checkpoint

    def save_and_snapshot(ckpt, path):
        save(ckpt, path)
        snapshots.setdefault((path.name, ckpt["step"]), path.read_bytes())

    monkeypatch.setattr(infra, "save_checkpoint", save_and_snapshot)
    whole = stage1.train(cfg, tmp_path, cpu, teacher, progress=False)
    # ... then put the half-way checkpoint back, as if the run had been killed, and rerun.
    (tmp_path / "stage1.pt").write_bytes(snapshots["stage1.pt", 10])
    resumed = stage1.train(cfg, tmp_path, cpu, teacher, progress=False)
    assert resumed["step"] == whole["step"] == 20
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in logged if r["stage"] == "stage1"]
    assert steps == [10, 20, 20], "the rerun must start at 10"
    assert all(torch.equal(v, resumed["model"][k]) for k, v in whole["model"].items())


# ---------------------------------------------------------------- the whole smoke pipeline
def test_smoke_pipeline_builds_every_stage(smoke_run):
    out = smoke_run[0]
    assert load_checkpoint(out / "stage1.pt", "stage1")["N"] == 1024
    for N in [512, 256, 128, 64, 32, 16, 8, 4]:
        ckpt = load_checkpoint(out / f"stage2_N{N}.pt", "stage2")
        assert ckpt["N"] == N and ckpt["step"] == stage2.round_iters(ckpt["config"], N)
        assert ckpt["w_range"] == [0.0, 4.0]
    assert not (out / "stage2_N2.pt").exists() and (out / "stage2_N4.png").is_file()
    assert not list(out.glob("*.tmp"))


def test_sample_per_image_seeds_do_not_depend_on_batch_size(smoke_run, tmp_path, cli):
    out = smoke_run[0]
    files = []
    for bs in (7, 256):
        f = tmp_path / f"b{bs}.png"
        r = cli(["sample.py", "--ckpt", str(out / "stage2_N4.pt"), "--sampler", "stochastic", "--w",
                 "0,2", "--batch-size", str(bs), "--out-file", str(f)])
        assert r.returncode == 0 and "4 network calls per image" in r.stdout, r.stderr
        files.append(np.load(f.with_suffix(".npz")))
    assert files[0]["x"].shape == (20, 1, 8, 8)
    assert np.array_equal(files[0]["x"], files[1]["x"])
    assert not np.array_equal(files[0]["x"][:10], files[0]["x"][10:]), "w must change the images"


@pytest.mark.parametrize("args,message", [(["--steps", "3"], "not a power of two"),
                                          (["--steps", "1024"], "must be smaller")])
def test_stage2_bad_steps_is_a_one_line_error(args, message, tmp_path, cli):
    r = cli(["stage2.py", "--preset", "smoke", "--out", str(tmp_path), *args])
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and message in r.stderr
    assert not list(tmp_path.iterdir())


def test_sample_out_dir_holds_the_grid_and_its_npz(smoke_run, tmp_path, cli):
    """sample.py --out DIR (the same flag as every script): the grid and its .npz go to DIR."""
    r = cli(["sample.py", "--ckpt", str(smoke_run[0] / "stage2_N4.pt"), "--out",
             str(tmp_path / "mine")])
    assert r.returncode == 0, r.stderr
    grid = tmp_path / "mine" / "samples_stage2_N4_ddim4.png"
    assert grid.is_file() and grid.with_suffix(".npz").is_file()

"""Stage 1, stage 2 and the samplers against the exact Gaussian-mixture teacher, and the
whole smoke pipeline end to end (with an interruption)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import ddpm
import stage1
import stage2
from config import get_config, load_checkpoint
from tests.analytic import AnalyticModel
from tests.test_ddpm import MIX, _check_class_moments
from unet import from_config, timestep_embedding

ROOT = Path(__file__).resolve().parents[1]


class TinyStudent(nn.Module):
    """An MLP w-student for 2-D data: v_hat = f(z_t, t, y, w)."""

    def __init__(self, dim=2, n_classes=3, hidden=128):
        super().__init__()
        self.n_classes = n_classes
        self.net = nn.Sequential(nn.Linear(dim + 32 + n_classes + 1 + 16, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, z_t, t, y, w):
        feats = [z_t.float(), timestep_embedding(t, 32), nn.functional.one_hot(y, self.n_classes + 1).float(),
                 timestep_embedding(w / 4, 16)]
        return self.net(torch.cat(feats, 1)).to(z_t.dtype)


# ---------------------------------------------------------------- the stage-2 target
@pytest.mark.parametrize("N", [1, 2, 8, 64])
def test_x_tilde_makes_one_student_step_land_on_the_teachers_two(N):
    g = torch.Generator().manual_seed(0)
    B = 4 * N
    i = torch.arange(B) % N  # every i, including i = 0 (t'' = 0)
    t = (i + 1).double() / N
    y = torch.arange(B) % MIX.n_classes
    w = torch.rand(B, generator=g, dtype=torch.float64) * 4
    z_t = torch.randn(B, MIX.dim, generator=g, dtype=torch.float64)
    predict = stage1.student_predictor(AnalyticModel(MIX), y, w)
    x_tilde, z_t2 = stage2.two_step_target(predict, z_t, t, N)

    # The teacher's two steps go to t' = t - 0.5/N first, then t'' = t - 1/N (not swapped).
    t1, t2 = t - 0.5 / N, t - 1.0 / N
    z_t1 = ddpm.ddim_step(z_t, predict(z_t, t), t, t1)
    assert torch.allclose(z_t2, ddpm.ddim_step(z_t1, predict(z_t1, t1), t1, t2), atol=1e-12)
    # i > 0: one student DDIM step t -> t'' with x_hat = x_tilde lands on z_t''.
    mid = i > 0
    if mid.any():
        landed = ddpm.ddim_step(z_t[mid], x_tilde[mid], t[mid], t2[mid])
        assert (landed - z_t2[mid]).abs().max() < 1e-5
    # i = 0: the student's last step returns x_hat, the teacher's returns its x_hat(z_t').
    first = i == 0
    assert torch.equal(x_tilde[first], predict(z_t1, t1)[first])
    if N == 1:  # from z_1: the teacher's whole 2-step sampler ends exactly on x_tilde
        assert torch.allclose(ddpm.sample_ddim(predict, z_t, 2, clip=False), x_tilde, atol=1e-12)


# ---------------------------------------------------------------- stage 1
def test_fresh_stage1_student_equals_the_conditional_teacher_for_every_w():
    cfg = get_config("smoke")
    teacher = from_config(cfg)
    g = torch.Generator().manual_seed(0)
    for p in teacher.parameters():  # a teacher whose output depends on everything
        p.data += 0.05 * torch.randn(p.shape, generator=g)
    ckpt = {"config": cfg, "ema": teacher.state_dict(), "stage": "teacher"}
    student = stage1.init_student(ckpt, torch.device("cpu")).eval()
    teacher.eval()
    z = torch.randn(6, 1, 8, 8, generator=g)
    t, y = torch.rand(6, generator=g), torch.tensor([0, 1, 2, 3, 4, 10])
    v_c = teacher(z, t, y)
    for w in [0.0, 0.5, 2.0, 4.0]:
        assert torch.equal(student(z, t, y, torch.full((6,), w)), v_c)
    # Students train without dropout, also when a later round reloads them (stage1.load_model).
    cfg_drop = {**cfg, "dropout": 0.3}
    reloaded = stage1.load_model({"config": cfg_drop, "ema": student.state_dict(), "stage": "stage1"}, "cpu")
    for net in (stage1.init_student({**ckpt, "config": cfg_drop}, torch.device("cpu")), reloaded):
        assert all(m.p == 0 for m in net.modules() if isinstance(m, nn.Dropout))


def _eval_batch(n=2048, seed=5):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(MIX.n_classes, (n,), generator=g)
    return (MIX.sample(y, g).float(), y, torch.rand(n, generator=g) * 4, torch.rand(n, generator=g),
            torch.randn(n, MIX.dim, generator=g))


def test_stage1_training_approaches_the_analytic_guided_prediction():
    torch.manual_seed(0)
    teacher, student = AnalyticModel(MIX), TinyStudent()
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    x_e, y_e, w_e, t_e, eps_e = _eval_batch()
    with torch.no_grad():
        before = stage1.stage1_loss(student, teacher, x_e, y_e, w_e, t_e, eps_e, "v_mse").item()
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        y = torch.randint(MIX.n_classes, (256,), generator=g)
        x, w, t = MIX.sample(y, g).float(), torch.rand(256, generator=g) * 4, torch.rand(256, generator=g)
        loss = stage1.stage1_loss(student, teacher, x, y, w, t, torch.randn(256, 2, generator=g), "v_mse")
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = stage1.stage1_loss(student, teacher, x_e, y_e, w_e, t_e, eps_e, "v_mse").item()
    assert after < 0.1 * before, (before, after)


def test_stage1_stop_and_resume_is_bitwise_equal_to_one_run(tmp_path, monkeypatch):
    import guidance
    from config import save_checkpoint

    cfg = {**get_config("smoke"), "teacher_iters": 10, "ckpt_every": 10, "stage1_iters": 20,
           "distill_ckpt_every": 10}
    cpu = torch.device("cpu")
    guidance.train(cfg, tmp_path, cpu, progress=False)
    # One whole run, keeping a copy of the checkpoint it writes half-way ...
    snapshots = {}

    def save_and_snapshot(ckpt, path):
        save_checkpoint(ckpt, path)
        snapshots.setdefault(ckpt["step"], path.read_bytes())

    monkeypatch.setattr(stage1, "save_checkpoint", save_and_snapshot)
    whole = stage1.train(cfg, tmp_path, cpu, progress=False)
    # ... then put the half-way checkpoint back, as if the run had been killed, and rerun.
    (tmp_path / "stage1.pt").write_bytes(snapshots[10])
    resumed = stage1.train(cfg, tmp_path, cpu, progress=False)
    assert resumed["step"] == whole["step"] == 20
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["stage"] == "stage1"] == [10, 20, 20], "the rerun must start at 10"
    assert all(torch.equal(v, resumed["model"][k]) for k, v in whole["model"].items())


# ---------------------------------------------------------------- stage 2
def test_one_stage2_round_brings_the_student_towards_the_2N_step_teacher():
    torch.manual_seed(0)
    N = 2
    teacher, student = AnalyticModel(MIX), TinyStudent()
    g = torch.Generator().manual_seed(2)
    y_e = torch.arange(MIX.n_classes).repeat(300)
    w_e = torch.rand(len(y_e), generator=g) * 4
    z_1 = torch.randn(len(y_e), MIX.dim, generator=g)
    target = ddpm.sample_ddim(stage1.student_predictor(teacher, y_e, w_e), z_1, 2 * N, clip=False)

    def error():
        x = ddpm.sample_ddim(stage1.student_predictor(student, y_e, w_e), z_1, N, clip=False)
        return (x - target).pow(2).sum(1).mean().item()

    errors = [error()]
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    for k in range(600):
        y = torch.randint(MIX.n_classes, (256,), generator=g)
        x, w = MIX.sample(y, g).float(), torch.rand(256, generator=g) * 4
        i = torch.randint(N, (256,), generator=g)
        loss = stage2.stage2_loss(student, teacher, x, y, w, i, N, torch.randn(256, 2, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k % 200 == 199:
            errors.append(error())
    assert errors[-1] < 0.1 * errors[0] and errors[-1] < 0.01, errors


# ---------------------------------------------------------------- the stochastic sampler
def test_stochastic_sampler_with_exact_denoiser_matches_class_moments():
    g = torch.Generator().manual_seed(6)
    y = torch.arange(MIX.n_classes).repeat_interleave(3000)
    z_1 = torch.randn(len(y), MIX.dim, generator=g, dtype=torch.float64)
    model = AnalyticModel(MIX)
    predict = lambda z_t, t: ddpm.x_from_v(z_t, model(z_t, t, y), t)  # noqa: E731
    x = ddpm.sample_stochastic(predict, z_1, 256, clip=False,
                               noise=lambda i: torch.randn(z_1.shape, generator=g, dtype=z_1.dtype))
    _check_class_moments(x, y)


# ---------------------------------------------------------------- the whole smoke pipeline
def test_smoke_pipeline_builds_every_stage_and_resumes(smoke_run):
    out, interrupted, teacher_mtime, stdout = smoke_run
    assert "stage2_N4.pt" not in interrupted and "teacher.pt" in interrupted
    assert (out / "teacher.pt").stat().st_mtime_ns == teacher_mtime, "the rerun retrained the teacher"
    assert "finished at step 150/150" in stdout
    assert load_checkpoint(out / "stage1.pt", "stage1")["N"] == 1024
    for N in [512, 256, 128, 64, 32, 16, 8, 4]:
        ckpt = load_checkpoint(out / f"stage2_N{N}.pt", "stage2")
        assert ckpt["N"] == N and ckpt["step"] == stage2.round_iters(ckpt["config"], N)
        assert ckpt["w_range"] == [0.0, 4.0]
    assert not (out / "stage2_N2.pt").exists() and (out / "stage2_N4.png").is_file()
    assert not list(out.glob("*.tmp"))


def test_sample_per_image_seeds_do_not_depend_on_batch_size(smoke_run, tmp_path):
    out = smoke_run[0]
    files = []
    for bs in (7, 256):
        f = tmp_path / f"b{bs}.png"
        r = subprocess.run([sys.executable, "sample.py", "--ckpt", str(out / "stage2_N4.pt"), "--sampler",
                            "stochastic", "--w", "0,2", "--batch-size", str(bs), "--out-file", str(f)],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and "4 network calls per image" in r.stdout, r.stderr
        files.append(np.load(f.with_suffix(".npz")))
    assert files[0]["x"].shape == (20, 1, 8, 8)
    assert np.array_equal(files[0]["x"], files[1]["x"])
    assert not np.array_equal(files[0]["x"][:10], files[0]["x"][10:]), "w must change the images"


@pytest.mark.parametrize("args,message", [(["--steps", "3"], "not a power of two"),
                                          (["--steps", "1024"], "must be smaller")])
def test_stage2_bad_steps_is_a_one_line_error(args, message, tmp_path):
    r = subprocess.run([sys.executable, "stage2.py", "--preset", "smoke", "--out", str(tmp_path), *args],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and message in r.stderr
    assert not list(tmp_path.iterdir())

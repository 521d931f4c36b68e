"""Stage 1, stage 2 and the samplers against the exact Gaussian-mixture teacher, and the
whole smoke pipeline end to end (with an interruption)."""
import pytest
import torch
import torch.nn as nn

import ddpm
import guidance
import stage1
import stage2
from config import get_config
from guidance import teacher_loss
from stage1 import stage1_loss
from stage2 import stage2_loss
from tests.analytic import MIX, AnalyticModel, TinyStudent, check_class_moments
from tests.expect import assert_close
from unet import from_config, from_checkpoint


# ---------------------------------------------------------------- the stage-2 target
def _target_batch(N):
    g = torch.Generator().manual_seed(0)
    B = 4 * N
    i = torch.arange(B) % N  # every i, including i = 0 (t'' = 0)
    y = torch.arange(B) % MIX.n_classes
    w = torch.rand(B, generator=g, dtype=torch.float64) * 4
    z_t = torch.randn(B, MIX.dim, generator=g, dtype=torch.float64)
    return i, (i + 1).double() / N, guidance.student_predictor(AnalyticModel(MIX), y, w), z_t


@pytest.mark.parametrize("N", [1, 2, 8, 64])
def test_x_tilde_makes_one_student_step_land_on_the_teachers_two(N):
    i, t, predict, z_t = _target_batch(N)
    x_tilde, z_t2 = stage2.teacher_target(predict, z_t, t, N)

    # The teacher's two steps go to t' = t - 0.5/N first, then t'' = t - 1/N (not swapped).
    t1, t2 = t - 0.5 / N, t - 1.0 / N
    z_t1 = ddpm.ddim_step(z_t, predict(z_t, t), t, t1)
    assert_close(z_t2, ddpm.ddim_step(z_t1, predict(z_t1, t1), t1, t2),
                 "teacher_target's z_t'' against two DDIM steps t -> t - 0.5/N -> t - 1/N",
                 atol=0, t=t)
    # i > 0: one DDIM step t -> t'' with x_hat = x_tilde lands on z_t'' (the step by hand:
    # alpha_t'' x_tilde + sigma_t'' (z_t - alpha_t x_tilde) / sigma_t).
    mid = i > 0
    if mid.any():
        alpha_t, sigma_t = ddpm.alpha_sigma_at(t, z_t)
        alpha_t2, sigma_t2 = ddpm.alpha_sigma_at(t2, z_t)
        landed = alpha_t2 * x_tilde + sigma_t2 * (z_t - alpha_t * x_tilde) / sigma_t  # (B, 2)
        assert_close(landed[mid], z_t2[mid], "one DDIM step t -> t'' from z_t with x_hat = "
                     "x_tilde, against the teacher's z_t''", atol=1e-5, t=t[mid])
    # i = 0: the student's last step returns x_hat, the teacher's returns its x_hat(z_t').
    first = i == 0
    assert_close(x_tilde[first], predict(z_t1, t1)[first], "x_tilde at i = 0 (t'' = 0) against "
                 "the teacher's x_hat(z_t', t')", atol=0, t=t[first])
    if N == 1:  # from z_1: the teacher's whole 2-step sampler ends exactly on x_tilde
        assert_close(x_tilde, ddpm.sample_ddim(predict, z_t, 2, clip=False), "x_tilde at N = 1 "
                     "against the teacher's 2-step DDIM sample", atol=1e-6)


@pytest.mark.parametrize("N", [1, 4, 16])
def test_x_tilde_of_four_teacher_steps(N):
    """stage2_k = 4 (TRACT-style): four teacher steps of 1/(4N), and one student step lands."""
    i, t, predict, z_t = _target_batch(N)
    x_tilde, z_end = stage2.teacher_target(predict, z_t, t, N, 4)
    ts = [t - j / (4 * N) for j in range(5)]  # t, t - 1/(4N), ..., t'' = t - 1/N
    zs = [z_t]
    for a, b in zip(ts, ts[1:]):
        zs.append(ddpm.ddim_step(zs[-1], predict(zs[-1], a), a, b))
    assert_close(z_end, zs[-1], "teacher_target(..., k=4)'s z_t'' against four DDIM steps of "
                 "1/(4N) from t", atol=1e-9, t=t)
    mid = i > 0
    if mid.any():
        alpha_t, sigma_t = ddpm.alpha_sigma_at(t, z_t)  # the step by hand, as above
        alpha_t2, sigma_t2 = ddpm.alpha_sigma_at(ts[-1], z_t)
        landed = alpha_t2 * x_tilde + sigma_t2 * (z_t - alpha_t * x_tilde) / sigma_t  # (B, 2)
        assert_close(landed[mid], z_end[mid], "one DDIM step t -> t - 1/N with x_hat = x_tilde "
                     "(k = 4), against the teacher's z_t''", atol=1e-5, t=t[mid])
    # i = 0: the teacher's last x_hat, at t = 1/(4N) (not the 2-step target's at 1/(2N)).
    first = i == 0
    assert_close(x_tilde[first], predict(zs[3], ts[3])[first], "x_tilde at i = 0 (k = 4) "
                 "against the teacher's last x_hat, at t = 1/(4N)", atol=1e-9, t=t[first])
    if N == 1:  # from z_1: the teacher's whole 4-step sampler ends on x_tilde
        assert_close(x_tilde, ddpm.sample_ddim(predict, z_t, 4, clip=False), "x_tilde at N = 1 "
                     "(k = 4) against the teacher's 4-step DDIM sample", atol=1e-5)
    assert not torch.allclose(x_tilde, stage2.teacher_target(predict, z_t, t, N)[0]), \
        "teacher_target ignores k: k = 4 gave the k = 2 target"


# ---------------------------------------------------------------- the losses that train
def _loss_batch(n=512, seed=3):
    """Mixture data in float64, w in [0, 4], t in [0.02, 1] (omega = max(SNR, 1) <= ~1e3)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % MIX.n_classes
    x = MIX.sample(y, g)  # (n, 2) float64
    w = torch.rand(n, generator=g, dtype=torch.float64) * 4
    t = 0.02 + 0.98 * torch.rand(n, generator=g, dtype=torch.float64)
    return x, y, w, t, torch.randn(n, MIX.dim, generator=g, dtype=torch.float64)


def test_teacher_loss_is_the_weighted_x_error_of_z_t():
    """guidance.teacher_loss, by hand: an oracle that knows eps has loss 0, and a network that
    predicts v_hat = 0 has x_hat = alpha_t z_t, so x - x_hat = sigma_t v with v = alpha_t eps -
    sigma_t x, and loss = mean_b max(SNR_b, 1) sigma_b^2 mean(v_b^2)."""
    x, y, _, t, eps = _loss_batch()

    def oracle(z_t, t_, y_):  # knows x and eps
        return ddpm.v_from_x_eps(x, eps, t)
    assert teacher_loss(oracle, x, y, t, eps, "snr_trunc") < 1e-12
    alpha, sigma = ddpm.alpha_sigma(ddpm.logsnr_schedule(t))  # (n,) each
    v = alpha[:, None] * eps - sigma[:, None] * x  # (n, 2)
    by_hand = ((alpha / sigma) ** 2).clamp(min=1) * sigma**2 * v.pow(2).mean(1)  # (n,)

    def zero(z_t, t_, y_):
        return torch.zeros_like(z_t)
    assert torch.allclose(teacher_loss(zero, x, y, t, eps, "snr_trunc"), by_hand.mean(),
                          rtol=1e-10)


def test_stage1_loss_is_zero_for_the_exact_guided_student_only():
    """stage1.stage1_loss against the mixture's exact teacher: a student whose x_hat is the
    guided prediction guidance.guided_x_hat at z_t = alpha_t x + sigma_t eps has loss 0; the
    conditional student (w ignored) has the weighted error to that guided target."""
    x, y, w, t, eps = _loss_batch()
    teacher = AnalyticModel(MIX)

    def guided(z_t, t_, y_, w_):  # the ideal stage-1 student
        return ddpm.v_from_x(z_t, guidance.guided_x_hat(teacher, z_t, t_, y_, w_), t_)
    loss = stage1_loss(guided, teacher, x, y, w, t, eps, "snr_trunc")
    assert_close(loss, torch.zeros_like(loss), "stage1_loss of the student that predicts "
                 "guided_x_hat(teacher, z_t, t, y, w)", atol=1e-12)

    def conditional(z_t, t_, y_, w_):  # ignores w
        return teacher(z_t, t_, y_)
    z_t = ddpm.q_sample(x, t, eps)
    x_c = ddpm.x_from_v(z_t, teacher(z_t, t, y), t)
    by_hand = ddpm.weighted_x_loss(x_c, guidance.guided_x_hat(teacher, z_t, t, y, w), t,
                                   "snr_trunc")
    assert_close(stage1_loss(conditional, teacher, x, y, w, t, eps, "snr_trunc"), by_hand,
                 "stage1_loss of the conditional student (w ignored) against omega ||x_c - "
                 "guided_x_hat||^2", rtol=1e-6, atol=0)


@pytest.mark.parametrize("k, N", [(2, 1), (2, 4), (4, 2)])
def test_stage2_loss_is_zero_for_the_student_that_predicts_x_tilde(k, N):
    """stage2.stage2_loss: a student whose x_hat is the target x_tilde of teacher_target (k
    teacher steps) at its grid time t = (i + 1)/N has loss 0; the teacher itself does not."""
    x, y, w, _, eps = _loss_batch()
    i = torch.arange(len(x)) % N
    teacher = AnalyticModel(MIX)

    def ideal(z_t, t, y_, w_):
        assert torch.equal(t, (i + 1).double() / N)  # the student's own grid, including i = 0
        x_tilde, _ = stage2.teacher_target(guidance.student_predictor(teacher, y_, w_), z_t, t, N,
                                           k)
        return ddpm.v_from_x(z_t, x_tilde, t)
    assert stage2_loss(ideal, teacher, x, y, w, i, eps, N, "snr_trunc", k) < 1e-12
    assert stage2_loss(teacher, teacher, x, y, w, i, eps, N, "snr_trunc", k) > 1e-3


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
    reloaded = from_checkpoint({"config": cfg_drop, "ema": student.state_dict(),
                                "stage": "stage1"}, "cpu")
    for net in (stage1.init_student({**ckpt, "config": cfg_drop}, torch.device("cpu")), reloaded):
        assert all(m.p == 0 for m in net.modules() if isinstance(m, nn.Dropout))


def test_the_stage1_student_has_the_w_embedding_its_config_asks_for(tmp_path):
    """--set w_scale=10 or w_sees_class=True on stage 1 builds that embedding (not the
    teacher's config's), and its checkpoint reloads as the same network."""
    cfg = get_config("smoke", ["stage1_iters=0", "w_scale=10", "w_sees_class=True"])
    teacher = from_config(get_config("smoke"))
    ckpt = {"config": get_config("smoke"), "ema": teacher.state_dict(), "stage": "teacher"}
    student = stage1.init_student(ckpt, torch.device("cpu"), cfg)
    assert student.w_scale == 10 and student.w_sees_class
    x, y = torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long)
    saved = stage1.train(cfg | dict(grid_w=()), tmp_path, torch.device("cpu"), ckpt, (x, y),
                         progress=False)
    reloaded = from_checkpoint(saved, "cpu")
    assert reloaded.w_scale == 10 and reloaded.w_mlp[0].in_features == student.w_mlp[0].in_features


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
        before = stage1_loss(student, teacher, x_e, y_e, w_e, t_e, eps_e, "v_mse").item()
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        y = torch.randint(MIX.n_classes, (256,), generator=g)
        x = MIX.sample(y, g).float()
        w, t = torch.rand(256, generator=g) * 4, torch.rand(256, generator=g)
        loss = stage1_loss(student, teacher, x, y, w, t, torch.randn(256, 2, generator=g), "v_mse")
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = stage1_loss(student, teacher, x_e, y_e, w_e, t_e, eps_e, "v_mse").item()
    assert after < 0.1 * before, (f"400 steps on stage1_loss brought the loss from {before:.4f} "
                                  f"to {after:.4f}; expected under a tenth of the start")


# ---------------------------------------------------------------- stage 2
@pytest.mark.parametrize("k, N, weighting", [(2, 1, "v_mse"), (2, 2, "snr_trunc"),
                                             (4, 1, "snr_trunc")])
def test_one_stage2_round_brings_the_student_towards_the_kN_step_teacher(k, N, weighting):
    """300 steps of stage2_loss from the exact guided teacher of the 2-D mixture: the N-step
    student's samples land within 0.15 (RMS) of the kN-step teacher's from the same z_1, and 5x
    closer than untrained. At N = 1 (t = 1 only) v_mse and snr_trunc are the same weight, 1."""
    torch.manual_seed(0)
    teacher, student = AnalyticModel(MIX), TinyStudent()
    g = torch.Generator().manual_seed(2)
    y_e = torch.arange(MIX.n_classes).repeat(300)
    w_e = torch.rand(len(y_e), generator=g) * 4
    z_1 = torch.randn(len(y_e), MIX.dim, generator=g)
    target = ddpm.sample_ddim(guidance.student_predictor(teacher, y_e, w_e), z_1, k * N, clip=False)

    def error():
        x = ddpm.sample_ddim(guidance.student_predictor(student, y_e, w_e), z_1, N, clip=False)
        return (x - target).pow(2).sum(1).mean().sqrt().item()  # RMS distance

    errors = [error()]
    opt = torch.optim.Adam(student.parameters(), lr=5e-3)
    for step in range(300):
        y = torch.randint(MIX.n_classes, (256,), generator=g)
        x, w = MIX.sample(y, g).float(), torch.rand(256, generator=g) * 4
        i = torch.randint(N, (256,), generator=g)
        eps = torch.randn(256, 2, generator=g)
        loss = stage2_loss(student, teacher, x, y, w, i, eps, N, weighting, k)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 99:
            errors.append(error())
    assert errors[-1] < 0.15 and errors[-1] < errors[0] / 5, (
        f"a {N}-step student trained on stage2_loss lands {errors[-1]:.3f} (RMS) from the exact "
        f"{k * N}-step teacher's samples, expected under 0.15 and under a fifth of the untrained "
        f"{errors[0]:.3f} (after 0, 100, 200, 300 steps: {', '.join(f'{e:.3f}' for e in errors)})")


# ---------------------------------------------------------------- the stochastic sampler
def test_stochastic_sampler_with_exact_denoiser_matches_class_moments():
    g = torch.Generator().manual_seed(6)
    y = torch.arange(MIX.n_classes).repeat_interleave(3000)
    z_1 = torch.randn(len(y), MIX.dim, generator=g, dtype=torch.float64)
    model = AnalyticModel(MIX)
    predict = lambda z_t, t: ddpm.x_from_v(z_t, model(z_t, t, y), t)  # noqa: E731
    x = ddpm.sample_stochastic(predict, z_1, 256, clip=False,
                               noise=lambda i: torch.randn(z_1.shape, generator=g, dtype=z_1.dtype))
    check_class_moments(x, y)

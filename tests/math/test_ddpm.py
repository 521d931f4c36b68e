"""The diffusion math against closed forms: schedule, conversions, steps, weights, and
sampling with the exact Gaussian-mixture denoiser."""
import math

import pytest
import torch

import ddpm
from guidance import guided_x_hat, guided_predictor
from tests.analytic import MIX, AnalyticModel, check_class_moments
from tests.expect import assert_close


# ---------------------------------------------------------------- schedule
# Each test below checks one idea with the other functions of ddpm.py taken as given, so that the
# course grader (extensions/course.py), which runs them on a student's code, fails one exercise
# for one mistake.
def test_schedule_variance_preserving_monotone_and_truncated():
    t = torch.linspace(0, 1, 10_001, dtype=torch.float64)
    logsnr = ddpm.logsnr_schedule(t)
    alpha, sigma = ddpm.alpha_sigma(logsnr)
    assert_close(logsnr[[0, -1]], torch.tensor([20.0, -20.0]), "logsnr_schedule(t) at the ends",
                 atol=1e-6, t=t[[0, -1]])
    assert (logsnr[1:] < logsnr[:-1]).all(), "logsnr_schedule(t) must fall strictly as t grows"
    assert_close(alpha, torch.sigmoid(logsnr).sqrt(), "alpha_sigma(logsnr)[0] = alpha_t",
                 atol=1e-12, t=t)
    assert_close(alpha**2 + sigma**2, torch.ones_like(t), "alpha_t^2 + sigma_t^2", atol=1e-12, t=t)
    mid = (t > 0.05) & (t < 0.95)
    assert_close(alpha[mid], torch.cos(math.pi * t[mid] / 2), "alpha_t against cos(pi t / 2)",
                 atol=2e-4, t=t[mid])


# ---------------------------------------------------------------- conversions and steps
@pytest.fixture
def xet():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 2, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(7, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 1e-3, 0.2, 0.5, 0.8, 0.999, 1.0], dtype=torch.float64)
    return x, eps, t


def test_conversions_match_their_formulas_and_invert_each_other(xet):
    x, eps, t = xet
    alpha, sigma = ddpm.alpha_sigma_at(t, x)  # (B, 1, 1, 1) each
    z_t, v = alpha * x + sigma * eps, alpha * eps - sigma * x  # (B, C, H, W) each, by hand
    assert_close(ddpm.q_sample(x, t, eps), z_t, "q_sample(x, t, eps)", atol=1e-12, t=t)
    assert_close(ddpm.v_from_x_eps(x, eps, t), v, "v_from_x_eps(x, eps, t)", atol=1e-12, t=t)
    assert_close(ddpm.x_from_v(z_t, v, t), x, "x_from_v(z_t, v, t)", atol=1e-10, t=t)
    assert_close(ddpm.eps_from_v(z_t, v, t), eps, "eps_from_v(z_t, v, t)", atol=1e-10, t=t)
    assert_close(ddpm.eps_from_x(z_t, x, t), eps, "eps_from_x(z_t, x, t)", atol=1e-6,
                 t=t)  # / sigma_0 = 4.5e-5
    assert_close(ddpm.v_from_x(z_t, x, t), v, "v_from_x(z_t, x, t)", atol=1e-6, t=t)


def test_ddim_step_with_true_x_follows_the_noiseless_trajectory(xet):
    x, eps, t = xet
    t, s = t[1:], t[1:] * 0.37  # s < t
    x, eps = x[1:], eps[1:]
    alpha_t, sigma_t = ddpm.alpha_sigma_at(t, x)
    alpha_s, sigma_s = ddpm.alpha_sigma_at(s, x)
    z_t = alpha_t * x + sigma_t * eps  # (B, C, H, W)
    assert_close(ddpm.ddim_step(z_t, x, t, s), alpha_s * x + sigma_s * eps,
                 "ddim_step(z_t, x_hat = x, t, s) against alpha_s x + sigma_s eps", atol=1e-9,
                 t=t, s=s)
    # With the network's eps_hat given, the step uses it as it is.
    x_hat, eps_hat = 0.5 * x, eps.flip(0)
    assert_close(ddpm.ddim_step(z_t, x_hat, t, s, eps_hat), alpha_s * x_hat + sigma_s * eps_hat,
                 "ddim_step(z_t, x_hat, t, s, eps_hat) against alpha_s x_hat + sigma_s eps_hat",
                 atol=1e-12, t=t, s=s)


def test_stochastic_step_is_a_ddim_jump_past_s_then_noise_back():
    """Meng et al.'s stochastic step t -> s = t - 1/N: DDIM to t_past = max(2s - t, 0), then
    q(z_s | z_past) = N((alpha_s / alpha_past) z_past, (1 - e^(lambda_s - lambda_past)) sigma_s^2),
    with the copy's own ddim_step and schedule."""
    g = torch.Generator().manual_seed(7)
    N = torch.tensor([1, 2, 4, 4, 8, 64, 256], dtype=torch.float64)
    t = torch.tensor([1, 2, 2, 3, 5, 40, 256], dtype=torch.float64) / N  # t = i / N, i >= 1
    s = t - 1 / N  # (B,)
    z_t, x_hat = (torch.randn(7, 1, 3, 3, generator=g, dtype=torch.float64) for _ in range(2))
    t_past = (2 * s - t).clamp(min=0)  # (B,)
    z_past = ddpm.ddim_step(z_t, x_hat, t, t_past)  # (B, C, H, W)
    alpha_p, _ = ddpm.alpha_sigma_at(t_past, z_t)
    alpha_s, sigma_s = ddpm.alpha_sigma_at(s, z_t)
    r = ddpm.unsqueeze_like(torch.exp(ddpm.logsnr_schedule(s) - ddpm.logsnr_schedule(t_past)), z_t)
    mean, var = ddpm.stochastic_mean_var(z_t, x_hat, t, s)
    assert_close(mean, alpha_s / alpha_p * z_past, "stochastic_mean_var(z_t, x_hat, t, s) mean",
                 atol=1e-9, t=t, s=s)
    assert_close(var.expand_as(z_t), ((1 - r) * sigma_s**2).expand_as(z_t),
                 "stochastic_mean_var(z_t, x_hat, t, s) variance", atol=1e-12, t=t, s=s)


def test_ancestral_small_variance_keeps_the_forward_marginal():
    # z_t ~ q(z_t | x), then an ancestral step with the true x must give z_s ~ q(z_s | x) =
    # N(alpha_s x, sigma_s^2).
    g = torch.Generator().manual_seed(1)
    n, t, s = 200_000, torch.tensor(0.7), torch.tensor(0.3)
    x = torch.full((n, 1), 0.4, dtype=torch.float64)
    z_t = ddpm.q_sample(x, t.expand(n), torch.randn(n, 1, generator=g, dtype=torch.float64))
    z_s = ddpm.ancestral_step(z_t, x, t.expand(n), s.expand(n),
                              torch.randn(n, 1, generator=g, dtype=torch.float64), variance="small")
    alpha_s, sigma_s = (u.item() for u in ddpm.alpha_sigma(ddpm.logsnr_schedule(s)))
    assert z_s.mean().item() == pytest.approx(alpha_s * 0.4, abs=4e-3)
    assert z_s.std().item() == pytest.approx(sigma_s, rel=1e-2)


def test_loss_weights_equal_v_and_eps_mse(xet):
    x, eps, t = xet
    t = t.clamp(0.05, 0.95)
    logsnr = torch.linspace(-20, 20, 81, dtype=torch.float64)
    snr = torch.exp(logsnr)  # (81,)
    for kind, omega in [("snr_trunc", snr.clamp(min=1)), ("v_mse", 1 + snr), ("snr", snr),
                        ("constant", torch.ones_like(snr))]:
        assert_close(ddpm.loss_weight(logsnr, kind), omega, f"loss_weight(logsnr, {kind!r})",
                     rtol=1e-12, atol=0, logsnr=logsnr)
    with pytest.raises(ValueError):
        ddpm.loss_weight(logsnr, "nope")
    # The weights make the x-space loss the v- and eps-space losses, and the official
    # max(x-MSE, eps-MSE) per example.
    z_t = ddpm.q_sample(x, t, eps)
    x_hat = x + 0.1 * torch.randn_like(x)
    v_err = (ddpm.v_from_x(z_t, x_hat, t) - ddpm.v_from_x(z_t, x, t)).pow(2).flatten(1).mean(1)
    eps_err = (ddpm.eps_from_x(z_t, x_hat, t) - eps).pow(2).flatten(1).mean(1)  # (B,)
    x_mse = (x_hat - x).pow(2).flatten(1).mean(1)  # (B,)
    for kind, by_hand in [("v_mse", v_err), ("snr", eps_err),
                          ("snr_trunc", torch.maximum(x_mse, eps_err))]:
        assert_close(ddpm.weighted_x_loss(x_hat, x, t, kind), by_hand.mean(),
                     f"weighted_x_loss(x_hat, x, t, {kind!r})", rtol=1e-6, atol=0)


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_sampling_with_exact_denoiser_matches_class_moments(sampler):
    """256 steps with E[x | z_t, y] reproduce each class's mean and covariance (tol 0.02 / 0.01)."""
    g = torch.Generator().manual_seed(2)
    y = torch.arange(MIX.n_classes).repeat_interleave(3000)  # (9000,)
    z_1 = torch.randn(len(y), MIX.dim, generator=g, dtype=torch.float64)
    model = AnalyticModel(MIX)
    predict = lambda z_t, t: ddpm.x_from_v(z_t, model(z_t, t, y), t)  # noqa: E731
    if sampler == "ddim":
        x = ddpm.sample_ddim(predict, z_1, 256, clip=False)
    else:
        noise = lambda i: torch.randn(z_1.shape, generator=g, dtype=z_1.dtype)  # noqa: E731
        x = ddpm.sample_ancestral(predict, z_1, 256, clip=False, noise=noise)
    check_class_moments(x, y)


def test_a_wrong_denoiser_fails_the_moment_check():
    """The moment check has teeth: sampling the unconditional model misses the class moments."""
    g = torch.Generator().manual_seed(3)
    y = torch.arange(MIX.n_classes).repeat_interleave(1000)
    z_1 = torch.randn(len(y), MIX.dim, generator=g, dtype=torch.float64)
    null = torch.full_like(y, MIX.n_classes)
    model = AnalyticModel(MIX)
    x = ddpm.sample_ddim(lambda z_t, t: ddpm.x_from_v(z_t, model(z_t, t, null), t), z_1, 64,
                         clip=False)
    with pytest.raises(AssertionError):
        check_class_moments(x, y)


def test_guided_prediction_matches_the_analytic_formula():
    g = torch.Generator().manual_seed(4)
    B = 64
    y = torch.randint(MIX.n_classes, (B,), generator=g)
    t = torch.rand(B, generator=g, dtype=torch.float64)
    z_t = torch.randn(B, MIX.dim, generator=g, dtype=torch.float64)
    model = AnalyticModel(MIX)
    alpha, sigma = ddpm.alpha_sigma(ddpm.logsnr_schedule(t))  # (B,) each
    x_c = MIX.x_hat(z_t, alpha, sigma, y)
    x_u = MIX.x_hat(z_t, alpha, sigma, torch.full_like(y, MIX.n_classes))
    # w = 0 is the conditional model, no guidance.
    assert_close(guided_x_hat(model, z_t, t, y, 0.0), x_c, "guided_x_hat at w = 0 against x_c",
                 atol=1e-9, t=t)
    # w > 0, scalar and per example: (1 + w) x_c - w x_u.
    assert_close(guided_x_hat(model, z_t, t, y, 2.0), 3 * x_c - 2 * x_u,
                 "guided_x_hat at w = 2 against 3 x_c - 2 x_u", atol=1e-9, t=t)
    w = torch.rand(B, generator=g, dtype=torch.float64) * 4
    expect = (1 + w[:, None]) * x_c - w[:, None] * x_u
    assert_close(guided_x_hat(model, z_t, t, y, w), expect,
                 "guided_x_hat with w per example against (1 + w) x_c - w x_u", atol=1e-9, t=t, w=w)
    assert_close(guided_predictor(model, y, w)(z_t, t), expect, "guided_predictor(model, y, w)",
                 atol=1e-9, t=t, w=w)
    # ... which is the model's own exact guided output (the ideal stage-1 student).
    assert_close(ddpm.x_from_v(z_t, model(z_t, t, y, w), t), expect,
                 "the exact mixture's guided x_hat", atol=1e-8, t=t, w=w)

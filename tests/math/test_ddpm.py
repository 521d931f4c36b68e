"""The diffusion math against closed forms: schedule, conversions, steps, weights, and
sampling with the exact Gaussian-mixture denoiser."""
import math

import pytest
import torch

import ddpm
from guidance import guided_x_hat, guided_predictor
from tests.analytic import MIX, AnalyticModel, check_class_moments


# ---------------------------------------------------------------- schedule
# ---------------------------------------------------------------- schedule
def test_schedule_variance_preserving_monotone_and_truncated():
    t = torch.linspace(0, 1, 10_001, dtype=torch.float64)
    logsnr = ddpm.logsnr_schedule(t)
    alpha, sigma = ddpm.alpha_sigma(logsnr)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-12)
    assert (logsnr[1:] < logsnr[:-1]).all(), "logSNR must fall strictly with t"
    assert logsnr[0].item() == pytest.approx(20.0, abs=1e-6)
    assert logsnr[-1].item() == pytest.approx(-20.0, abs=1e-6)
    assert alpha[-1].item() == pytest.approx(math.sqrt(torch.sigmoid(torch.tensor(-20.0)).item()),
                                             rel=1e-3)
    mid = (t > 0.05) & (t < 0.95)
    assert torch.allclose(alpha[mid], torch.cos(math.pi * t[mid] / 2), atol=2e-4)


# ---------------------------------------------------------------- conversions and steps
@pytest.fixture
def xet():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 2, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(7, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 1e-3, 0.2, 0.5, 0.8, 0.999, 1.0], dtype=torch.float64)
    return x, eps, t


def test_conversions_round_trip(xet):
    x, eps, t = xet
    z_t = ddpm.q_sample(x, t, eps)
    v = ddpm.v_from_x_eps(x, eps, t)
    assert torch.allclose(ddpm.x_from_v(z_t, v, t), x, atol=1e-10)
    assert torch.allclose(ddpm.eps_from_v(z_t, v, t), eps, atol=1e-10)
    assert torch.allclose(ddpm.eps_from_x(z_t, x, t), eps, atol=1e-6)  # / sigma_0 = 4.5e-5
    assert torch.allclose(ddpm.v_from_x(z_t, x, t), v, atol=1e-6)


def test_ddim_step_with_true_x_follows_the_noiseless_trajectory(xet):
    x, eps, t = xet
    t, s = t[1:], t[1:] * 0.37  # s < t
    x, eps = x[1:], eps[1:]
    z_t = ddpm.q_sample(x, t, eps)
    z_s = ddpm.ddim_step(z_t, x, t, s)
    alpha_s, sigma_s = ddpm.alpha_sigma_at(s, x)
    assert torch.allclose(z_s, alpha_s * x + sigma_s * eps, atol=1e-9)


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
    z_t = ddpm.q_sample(x, t, eps)
    x_hat = x + 0.1 * torch.randn_like(x)
    v_err = (ddpm.v_from_x(z_t, x_hat,
                           t) - ddpm.v_from_x(z_t, x, t)).pow(2).flatten(1).mean(1).mean()
    eps_err = (ddpm.eps_from_x(z_t, x_hat, t) - eps).pow(2).flatten(1).mean(1).mean()
    assert ddpm.weighted_x_loss(x_hat, x, t,
                                "v_mse").item() == pytest.approx(v_err.item(), rel=1e-9)
    assert ddpm.weighted_x_loss(x_hat, x, t,
                                "snr").item() == pytest.approx(eps_err.item(), rel=1e-6)
    snr = torch.exp(ddpm.logsnr_schedule(t))
    assert torch.equal(ddpm.loss_weight(ddpm.logsnr_schedule(t), "snr_trunc"), snr.clamp(min=1))
    # The official truncated-SNR loss is max(x-MSE, eps-MSE) per example: the same number.
    x_mse = (x_hat - x).pow(2).flatten(1).mean(1)  # (B,)
    eps_mse = (ddpm.eps_from_x(z_t, x_hat, t) - eps).pow(2).flatten(1).mean(1)  # (B,)
    official = torch.maximum(x_mse, eps_mse).mean()
    assert ddpm.weighted_x_loss(x_hat, x, t,
                                "snr_trunc").item() == pytest.approx(official.item(), rel=1e-6)
    with pytest.raises(ValueError):
        ddpm.loss_weight(t, "nope")


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
    assert torch.allclose(guided_x_hat(model, z_t, t, y, 0.0), x_c, atol=1e-9)
    # w > 0, scalar and per example: (1 + w) x_c - w x_u.
    assert torch.allclose(guided_x_hat(model, z_t, t, y, 2.0), 3 * x_c - 2 * x_u, atol=1e-9)
    w = torch.rand(B, generator=g, dtype=torch.float64) * 4
    expect = (1 + w[:, None]) * x_c - w[:, None] * x_u
    assert torch.allclose(guided_x_hat(model, z_t, t, y, w), expect, atol=1e-9)
    assert torch.allclose(guided_predictor(model, y, w)(z_t, t), expect, atol=1e-9)
    # ... which is the model's own exact guided output (the ideal stage-1 student).
    assert torch.allclose(ddpm.x_from_v(z_t, model(z_t, t, y, w), t), expect, atol=1e-8)

"""DPM-Solver++(2M) (ddpm.dpmpp2m_step, Lu et al. 2022 Alg. 2) against hand-computed steps and
against the exact probability-flow ODE of the Gaussian mixture: second order where DDIM is first
order, DDIM itself where it has no previous x_hat."""
import functools
import math

import torch

import ddpm
from tests.analytic import MIX, AnalyticModel
from tests.expect import assert_close


def _lam(t):
    """Lu et al.'s lambda = log(alpha / sigma), from the truncated cosine schedule by trigonometry
    (alpha = cos(a t + b), sigma = sin(a t + b)): not through ddpm.logsnr_schedule."""
    b = math.atan(math.exp(-ddpm.LOGSNR_MAX / 2))
    a = math.atan(math.exp(-ddpm.LOGSNR_MIN / 2)) - b
    u = a * t + b
    return math.log(math.cos(u) / math.sin(u)), math.cos(u), math.sin(u)


def test_two_steps_by_hand():
    """t = 0.75 -> 0.5 -> 0.25 with given x_hat: step 1 is DDIM, step 2 extrapolates in lambda."""
    (l0, _, s0), (l1, a1, s1), (l2, a2, s2) = _lam(0.75), _lam(0.5), _lam(0.25)
    z0, x0, x1 = 0.3, 0.5, -0.2  # z at t = 0.75; x_hat at 0.75 and at 0.5
    h1, h2 = l1 - l0, l2 - l1
    z1 = s1 / s0 * z0 + a1 * (1 - math.exp(-h1)) * x0  # first order
    r = h1 / h2
    D = (1 + 1 / (2 * r)) * x1 - 1 / (2 * r) * x0
    z2 = s2 / s1 * z1 + a2 * (1 - math.exp(-h2)) * D
    step = ddpm.dpmpp2m_step()
    T = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    got1 = step(T(z0), T(x0), T(0.75), T(0.5), 3)
    assert_close(got1, T(z1), "DPM-Solver++(2M), first step", atol=1e-12)
    assert_close(got1, ddpm.ddim_step(T(z0), T(x0), T(0.75), T(0.5)), "first step = DDIM",
                 atol=1e-12)
    assert_close(step(got1, T(x1), T(0.5), T(0.25), 2), T(z2), "DPM-Solver++(2M), second step",
                 atol=1e-12)


N_POINTS = 256


@functools.lru_cache
def _problem(w):
    """The guided exact mixture teacher's x_hat, the noise, and the probability-flow ODE's solution
    from it (DPM-Solver++ at 20,000 steps: within ~1e-6 of itself at 10,000)."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(N_POINTS) % MIX.n_classes  # (n,)
    z_1 = torch.randn(N_POINTS, MIX.dim, generator=g, dtype=torch.float64)  # (n, 2)
    model, ws = AnalyticModel(MIX), torch.full((N_POINTS,), w, dtype=torch.float64)

    def predict(z_t, t):
        return ddpm.x_from_v(z_t, model(z_t, t, y, ws), t)  # (n, 2) guided x_hat
    exact = ddpm.sample_loop(predict, z_1, 20_000, ddpm.make_step("dpmpp2m"), clip=False)
    return predict, z_1, exact


def _ode_errors(sampler, Ns, w=0.0):
    """Mean distance to the ODE's solution of the sampler's N-step samples, from the same noise."""
    predict, z_1, exact = _problem(w)
    return [(ddpm.sample_loop(predict, z_1, N, ddpm.make_step(sampler), clip=False) - exact)
            .norm(dim=1).mean().item() for N in Ns]


def _slope(Ns, errs):  # least-squares slope of log error against log N
    x, y = [math.log(N) for N in Ns], [math.log(e) for e in errs]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


def test_error_falls_as_n_squared_where_ddim_falls_as_n():
    """Measured slopes over N = 16 .. 128 (w = 0 and 2): DDIM -0.95, DPM-Solver++(2M) -1.7 and
    -1.8 (its first and last steps are first order)."""
    Ns = [16, 32, 64, 128]
    for w in (0.0, 2.0):
        ddim, dpm = _ode_errors("ddim", Ns, w), _ode_errors("dpmpp2m", Ns, w)
        assert -1.15 < _slope(Ns, ddim) < -0.8, (w, ddim)
        assert _slope(Ns, dpm) < -1.5, (w, dpm)
        assert dpm[-1] < ddim[-1] / 4, (w, dpm, ddim)  # at 128 steps: 0.9e-3 against 5.8e-3


def test_with_one_or_two_steps_it_is_ddim():
    """No previous x_hat before the second step, and the last step returns x_hat (first order):
    at N = 1 and 2 the two samplers give the same samples (to rounding: other arithmetic)."""
    predict, z_1, _ = _problem(0.0)
    for N in (1, 2):
        dpm = ddpm.sample_loop(predict, z_1, N, ddpm.make_step("dpmpp2m"), clip=False)
        assert_close(dpm, ddpm.sample_ddim(predict, z_1, N, clip=False),
                     f"DPM-Solver++(2M) against DDIM, {N} steps", atol=1e-8)

"""extensions/edit.py and encoder.py against the exact Gaussian-mixture denoiser: inpainting with
particles, the DDIM encoder's round trip, the encoder's distillation target and one round of it."""
import pytest
import torch

import ddpm
import guidance
from extensions import edit, encoder
from tests.analytic import MIX, AnalyticModel, TinyStudent
from tests.dtypes import Dtypes


def analytic_predict(y, w=None):
    return guidance.student_predictor(AnalyticModel(MIX), y, w)


def analytic_v(y):
    return encoder.v_predictor(AnalyticModel(MIX), y)


def draws(B, seed=0):
    """noise(i) for the samplers: fresh float64 draws of shape (B, 2) from one generator."""
    g = torch.Generator().manual_seed(seed)
    return lambda i=0: torch.randn(B, MIX.dim, generator=g, dtype=torch.float64)


def exact_fill(a, y):
    """Mean and std of p(x_1 | x_0 = a, y) for the mixture (isotropic components)."""
    w, mu, c = MIX.weights[y], MIX.means[y], MIX.stds[y]  # (M,), (M, 2), (M,)
    r = torch.softmax(w.log() - 0.5 * ((a - mu[:, 0]) / c) ** 2 - c.log(), 0)  # (M,) p(m | x_0 = a)
    mean = (r * mu[:, 1]).sum()
    return float(mean), float(((r * (c**2 + mu[:, 1] ** 2)).sum() - mean**2).sqrt())


# ---------------------------------------------------------------- inpainting
@pytest.mark.parametrize("a,y", [(-0.55, 0), (-0.35, 0), (0.3, 2)])
def test_inpainting_with_particles_draws_the_fill_from_the_exact_conditional(a, y):
    """Pixel 0 known (= a), pixel 1 filled, on the mixture, where p(x_1 | x_0 = a) is known in
    closed form. With 32 SMC particles and 64 ancestral steps the fill's mean is within 0.05 and
    its std within 0.03 of the exact conditional (components have std 0.1-0.2 and means 0.3
    apart), and at most 0.6 x as far off as plain replacement (1 particle), which is biased
    towards the class's unconditional x_1; that in turn is > 0.1 away, so a fill that ignored
    the known pixel fails."""
    B = 2000
    x = torch.tensor([a, 0.0], dtype=torch.float64).expand(B, 2)
    known = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    mean, std = exact_fill(a, y)
    assert abs(float(MIX.moments(y)[0][1]) - mean) > 0.1

    def fill(particles):
        predict = analytic_predict(torch.full((B * particles,), y))
        out = edit.inpaint(predict, x, known, 64, draws(B, seed=1), "ancestral", particles)
        assert torch.equal(out[:, 0], x[:, 0]), "the known pixel must come back exactly"
        return float(out[:, 1].mean()), float(out[:, 1].std())

    m, s = fill(32)
    assert abs(m - mean) < 0.05 and abs(s - std) < 0.03, (m, s, mean, std)
    m1, _ = fill(1)
    assert abs(m - mean) < 0.6 * abs(m1 - mean), (m, m1, mean)


# ---------------------------------------------------------------- encoding
def test_ddim_encode_then_decode_reconstructs_with_the_exact_denoiser():
    """The probability-flow ODE is invertible: 512 DDIM steps there and back (no clipping)
    return the input to within 0.02 (RMS ~3e-3) on the mixture."""
    B = 300
    y = torch.arange(B) % MIX.n_classes
    x = MIX.sample(y, torch.Generator().manual_seed(0))  # (B, 2)
    z_1 = encoder.ddim_encode(analytic_v(y), x, 512)
    assert z_1.std() > 0.8  # noise-like, not the image
    back = ddpm.sample_ddim(analytic_predict(y), z_1, 512, clip=False)
    err = (back - x).abs()
    assert err.max() < 0.02 and err.pow(2).mean().sqrt() < 5e-3, err.max()


@pytest.mark.parametrize("N", [1, 4, 32])
def test_eps_tilde_makes_one_encoder_step_land_on_the_teachers_two(N):
    g = torch.Generator().manual_seed(0)
    B = 4 * N
    t = (torch.arange(B) % N).double() / N  # every start time, including t = 0
    y = torch.arange(B) % MIX.n_classes
    z_t = torch.randn(B, 2, generator=g, dtype=torch.float64)
    predict = analytic_predict(y)
    eps_tilde = encoder.encoder_target(analytic_v(y), z_t, t, N)
    # The teacher: t -> t + 0.5/N -> t + 1/N, forwards in time.
    z_t1 = ddpm.ddim_step(z_t, predict(z_t, t), t, t + 0.5 / N)
    z_t2 = ddpm.ddim_step(z_t1, predict(z_t1, t + 0.5 / N), t + 0.5 / N, t + 1 / N)
    # The student's one DDIM step with eps_hat = eps_tilde, i.e. x_hat = (z_t - sigma_t eps) /
    # alpha_t.
    alpha_t, sigma_t = ddpm.alpha_sigma_at(t, z_t)
    landed = ddpm.ddim_step(z_t, (z_t - sigma_t * eps_tilde) / alpha_t, t, t + 1 / N)
    assert torch.allclose(landed, z_t2, atol=1e-6)


def test_one_encoder_round_beats_the_teachers_own_ddim_encoder_at_the_same_steps():
    """One round of encoder distillation against the exact denoiser: a small MLP trained on
    encoder_loss encodes in N = 2 steps closer to the 4-step encoder it learns from than the exact
    model's own 2-step DDIM encoder does (the 'before' of progressive distillation)."""
    torch.manual_seed(0)
    N, g = 2, torch.Generator().manual_seed(2)
    teacher, net = AnalyticModel(MIX), TinyStudent()
    student = lambda z_t, t, y: net(z_t, t, y, torch.zeros_like(t))  # noqa: E731  (no w)
    y_e = torch.arange(MIX.n_classes).repeat(300)
    x_e = MIX.sample(y_e, g).float()  # (900, 2)
    target = encoder.ddim_encode(encoder.v_predictor(teacher, y_e), x_e, 2 * N)

    def error(model):
        z_1 = encoder.ddim_encode(encoder.v_predictor(model, y_e), x_e, N)  # (900, 2)
        return (z_1 - target).pow(2).sum(1).mean()

    before = error(teacher)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(600):
        y = torch.randint(MIX.n_classes, (256,), generator=g)
        i = torch.randint(N, (256,), generator=g)
        loss = encoder.encoder_loss(student, teacher, MIX.sample(y, g).float(), y, i, N,
                                    torch.randn(256, 2, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = error(lambda z_t, t, y, w=None: student(z_t, t, y))
    assert after < 0.25 * before, (float(after), float(before))


def test_the_encoder_step_keeps_eps_exact_at_t_0_in_float32():
    """At t = 0, sigma_0 = 4.5e-5 and float32 alpha_0 rounds to 1: recovering eps_hat from x_hat
    as (z - alpha x_hat) / sigma loses ~1e-3 of it. The encoder's step takes eps_hat from v
    directly, so a float32 1-step encode matches the float64 one to 1e-5 (any v-predictor: here
    an affine one, which has no error of its own)."""
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def predict_v(z_t, t):
        return 0.3 * z_t + 0.1

    z64 = encoder.ddim_encode(predict_v, z, 1)
    assert (encoder.ddim_encode(predict_v, z.float(), 1).double() - z64).abs().max() < 1e-5
    # The same step through x_hat (ddpm.ddim_step) is the imprecise one the encoder avoids.
    t, zf = torch.zeros(64), z.float()
    via_x = ddpm.ddim_step(zf, ddpm.x_from_v(zf, predict_v(zf, t), t), t, t + 1)
    assert (via_x.double() - z64).abs().max() > 1e-4


# ---------------------------------------------------------------- the SMC particles
@pytest.mark.parametrize("weights", [(0.3, 0.7), (0.1, 0.2, 0.3, 0.4)])
def test_the_final_copy_is_drawn_with_probability_its_weight(weights):
    """pick_copy: over 20,000 images with the same weights, copy k is chosen with frequency
    weights[k] (within 0.015). The first index of a systematic resample, the old choice, picks
    copy 1 of (0.3, 0.7) 40 % of the time and never copies 2, 3 of (0.1, 0.2, 0.3, 0.4)."""
    B, K = 20_000, len(weights)
    log_w = torch.tensor(weights).log().expand(B, K)  # (B, K)
    normal = torch.randn(B, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    k = edit.pick_copy(log_w, normal) % K  # (B,) the copy within each image
    freq = torch.bincount(k, minlength=K).float() / B
    assert torch.allclose(freq, torch.tensor(weights), atol=0.015), freq


def test_inpainting_with_particles_makes_no_float64_tensor():
    """MPS has no float64: inpainting (replacement, SMC weights, resampling, the final pick) on
    float32 inputs never makes a float64 tensor."""
    B, K = 4, 3
    predict = lambda z_t, t: 0.5 * z_t  # noqa: E731  a float32 stand-in denoiser
    g = torch.Generator().manual_seed(0)
    noise = lambda i=0: torch.randn(B, MIX.dim, generator=g)  # noqa: E731
    x, known = torch.zeros(B, MIX.dim), torch.tensor([1.0, 0.0])
    with Dtypes() as mode:
        edit.inpaint(predict, x, known, 8, noise, "stochastic", particles=K)
    assert torch.float64 not in mode.seen, mode.seen

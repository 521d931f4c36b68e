"""The diffusion math: schedule, parameterizations, DDIM / ancestral steps, loss weights.

No nn.Module lives here: every function takes tensors and returns tensors, so the same
code serves the teacher, the guided teacher, every distilled student and the exact
Gaussian-mixture denoiser of the tests. Continuous time t in [0, 1], variance preserving,
as in Salimans & Ho (ICLR 2022, arXiv 2202.00512), Sec. 2 and App. B, and Meng et al.
(CVPR 2023, arXiv 2210.03142), background.

Papers (arXiv versions read): Meng et al. 2210.03142v3, Salimans & Ho 2202.00512v2 ("S&H"),
Ho & Salimans 2207.12598v1 ("CFG"). Notation (code name = paper symbol):

    x          x            clean data, scaled to [-1, 1]                   (B, C, H, W)
    eps        epsilon      standard Gaussian noise                         (B, C, H, W)
    t          t            time in [0, 1]; t = 0 data, t = 1 noise         (B,)
    logsnr     lambda_t     log(alpha_t^2 / sigma_t^2), clipped to [-20, 20] (B,)
    alpha      alpha_t      sqrt(sigmoid(lambda_t))   (signal scale)
    sigma      sigma_t      sqrt(sigmoid(-lambda_t))  (noise scale); alpha^2 + sigma^2 = 1
    z_t        z_t          alpha_t x + sigma_t eps                         (B, C, H, W)
    v          v            alpha_t eps - sigma_t x   (what the U-Net predicts)
    x_hat      x_hat        a prediction of x from z_t (the denoiser)
    w          w            guidance weight: w = 0 is unguided; diffusers' scale = 1 + w
    N          N            number of sampler steps on the grid t_i = i / N

A "predictor" is any function `x_hat = predict(z_t, t)`; the sampling loops below take one,
so the guided teacher (2 network calls) and a distilled student (1 call) share them.

Run `python ddpm.py` to print the schedule at a few times.
"""
import math

import torch
from tqdm import tqdm

LOGSNR_MIN, LOGSNR_MAX = -20.0, 20.0


def unsqueeze_like(a, x):
    """A per-example tensor a (B,) with trailing 1s added so it broadcasts against x (B, ...)."""
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))  # (B, 1, 1, 1) for images


# ---------------------------------------------------------------- schedule (S&H Sec. 2, App. B)
def logsnr_schedule(t, logsnr_min=LOGSNR_MIN, logsnr_max=LOGSNR_MAX):
    """Truncated cosine schedule: lambda(t) = -2 log tan(a t + b).

    b and a are chosen so that lambda(0) = logsnr_max and lambda(1) = logsnr_min
    (official `schedules.py`); between the ends alpha_t ~ cos(pi t / 2). The result is clamped to
    [logsnr_min, logsnr_max]: float32 rounding overshoots the ends by ~1e-3.
    """
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b
    logsnr = -2.0 * torch.log(torch.tan(a * t + b))  # (B,)
    return logsnr.clamp(logsnr_min, logsnr_max)


def alpha_sigma(logsnr):
    """alpha_t^2 = sigmoid(lambda_t), sigma_t^2 = sigmoid(-lambda_t)."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()  # (B,), (B,)


def alpha_sigma_at(t, like):
    """alpha_t, sigma_t at time t, shaped to broadcast against the tensor `like`."""
    alpha, sigma = alpha_sigma(logsnr_schedule(t))
    return unsqueeze_like(alpha, like), unsqueeze_like(sigma, like)  # (B, 1, 1, 1) each


# ---------------------------------------------------------------- forward process and conversions
def q_sample(x, t, eps):
    """Forward noising z_t = alpha_t x + sigma_t eps."""
    alpha, sigma = alpha_sigma_at(t, x)
    return alpha * x + sigma * eps  # (B, C, H, W)


def v_from_x_eps(x, eps, t):
    """v = alpha_t eps - sigma_t x (the network's regression target)."""
    alpha, sigma = alpha_sigma_at(t, x)
    return alpha * eps - sigma * x


def x_from_v(z_t, v, t):
    """x = alpha_t z_t - sigma_t v. Safe at t = 1, where eps-prediction divides by alpha ~ 0."""
    alpha, sigma = alpha_sigma_at(t, z_t)
    return alpha * z_t - sigma * v


def eps_from_v(z_t, v, t):
    """eps = sigma_t z_t + alpha_t v."""
    alpha, sigma = alpha_sigma_at(t, z_t)
    return sigma * z_t + alpha * v


def eps_from_x(z_t, x, t):
    """eps = (z_t - alpha_t x) / sigma_t (sigma_t >= 4.5e-5 thanks to the truncation)."""
    alpha, sigma = alpha_sigma_at(t, z_t)
    return (z_t - alpha * x) / sigma


def v_from_x(z_t, x, t):
    """The v for which x_from_v(z_t, v, t) returns x: an x-predicting denoiser as a v-network
    (the tests' exact Gaussian-mixture model)."""
    return v_from_x_eps(x, eps_from_x(z_t, x, t), t)


# ---------------------------------------------------------- one sampler step (S&H Sec. 2; DDIM)
def ddim_step(z_t, x_hat, t, s, eps_hat=None):
    """Deterministic DDIM step t -> s: z_s = alpha_s x_hat + sigma_s eps_hat.

    Notation map to diffusers' DDIMScheduler.step: alpha_prod_t = alpha_t^2,
    pred_original_sample = x_hat, pred_epsilon = eps_hat, eta = 0.
    eps_hat: the noise x_hat implies at time t (eps_from_x) unless given. Pass it when the network
    gives it (eps_from_v is exact at t = 0, where eps_from_x divides by sigma_0 = 4.5e-5 and
    float32 loses ~3e-3 of it: the encoder of extensions/).
    """
    # 1. The noise that x_hat implies at time t (unless given).
    if eps_hat is None:
        eps_hat = eps_from_x(z_t, x_hat, t)  # (B, C, H, W)
    # 2. Re-noise x_hat to time s with that same noise.
    alpha_s, sigma_s = alpha_sigma_at(s, z_t)
    return alpha_s * x_hat + sigma_s * eps_hat  # (B, C, H, W)


def ancestral_mean_var(z_t, x_hat, t, s, variance="large"):
    """The ancestral step's Gaussian q(z_s | z_t, x = x_hat), t -> s < t -> (mean, var).

    With r = exp(lambda_t - lambda_s) = SNR_t / SNR_s (< 1):
    mean = r (alpha_s / alpha_t) z_t + (1 - r) alpha_s x_hat,
    var  = (1 - r) sigma_s^2 ('small', the true posterior) or (1 - r) sigma_t^2 ('large').
    """
    logsnr_t, logsnr_s = logsnr_schedule(t), logsnr_schedule(s)
    r = unsqueeze_like(torch.exp(logsnr_t - logsnr_s), z_t)  # (B, 1, 1, 1)
    alpha_t, sigma_t = (unsqueeze_like(u, z_t) for u in alpha_sigma(logsnr_t))
    alpha_s, sigma_s = (unsqueeze_like(u, z_t) for u in alpha_sigma(logsnr_s))
    mean = r * (alpha_s / alpha_t) * z_t + (1 - r) * alpha_s * x_hat  # (B, C, H, W)
    var = (1 - r) * (sigma_s**2 if variance == "small" else sigma_t**2)  # (B, 1, 1, 1)
    return mean, var


def ancestral_step(z_t, x_hat, t, s, noise, variance="large"):
    """Ancestral step t -> s: a draw from q(z_s | z_t, x = x_hat) (ancestral_mean_var)."""
    mean, var = ancestral_mean_var(z_t, x_hat, t, s, variance)
    return mean + var.sqrt() * noise


def forward_mean_var(z_s, s, t):
    """The forward process between two noise levels, q(z_t | z_s), t > s -> (mean, var):
    mean = (alpha_t / alpha_s) z_s,  var = sigma_{t|s}^2 = (1 - exp(lambda_t - lambda_s)) sigma_t^2.
    """
    logsnr_s, logsnr_t = logsnr_schedule(s), logsnr_schedule(t)
    alpha_s, _ = alpha_sigma(logsnr_s)
    alpha_t, sigma_t = alpha_sigma(logsnr_t)
    var = (1 - torch.exp(logsnr_t - logsnr_s)) * sigma_t**2  # (B,)
    return unsqueeze_like(alpha_t / alpha_s, z_s) * z_s, unsqueeze_like(var, z_s)


def renoise(z_s, s, t, eps):
    """A draw from q(z_t | z_s), t > s: noise added back (forward_mean_var)."""
    mean, var = forward_mean_var(z_s, s, t)
    return mean + var.sqrt() * eps


def stochastic_mean_var(z_t, x_hat, t, s):
    """Meng et al.'s N-step stochastic sampler, one step t -> s = t - 1/N, as a
    Gaussian (mean, var): a DDIM step of twice the length, to t_past = t - 2/N (>= 0), then
    noise added back to s with q(z_s | z_t_past) (forward_mean_var).

    What it assumes: an N-step student was distilled for DDIM steps of 1/N, but here each of its
    x_hat drives a jump of 2/N, including the jump 2/N -> 0 before the last step (which then
    returns x_hat). The students here are trained for DDIM steps only, with no special case for
    these longer jumps; the report's stochastic rows measure what they cost.
    """
    t_past = (2 * s - t).clamp(min=0)  # (B,) one step past s
    return forward_mean_var(ddim_step(z_t, x_hat, t, t_past), t_past, s)


def stochastic_step(z_t, x_hat, t, s, noise):
    """One step of the stochastic sampler: a draw from stochastic_mean_var."""
    mean, var = stochastic_mean_var(z_t, x_hat, t, s)
    return mean + var.sqrt() * noise


def dpmpp2m_step():
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2: data prediction, multistep): a step(z_t, x_hat,
    t, s, i) of sample_loop that remembers the previous x_hat. In Lu et al.'s lambda, which is
    HALF of our log-SNR (lambda = log(alpha / sigma)), with h = lambda_s - lambda_t > 0:

        z_s = (sigma_s / sigma_t) z_t + alpha_s (1 - e^-h) D                   (Lu et al. Alg. 2)
        D   = x_hat                                           the first step: exactly DDIM
        D   = (1 + 1 / 2r) x_hat - (1 / 2r) x_hat_prev,  r = h_prev / h      every later step

    One network call per step (two with CFG), as DDIM. sample_loop's last step returns x_hat
    (first order into t = 0, the reference code's lower_order_final)."""
    prev = {}

    def step(z_t, x_hat, t, s, i):
        lam_t = unsqueeze_like(logsnr_schedule(t) / 2, z_t)  # (B, 1, ..): Lu et al.'s lambda
        h = unsqueeze_like(logsnr_schedule(s) / 2, z_t) - lam_t  # (B, 1, ..) > 0
        D = x_hat
        if prev:  # second order: x_hat extrapolated linearly in lambda (Alg. 2)
            r = prev["h"] / h
            D = (1 + 1 / (2 * r)) * x_hat - 1 / (2 * r) * prev["x_hat"]  # (B, C, H, W)
        prev.update(x_hat=x_hat, h=h)
        (_, sigma_t), (alpha_s, sigma_s) = alpha_sigma_at(t, z_t), alpha_sigma_at(s, z_t)
        return sigma_s / sigma_t * z_t - alpha_s * torch.expm1(-h) * D  # (B, C, H, W)
    return step


def make_step(sampler, noise=None, variance="large"):
    """The step(z_t, x_hat, t, s, i) of sample_loop for a sampler: ddim | ancestral | stochastic
    | dpmpp2m (stateful: make a new one for every sampling run).
    noise(i) -> a standard normal tensor like z_t (default torch.randn_like); pass per-image
    generators through it so that image k does not depend on the batch size."""
    draw = (lambda i, like: torch.randn_like(like)) if noise is None else (lambda i, like: noise(i))
    if sampler == "ddim":
        return lambda z_t, x_hat, t, s, i: ddim_step(z_t, x_hat, t, s)
    if sampler == "ancestral":
        return lambda z_t, x_hat, t, s, i: ancestral_step(z_t, x_hat, t, s, draw(i, z_t), variance)
    if sampler == "stochastic":
        return lambda z_t, x_hat, t, s, i: stochastic_step(z_t, x_hat, t, s, draw(i, z_t))
    if sampler == "dpmpp2m":
        return dpmpp2m_step()
    raise ValueError(f"unknown sampler {sampler!r}; choose ddim, ancestral, stochastic or dpmpp2m")


# ---------------------------------------------------------------- N-step sampling loops
@torch.no_grad()
def sample_loop(predict, z_1, N, step, clip=True, progress=None, t_start=1.0):
    """Walk the grid t_i = t_start * i / N from z_(t_start) to x: at each i x_hat = predict(z_t, t),
    then z_s = step(z_t, x_hat, t, s, i) for s = t_start * (i - 1) / N; the last step returns x_hat.

    clip: clamp x_hat to [-1, 1] at every step (sampling only, never inside a loss).
    progress: a description string shows a tqdm bar.
    t_start: 1 samples from noise; t_start < 1 starts from a partly noised image (SDEdit, edit.py).
    """
    z_t = z_1  # (B, C, H, W)
    steps = range(N, 0, -1)
    if progress:
        steps = tqdm(steps, desc=progress, leave=False)
    for i in steps:
        t = torch.full((z_t.shape[0],), t_start * i / N, device=z_t.device)  # (B,)
        s = torch.full_like(t, t_start * (i - 1) / N)
        x_hat = predict(z_t, t)
        if clip:
            x_hat = x_hat.clamp(-1, 1)
        z_t = step(z_t, x_hat, t, s, i) if i > 1 else x_hat
    return z_t


def sample_ddim(predict, z_1, N, clip=True, progress=None, t_start=1.0):
    """N deterministic DDIM steps (predict(z_t, t) -> x_hat, t of shape (B,))."""
    return sample_loop(predict, z_1, N, make_step("ddim"), clip, progress, t_start)


def sample_ancestral(predict, z_1, N, clip=True, variance="large", noise=None, progress=None,
                     t_start=1.0):
    """N ancestral steps; noise as in make_step."""
    return sample_loop(predict, z_1, N, make_step("ancestral", noise, variance), clip, progress,
                       t_start)


def sample_stochastic(predict, z_1, N, clip=True, noise=None, progress=None, t_start=1.0):
    """Meng et al.'s stochastic sampler: N network calls; the last step is deterministic."""
    return sample_loop(predict, z_1, N, make_step("stochastic", noise), clip, progress, t_start)


# ---------------------------------------------------------------- loss weights (S&H Sec. 4)
LOSS_WEIGHTS = ("snr_trunc", "v_mse", "snr", "constant")


def loss_weight(logsnr, kind):
    """omega(lambda_t) for an x-space loss omega * ||x - x_hat||^2.

    snr_trunc: max(SNR, 1)   official distillation default ("truncated SNR", S&H Sec. 4)
    v_mse:     1 + SNR       identical to ||v - v_hat||^2
    snr:       SNR           identical to ||eps - eps_hat||^2
    constant:  1             plain x-space MSE            (any other kind: ValueError)

    Why these are the same losses: at fixed z_t, eps - eps_hat = -(alpha_t / sigma_t)(x - x_hat),
    so ||eps - eps_hat||^2 = SNR ||x - x_hat||^2, and v - v_hat = -(x - x_hat) / sigma_t gives
    ||v - v_hat||^2 = (1 + SNR) ||x - x_hat||^2 (1 / sigma_t^2 = 1 + SNR). Hence the official
    max(||x - x_hat||^2, ||eps - eps_hat||^2) equals max(SNR, 1) ||x - x_hat||^2 (tests/math).
    """
    snr = torch.exp(logsnr)  # (B,)
    if kind == "snr_trunc":
        return snr.clamp(min=1.0)
    if kind == "v_mse":
        return 1.0 + snr
    if kind == "snr":
        return snr
    if kind == "constant":
        return torch.ones_like(snr)
    raise ValueError(f"unknown loss weighting {kind!r}; choose one of {LOSS_WEIGHTS}")


def weighted_x_loss(x_hat, x, t, kind):
    """Mean over the batch of omega(lambda_t) * mean_pixels (x_hat - x)^2 -> scalar."""
    per_example = (x_hat - x).pow(2).flatten(1).mean(1)  # (B,)
    return (loss_weight(logsnr_schedule(t), kind) * per_example).mean()


if __name__ == "__main__":
    t = torch.tensor([0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0])
    lam = logsnr_schedule(t)
    alpha, sigma = alpha_sigma(lam)
    print(f"{'t':>6} {'logsnr':>9} {'alpha':>10} {'sigma':>10} {'cos(pi t/2)':>12}")
    for row in zip(t, lam, alpha, sigma, torch.cos(math.pi * t / 2)):
        print("{:6.2f} {:9.3f} {:10.6f} {:10.6f} {:12.6f}".format(*map(float, row)))

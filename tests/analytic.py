"""An analytic teacher: a class-conditional mixture of isotropic Gaussians, with the exact denoiser.

Data: class y has M components N(mu_{y,m}, c_{y,m}^2 I) in D dimensions with weights pi_{y,m};
classes have probabilities p_y. For z_t = alpha_t x + sigma_t eps, each component gives
z_t ~ N(alpha mu, (alpha^2 c^2 + sigma^2) I), so the exact posterior mean is

    E[x | z_t, y] = sum_m r_m(z_t) * (mu_m + alpha c_m^2 / (alpha^2 c_m^2 + sigma^2) * (z_t - alpha
    mu_m))

with responsibilities r_m proportional to pi_m N(z_t; alpha mu_m, (alpha^2 c_m^2 + sigma^2) I).
The unconditional E[x | z_t] is the same sum over every component of every class.
`AnalyticModel` wraps it as a v-predicting "network" with a null class, so the real
sampling loops, guidance and distillation code can run against ground truth.
"""
import math

import torch
import torch.nn as nn

import ddpm
import guidance
import stage1
import stage2
from unet import timestep_embedding


class GaussianMixture:
    def __init__(self, means, stds, weights=None, class_probs=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, M, D)
        K, M, D = self.means.shape
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(K, M)  # (K, M)
        w = torch.full((K, M), 1.0 / M) if weights is None else torch.as_tensor(weights)
        self.weights = (w / w.sum(1, keepdim=True)).double()  # (K, M), pi_{y,m}
        p = torch.full((K,), 1.0 / K) if class_probs is None else torch.as_tensor(class_probs)
        self.class_probs = (p / p.sum()).double()  # (K,)
        self.n_classes, self.dim = K, D

    @classmethod
    def default(cls):
        """Three classes in 2-D, two components each, inside [-1, 1]."""
        means = [[[-0.6, -0.3], [-0.3, -0.6]],
                 [[0.5, 0.5], [0.2, 0.6]],
                 [[0.6, -0.5], [0.1, -0.2]]]
        stds = [[0.10, 0.15], [0.12, 0.08], [0.10, 0.20]]
        return cls(means, stds, weights=[[0.5, 0.5], [0.3, 0.7], [0.6, 0.4]])

    def _components(self, y):
        """Means (B, M', D), stds (B, M') and log-weights (B, M') of the mixture behind each label;
        label n_classes (the null class) means the unconditional mixture of all components."""
        K, M, D = self.means.shape
        all_means = self.means.reshape(1, K * M, D)  # (1, KM, D)
        all_stds = self.stds.reshape(1, K * M)
        all_logw = (self.weights * self.class_probs[:, None]).log().reshape(1, K * M)
        uncond = (y == K)[:, None]  # (B, 1)
        yc = y.clamp(max=K - 1)
        # Conditional: the label's own M components, the others at weight 0 (log -inf).
        own = torch.arange(K * M)[None] // M == yc[:, None]  # (B, KM)
        cond_logw = torch.where(own, self.weights.log().reshape(1, K * M).expand(len(y), -1),
                                torch.tensor(-math.inf, dtype=torch.float64))
        logw = torch.where(uncond, all_logw.expand(len(y), -1), cond_logw)  # (B, KM)
        return all_means.expand(len(y), -1, -1), all_stds.expand(len(y), -1), logw

    def x_hat(self, z_t, t, y):
        """The exact E[x | z_t, y] (y == n_classes: unconditional). z_t (B, D), t (B,), y (B,)."""
        z = z_t.double()
        # (B, 1)
        alpha, sigma = (u.double()[:, None] for u in ddpm.alpha_sigma(ddpm.logsnr_schedule(t)))
        means, stds, logw = self._components(y.cpu())  # (B, KM, D), (B, KM), (B, KM)
        var = alpha**2 * stds**2 + sigma**2  # (B, KM) variance of z_t per component
        diff = z[:, None, :] - alpha[:, :, None] * means  # (B, KM, D)
        loglik = -0.5 * self.dim * torch.log(2 * math.pi * var) - 0.5 * diff.pow(2).sum(-1) / var
        resp = torch.softmax(logw + loglik, dim=1)  # (B, KM)
        post_mean = means + (alpha * stds**2 / var)[..., None] * diff  # (B, KM, D)
        return (resp[..., None] * post_mean).sum(1).to(z_t.dtype)  # (B, D)

    def sample(self, y, generator=None):
        """Exact data samples x ~ p(x | y), (B, D)."""
        comp = torch.multinomial(self.weights[y], 1, generator=generator)[:, 0]  # (B,)
        noise = torch.randn(len(y), self.dim, generator=generator, dtype=torch.float64)
        return self.means[y, comp] + self.stds[y, comp][:, None] * noise

    def moments(self, y):
        """Exact mean (D,) and covariance (D, D) of class y."""
        w, mu, c = self.weights[y], self.means[y], self.stds[y]  # (M,), (M, D), (M,)
        mean = (w[:, None] * mu).sum(0)
        eye = torch.eye(self.dim, dtype=torch.float64)
        second = sum(w[m] * (c[m] ** 2 * eye + torch.outer(mu[m], mu[m])) for m in range(len(w)))
        return mean, second - torch.outer(mean, mean)


class AnalyticModel(torch.nn.Module):
    """The exact denoiser as a v-predicting network: forward(z_t, t, y, w=None) -> v_hat.

    With w given it returns the exactly guided prediction (1 + w) x_c - w x_u, i.e. the ideal
    stage-1 student.
    """

    def __init__(self, mixture):
        super().__init__()
        self.mixture, self.null_class = mixture, mixture.n_classes

    def forward(self, z_t, t, y, w=None):
        x_hat = self.mixture.x_hat(z_t, t, y)
        if w is not None:
            x_u = self.mixture.x_hat(z_t, t, torch.full_like(y, self.null_class))
            w = w.to(x_hat.dtype)[:, None]
            x_hat = (1 + w) * x_hat - w * x_u
        return ddpm.v_from_x(z_t, x_hat, t)


MIX = GaussianMixture.default()


def check_class_moments(samples, y):
    for c in range(MIX.n_classes):
        got = samples[y == c].double()
        mean, cov = MIX.moments(c)
        assert torch.allclose(got.mean(0), mean, atol=0.02), (c, got.mean(0), mean)
        assert torch.allclose(torch.cov(got.T), cov, atol=0.01), (c, torch.cov(got.T), cov)


class TinyStudent(nn.Module):
    """An MLP w-student for 2-D data: v_hat = f(z_t, t, y, w)."""

    def __init__(self, dim=2, n_classes=3, hidden=128):
        super().__init__()
        self.n_classes = n_classes
        self.net = nn.Sequential(nn.Linear(dim + 32 + n_classes + 1 + 16, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, z_t, t, y, w):
        feats = [z_t.float(), timestep_embedding(t, 32),
                 nn.functional.one_hot(y, self.n_classes + 1).float(),
                 timestep_embedding(w / 4, 16)]
        return self.net(torch.cat(feats, 1)).to(z_t.dtype)


def stage1_loss(student, teacher, x, y, w, t, eps, weighting):
    """The lines of stage1.train's loop for one batch: the teacher's guided x_hat as the target."""
    z_t = ddpm.q_sample(x, t, eps)
    with torch.no_grad():
        target = guidance.guided_x_hat(teacher, z_t, t, y, w)
    x_hat = ddpm.x_from_v(z_t, student(z_t, t, y, w), t)
    return ddpm.weighted_x_loss(x_hat, target, t, weighting)


def stage2_loss(student, teacher, x, y, w, i, N, eps, weighting="snr_trunc", k=2):
    """The lines of stage2.train_round's loop for one batch: x_tilde of k teacher DDIM steps."""
    t = (i + 1).to(x.dtype) / N
    z_t = ddpm.q_sample(x, t, eps)
    with torch.no_grad():
        x_tilde, _ = stage2.teacher_target(stage1.student_predictor(teacher, y, w), z_t, t, N, k)
    x_hat = ddpm.x_from_v(z_t, student(z_t, t, y, w), t)
    return ddpm.weighted_x_loss(x_hat, x_tilde, t, weighting)

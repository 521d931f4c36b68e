"""An analytic teacher: the exact denoiser of a class-conditional Gaussian mixture (data.py's
GaussianMixture, whose docstring derives it) wrapped as a v-predicting network with a null class,
so the real sampling loops, guidance and distillation code can run against ground truth.
"""
import torch
import torch.nn as nn

import ddpm
from data import GaussianMixture
from unet import timestep_embedding


class AnalyticModel(torch.nn.Module):
    """The exact denoiser as a v-predicting network: forward(z_t, t, y, w=None) -> v_hat.

    With w given it returns the exactly guided prediction (1 + w) x_c - w x_u, i.e. the ideal
    stage-1 student.
    """

    def __init__(self, mixture):
        super().__init__()
        self.mixture, self.null_class = mixture, mixture.n_classes

    def forward(self, z_t, t, y, w=None):
        alpha, sigma = ddpm.alpha_sigma(ddpm.logsnr_schedule(t))  # (B,) each
        x_hat = self.mixture.x_hat(z_t, alpha, sigma, y)
        if w is not None:
            x_u = self.mixture.x_hat(z_t, alpha, sigma, torch.full_like(y, self.null_class))
            w = w.to(x_hat.dtype)[:, None]
            x_hat = (1 + w) * x_hat - w * x_u
        return ddpm.v_from_x(z_t, x_hat, t)


MIX = GaussianMixture.default()


def check_class_moments(samples, y):
    for c in range(MIX.n_classes):
        got = samples[y == c].double()
        mean, cov = MIX.moments(c)
        assert torch.allclose(got.mean(0), mean, atol=0.02), (
            f"class {c}: the samples' mean is {got.mean(0).tolist()}, the exact mixture's "
            f"{mean.tolist()} (tolerance 0.02)")
        assert torch.allclose(torch.cov(got.T), cov, atol=0.01), (
            f"class {c}: the samples' covariance is {torch.cov(got.T).tolist()}, the exact "
            f"mixture's {cov.tolist()} (tolerance 0.01)")


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

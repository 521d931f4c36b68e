"""The Frechet distance of two Gaussians (FID's formula) against closed forms."""
import numpy as np
import pytest
import scipy.linalg

import evaluate


def _random_spd(d, rng):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _check(got, want, what, rel):
    assert got == pytest.approx(want, rel=rel), (
        f"frechet_distance of {what}: expected {want:.8g}, got {got!r}")


def test_frechet_distance_of_diagonal_gaussians_matches_the_closed_form():
    # Commuting covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    _check(evaluate.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected,
           "two 6-d Gaussians with diagonal covariances", 1e-10)
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2 for standard deviations s1, s2.
    _check(evaluate.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]),
                                     np.array([[9.0]])), 9 + 1, "N(1, 4) and N(-2, 9)", 1e-10)


def test_frechet_distance_matches_the_textbook_sqrtm_formula():
    # General (non-commuting) covariances: Tr(S1 + S2 - 2 sqrtm(S1 S2)), computed directly.
    rng = np.random.default_rng(1)
    s1, s2 = _random_spd(20, rng), _random_spd(20, rng)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    what = "two 20-d Gaussians with non-commuting covariances"
    fd = evaluate.frechet_distance(mu1, s1, mu2, s2)
    _check(fd, direct, what, 1e-8)
    _check(evaluate.frechet_distance(mu2, s2, mu1, s1), fd, what + ", swapped", 1e-8)
    _check(evaluate.frechet_distance(mu1, s1, mu2, s2, sqrt_sigma1=scipy.linalg.sqrtm(s1).real),
           fd, what + ", S1^1/2 given as sqrt_sigma1", 1e-8)


@pytest.mark.parametrize("n,d", [(500, 32), (60, 128)])  # the second: fewer samples than dimensions
def test_fid_of_a_set_against_itself_is_zero(n, d):
    feats = np.random.default_rng(2).standard_normal((n, d)) * np.linspace(0.1, 3, d)
    mu, sigma = evaluate.gaussian(feats)
    fd = evaluate.frechet_distance(mu, sigma, mu, sigma)
    assert abs(fd) < 1e-6 * np.trace(sigma), (
        f"frechet_distance of a Gaussian with itself ({n} samples, {d}-d): expected 0, got {fd!r}")
    other = evaluate.gaussian(feats + 0.5)[0]  # a shifted set: exactly |shift|^2 = 0.25 d
    _check(evaluate.frechet_distance(mu, sigma, other, sigma), 0.25 * d,
           f"a {d}-d Gaussian and itself shifted by 0.5 in every coordinate", 1e-6)

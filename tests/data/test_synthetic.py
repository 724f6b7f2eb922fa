"""The notebooks' synthetic data sets against their closed forms."""

import math

import numpy as np
import pytest
import torch

from pyrovae.data import circle_clusters, gaussian_mixture_1d, gaussian_mixture_1d_log_density, two_groups
from pyrovae.data.synthetic import MIXTURE_1D_MEANS, MIXTURE_1D_STDS, MIXTURE_1D_WEIGHTS


def test_mixture_moments_and_density():
    data = gaussian_mixture_1d(200_000, seed=1)
    w = torch.tensor(MIXTURE_1D_WEIGHTS, dtype=torch.float64)
    w = w / w.sum()
    m, s = torch.tensor(MIXTURE_1D_MEANS, dtype=torch.float64), torch.tensor(MIXTURE_1D_STDS, dtype=torch.float64)
    mean = (w * m).sum()
    variance = (w * (s**2 + m**2)).sum() - mean**2
    x = data.x.double().squeeze(-1)
    assert abs(x.mean() - mean) < 4 * math.sqrt(variance / len(x))
    assert abs(x.var() / variance - 1) < 0.02
    grid = torch.linspace(-8, 10, 20001, dtype=torch.float64)
    assert torch.trapezoid(gaussian_mixture_1d_log_density(grid).exp(), grid).item() == pytest.approx(1.0, abs=1e-6)
    assert torch.bincount(data.labels, minlength=4).double().div(len(x)).sub(w).abs().max() < 0.005


def test_two_groups_are_rank_two_plus_noise():
    data = two_groups()
    assert data.x.shape == (400, 15) and torch.bincount(data.labels).tolist() == [200, 200]
    for group in range(2):
        block = data.x[data.labels == group]
        singular = torch.linalg.svdvals(block - block.mean(0))
        assert singular[1] > 10 * singular[2]  # two strong directions, then noise of scale 0.1
        assert singular[2] / math.sqrt(200) < 0.2


def test_two_groups_held_out_and_exact_density():
    from scipy.stats import multivariate_normal

    train, test, truth = two_groups(num_per_group=200, num_test_per_group=3000, seed=5)
    assert train.x.shape == (400, 15) and test.x.shape == (6000, 15)
    for group in range(2):
        block = test.x[test.labels == group].double()
        assert torch.allclose(block.mean(0), truth.locs[group], atol=0.15)
        tolerance = 0.25 * truth.covariances[group].abs().max()
        assert torch.allclose(torch.cov(block.T), truth.covariances[group], atol=tolerance)
    x = test.x[:50].double().numpy()
    reference = np.logaddexp(*[multivariate_normal(truth.locs[g].numpy(), truth.covariances[g].numpy()).logpdf(x)
                               for g in range(2)]) - math.log(2)
    assert np.allclose(truth.log_density(test.x[:50]).numpy(), reference, rtol=1e-10)


def test_circle_clusters():
    data, angles = circle_clusters(900, seed=3)
    assert data.x.shape == (900, 100) and set(data.labels.unique().tolist()) == {0, 1, 2}
    centres = 2 * math.pi * data.labels / 3
    residual = torch.atan2(torch.sin(angles - centres), torch.cos(angles - centres))
    assert abs(residual.std() - 0.3) < 0.03
    singular = torch.linalg.svdvals(data.x - data.x.mean(0))
    assert singular[1] > 5 * singular[2]  # a plane plus noise

"""Synthetic data sets of the reference notebooks, generated reproducibly from a seed."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pyrovae.data.tensor_data import TensorData

# Notebook 002: a four-component Gaussian mixture on the real line.
MIXTURE_1D_WEIGHTS = (0.2, 0.45, 0.35, 0.1)
MIXTURE_1D_MEANS = (-3.0, 2.5, 1.5, -2.5)
MIXTURE_1D_STDS = (0.3, 1.2, 0.3, 0.2)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _mixture_parameters(weights, means, stds):
    weights = torch.as_tensor(weights, dtype=torch.float64)
    means = torch.as_tensor(means, dtype=torch.float64)
    stds = torch.as_tensor(stds, dtype=torch.float64)
    if not (weights.shape == means.shape == stds.shape) or weights.dim() != 1:
        raise ValueError("weights, means and stds must be 1-D sequences of one length")
    if (weights < 0).any() or weights.sum() <= 0 or (stds <= 0).any():
        raise ValueError("mixture weights must be non-negative (not all zero) and standard deviations positive")
    return weights / weights.sum(), means, stds


def gaussian_mixture_1d(
    num_data: int = 200_000,
    weights: Sequence[float] = MIXTURE_1D_WEIGHTS,
    means: Sequence[float] = MIXTURE_1D_MEANS,
    stds: Sequence[float] = MIXTURE_1D_STDS,
    seed: int = 0,
) -> TensorData:
    """Draws ``(num_data, 1)`` from sum_j w_j N(mu_j, sigma_j^2) (weights normalised), labelled by component."""
    weights, means, stds = _mixture_parameters(weights, means, stds)
    generator = _generator(seed)
    component = torch.multinomial(weights, num_data, replacement=True, generator=generator)
    noise = torch.randn(num_data, generator=generator, dtype=torch.float64)
    x = means[component] + stds[component] * noise
    return TensorData(x.float().unsqueeze(-1), component, name="1-D Gaussian mixture")


def gaussian_mixture_1d_log_density(
    x: torch.Tensor,
    weights: Sequence[float] = MIXTURE_1D_WEIGHTS,
    means: Sequence[float] = MIXTURE_1D_MEANS,
    stds: Sequence[float] = MIXTURE_1D_STDS,
) -> torch.Tensor:
    """log p_data(x) of the mixture, elementwise."""
    weights, means, stds = _mixture_parameters(weights, means, stds)
    x = torch.as_tensor(x, dtype=torch.float64).unsqueeze(-1)
    log_components = -0.5 * ((x - means) / stds) ** 2 - torch.log(stds) - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(torch.log(weights) + log_components, dim=-1)


def two_groups(
    num_per_group: int = 200,
    num_features: int = 15,
    rank: int = 2,
    noise: float = 0.1,
    seed: int = 42,
    num_test_per_group: int = 0,
):
    """Notebook 003: two groups of pseudo-degenerate Gaussians in R^p, labelled 0 and 1.

    Each group g has its own loading matrix A_g (p x rank) and mean m_g (both standard normal);
    x = A_g u + m_g + noise * e with u ~ N(0, I_rank), e ~ N(0, I_p), so that group g is exactly
    N(m_g, A_g A_g^T + noise^2 I).

    With ``num_test_per_group > 0`` returns ``(train, test, truth)``: held-out data from the same two
    Gaussians and a :class:`TwoGroupsTruth` holding the exact density. Otherwise returns the data only.
    """
    generator = _generator(seed)
    total = num_per_group + num_test_per_group
    train_blocks, test_blocks, locs, covariances = [], [], [], []
    for _ in range(2):
        loadings = torch.randn(num_features, rank, generator=generator)
        mean = torch.randn(num_features, generator=generator)
        factors = torch.randn(total, rank, generator=generator)
        x = factors @ loadings.T + mean + noise * torch.randn(total, num_features, generator=generator)
        train_blocks.append(x[:num_per_group])
        test_blocks.append(x[num_per_group:])
        locs.append(mean.double())
        covariances.append(loadings.double() @ loadings.double().T + noise**2 * torch.eye(num_features).double())

    def labelled(blocks, name):
        labels = torch.cat([torch.full((len(block),), group, dtype=torch.long) for group, block in enumerate(blocks)])
        return TensorData(torch.cat(blocks), labels, name=name)

    train = labelled(train_blocks, "two groups")
    if num_test_per_group <= 0:
        return train
    truth = TwoGroupsTruth(torch.stack(locs), torch.stack(covariances))
    return train, labelled(test_blocks, "two groups, held out"), truth


class TwoGroupsTruth:
    """The exact law of :func:`two_groups`: an equal-weight mixture of two full-covariance Gaussians."""

    def __init__(self, locs: torch.Tensor, covariances: torch.Tensor) -> None:
        self.locs, self.covariances = locs, covariances

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per row, in float64."""
        components = torch.distributions.MultivariateNormal(self.locs, covariance_matrix=self.covariances)
        log_groups = components.log_prob(torch.as_tensor(x, dtype=torch.float64).unsqueeze(-2))
        return torch.logsumexp(log_groups, dim=-1) - math.log(2)


def circle_clusters(
    num_data: int = 1000,
    num_features: int = 100,
    num_clusters: int = 3,
    angle_std: float = 0.3,
    noise: float = 0.1,
    seed: int = 0,
) -> tuple[TensorData, torch.Tensor]:
    """Notebook 000: clusters on the unit circle S^1, embedded linearly in R^num_features with noise.

    Cluster k is centred at angle 2 pi k / num_clusters with angular standard deviation ``angle_std``; the
    circle point (cos a, sin a) is mapped by a random 2 x num_features Gaussian matrix and Gaussian noise
    of scale ``noise`` is added. Returns the data (labelled by cluster) and the angles.
    """
    generator = _generator(seed)
    labels = torch.randint(num_clusters, (num_data,), generator=generator)
    angles = 2 * math.pi * labels / num_clusters + angle_std * torch.randn(num_data, generator=generator)
    circle = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    projection = torch.randn(2, num_features, generator=generator)
    x = circle @ projection + noise * torch.randn(num_data, num_features, generator=generator)
    return TensorData(x, labels, name="circle clusters"), angles

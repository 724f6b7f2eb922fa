"""log1p, standardisation and PCA as a torch module: the notebook-000 features, fitted on a sample and applied to
every streamed batch on its device."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class LogPCA(nn.Module):
    """x -> ((log1p(x) - mean) / scale) @ components.T, with ``components`` the top principal axes.

    :param mean: per-gene mean of log1p counts.
    :param scale: per-gene standard deviation of log1p counts (1 where a gene is constant).
    :param components: ``(num_components, num_genes)`` orthonormal rows.
    """

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor, components: torch.Tensor,
                 explained_variance_ratio: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)
        self.register_buffer("components", components)
        self.register_buffer("explained_variance_ratio", explained_variance_ratio)

    @classmethod
    def fit(cls, counts: torch.Tensor | np.ndarray, num_components: int = 50) -> LogPCA:
        """Fit on a sample of cells ``(cells, genes)`` by an SVD of the standardised log1p counts."""
        logs = torch.log1p(torch.as_tensor(counts, dtype=torch.float64))
        if not 0 < num_components <= min(logs.shape):
            raise ValueError(f"num_components must be in 1..{min(logs.shape)} for {tuple(logs.shape)} data, "
                             f"got {num_components}")
        mean = logs.mean(0)
        scale = logs.std(0, correction=0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        _, singular, vh = torch.linalg.svd((logs - mean) / scale, full_matrices=False)
        variance = singular**2
        ratio = variance[:num_components] / variance.sum()
        return cls(mean.float(), scale.float(), vh[:num_components].float(), ratio.float())

    @property
    def num_components(self) -> int:
        return self.components.shape[0]

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        return ((torch.log1p(counts) - self.mean) / self.scale) @ self.components.T


__all__ = ["LogPCA"]

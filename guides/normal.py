"""Diagonal Gaussian guide: q(z | x) = N(mu(x), diag sigma(x)^2)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyrovae.guides.base import AmortizedGuide
from torch import nn

from pyrovae.nn.checks import check_real


class NormalGuide(AmortizedGuide):
    """The standard VAE encoder: a network outputs a mean and a softplus-positive standard
    deviation.

    Takes the construction arguments of every guide (:class:`~pyrovae.guides.AmortizedGuide`); a
    custom ``encoder`` maps ``(..., x_dim) -> (..., 2 z_dim)`` (mean, then raw scale), e.g.
    :class:`~pyrovae.nn.ConvEncoder` ``(2 * z_dim)``. And:

    :param float min_scale: floor added to the standard deviation (> 0).
    """

    def __init__(self, x_dim: int, z_dim: int, *args, min_scale: float = 1e-5, **options) -> None:
        super().__init__(x_dim, z_dim, *args, **options)
        self.min_scale = check_real(type(self).__name__, "min_scale", min_scale)
        self.build_encoder(2 * self.z_dim)

    def encode(self, x: torch.Tensor, cat: torch.Tensor | None = None,
               cont: torch.Tensor | None = None) -> dist.TorchDistribution:
        loc, raw_scale = self.encoded(x, cat, cont).split(self.z_dim, dim=-1)
        return dist.Normal(loc, nn.functional.softplus(raw_scale) + self.min_scale).to_event(1)

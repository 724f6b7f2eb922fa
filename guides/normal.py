"""Diagonal Gaussian guide: q(z | x) = N(mu(x), diag sigma(x)^2)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyrovae.guides.base import AmortizedGuide
from torch import nn

from pyrovae.nn.checks import check_int, check_real


class NormalGuide(AmortizedGuide):
    """The standard VAE encoder: a network outputs a mean and a softplus-positive standard deviation.

    :param int x_dim: observed features.
    :param int z_dim: latent dimension.
    :param hidden: hidden sizes of the default MLP encoder ``x_dim -> hidden -> 2 z_dim``.
    :param activation: hidden activation of the default encoder.
    :param encoder: a custom ``nn.Module`` mapping ``(..., x_dim) -> (..., 2 z_dim)`` (mean, then raw scale),
        e.g. :class:`~pyrovae.nn.ConvEncoder` ``(2 * z_dim)``.
    :param float min_scale: floor added to the standard deviation (> 0).
    :param input_transform: ``"log1p"`` to encode log(1 + counts), as count models do.
    :param bool latent_library: also sample ``"library"`` (for count likelihoods with ``library="latent"``).
    :param bool batch_norm: batch-normalise the encoder's hidden layers.
    :param float dropout: dropout after each hidden layer of the encoder.
    :param str name: the guide's name in Pyro's param store (see :class:`AmortizedGuide`).
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (400,),
        activation: str | nn.Module = "relu",
        encoder: nn.Module | None = None,
        min_scale: float = 1e-5,
        *,
        input_transform: str | None = None,
        latent_library: bool = False,
        batch_norm: bool = False,
        dropout: float = 0.0,
        categorical=(),
        continuous: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        z_dim = check_int(type(self).__name__, "z_dim", z_dim)
        options = (input_transform, latent_library, batch_norm, dropout)
        self._set_encoder(x_dim, z_dim, 2 * z_dim, hidden, activation, encoder, *options, categorical, continuous)
        self.min_scale = check_real(type(self).__name__, "min_scale", min_scale)

    def encode(self, x: torch.Tensor, cat: torch.Tensor | None = None,
               cont: torch.Tensor | None = None) -> dist.TorchDistribution:
        loc, raw_scale = self.encoded(x, cat, cont).split(self.z_dim, dim=-1)
        return dist.Normal(loc, nn.functional.softplus(raw_scale) + self.min_scale).to_event(1)

"""Point-mass guide: the auto-encoder as a maximum a posteriori fit of the same model."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyrovae.guides.base import AmortizedGuide
from torch import nn

from pyrovae.nn.checks import check_int


class DeltaGuide(AmortizedGuide):
    """q(z | x) = delta(z - f(x)): the encoder of an auto-encoder.

    With this guide the ELBO is ``log p(x | f(x)) + log p(f(x))``: an auto-encoder whose code is
    regularised by the model's prior (amortised MAP). Train with ``kl_weight=0`` to switch the prior
    term off, which leaves the plain reconstruction loss of a classical auto-encoder (for a Gaussian
    likelihood with fixed scale, the MSE). The model stays the same: swapping this guide for a
    :class:`~pyrovae.guides.NormalGuide` turns the auto-encoder into a VAE.

    :param encoder: a custom ``nn.Module`` mapping ``(..., x_dim) -> (..., z_dim)``.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (400,),
        activation: str | nn.Module = "relu",
        encoder: nn.Module | None = None,
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
        self._set_encoder(x_dim, z_dim, z_dim, hidden, activation, encoder, *options, categorical, continuous)

    def encode(self, x: torch.Tensor, cat: torch.Tensor | None = None,
               cont: torch.Tensor | None = None) -> dist.TorchDistribution:
        return dist.Delta(self.encoded(x, cat, cont), event_dim=1)

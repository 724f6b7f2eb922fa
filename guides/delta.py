"""Point-mass guide: the auto-encoder as a maximum a posteriori fit of the same model."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyrovae.guides.base import AmortizedGuide


class DeltaGuide(AmortizedGuide):
    """q(z | x) = delta(z - f(x)): the encoder of an auto-encoder.

    With this guide the ELBO is ``log p(x | f(x)) + log p(f(x))``: an auto-encoder whose code is
    regularised by the model's prior (amortised MAP). Train with ``kl_weight=0`` to switch the prior
    term off, which leaves the plain reconstruction loss of a classical auto-encoder (for a Gaussian
    likelihood with fixed scale, the MSE). The model stays the same: swapping this guide for a
    :class:`~pyrovae.guides.NormalGuide` turns the auto-encoder into a VAE.

    Takes the construction arguments of every guide (:class:`~pyrovae.guides.AmortizedGuide`); a
    custom ``encoder`` maps ``(..., x_dim) -> (..., z_dim)``.
    """

    def __init__(self, x_dim: int, z_dim: int, *args, **options) -> None:
        super().__init__(x_dim, z_dim, *args, **options)
        self.build_encoder(self.z_dim)

    def encode(self, x: torch.Tensor, cat: torch.Tensor | None = None,
               cont: torch.Tensor | None = None) -> dist.TorchDistribution:
        return dist.Delta(self.encoded(x, cat, cont), event_dim=1)

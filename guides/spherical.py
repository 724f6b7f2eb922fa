"""Guides on the unit sphere: von Mises-Fisher and Power Spherical posteriors for :class:`~pyrovae.models.SVAE`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyrovae.guides.base import AmortizedGuide
from torch import nn

from pyrovae.distributions import PowerSpherical, VonMisesFisher
from pyrovae.nn.checks import check_int


class _SphericalGuide(AmortizedGuide):
    family: type

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
        z_dim = check_int(type(self).__name__, "z_dim (the sphere's ambient dimension)", z_dim, 2)
        options = (input_transform, latent_library, batch_norm, dropout)
        self._set_encoder(x_dim, z_dim, z_dim + 1, hidden, activation, encoder, *options, categorical, continuous)

    def encode(self, x: torch.Tensor, cat: torch.Tensor | None = None,
               cont: torch.Tensor | None = None):
        raw_loc, raw_concentration = self.encoded(x, cat, cont).split([self.z_dim, 1], dim=-1)
        loc = raw_loc / torch.linalg.vector_norm(raw_loc, dim=-1, keepdim=True).clamp(min=1e-12)
        concentration = nn.functional.softplus(raw_concentration.squeeze(-1)) + 1.0  # as in Davidson et al.
        return self.family(loc, concentration)


class VMFGuide(_SphericalGuide):
    """q(z | x) = vMF(mu(x), kappa(x)): the mean direction is the normalised encoder output, and
    kappa = softplus(.) + 1, as in Davidson et al. (2018). ``z_dim`` is the ambient dimension.

    :param encoder: a custom ``nn.Module`` mapping ``(..., x_dim) -> (..., z_dim + 1)``.
    """

    family = VonMisesFisher


class PowerSphericalGuide(_SphericalGuide):
    """q(z | x) = PowerSpherical(mu(x), kappa(x)), parameterised as :class:`VMFGuide`; its sampler is
    rejection-free (a Beta draw), so a step never waits on the device."""

    family = PowerSpherical

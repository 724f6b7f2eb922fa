"""Guides on the unit sphere: von Mises-Fisher and Power Spherical posteriors for :class:`~pyrovae.models.SVAE`."""

from __future__ import annotations

import torch
from pyrovae.guides.base import AmortizedGuide
from torch import nn

from pyrovae.distributions import PowerSpherical, VonMisesFisher


class _SphericalGuide(AmortizedGuide):
    family: type
    z_dim_rule = ("z_dim (the sphere's ambient dimension)", 2)

    def __init__(self, x_dim: int, z_dim: int, *args, **options) -> None:
        super().__init__(x_dim, z_dim, *args, **options)
        self.build_encoder(self.z_dim + 1)  # a direction, then a raw concentration

    def encode(self, x: torch.Tensor, cat: torch.Tensor | None = None,
               cont: torch.Tensor | None = None):
        raw_loc, raw_concentration = self.encoded(x, cat, cont).split([self.z_dim, 1], dim=-1)
        loc = raw_loc / torch.linalg.vector_norm(raw_loc, dim=-1, keepdim=True).clamp(min=1e-12)
        concentration = nn.functional.softplus(raw_concentration.squeeze(-1)) + 1.0  # as in Davidson et al.
        return self.family(loc, concentration)


class VMFGuide(_SphericalGuide):
    """q(z | x) = vMF(mu(x), kappa(x)): the mean direction is the normalised encoder output, and
    kappa = softplus(.) + 1, as in Davidson et al. (2018). ``z_dim`` is the ambient dimension.

    Takes the construction arguments of every guide (:class:`~pyrovae.guides.AmortizedGuide`); a
    custom ``encoder`` maps ``(..., x_dim) -> (..., z_dim + 1)``.
    """

    family = VonMisesFisher


class PowerSphericalGuide(_SphericalGuide):
    """q(z | x) = PowerSpherical(mu(x), kappa(x)), parameterised as :class:`VMFGuide`; its sampler is
    rejection-free (a Beta draw), so a step never waits on the device.

    Takes the construction arguments of every guide (:class:`~pyrovae.guides.AmortizedGuide`); a
    custom ``encoder`` maps ``(..., x_dim) -> (..., z_dim + 1)``.
    """

    family = PowerSpherical

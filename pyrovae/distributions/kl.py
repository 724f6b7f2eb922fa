"""Closed-form KL divergences of the spherical distributions against the uniform, registered with torch."""

from __future__ import annotations

import math

import torch
from torch.distributions.kl import register_kl

from pyrovae.distributions.power_spherical import PowerSpherical
from pyrovae.distributions.sphere import log_sphere_area, unexpanded
from pyrovae.distributions.uniform import HypersphericalUniform
from pyrovae.distributions.von_mises_fisher import VonMisesFisher


def _check_dims(p, q) -> None:
    if p.dim != q.dim:
        raise ValueError(f"KL between distributions on different spheres: ambient dimensions {p.dim} and {q.dim}")


@register_kl(VonMisesFisher, HypersphericalUniform)
def _kl_vmf_uniform(p: VonMisesFisher, q: HypersphericalUniform) -> torch.Tensor:
    """KL(vMF || uniform) in the cancellation-free form kappa A_m(kappa) - log(I_v(kappa) Gamma(v+1) / (kappa/2)^v).

    With v = m/2 - 1, log C_m(kappa) = v log kappa - (m/2) log(2 pi) - log I_v(kappa) and log |S^(m-1)| =
    log 2 + (m/2) log pi - lgamma(v+1), so their sum is v log(kappa/2) - lgamma(v+1) - log I_v(kappa): the large
    terms of the normaliser and of the sphere's area cancel analytically, not in floating point (which in
    float32 would lose the whole KL at m = 1024). The log of the series I_v(kappa) Gamma(v+1) / (kappa/2)^v
    = sum_j (kappa/2)^(2j) Gamma(v+1) / (j! Gamma(v+j+1)) >= 1 is non-negative. Evaluated in float64.
    """
    _check_dims(p, q)
    kappa = unexpanded(p.concentration).double()
    v = 0.5 * p.dim - 1
    log_ive, mean, _ = p._bessel_terms()
    log_series = log_ive + kappa - v * torch.log(0.5 * kappa) + math.lgamma(v + 1)
    kl = kappa * mean - torch.where(kappa > 0, log_series, torch.zeros_like(kappa))
    return kl.clamp(min=0).to(p.concentration.dtype).expand(p.batch_shape)


@register_kl(PowerSpherical, HypersphericalUniform)
def _kl_power_spherical_uniform(p: PowerSpherical, q: HypersphericalUniform) -> torch.Tensor:
    """log |S^(m-1)| - H(p), evaluated in float64."""
    _check_dims(p, q)
    wide = PowerSpherical(p.loc.double(), p.concentration.double(), validate_args=False)
    return (log_sphere_area(p.dim) - wide.entropy()).clamp(min=0).to(p.concentration.dtype)


def kl_to_uniform(p) -> torch.Tensor:
    """KL(p || uniform on the same sphere) for a :class:`VonMisesFisher` or :class:`PowerSpherical`."""
    if not isinstance(p, (VonMisesFisher, PowerSpherical)):
        raise TypeError(f"kl_to_uniform takes a distribution on the sphere, a VonMisesFisher or a PowerSpherical, got "
                        f"{type(p).__name__}; for other families use torch.distributions.kl_divergence(p, q) with "
                        "the prior q of their own support")
    return torch.distributions.kl_divergence(p, HypersphericalUniform(p.dim, device=p.loc.device, dtype=p.loc.dtype))

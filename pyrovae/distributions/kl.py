"""Closed-form KL divergences of the spherical distributions against the uniform, registered with torch."""

from __future__ import annotations

import functools
import math

import torch
from torch.distributions.kl import register_kl

from pyrovae.distributions.power_spherical import PowerSpherical
from pyrovae.distributions.sphere import log_sphere_area
from pyrovae.distributions.uniform import HypersphericalUniform
from pyrovae.distributions.von_mises_fisher import VonMisesFisher, _LogNormalizerAtLoc


def _check_dims(p, q) -> torch.Size:
    """The KL's batch shape, p's and q's broadcast (the uniform has no parameters, but may have a batch shape)."""
    if p.dim != q.dim:
        raise ValueError(f"KL between distributions on different spheres: ambient dimensions {p.dim} and {q.dim}")
    try:
        return torch.broadcast_shapes(p.batch_shape, q.batch_shape)
    except RuntimeError:
        raise ValueError(f"KL between distributions of batch shapes {tuple(p.batch_shape)} and "
                         f"{tuple(q.batch_shape)}, which do not broadcast") from None


_SERIES_TERMS = 28  # terms of log S_v(q) beyond the first where each is at most 1/4 of the one before: 4^-28 < 2e-17


@register_kl(VonMisesFisher, HypersphericalUniform)
def _kl_vmf_uniform(p: VonMisesFisher, q: HypersphericalUniform) -> torch.Tensor:
    """KL(vMF || uniform) in the cancellation-free form kappa A_m(kappa) - log(I_v(kappa) Gamma(v+1) / (kappa/2)^v)
    up to kappa = v + 1, and beyond it -kappa (1 - A_m) - log(I_v(kappa) e^-kappa) + v log(kappa/2) - lgamma(v+1).

    With v = m/2 - 1, log C_m(kappa) = v log kappa - (m/2) log(2 pi) - log I_v(kappa) and log |S^(m-1)| =
    log 2 + (m/2) log pi - lgamma(v+1), so their sum is v log(kappa/2) - lgamma(v+1) - log I_v(kappa): the large
    terms of the normaliser and of the sphere's area cancel analytically, not in floating point (which in
    float32 would lose the whole KL at m = 1024). The log of the series I_v(kappa) Gamma(v+1) / (kappa/2)^v
    = sum_j (kappa/2)^(2j) Gamma(v+1) / (j! Gamma(v+j+1)) >= 1 is non-negative. Evaluated in float64.
    """
    shape = _check_dims(p, q)
    kappa = p._wide_concentration()
    v = 0.5 * p.dim - 1
    log_ive, mean, one_minus_mean = p._bessel_terms(kappa)
    # up to kappa ~ v: kappa A_m - log(series), both small; beyond: the same rearranged so that no term of size kappa
    # is subtracted from another (kappa A_m - (log_ive + kappa) lost the KL's digits from kappa ~ 1e8, all by 1e17)
    # (v log kappa - log_ive, with its derivative 1 - A_m given directly: the v / kappa of its two terms cancel)
    safe = kappa.clamp(min=1e-300)
    scaled = _LogNormalizerAtLoc.apply(safe, v, log_ive, one_minus_mean) - v * math.log(2) - math.lgamma(v + 1)
    log_series = safe - scaled  # log(I_v(kappa) Gamma(v+1) / (kappa/2)^v) >= 0
    # where the series' ratio of terms q / ((j+1)(v+1+j)) is at most 1/4 (q = kappa^2 / 4), its log summed directly:
    # safe - scaled is a difference of numbers of size v |log kappa| for a result of size kappa^2 / (2m) (at m = 64,
    # kappa = 1e-8: 7.9e-15 for 7.8e-19)
    q = 0.25 * kappa.square()
    near = q <= 0.25 * (v + 1)
    j = torch.arange(_SERIES_TERMS, dtype=kappa.dtype, device=kappa.device)
    ratios = torch.where(near, q, 0.0).unsqueeze(-1) / ((j + 1) * (v + 1 + j))
    log_series = torch.where(near, torch.log1p(ratios.cumprod(-1).sum(-1)), log_series)
    small = safe * mean - torch.where(kappa > 0, log_series, torch.zeros_like(kappa))
    large = scaled - safe * one_minus_mean
    kl = torch.where(kappa > v + 1, large, small)
    return kl.clamp(min=0).to(p.concentration.dtype).expand(shape)


@register_kl(PowerSpherical, HypersphericalUniform)
def _kl_power_spherical_uniform(p: PowerSpherical, q: HypersphericalUniform) -> torch.Tensor:
    """log |S^(m-1)| - H(p), evaluated in float64; where kappa <= b / 10 (b = (m - 1) / 2) as the series
    sum_(n >= 2) kappa^n (n - 1) / n! (psi^(n-1)(b) - psi^(n-1)(2b)), whose terms shrink by kappa / b or faster
    (it is F(2b) - F(b), F(x) = lgamma(x + kappa) - lgamma(x) - kappa psi(x + kappa)): the difference of the two
    sides cancels there to a result of size kappa^2 / (4b) (at m = 256, kappa = 1e-8: 2.3e-13 for 2.0e-19)."""
    shape = _check_dims(p, q)
    wide = PowerSpherical(p.loc.double(), p.concentration.double(), validate_args=False)
    kl = log_sphere_area(p.dim) - wide.entropy()
    kappa, b = wide.concentration, 0.5 * (p.dim - 1)
    near = kappa <= 0.1 * b
    small = torch.where(near, kappa, 0.0)
    series = torch.zeros_like(small)
    for coefficient in reversed(_power_series_coefficients(p.dim)):  # Horner's rule, from kappa^2 up
        series = (series + coefficient) * small
    return torch.where(near, series * small, kl).clamp(min=0).to(p.concentration.dtype).expand(shape)


@functools.cache
def _power_series_coefficients(m: int) -> tuple[float, ...]:
    """(n - 1) / n! (psi^(n-1)(b) - psi^(n-1)(2b)) for n = 2, ..., 17, b = (m - 1) / 2: sixteen terms, each at most
    a tenth of the one before where the series is used."""
    from scipy.special import polygamma

    b = 0.5 * (m - 1)
    return tuple((n - 1) / math.factorial(n) * float(polygamma(n - 1, b) - polygamma(n - 1, 2 * b))
                 for n in range(2, 18))


def kl_to_uniform(p) -> torch.Tensor:
    """KL(p || uniform on the same sphere) for a :class:`VonMisesFisher` or :class:`PowerSpherical`."""
    if not isinstance(p, (VonMisesFisher, PowerSpherical)):
        raise TypeError(f"kl_to_uniform takes a distribution on the sphere, a VonMisesFisher or a PowerSpherical, got "
                        f"{type(p).__name__}; for other families use torch.distributions.kl_divergence(p, q) with "
                        "the prior q of their own support")
    return torch.distributions.kl_divergence(p, HypersphericalUniform(p.dim, device=p.loc.device, dtype=p.loc.dtype))

"""Distributions on the unit sphere (von Mises-Fisher, Power Spherical, the projected normal, the uniform prior)
and for counts (the negative binomial by mean and inverse dispersion, and its zero-inflated form), the defensive
mixture of importance sampling, and Pyro's multivariate normal with draws that do not copy its Cholesky factors."""

from pyrovae.distributions.defensive import DefensiveMixture, widen
from pyrovae.distributions.kl import kl_to_uniform
from pyrovae.distributions.multivariate_normal import MultivariateNormal
from pyrovae.distributions.negative_binomial import NegativeBinomial, ZeroInflatedNegativeBinomial
from pyrovae.distributions.poisson import Poisson, ZeroInflatedPoisson
from pyrovae.distributions.power_spherical import PowerSpherical
from pyrovae.distributions.projected_normal import ProjectedNormal
from pyrovae.distributions.sphere import slerp
from pyrovae.distributions.uniform import HypersphericalUniform
from pyrovae.distributions.von_mises_fisher import VonMisesFisher

__all__ = [
    "DefensiveMixture",
    "HypersphericalUniform",
    "MultivariateNormal",
    "NegativeBinomial",
    "Poisson",
    "PowerSpherical",
    "ProjectedNormal",
    "VonMisesFisher",
    "ZeroInflatedNegativeBinomial",
    "ZeroInflatedPoisson",
    "kl_to_uniform",
    "slerp",
    "widen",
]

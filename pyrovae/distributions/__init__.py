"""Distributions on the unit sphere: von Mises-Fisher, Power Spherical, and the uniform prior."""

from pyrovae.distributions.kl import kl_to_uniform
from pyrovae.distributions.power_spherical import PowerSpherical
from pyrovae.distributions.uniform import HypersphericalUniform
from pyrovae.distributions.von_mises_fisher import VonMisesFisher

__all__ = ["HypersphericalUniform", "PowerSpherical", "VonMisesFisher", "kl_to_uniform"]

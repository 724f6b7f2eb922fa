"""Generative sides p(x, z) (installed as ``pyrovae.models``)."""

from pyrovae.models.gmvae import GMVAE
from pyrovae.models.svae import SVAE
from pyrovae.models.vae import VAE

__all__ = ["GMVAE", "SVAE", "VAE"]

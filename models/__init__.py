"""Generative sides p(x, z) (installed as ``pyrovae.models``)."""

from pyrovae.models.vae import VAE

__all__ = ["VAE"]

from pyrovae.guides import NormalGuide
from pyrovae.models import VAE


def small_pair(x_dim=15, z_dim=2):
    return VAE(x_dim, z_dim, hidden=(6,), likelihood="gaussian"), NormalGuide(x_dim, z_dim, hidden=(6,))

"""The hyperspherical VAE (Davidson et al. 2018): a uniform prior on the unit sphere S^(m-1)."""

from __future__ import annotations

from pyrovae.models.vae import VAE

from pyrovae.distributions import HypersphericalUniform
from pyrovae.nn.checks import check_int


class SVAE(VAE):
    """A :class:`VAE` whose latent lives on the unit sphere, with the uniform prior on it.

    ``z_dim`` is the **ambient** dimension m: latents are unit vectors in R^m, on the (m-1)-dimensional
    sphere S^(m-1). Davidson et al.'s "S-VAE with d = 10" is ``SVAE(x_dim, 11)``. Pair it with
    :class:`~pyrovae.guides.VMFGuide` or :class:`~pyrovae.guides.PowerSphericalGuide` (the same model,
    swapped in one line); a guide on R^m, such as ``NormalGuide``, is refused with an error naming both
    supports by ``train`` and ``log_likelihood``, and on the first step of Pyro's own ``SVI`` (any ELBO) or call of
    ``Predictive``.
    """

    def __init__(self, x_dim: int, z_dim: int, *args, **kwargs) -> None:
        # z_dim is the ambient dimension m >= 2 of the latent sphere S^(m-1)
        super().__init__(x_dim, check_int(type(self).__name__, "z_dim (the sphere's ambient dimension)", z_dim, 2),
                         *args, **kwargs)

    def prior(self) -> HypersphericalUniform:
        """p(z) for one datum: the uniform distribution on the sphere S^(z_dim - 1) in R^z_dim."""
        anchor = self._device_anchor
        return HypersphericalUniform(self.latent_size, device=anchor.device, dtype=anchor.dtype)

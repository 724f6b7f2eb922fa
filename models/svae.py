"""The hyperspherical VAE (Davidson et al. 2018): a uniform prior on the unit sphere S^(m-1)."""

from __future__ import annotations

from pyrovae.models.vae import VAE

from pyrovae.distributions import HypersphericalUniform


class SVAE(VAE):
    """A :class:`VAE` whose latent lives on the unit sphere, with the uniform prior on it.

    ``z_dim`` is the **ambient** dimension m: latents are unit vectors in R^m, on the (m-1)-dimensional
    sphere S^(m-1). Davidson et al.'s "S-VAE with d = 10" is ``SVAE(x_dim, 11)``. Pair it with
    :class:`~pyrovae.guides.VMFGuide` or :class:`~pyrovae.guides.PowerSphericalGuide` (the same model,
    swapped in one line); a guide on R^m, such as ``NormalGuide``, is refused by ``train`` with an error
    naming both supports.
    """

    def __init__(self, x_dim: int, z_dim: int, *args, **kwargs) -> None:
        if z_dim < 2:
            raise ValueError(f"z_dim is the ambient dimension m >= 2 of the latent sphere S^(m-1), got {z_dim}")
        super().__init__(x_dim, z_dim, *args, **kwargs)

    def prior(self) -> HypersphericalUniform:
        anchor = self._device_anchor
        return HypersphericalUniform(self.latent_size, device=anchor.device, dtype=anchor.dtype)

"""The uniform distribution on the unit sphere S^(dim-1) in R^dim: the S-VAE prior."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution, constraints

from pyrovae.distributions.shapes import expanded_batch_shape
from pyrovae.distributions.sphere import log_sphere_area, uniform_directions


class HypersphericalUniform(TorchDistribution):
    """Uniform on the unit sphere ``S^(dim-1) = {z in R^dim : |z| = 1}``.

    ``dim`` is the **ambient** dimension m, the length of a sample (the event shape is ``(dim,)``):
    ``HypersphericalUniform(3)`` is uniform on the ordinary 2-sphere in R^3. (The two reference
    implementations disagree here: s-vae-pytorch takes the manifold dimension m - 1, the Power Spherical
    code the ambient one. This library uses the ambient dimension everywhere, as ``loc.shape[-1]`` of
    :class:`VonMisesFisher` and :class:`PowerSpherical`.)

    :param int dim: ambient dimension m >= 2.
    :param batch_shape: batch shape of independent copies.
    """

    arg_constraints = {}
    support = constraints.sphere
    has_rsample = True

    def __init__(self, dim: int, batch_shape=(), device=None, dtype=None, validate_args=None):
        if isinstance(dim, bool) or not isinstance(dim, (int, float)) or int(dim) != dim or dim < 2:
            raise ValueError(f"dim is the ambient dimension m >= 2 of S^(m-1) in R^m, an integer, got {dim!r}")
        self.dim = int(dim)
        self._anchor = torch.zeros((), device=device, dtype=dtype or torch.get_default_dtype())
        super().__init__(torch.Size(batch_shape), torch.Size([self.dim]), validate_args=validate_args)

    @classmethod
    def infer_shapes(cls, dim: int | None = None, batch_shape=()) -> tuple[torch.Size, torch.Size]:
        """``(batch_shape, (dim,))``: the uniform has no tensor parameters; its shapes are its arguments."""
        if dim is None:
            raise NotImplementedError("a HypersphericalUniform's event shape is (dim,), its ambient dimension (an int "
                                      "argument, not a tensor): call infer_shapes(dim=m, batch_shape=...)")
        return torch.Size(batch_shape), torch.Size([int(dim)])

    def expand(self, batch_shape, _instance=None):
        """The same uniform with batch shape ``batch_shape``: new leading dimensions, or dimensions of size 1
        stretched; anything else is a ``ValueError`` (torch's rule for ``expand``)."""
        new = self._get_checked_instance(HypersphericalUniform, _instance)
        batch_shape = expanded_batch_shape(self, batch_shape)
        new.dim, new._anchor = self.dim, self._anchor
        super(HypersphericalUniform, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        return self._anchor.new_zeros(self.batch_shape + self.event_shape)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        return uniform_directions(shape, self.dim, self._anchor.dtype, self._anchor.device)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        return value.new_full(shape, -log_sphere_area(self.dim))

    def entropy(self) -> torch.Tensor:
        return self._anchor.new_full(self.batch_shape, log_sphere_area(self.dim))

"""The projected normal on the sphere S^(m-1): the direction ``z = u / |u|`` of a Gaussian ``u ~ N(loc, L L^T)`` in
R^m, with its exact density in every dimension: an anisotropic law on the sphere (the vMF and the Power Spherical are
isotropic about their mean direction)."""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints

from pyrovae.distributions.shapes import distinct, expanded_batch_shape, per_factor
from pyrovae.ops.radial import log_radial_integral


class ProjectedNormal(TorchDistribution):
    """``z = u / |u|`` for ``u ~ N(loc, scale_tril scale_tril^T)`` in R^m: a law on S^(m-1) whose spread about its
    mode may differ by direction (Pyro's ``ProjectedNormal`` is the isotropic case, with a density for m <= 4 only).

    The density with respect to the sphere's area is the Gaussian's mass along the ray through z:
    ``p(z) = int_0^inf r^(m-1) N(r z; loc, Sigma) dr = (2 pi)^(-m/2) |L|^-1 e^(-C/2) A^(-m/2) J_(m-1)(B / sqrt A)``
    with ``A = |L^-1 z|^2``, ``B = (L^-1 z) . (L^-1 loc)``, ``C = |L^-1 loc|^2`` and J the radial integral
    (:func:`~pyrovae.ops.radial.log_radial_integral`), computed in float64. ``rsample`` is reparameterised (the
    Gaussian's draw, normalised). Scaling ``loc`` and ``scale_tril`` together leaves the law unchanged.

    :param loc: the Gaussian's mean ``(..., m)``, m >= 2, finite; its direction is the law's mode where
        ``scale_tril`` is isotropic, and its length against the spread sets the concentration.
    :param scale_tril: lower-triangular Cholesky factors ``(..., m, m)`` with positive diagonals (None: the identity).
    """

    arg_constraints = {"loc": constraints.real_vector, "scale_tril": constraints.lower_cholesky}
    support = constraints.sphere
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale_tril: torch.Tensor | None = None, validate_args=None):
        if not isinstance(loc, torch.Tensor) or not loc.dtype.is_floating_point or loc.dim() < 1 or loc.shape[-1] < 2:
            raise ValueError(f"ProjectedNormal: loc must be a floating-point tensor (..., m) with m >= 2, got "
                             f"{getattr(loc, 'dtype', type(loc).__name__)} of shape {tuple(getattr(loc, 'shape', ()))}")
        m = loc.shape[-1]
        if scale_tril is None:
            scale_tril = torch.eye(m, dtype=loc.dtype, device=loc.device)
        scale_tril = scale_tril.to(dtype=loc.dtype, device=loc.device)
        if scale_tril.dim() < 2 or scale_tril.shape[-2:] != (m, m):
            raise ValueError(f"ProjectedNormal: scale_tril must have shape (..., {m}, {m}) for loc of shape "
                             f"{tuple(loc.shape)}, got {tuple(scale_tril.shape)}")
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], scale_tril.shape[:-2])
        self.loc = loc.expand(batch_shape + (m,))
        self.scale_tril = scale_tril.expand(batch_shape + (m, m))
        # the factors as given, each distinct one once, for the products and solves: narrowing the expanded view
        # instead (as an expand of a plate of draws makes it) would give it a gradient as large as the expand, zeros
        # but one slice, summed back (a tenth of an S-VAE's refinement step at d = 40, 8 draws)
        self._unbroadcasted_scale_tril = scale_tril
        super().__init__(batch_shape, torch.Size([m]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ProjectedNormal, _instance)
        batch_shape = expanded_batch_shape(self, batch_shape)
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.scale_tril = self.scale_tril.expand(batch_shape + self.event_shape + self.event_shape)
        new._unbroadcasted_scale_tril = self._unbroadcasted_scale_tril
        TorchDistribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        tril = distinct(self._unbroadcasted_scale_tril, 2)
        u = self.loc + per_factor(lambda factor, columns: factor @ columns, tril, eps, shape[:-1])
        return u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        m = self.event_shape[0]
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        # each distinct factor converted and solved once: not once per copy of an expand (a plate of draws or chains)
        tril = distinct(self._unbroadcasted_scale_tril, 2).double()
        v = torch.linalg.solve_triangular(tril, distinct(self.loc, 1).double().unsqueeze(-1), upper=False).squeeze(-1)
        w = per_factor(_solve, tril, value.double(), shape)  # L^-1 z
        a = w.square().sum(-1)
        b = (w * v).sum(-1)
        c = v.square().sum(-1)
        log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_p = (-0.5 * m * math.log(2 * math.pi) - log_det - 0.5 * c - 0.5 * m * a.log()
                 + log_radial_integral(m - 1, b * a.rsqrt()))
        return log_p.to(value.dtype)


def _solve(factor: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    return torch.linalg.solve_triangular(factor, columns, upper=False)


__all__ = ["ProjectedNormal"]

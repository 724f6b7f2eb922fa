"""A defensive mixture (1 - a) q + a r of a proposal q with a wider copy r of it, and how to widen one."""

from __future__ import annotations

import math
import warnings

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from torch import distributions as td
from torch.distributions import constraints

from pyrovae.distributions.multivariate_normal import MultivariateNormal
from pyrovae.distributions.power_spherical import PowerSpherical
from pyrovae.distributions.projected_normal import ProjectedNormal
from pyrovae.distributions.shapes import distinct, expanded_batch_shape
from pyrovae.distributions.von_mises_fisher import VonMisesFisher

_NO_SHAPE = torch.Size()


class DefensiveMixture(TorchDistribution):
    """``(1 - weight) proposal + weight wide``, scored by the mixture's own density (Hesterberg 1995).

    Importance weights p / mixture are at most p / (weight * wide): where the wide component has heavier tails
    than the target, the weights stay bounded however badly ``proposal`` misses them. Every draw is scored against
    the mixture's density (whichever component drew it), so it is exact in expectation as an importance
    distribution.
    Sampling draws from both components and keeps one per datum (no gradient: an evaluation distribution).
    ``mean`` and ``variance`` are the mixture's, from its components'. With validation on, ``log_prob`` refuses
    values outside the proposal's support.

    :param proposal: q, any distribution.
    :param wide: r, a distribution with q's event shape and support, e.g. :func:`widen` (q).
    :param float weight: a in (0, 1), the share of draws from r.
    """

    arg_constraints = {}
    has_rsample = False

    def __init__(self, proposal: TorchDistribution, wide: TorchDistribution, weight: float, validate_args=None):
        if not 0.0 < weight < 1.0:
            raise ValueError(f"the defensive mixture's weight must lie in (0, 1), got {weight}")
        if proposal.event_shape != wide.event_shape:
            raise ValueError(f"components of event shapes {tuple(proposal.event_shape)} and "
                             f"{tuple(wide.event_shape)} cannot be mixed")
        batch_shape = torch.broadcast_shapes(proposal.batch_shape, wide.batch_shape)
        self.proposal, self.wide = proposal.expand(batch_shape), wide.expand(batch_shape)
        self.weight = float(weight)
        super().__init__(batch_shape, proposal.event_shape, validate_args=validate_args)

    @classmethod
    def infer_shapes(cls, **arg_shapes):
        raise NotImplementedError("a DefensiveMixture's arguments are distributions, not tensors: its batch shape is "
                                  "their batch shapes broadcast, its event shape theirs")

    @constraints.dependent_property(is_discrete=False)
    def support(self):
        """The proposal's support (the wide component must share it)."""
        return self.proposal.support

    def expand(self, batch_shape, _instance=None) -> DefensiveMixture:
        new = self._get_checked_instance(DefensiveMixture, _instance)
        batch_shape = expanded_batch_shape(self, batch_shape)
        new.proposal, new.wide = self.proposal.expand(batch_shape), self.wide.expand(batch_shape)
        new.weight = self.weight
        TorchDistribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        return (1 - self.weight) * self.proposal.mean + self.weight * self.wide.mean

    @property
    def variance(self) -> torch.Tensor:
        """The mixture's second moment minus its squared mean, as sums of squares: (1 - a) a (m_q - m_r)^2 is the
        spread of the two means."""
        a = self.weight
        gap = (self.proposal.mean - self.wide.mean).square()
        return (1 - a) * self.proposal.variance + a * self.wide.variance + (1 - a) * a * gap

    def sample(self, sample_shape=_NO_SHAPE) -> torch.Tensor:
        with torch.no_grad():
            from_proposal = self.proposal.sample(sample_shape)
            from_wide = self.wide.sample(sample_shape)
            shape = torch.Size(sample_shape) + self.batch_shape
            pick = torch.rand(shape, device=from_wide.device) < self.weight
            return torch.where(pick.reshape(shape + (1,) * len(self.event_shape)), from_wide, from_proposal)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return torch.logaddexp(math.log1p(-self.weight) + self.proposal.log_prob(value),
                               math.log(self.weight) + self.wide.log_prob(value))


def widen(fn: TorchDistribution, scale: float = 2.0, df: float | None = None) -> TorchDistribution:
    """A copy of ``fn`` with its spread multiplied by ``scale``: the wide component of a :class:`DefensiveMixture`.

    Normal, LogNormal and MultivariateNormal get ``scale`` times their scale (with ``df``, a Student-t of that many
    degrees of freedom instead: heavier tails than any Gaussian target); von Mises-Fisher and Power Spherical get
    their concentration divided by ``scale**2`` (kappa is an inverse variance), a projected normal a wider Gaussian,
    whose direction's spread about the mode is about ``scale`` times as wide (its covariance times
    ``scale^2 |loc|^2 / (|loc|^2 - (scale^2 - 1) tr Sigma)``, at most ``scale^4``: the Gaussian's spread lengthens
    its draws too, so a law broad already cannot grow ``scale`` times); ``Independent`` and
    ``TransformedDistribution`` (flows) widen their base. A point mass cannot be widened.
    """
    if scale < 1.0:
        raise ValueError(f"widen's scale must be >= 1 (a wider copy), got {scale}")
    if isinstance(fn, td.Independent):
        return dist.Independent(widen(fn.base_dist, scale, df), fn.reinterpreted_batch_ndims)
    if isinstance(fn, td.LogNormal):
        if df is None:
            return dist.LogNormal(fn.loc, fn.scale * scale)
        heavy = dist.StudentT(torch.as_tensor(df, dtype=fn.loc.dtype, device=fn.loc.device), fn.loc, fn.scale * scale)
        return dist.TransformedDistribution(heavy, [dist.transforms.ExpTransform()])
    if isinstance(fn, td.TransformedDistribution):
        return dist.TransformedDistribution(widen(fn.base_dist, scale, df), fn.transforms)
    if isinstance(fn, td.Normal):
        if df is None:
            return dist.Normal(fn.loc, fn.scale * scale)
        return dist.StudentT(torch.as_tensor(df, dtype=fn.loc.dtype, device=fn.loc.device), fn.loc, fn.scale * scale)
    if isinstance(fn, td.MultivariateNormal):
        if df is None:
            return MultivariateNormal(fn.loc, scale_tril=fn.scale_tril * scale)
        return dist.MultivariateStudentT(torch.as_tensor(df, dtype=fn.loc.dtype, device=fn.loc.device), fn.loc,
                                         fn.scale_tril * scale)
    if isinstance(fn, (VonMisesFisher, PowerSpherical)):
        if df is not None:
            warnings.warn(f"widen: df is for Gaussian families; {type(fn).__name__} only gets a lower concentration",
                          stacklevel=2)
        return type(fn)(fn.loc, fn.concentration / scale**2)
    if isinstance(fn, ProjectedNormal):
        if df is not None:
            warnings.warn("widen: df is for Gaussian families; a ProjectedNormal only gets a wider Gaussian",
                          stacklevel=2)
        factor = _projected_widening(fn, scale).unsqueeze(-1).unsqueeze(-1)
        return ProjectedNormal(fn.loc, distinct(fn.scale_tril, 2) * factor)  # an expanded law's copy stays a view
    if isinstance(fn, dist.Delta):
        raise ValueError("a point mass (DeltaGuide) cannot be widened into an importance distribution; refit a "
                         "NormalGuide to the frozen model first (refit_guide)")
    raise NotImplementedError(
        f"widen does not know {type(fn).__name__}; supported: Normal, LogNormal, MultivariateNormal, "
        "VonMisesFisher, PowerSpherical, ProjectedNormal, and Independent or TransformedDistribution of those"
    )


def _projected_widening(fn: ProjectedNormal, scale: float) -> torch.Tensor:
    """The factor on a projected normal's Cholesky factor that widens its spread about the mode ``scale`` times.

    The direction of u ~ N(loc, Sigma) deviates from the mode along a tangent e with variance about
    ``e^T Sigma e / (|loc|^2 + tr Sigma)``: the whole Gaussian's spread lengthens u too. Sigma times c gives
    ``c e^T Sigma e / (|loc|^2 + c tr Sigma)``, ``scale^2`` times the first where
    ``c = scale^2 |loc|^2 / (|loc|^2 - (scale^2 - 1) tr Sigma)``; where the law is already too wide for that (the
    denominator below ``|loc|^2 / scale^2``), c is ``scale^4``, towards the uniform law."""
    r2 = distinct(fn.loc, 1).square().sum(-1)  # once per distinct factor, not per copy of an expand
    trace = distinct(fn.scale_tril, 2).square().sum((-2, -1))
    room = r2 - (scale**2 - 1) * trace
    c = torch.where(room > r2 / scale**2, scale**2 * r2 / room.clamp(min=torch.finfo(r2.dtype).tiny), scale**4)
    return c.sqrt()


__all__ = ["DefensiveMixture", "widen"]

"""The Poisson with a log-density computed sparsely: most single-cell counts are zero, and there
``log Poisson(0 | rate) = -rate`` needs neither a logarithm nor a Gamma function (see
:mod:`~pyrovae.distributions.sparse_counts`)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyrovae.distributions.sparse_counts import score_counts


def _nonzero_log_prob(k: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    return torch.xlogy(k, rate) - rate - torch.lgamma(k + 1.0)


def poisson_log_prob(x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """``x log(rate) - rate - log x!`` elementwise (broadcast): ``-rate`` everywhere, the rest only at non-zero
    ``x``, in float64 (:func:`~pyrovae.distributions.sparse_counts.score_counts`)."""
    return score_counts(x, -rate, _nonzero_log_prob, rate)


class Poisson(dist.Poisson):
    """Pyro's Poisson whose :meth:`log_prob` skips the zero counts' logarithm and Gamma function (same values)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return poisson_log_prob(value, self.rate)


class ZeroInflatedPoisson(dist.ZeroInflatedDistribution):
    """Pyro's zero-inflated distribution over :class:`Poisson`, the gate given as logits."""

    arg_constraints = {"rate": constraints.positive, "gate_logits": constraints.real}

    def __init__(self, rate: torch.Tensor, gate_logits: torch.Tensor, validate_args=None) -> None:
        shape = torch.broadcast_shapes(rate.shape, gate_logits.shape)
        base = Poisson(rate.expand(shape))
        super().__init__(base, gate_logits=gate_logits.expand(shape), validate_args=validate_args)

    @property
    def rate(self) -> torch.Tensor:
        return self.base_dist.rate


__all__ = ["Poisson", "ZeroInflatedPoisson", "poisson_log_prob"]

"""The Poisson with a log-density computed sparsely: most single-cell counts are zero, and there
``log Poisson(0 | rate) = -rate`` needs neither a logarithm nor a Gamma function (see
:mod:`~pyrovae.distributions.sparse_counts`)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyrovae.distributions.shapes import expanded_batch_shape, finite_nonnegative, finite_positive
from pyrovae.distributions.sparse_counts import score_counts
from pyrovae.distributions.zero_inflated import ZeroInflated


def _log_factorial(k: torch.Tensor) -> tuple[torch.Tensor]:
    return (torch.lgamma(k + 1.0),)


def _nonzero_log_prob(k: torch.Tensor, rate: torch.Tensor, log_factorial: torch.Tensor | None = None) -> torch.Tensor:
    return torch.xlogy(k, rate) - rate - (torch.lgamma(k + 1.0) if log_factorial is None else log_factorial)


def poisson_log_prob(x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """``x log(rate) - rate - log x!`` elementwise (broadcast): ``-rate`` everywhere, the rest only at non-zero
    ``x``, in float64 (:func:`~pyrovae.distributions.sparse_counts.score_counts`; log x! once per datum under many
    draws of the rate)."""
    return score_counts(x, -rate, _nonzero_log_prob, rate, count_terms=_log_factorial)


class Poisson(dist.Poisson):
    """Pyro's Poisson whose :meth:`log_prob` skips the zero counts' logarithm and Gamma function (same values), and
    whose validation refuses an infinite rate too (torch's lets it through)."""

    arg_constraints = {"rate": finite_nonnegative}

    def expand(self, batch_shape, _instance=None):
        """Pyro's ``expand``, with a batch shape it cannot broadcast to refused by name (``ValueError``)."""
        return super().expand(expanded_batch_shape(self, batch_shape), _instance)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return poisson_log_prob(value, self.rate)


class ZeroInflatedPoisson(ZeroInflated):
    """With probability ``sigmoid(gate_logits)`` an extra zero, otherwise :class:`Poisson` (rate): the log-density
    is computed from the gate logits whatever was read before
    (:class:`~pyrovae.distributions.zero_inflated.ZeroInflated`). With validation on, the constructor refuses a
    rate that is not positive or not finite and NaN gate logits, naming the values."""

    arg_constraints = {"rate": finite_positive, "gate_logits": constraints.real}

    def __init__(self, rate: torch.Tensor, gate_logits: torch.Tensor, validate_args=None) -> None:
        super().__init__(Poisson(rate, validate_args=False), gate_logits, {"rate": rate}, validate_args=validate_args)

    @property
    def rate(self) -> torch.Tensor:
        return self.base_dist.rate


__all__ = ["Poisson", "ZeroInflatedPoisson", "poisson_log_prob"]

"""Zero inflation by gate logits, with a log-density that depends on its arguments only.

With probability ``gate = sigmoid(g)`` an extra zero, otherwise a draw of the base count distribution p:

    log f(x) = log sigmoid(-g) + log p(x)                          for x > 0,
    log f(0) = log1p(-sigmoid(-g) (1 - p(0)))                      where f(0) > 1/2,
             = logaddexp(log sigmoid(g), log sigmoid(-g) + log p(0)) elsewhere,

the log-sigmoids taken directly (``logsigmoid``), so that no gate is ever rounded to 0 or 1 and subtracted
from 1: at g = 20 in float32, 1 - sigmoid(g) is 0 while log sigmoid(-g) is -20. The zero's two forms keep its
relative precision on either side: where f(0) is near 1 (a sparse gene, a confident gate), log f(0) is small and
``logaddexp`` would take it as the difference of two larger numbers (at g = 20, mean 1e-3: -2e-12 from two terms
of 2e-9, three digits lost), while 1 - f(0) = sigmoid(-g) (1 - p(0)) is a product, ``1 - p(0) = -expm1(log p(0))``;
where f(0) is small, ``logaddexp`` adds two numbers of one sign. Pyro's
``ZeroInflatedDistribution`` switches to ``log(1 - gate)`` once its lazily cached ``gate`` has been read (by
``sample``, ``mean`` or ``variance``), which turned log f(3) of a gate logit of 20 from -22.3 into -inf; here
``gate`` is recomputed from the logits on every read and never cached, so the log-density is the same before
and after any other call.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch.distributions import constraints
from torch.nn.functional import logsigmoid

from pyrovae.distributions.shapes import check_parameters, expanded_batch_shape

_NO_SHAPE = torch.Size()


class _LogProb(torch.autograd.Function):
    """log f(x) from the gate logits g, log p(x) and where x = 0, by the forms of the module docstring, with the
    derivatives taken directly, each a product of positive terms:

        at x = 0:  d/dg = sigmoid(g) sigmoid(-g) (1 - p(0)) / f(0),   d/d log p(0) = sigmoid(-g) p(0) / f(0);
        at x > 0:  d/dg = -sigmoid(g),                                d/d log p(x) = 1.

    Through autograd, ``expm1``'s backward ((expm1(x) + 1) times the incoming gradient) cancelled where p(0) is
    small and ``sigmoid``'s (s (1 - s)) where the gate saturates (the derivative in g was 0 at g = -40 and 4e-8
    off at -20). One function for both cases, written in place: it runs over the whole data matrix in every step.
    Forward and reverse mode, and vmap."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gate_logits, log_base, is_zero):
        log_keep = logsigmoid(-gate_logits)
        keep = log_keep + log_base
        # in place only where a result has one input's shape: under vmap the two may be batched apart
        miss = torch.mul(torch.expm1(log_base).neg_(), log_keep.exp_())  # 1 - f(0) where x = 0
        near_one = miss < 0.5  # there log1p(-miss); else logaddexp (both finite everywhere: miss clamped)
        zero = torch.where(near_one, miss.clamp_(max=0.5).neg_().log1p_(),
                           torch.logaddexp(logsigmoid(gate_logits), keep))
        return torch.where(is_zero, zero, keep)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs, output)
        ctx.save_for_forward(*inputs, output)

    @staticmethod
    def _slopes(ctx) -> tuple[torch.Tensor, torch.Tensor]:
        gate_logits, log_base, is_zero, log_prob = ctx.saved_tensors
        log_gate, log_keep = logsigmoid(gate_logits), logsigmoid(-gate_logits)  # (out of place: create_graph)
        by_gate = torch.where(is_zero, torch.exp(log_gate + log_keep - log_prob) * -torch.expm1(log_base),
                              -torch.exp(log_gate))
        by_base = torch.where(is_zero, torch.exp(log_keep + log_base - log_prob), 1.0)
        return by_gate, by_base

    @staticmethod
    def backward(ctx, grad):
        gate_logits, log_base = ctx.saved_tensors[:2]
        by_gate, by_base = _LogProb._slopes(ctx)
        return (torch.mul(by_gate, grad).sum_to_size(gate_logits.shape),
                torch.mul(by_base, grad).sum_to_size(log_base.shape), None)

    @staticmethod
    def jvp(ctx, gate_tangent, base_tangent, _):
        by_gate, by_base = _LogProb._slopes(ctx)
        return gate_tangent * by_gate + base_tangent * by_base


class ZeroInflated(dist.ZeroInflatedDistribution):
    """The zero-inflated form of a count distribution ``base_dist`` with gate logits ``gate_logits`` (a subclass
    of Pyro's ``ZeroInflatedDistribution``, so code that tests for that class still finds it).

    Subclasses build the base from their own parameters and name them in ``arg_constraints``; the constructor
    checks those (with validation on) against their constraints, naming the parameter and the values at fault.

    :param base_dist: the count distribution, with an empty event shape.
    :param torch.Tensor gate_logits: log-odds of an extra zero, broadcast with the base's batch shape.
    :param dict parameters: the constructor's arguments by name, checked against ``arg_constraints``.
    """

    arg_constraints = {"gate_logits": constraints.real}
    support = constraints.nonnegative_integer

    def __init__(self, base_dist, gate_logits: torch.Tensor, parameters: dict | None = None,
                 validate_args=None) -> None:
        if base_dist.event_shape:
            raise ValueError(f"zero inflation needs a univariate base distribution, got event shape "
                             f"{tuple(base_dist.event_shape)}")
        if not isinstance(gate_logits, torch.Tensor):
            gate_logits = torch.as_tensor(gate_logits, dtype=torch.get_default_dtype())
        batch_shape = torch.broadcast_shapes(base_dist.batch_shape, gate_logits.shape)
        same = not torch.jit.is_tracing() and base_dist.batch_shape == batch_shape  # traced shapes are tensors
        self.base_dist = base_dist if same else base_dist.expand(batch_shape)
        self.gate_logits = gate_logits.expand(batch_shape)
        validate = type(self)._validate_args if validate_args is None else validate_args  # torch's default
        dist.TorchDistribution.__init__(self, batch_shape, _NO_SHAPE, validate_args=False)
        self._validate_args = validate
        if validate:
            check_parameters(self, {**(parameters or {}), "gate_logits": gate_logits})

    @property
    def gate(self) -> torch.Tensor:
        """sigmoid(gate_logits), the probability of an extra zero (recomputed on each read, never cached)."""
        return torch.sigmoid(self.gate_logits)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """The zero-inflated log-density from the gate logits, whatever was read before (module docstring)."""
        if self._validate_args:
            self._validate_sample(value)
        log_base = self.base_dist.log_prob(value)
        return _LogProb.apply(self.gate_logits.expand(log_base.shape), log_base, (value == 0).expand(log_base.shape))

    def sample(self, sample_shape=_NO_SHAPE) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            extra_zero = torch.bernoulli(self.gate.expand(shape)).bool()
            counts = self.base_dist.sample(sample_shape)
            return torch.where(extra_zero, counts.new_zeros(()), counts)

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(-self.gate_logits) * self.base_dist.mean

    @property
    def variance(self) -> torch.Tensor:
        """(1 - gate) (Var p + gate (E p)^2): the law of total variance, without a difference of squares."""
        base_mean = self.base_dist.mean
        return torch.sigmoid(-self.gate_logits) * (self.base_dist.variance + self.gate * base_mean.square())

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = expanded_batch_shape(self, batch_shape)
        new.base_dist = self.base_dist.expand(batch_shape)
        new.gate_logits = self.gate_logits.expand(batch_shape)
        dist.TorchDistribution.__init__(new, batch_shape, _NO_SHAPE, validate_args=False)
        new._validate_args = self._validate_args
        return new


__all__ = ["ZeroInflated"]

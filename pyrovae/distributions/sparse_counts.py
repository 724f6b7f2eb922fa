"""Scoring count data sparsely: the log-density at x = 0 everywhere, the rest only where x != 0.

Single-cell counts are 90-99% zeros, and at zero the Poisson and negative binomial log-densities need no
logarithm of x! and no Gamma function. :func:`score_counts` evaluates the cheap zero term on the full
tensor and the expensive remainder only at the gathered non-zero entries, in float64 (so that a float32
model keeps every digit it can hold even for counts of 1e6), and scatters it back. While a step is captured as a
graph (``train(compile=True)``) the remainder is computed densely instead: the number of non-zero entries is the
data's, and a graph's shapes are fixed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyrovae.ops.capture import capturing


def score_counts(
    x: torch.Tensor,
    zero_log_prob: torch.Tensor,
    nonzero_log_prob: Callable[..., torch.Tensor],
    *params: torch.Tensor,
    count_terms: Callable[..., tuple[torch.Tensor, ...]] | None = None,
    count_params: tuple[torch.Tensor, ...] = (),
) -> torch.Tensor:
    """``log p(x)`` elementwise from ``zero_log_prob`` (= log p(0), broadcastable with ``x``) and
    ``nonzero_log_prob(k, *params)``, which scores 1-D float64 counts ``k > 0`` with their gathered params.

    ``count_terms(k, *count_params)``, if given, computes the terms of the remainder that depend only on the counts
    and ``count_params`` (a dispersion per gene: not on the means), as a tuple of tensors. Where ``params`` carry
    dimensions that ``x`` and ``count_params`` do not (many draws of a latent per datum: importance sampling, AIS
    chains, particles), those terms are computed once per datum, not once per draw, and ``nonzero_log_prob``
    receives them after its params, gathered: ``nonzero_log_prob(k, *params, *terms)``. Otherwise it computes them
    itself.

    ``zero_log_prob`` must be a fresh intermediate of the caller: when it already has the full shape, the
    non-zero entries are written into it in place (autograd allows it, and it saves a full copy).
    """
    shape = torch.broadcast_shapes(zero_log_prob.shape, x.shape) or torch.Size([1])
    if capturing():  # the same values, every entry: where x = 0 the remainder is computed at k = 1 and discarded
        nonzero = (x != 0).expand(shape)
        k = torch.where(nonzero, x.expand(shape), 1).double()
        values = nonzero_log_prob(k, *(tensor.expand(shape).double() for tensor in params)).to(zero_log_prob.dtype)
        log_prob = torch.where(nonzero, values, zero_log_prob.expand(shape))
        return log_prob.reshape(torch.broadcast_shapes(zero_log_prob.shape, x.shape))
    tracing = torch.jit.is_tracing()  # no branch on a traced shape or count: the trace must hold for other data
    log_prob = (zero_log_prob if not tracing and zero_log_prob.shape == shape
                else zero_log_prob.expand(shape).contiguous())
    index = (x != 0).expand(shape).nonzero(as_tuple=True)
    if tracing or index[0].numel():
        gathered = [tensor.expand(shape)[index].double() for tensor in (x, *params)]  # gathers, no full copies
        if count_terms is not None and not tracing:  # a trace would keep its example's strides
            gathered += _shared_terms(x, shape, index, count_terms, count_params)
        values = nonzero_log_prob(*gathered).to(log_prob.dtype)
        log_prob = log_prob.index_put_(index, values)
    return log_prob.reshape(torch.broadcast_shapes(zero_log_prob.shape, x.shape))


def _unexpanded(t: torch.Tensor) -> torch.Tensor:
    """``t`` without the dimensions it was broadcast along (stride 0): a view of size 1 there, the same values."""
    if all(stride or size <= 1 for stride, size in zip(t.stride(), t.shape)):
        return t
    return t[tuple(slice(0, 1) if stride == 0 and size > 1 else slice(None)
                   for stride, size in zip(t.stride(), t.shape))]


def _shared_terms(x: torch.Tensor, shape: torch.Size, index: tuple, count_terms: Callable,
                  count_params: tuple) -> list[torch.Tensor]:
    """``count_terms`` at the non-zero entries ``index`` of ``shape``, computed once per entry of the counts' own
    shape (``x`` broadcast with ``count_params``) and gathered; [] where that saves little (no draws dimension, or
    fewer than four draws: the dense float64 terms of the counts' shape would cost more than they save)."""
    x, *count_params = (_unexpanded(t) for t in (x, *count_params))  # a distribution's .expand() broadcasts theta
    own = torch.broadcast_shapes(x.shape, *(p.shape for p in count_params)) or torch.Size([1])  # 0-d: one entry
    if 4 * own.numel() > shape.numel():  # fewer than four draws per datum: too few to pay for the extra gathers
        return []
    at = (x != 0).expand(own).nonzero(as_tuple=True)
    terms = count_terms(*(t.expand(own)[at].double() for t in (x, *count_params)))
    return [torch.zeros(own, dtype=t.dtype, device=t.device).index_put_(at, t).expand(shape)[index] for t in terms]


__all__ = ["score_counts"]

"""The ratio R_v(x) = I_{v+1}(x) / I_v(x) by Perron's continued fraction, and its exact derivative in x; the checks
and conversions of orders and arguments that every Bessel function of ``pyrovae/ops/bessel.py`` shares.

Perron's continued fraction (Gautschi & Slavik 1978) is evaluated backwards with a fixed number of terms: it
converges fastest exactly where the Gauss continued fraction is slow (x >> v), and 50 terms reach float64 precision
for every order up to 512 and x from 0 to 1e6 (tested against mpmath); known larger orders need fewer (25 from order
30 on). The derivative R_v' = 1 - R_v^2 - (2v+1) R_v / x switches to the asymptotic series of R_v far beyond the
order, where its terms cancel.
"""

from __future__ import annotations

import functools
import math

import torch

_CF_TERMS = 50  # terms of Perron's continued fraction for any order
# fewer terms reach float64 precision (4.5e-16 relative, x from 1e-4 to 1e6, measured) as the order grows:
# (smallest order, terms), with two terms of margin
_CF_TERMS_BY_ORDER = ((30.0, 25), (15.0, 27), (8.0, 30), (4.0, 36), (2.0, 39), (1.0, 42))


def _as_tensors(v, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x, dtype=torch.get_default_dtype())
    if not x.dtype.is_floating_point:
        x = x.to(torch.get_default_dtype())
    if isinstance(v, (int, float)):  # a traced op, not a constant tensor baked into a trace
        v = torch.full((), float(v), dtype=x.dtype, device=x.device)
    else:
        v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if torch.is_grad_enabled() and v.requires_grad:
        v = v.detach()
    return v, x


def _wide(dtype: torch.dtype) -> torch.dtype:
    # half and single precision inputs are computed in float64 (cheap: these act on per-datum vectors)
    return torch.float64 if dtype in (torch.float16, torch.bfloat16, torch.float32) else dtype


def _min_order(v) -> float | None:
    """The smallest order, checked (:func:`_check_order`): free for a Python number (the usual case), one device sync
    for a tensor; ``None`` while tracing or for no orders."""
    if isinstance(v, (int, float)):
        _check_order(float(v))
        return float(v)
    v = torch.as_tensor(v)
    if torch.jit.is_tracing() or not v.numel():
        return None
    smallest, largest = torch.stack(torch.aminmax(v.detach().double())).tolist()
    _check_order(smallest, largest)
    return smallest


def _cf_terms(smallest: float | None) -> int:
    if smallest is not None:
        for order, terms in _CF_TERMS_BY_ORDER:
            if smallest >= order:
                return terms
    return _CF_TERMS


def _check_order(smallest: float, largest: float | None = None) -> None:
    largest = smallest if largest is None else largest
    if not (smallest >= 0 and math.isfinite(largest)):  # NaN fails the comparison
        bad = smallest if not smallest >= 0 else largest
        raise ValueError(f"Bessel orders v must be finite and non-negative, got {bad}")


def _check_argument(x, validate: bool) -> None:
    """x must be >= 0 (not NaN): a ValueError naming the first value at fault, unless not ``validate`` or tracing."""
    if not validate or torch.jit.is_tracing() or not isinstance(x, torch.Tensor) or not x.numel():
        return
    bad = torch.isnan(x) | (x < 0)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        value = x[index].item()
        hint = ("a NaN usually comes from upstream (a network output, a division by zero): find where it starts"
                if math.isnan(value) else
                "I_v(-x) = (-1)^v I_v(x) for integer orders and is complex otherwise: pass |x| and keep the sign apart")
        raise ValueError(f"the Bessel function I_v(x) is computed here for x >= 0, got x = {value} at index {index} "
                         f"of x of shape {tuple(x.shape)} ({int(bad.sum())} such values); {hint}")


def _finite(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where ``x`` is +inf, and ``x`` with those entries replaced by 1 (their results are set to the limits after,
    so no NaN from inf - inf reaches a value or a gradient)."""
    infinite = torch.isinf(x)
    return infinite, torch.where(infinite, 1.0, x)


def _perron_tail(v: torch.Tensor, x: torch.Tensor, terms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """nu = v + 1 and the tail t of Perron's continued fraction, R_v(x) = x / (x + 2 nu - t), for x >= 0."""
    nu = v + 1.0
    # the tail t_k = (2 nu + 2k - 1) x / (2 (nu + x) + k - t_{k+1}) for k = terms..1: numerators and
    # denominators of all terms at once, then two kernels per term
    rank = len(torch.broadcast_shapes(nu.shape, x.shape))
    k = torch.arange(terms, 0, -1, dtype=x.dtype, device=x.device).reshape((terms,) + (1,) * rank)
    numerators = ((2.0 * nu + (2.0 * k - 1.0)) * x).unbind(0)
    denominators = (2.0 * (nu + x) + k).unbind(0)
    tail = numerators[0] / denominators[0]
    for i in range(1, terms):
        tail = numerators[i] / (denominators[i] - tail)
    return nu, tail


def _ratio_cf(v: torch.Tensor, x: torch.Tensor, terms: int = _CF_TERMS) -> torch.Tensor:
    """I_{v+1}(x) / I_v(x) by Perron's continued fraction, for x >= 0 (0 at x = 0)."""
    nu, tail = _perron_tail(v, x, terms)
    return x / (x + 2.0 * nu - tail)


def _ratio_and_gap_cf(v: torch.Tensor, x: torch.Tensor, terms: int = _CF_TERMS) -> tuple[torch.Tensor, torch.Tensor]:
    """(R_v(x), 1 - R_v(x)) from one continued fraction: 1 - R = (2 nu - t) / (x + 2 nu - t), without the
    cancellation of 1 - R at large x (where 1 - R ~ (2v + 1) / (2x) and 2 nu - t tends to v + 1/2)."""
    nu, tail = _perron_tail(v, x, terms)
    gap = 2.0 * nu - tail
    return x / (x + gap), gap / (x + gap)


_ASYMPTOTIC_TERMS = 20


def _asymptotic_coefficients(v):
    """c_1..c_K of R_v(x) ~ 1 - sum_k c_k x^-k (x >> v^2), from the Riccati equation R' = 1 - R^2 - (2v+1) R / x:
    c_1 = v + 1/2, c_n = ((n - 1 - 2v - 1) c_(n-1) + sum_(i+j=n) c_i c_j) / 2; ``v`` a number or a tensor."""
    c = [None, 0.5 * (2 * v + 1)]
    for n in range(2, _ASYMPTOTIC_TERMS + 1):
        products = sum(c[i] * c[n - i] for i in range(1, n))
        c.append(0.5 * ((n - 1 - (2 * v + 1)) * c[n - 1] + products))
    return c


@functools.lru_cache(maxsize=64)
def _series_weights(v: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """k c_k, k = 1..K, of one order: the weights of x^-(k+1) in R_v'(x) far beyond the order."""
    c = _asymptotic_coefficients(v)
    return torch.tensor([k * c[k] for k in range(1, _ASYMPTOTIC_TERMS + 1)], dtype=dtype, device=device)


def _ratio_derivative(v, x: torch.Tensor, ratio: torch.Tensor, gap: torch.Tensor | None = None) -> torch.Tensor:
    """R_v'(x) = 1 - R^2 - (2v+1) R / x (limit 1 / (2v + 2) at x = 0). Where x > (v+1)^2 + 25 its terms, each about
    (2v+1) / x, cancel to (2v+1) / (2 x^2) (relative error eps x^2 / v: 1% at x = 1e7, wrong sign by 1e13), so
    there R' = sum_k k c_k x^-(k+1) from the asymptotic series of R (20 terms; within 3e-15 of mpmath past the switch
    for orders 0 to 499). ``gap``: 1 - R where the caller has it (from the continued fraction's tail, not 1 - R
    rounded), which makes the form below the switch and above x = 2v + 2 (2g - (2v+1) / x) + g ((2v+1) / x - g): its
    cancellation costs eps x, not eps x^2 / v (2e-10 at v = 127 and 1.7e-7 at v = 2047 just below the switch,
    then). ``v``: a number or a tensor of orders."""
    tiny = x < torch.finfo(x.dtype).tiny ** 0.5
    safe_x = torch.where(tiny, torch.ones_like(x), x)
    derivative = 1.0 - ratio * ratio - (2.0 * v + 1.0) * ratio / safe_x
    if gap is not None:  # where R is near 1 (below, where (2v+1) / x is large, the first form is the better)
        slope = (2.0 * v + 1.0) / safe_x
        derivative = torch.where(x > 2.0 * v + 2.0, (2.0 * gap - slope) + gap * (slope - gap), derivative)
    far = x > (v + 1.0) ** 2 + 25.0  # no branch on it: a traced or compiled backward has no data-dependent flow
    inverse = 1.0 / torch.where(far, x, torch.full_like(x, 1e300 if x.dtype == torch.float64 else 1e30))
    derivative = torch.where(far, _asymptotic_derivative(v, inverse), derivative)
    return torch.where(tiny, 1.0 / (2.0 * v + 2.0), derivative)


def _asymptotic_derivative(v, inverse: torch.Tensor) -> torch.Tensor:
    """sum_k k c_k x^-(k+1) at ``inverse`` = 1 / x: for one order (a number, the usual case: the von Mises-Fisher's),
    as one power and one product with the coefficients (a few operations in the backward of every step); for a
    tensor of orders, by Horner's rule."""
    if isinstance(v, (int, float)):
        powers = inverse.unsqueeze(-1).expand(*inverse.shape, _ASYMPTOTIC_TERMS + 1).cumprod(-1)[..., 1:]
        return powers @ _series_weights(float(v), inverse.dtype, inverse.device)
    c = _asymptotic_coefficients(v)
    series = torch.zeros_like(inverse)
    for k in range(_ASYMPTOTIC_TERMS, 0, -1):
        series = (series + k * c[k]) * inverse
    return series * inverse


class _BesselRatio(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, x, terms):
        infinite, finite_x = _finite(x)
        ratio = torch.where(infinite, 1.0, _ratio_cf(v, finite_x, terms))
        ctx.save_for_backward(v, x, ratio)
        return ratio

    @staticmethod
    def backward(ctx, grad):
        v, x, ratio = ctx.saved_tensors
        return None, grad * _ratio_derivative(v, x, ratio), None

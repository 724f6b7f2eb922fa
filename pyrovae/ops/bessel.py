"""Modified Bessel functions of the first kind in torch: log I_v(x) and the ratio I_{v+1}(x) / I_v(x).

Both are what the von Mises-Fisher distribution needs: its normaliser holds log I_{m/2-1}(kappa) and its
mean resultant length is A_m(kappa) = I_{m/2}(kappa) / I_{m/2-1}(kappa). They are computed in torch on the
tensor's device and dtype, with no host round trip, and are differentiable in ``x`` through the exact
derivatives (``d/dx log I_v = R_v + v/x`` and ``R_v' = 1 - R_v^2 - (2v+1) R_v / x``), not by
differentiating the iterations. Orders are non-negative and are not differentiated. Single and half
precision inputs are evaluated in float64 and rounded once at the end. Give the order as a Python number
(as the distributions do) and nothing waits on the device; a tensor of orders costs one sync for its check.

Arguments are checked: an order that is negative, NaN or infinite, and an ``x`` that is NaN or negative, are a
``ValueError`` naming the value and its index (one device sync; ``validate=False`` skips the check of ``x``, as
the distributions do, which validate their concentration themselves; under ``torch.jit.trace`` it is skipped too;
unchecked, a NaN gives NaN and a negative x is read as 0). ``x = +inf`` gives the limits: log I_v = +inf,
log(I_v e^-x) = -inf, R_v = 1.

* The ratio R_v(x) uses Perron's continued fraction (Gautschi & Slavik 1978), evaluated backwards with a
  fixed number of terms: it converges fastest exactly where the Gauss continued fraction is slow (x >> v),
  and 50 terms reach float64 precision for every order up to 512 and x from 0 to 1e6 (tested against
  mpmath); known larger orders need fewer (25 from order 30 on). It and its derivative live in
  ``pyrovae/ops/bessel_ratio.py``, with the argument checks all these functions share.
* log I_v(x) uses Debye's uniform asymptotic expansion (Abramowitz & Stegun 9.7.7 with the six correction
  terms u_1 ... u_6 of DLMF 10.41.10) at an order nu >= 30, and steps down to lower orders by the recurrence
  log I_v = log I_{v+1} - log R_v. Measured against mpmath at 40 digits (orders 0-200, x from 0.05 to 1e5):
  the relative error of log I_v is at most 3e-12 for orders below 40, largest near x = 12-23 where the
  expansion at order 30 is least accurate (with four terms it was 8.5e-10 there), and at float64 resolution
  (below 1e-14) for orders of 40 and more. The ratio R_v is at float64 resolution everywhere.
"""

from __future__ import annotations

import math

import torch

from pyrovae.ops.bessel_ratio import (
    _as_tensors,
    _BesselRatio,
    _cf_terms,
    _check_argument,
    _check_order,
    _finite,
    _min_order,
    _ratio_and_gap_cf,
    _ratio_cf,
    _ratio_derivative,
    _wide,
)

_DEBYE_ORDER = 30.0  # orders at and above this use the uniform expansion directly


def bessel_iv_ratio(v, x: torch.Tensor, validate: bool = True) -> torch.Tensor:
    """R_v(x) = I_{v+1}(x) / I_v(x) for orders v >= 0 and x >= 0, elementwise (broadcast), differentiable in x.

    Equal to 0 at x = 0 and tending to 1 as x grows (1 at x = +inf); A_m(kappa) of the von Mises-Fisher
    distribution on S^(m-1) is ``bessel_iv_ratio(m / 2 - 1, kappa)``. A negative, NaN or infinite order, or a
    negative or NaN ``x`` (unless ``validate=False``), is a ``ValueError``.
    """
    smallest = _min_order(v)
    _check_argument(x, validate)
    if isinstance(v, (int, float)) and v < _FIXED_ORDER_LIMIT:
        return bessel_terms(v, x, validate=False)[1]
    v, x = _as_tensors(v, x)
    v, x = torch.broadcast_tensors(v, x)
    wide = _wide(x.dtype)
    return _BesselRatio.apply(v.to(wide), x.clamp(min=0).to(wide), _cf_terms(smallest)).to(x.dtype)


# Debye polynomials u_k(p) = p^k P_k(p^2) / d_k of A&S 9.3.9-9.3.10: coefficients of P_k in t = p^2, highest
# power first for Horner's scheme, and d_k.
_DEBYE_POLYNOMIALS = (
    ((-5.0, 3.0), 24.0),
    ((385.0, -462.0, 81.0), 1152.0),
    ((-425425.0, 765765.0, -369603.0, 30375.0), 414720.0),
    ((185910725.0, -446185740.0, 349922430.0, -94121676.0, 4465125.0), 39813120.0),
    ((-188699385875.0, 566098157625.0, -614135872350.0, 284499769554.0, -49286948607.0, 1519035525.0),
     6688604160.0),
    ((1023694168371875.0, -3685299006138750.0, 5104696716244125.0, -3369032068261860.0, 1050760774457901.0,
      -127577298354750.0, 2757049477875.0), 4815794995200.0),
)


def _log_iv_debye(nu: torch.Tensor, x: torch.Tensor, scaled: bool = False) -> torch.Tensor:
    """log I_nu(x) by the uniform asymptotic expansion (accurate for nu >= 30 and every x >= 0); with ``scaled``,
    log I_nu(x) - x, whose leading term nu (eta - z) = nu / (root + z) + nu log(z / (1 + root)) is formed without
    subtracting x from a number as large (at x = 1e10 that subtraction alone loses 1e-6)."""
    z = x / nu
    root = torch.hypot(torch.ones_like(z), z)  # sqrt(1 + z^2) without overflow of z^2 at huge x
    p = 1.0 / root
    t = p * p
    if scaled:
        eta = 1.0 / (root + z) + torch.log(z / (1.0 + root))  # eta - z
    else:
        eta = root + torch.log(z) - torch.log1p(root)
    correction = torch.ones_like(x)
    power = torch.ones_like(x)  # (p / nu)^k
    for coefficients, denominator in _DEBYE_POLYNOMIALS:
        value = torch.full_like(t, coefficients[0] / denominator)
        for c in coefficients[1:]:
            value = value * t + c / denominator
        power = power * p / nu
        correction = correction + value * power
    return nu * eta - 0.5 * torch.log(2.0 * math.pi * nu) - 0.5 * torch.log(root) + torch.log(correction)


def _log_iv(v: torch.Tensor, x: torch.Tensor, max_steps: int, terms: int, scaled: bool = False,
            debye_order: float = _DEBYE_ORDER) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log I_v(x) (minus x when ``scaled``), and R_v(x) when the recurrence computed it (``None`` otherwise)."""
    infinite, x = _finite(x)
    positive = x > 0
    safe_x = torch.where(positive, x, torch.ones_like(x))
    at_zero = torch.where(v == 0, torch.zeros_like(x), torch.full_like(x, -math.inf))
    at_zero = torch.where(infinite, -math.inf if scaled else math.inf, at_zero)  # the limits at x = +inf
    at_zero = torch.where(torch.isnan(x), x, at_zero)  # unchecked (validate=False): NaN in, NaN out
    positive = positive & ~infinite
    if max_steps == 0:
        return torch.where(positive, _log_iv_debye(v, safe_x, scaled), at_zero), None
    # log I_v = log I_{v+n} - sum_{j<n} log R_{v+j}, with n = ceil(debye_order - v): the ratios of all the steps are
    # one continued fraction over a stacked (steps, ...) tensor, so the cost does not grow with the steps
    steps = torch.clamp(torch.ceil(debye_order - v), min=0)
    j = torch.arange(max_steps, dtype=x.dtype, device=x.device).reshape((max_steps,) + (1,) * x.dim())
    ratios = _ratio_cf(v + j, safe_x, terms)
    log_ratios = torch.where(j < steps, torch.log(ratios), torch.zeros_like(ratios))
    result = _log_iv_debye(v + steps, safe_x, scaled) - log_ratios.sum(0)
    return torch.where(positive, result, at_zero), torch.where(infinite, 1.0, ratios[0])


class _LogBesselIv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, x, max_steps, terms, scaled=False):
        result, ratio = _log_iv(v, x, max_steps, terms, scaled)
        ctx.save_for_backward(v, x, ratio)
        ctx.terms, ctx.scaled = terms, scaled
        return result

    @staticmethod
    def backward(ctx, grad):
        v, x, ratio = ctx.saved_tensors
        if ratio is None:
            infinite, finite_x = _finite(x)
            ratio = torch.where(infinite, 1.0, _ratio_cf(v, finite_x, ctx.terms))
        positive = x > 0
        safe_x = torch.where(positive, x, torch.ones_like(x))
        # d/dx log I_v(x) = R_v(x) + v / x; at x = 0 it is 0 for v = 0 and +inf otherwise
        at_zero = torch.where(v == 0, torch.zeros_like(x), torch.full_like(x, math.inf))
        derivative = torch.where(positive, ratio + v / safe_x, at_zero) - (1.0 if ctx.scaled else 0.0)
        return None, torch.where(grad == 0, 0.0, grad * derivative), None, None, None  # 0 x inf: 0


_FIXED_ORDER_LIMIT = 40.0  # known orders below this use _FixedOrder; Debye's expansion is at float64 resolution above
_SERIES_LIMIT = 30.0  # a fixed order's power series up to this x, a Chebyshev series in 2 * 30 / x - 1 beyond
_SERIES_TERMS = 64  # terms of the power series: the last is below 1e-20 of the sum at x = 30 for every order
_CHEBYSHEV_TERMS = 33  # float64 resolution for every order below 30 (coefficients beyond are below 1e-15)
_REFERENCE_DEBYE_ORDER = 80.0  # the fit's reference values recur down from here (Debye's error is then < 1e-15)


class _FixedOrder:
    """log I_v(x) - x, R_v(x) and 1 - R_v(x) for one known order 0 <= v < 40 and every x >= 0, in about twenty
    tensor operations whatever x is (the continued fractions take a hundred and more).

    * x <= 30: the power series I_v(x) = (x/2)^v / Gamma(v+1) S_v(x^2 / 4), S_v(q) = sum_j c_j q^j with
      c_j = Gamma(v+1) / (j! Gamma(v+j+1)), and R_v(x) = x / (2v + 2) S_{v+1} / S_v: both sums of positive terms,
      64 of them from one matrix product of the powers q^j.
    * x > 30: with y = 60 / x - 1 in (-1, 1], log I_v(x) - x + log(2 pi x) / 2 and log(x (1 - R_v(x))) are smooth,
      bounded functions of y (for orders up to 60 at least), summed as 33-term Chebyshev series, T_k(y) =
      cos(k arccos y). Their coefficients are interpolated once per order from reference values at the Chebyshev
      nodes (the recurrence from order 80 and the continued fraction).

    Measured against mpmath (tests/ops/test_bessel.py) all three are at float64 resolution: relative errors below
    2e-14 for log I_v and 1e-13 for R_v and 1 - R_v, where the recurrence from order 30 reached 3e-12.
    """

    def __init__(self, v: float, device: torch.device) -> None:
        self.v, self.log_gamma = v, math.lgamma(v + 1.0)
        j = torch.arange(_SERIES_TERMS, dtype=torch.float64)
        series = [torch.exp(math.lgamma(order + 1.0) - torch.lgamma(j + 1.0) - torch.lgamma(order + j + 1.0))
                  for order in (v, v + 1.0)]
        self.series, self.powers = torch.stack(series, -1).to(device), j.to(device)
        k = torch.arange(_CHEBYSHEV_TERMS, dtype=torch.float64)
        angles = math.pi * (k + 0.5) / _CHEBYSHEV_TERMS
        x = 2.0 * _SERIES_LIMIT / (torch.cos(angles) + 1.0)
        order = torch.full_like(x, v)
        terms = _cf_terms(v)
        log_ive, _ = _log_iv(order, x, math.ceil(_REFERENCE_DEBYE_ORDER - v), terms, True, _REFERENCE_DEBYE_ORDER)
        values = torch.stack([log_ive + 0.5 * torch.log(2.0 * math.pi * x),
                              torch.log(x * _ratio_and_gap_cf(order, x, terms)[1])], -1)
        # interpolation at the nodes: c_n = (2 / K) sum_i f(y_i) T_n(y_i), the first halved
        coefficients = (2.0 / _CHEBYSHEV_TERMS) * torch.cos(torch.outer(k, angles)) @ values
        coefficients[0] *= 0.5
        self.chebyshev, self.degrees = coefficients.to(device), k.to(device)

    def _constants(self) -> tuple[torch.Tensor, ...]:
        """The fit's tensors; fresh copies, made outside the trace, while ``torch.jit.trace`` records a call. (The
        trace takes a tensor it meets for the first time as a constant of the scope it is in, the custom function's
        subgraph; a second call in the same trace would look the same tensor up there and fail, "unordered_map::at".)
        """
        constants = self.series, self.powers, self.chebyshev, self.degrees
        if not torch._C._get_tracing_state():
            return constants
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return tuple(t.clone() for t in constants)
        finally:
            torch._C._set_tracing_state(state)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log I_v(x) - x, R_v(x), 1 - R_v(x)) for float64 ``x >= 0``."""
        series_coefficients, powers, chebyshev, degrees = self._constants()
        small = x <= _SERIES_LIMIT
        near = torch.where(small, x, _SERIES_LIMIT)  # each branch sees arguments in its range only
        far = torch.where(small, _SERIES_LIMIT, x)
        sums = torch.pow((0.25 * near * near).unsqueeze(-1), powers) @ series_coefficients
        series, next_series = sums.unbind(-1)
        log_ive_near = torch.special.xlogy(self.v, 0.5 * near) - self.log_gamma + torch.log(series) - near
        ratio_near = near / (2.0 * self.v + 2.0) * next_series / series
        fit = torch.cos(torch.acos(2.0 * _SERIES_LIMIT / far - 1.0).unsqueeze(-1) * degrees) @ chebyshev
        scaled, log_gap = fit.unbind(-1)
        one_minus_far = torch.exp(log_gap) / far
        log_ive = torch.where(small, log_ive_near, scaled - 0.5 * torch.log(2.0 * math.pi * far))
        one_minus_ratio = torch.where(small, 1.0 - ratio_near, one_minus_far)
        ratio = torch.where(small, ratio_near, 1.0 - one_minus_far)
        return log_ive, ratio, one_minus_ratio


_FIXED_ORDERS: dict = {}


def _fixed_order(v: float, device: torch.device) -> _FixedOrder:
    key = (v, device)
    if key not in _FIXED_ORDERS:
        _FIXED_ORDERS[key] = _FixedOrder(v, device)
    return _FIXED_ORDERS[key]


def _terms_gradient(x, v: float, ratio, one_minus_ratio, grad_log_ive, grad_ratio, grad_one_minus_ratio):
    """The gradient in x of (log I_v(x) - x, R_v(x), 1 - R_v(x)) by the exact derivatives."""
    positive = x > 0
    safe_x = torch.where(positive, x, torch.ones_like(x))
    grad = torch.zeros_like(x)
    if grad_log_ive is not None:
        # d/dx (log I_v(x) - x) = v / x - (1 - R_v(x)); at x = 0: -1 for v = 0, +inf otherwise
        at_zero = -1.0 if v == 0 else math.inf
        slope = torch.where(positive, v / safe_x - one_minus_ratio, at_zero)
        # a zero gradient (autograd passes zeros for an output not used) times an infinite slope is 0, not NaN
        grad = grad + torch.where(grad_log_ive == 0, 0.0, grad_log_ive * slope)
    if grad_ratio is not None or grad_one_minus_ratio is not None:
        net = (0.0 if grad_ratio is None else grad_ratio) - (0.0 if grad_one_minus_ratio is None
                                                             else grad_one_minus_ratio)
        grad = grad + net * _ratio_derivative(v, x, ratio, one_minus_ratio)
    return grad


class _BesselTerms(torch.autograd.Function):
    """(log I_v(x) - x, R_v(x), 1 - R_v(x)) with their exact derivatives in x: evaluated here, or ``known`` values
    computed before attached anew (a new graph node per call, so that values kept between calls differentiate any
    number of times). One opaque operation under ``torch.jit.trace``, so a trace never records the fixed order's
    one-off fit."""

    @staticmethod
    def forward(ctx, x, v, *known):
        log_ive, ratio, one_minus_ratio = (t.clone() for t in known) if known else _term_values(v, x)
        ctx.save_for_backward(x, ratio, one_minus_ratio)
        ctx.v, ctx.num_known = v, len(known)
        return log_ive, ratio, one_minus_ratio

    @staticmethod
    def backward(ctx, grad_log_ive, grad_ratio, grad_one_minus_ratio):
        x, ratio, one_minus_ratio = ctx.saved_tensors
        grad = _terms_gradient(x, ctx.v, ratio, one_minus_ratio, grad_log_ive, grad_ratio, grad_one_minus_ratio)
        return (grad, None) + (None,) * ctx.num_known


def _wide_argument(x) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as a floating tensor, and its non-negative part in the dtype the terms are computed in."""
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        x = torch.as_tensor(x, dtype=torch.get_default_dtype())
    return x, x.clamp(min=0).to(_wide(x.dtype))


@torch.no_grad()
def _term_values(v: float, wide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log I_v(x) - x, R_v(x), 1 - R_v(x)) without a graph: the fixed-order series below order 40; above, Debye's
    expansion and the continued fraction, whose tail gives 1 - R_v directly."""
    if v < _FIXED_ORDER_LIMIT:
        return _fixed_order(v, wide.device)(wide)
    order, terms = torch.full_like(wide, v), _cf_terms(v)
    infinite, finite_x = _finite(wide)
    ratio, gap = _ratio_and_gap_cf(order, finite_x, terms)
    return (_log_iv(order, wide, 0, terms, scaled=True)[0], torch.where(infinite, 1.0, ratio),
            torch.where(infinite, 0.0, gap))


def attach_bessel_terms(v: float, x: torch.Tensor, terms: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``terms = bessel_terms(v, x)`` computed earlier (detached), made differentiable in ``x`` again at the cost of
    one operation: what lets a distribution compute them once and use them in every call."""
    x, wide = _wide_argument(x)
    attached = _BesselTerms.apply(wide, float(v), *(t.to(wide.dtype) for t in terms))
    return tuple(t.to(x.dtype) for t in attached)


def bessel_terms(v: float, x: torch.Tensor, validate: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(log(I_v(x) e^-x), R_v(x), 1 - R_v(x))`` for one order ``v >= 0`` (a Python number) in one evaluation,
    differentiable in ``x`` and of its dtype: what the von Mises-Fisher distribution needs, with 1 - R_v formed
    without cancellation where R_v is close to 1. A negative or NaN ``x`` is a ``ValueError`` unless
    ``validate=False`` (then the terms of a NaN are NaN, and a negative ``x`` is read as 0)."""
    _check_order(float(v))
    _check_argument(x, validate)
    x, wide = _wide_argument(x)
    terms = _BesselTerms.apply(wide, float(v))
    return tuple(t.to(x.dtype) for t in terms)


def _log_bessel(v, x: torch.Tensor, scaled: bool, validate: bool) -> torch.Tensor:
    smallest = _min_order(v)
    _check_argument(x, validate)
    if isinstance(v, (int, float)) and v < _FIXED_ORDER_LIMIT:
        x, wide = _wide_argument(x)
        log_ive = _BesselTerms.apply(wide, float(v))[0]
        if not scaled:  # log I_v(inf) = inf, not -inf + inf
            log_ive = torch.where(torch.isinf(wide), wide, log_ive + wide)
        return log_ive.to(x.dtype)
    # recurrence steps down from the Debye order (the upper bound 30 when the orders are unknown: tracing)
    max_steps = math.ceil(_DEBYE_ORDER) if smallest is None else max(0, math.ceil(_DEBYE_ORDER - smallest))
    v, x = _as_tensors(v, x)
    v, x = torch.broadcast_tensors(v, x)
    wide = _wide(x.dtype)
    terms = _cf_terms(smallest)
    return _LogBesselIv.apply(v.to(wide), x.clamp(min=0).to(wide), max_steps, terms, scaled).to(x.dtype)


def log_bessel_iv(v, x: torch.Tensor, validate: bool = True) -> torch.Tensor:
    """log I_v(x) for orders v >= 0 and x >= 0, elementwise (broadcast), differentiable in x.

    Computed in log space, so it neither overflows for huge x nor underflows for huge orders; ``x = 0``
    gives 0 for v = 0 and -inf otherwise, ``x = +inf`` gives +inf. A negative, NaN or infinite order, or a
    negative or NaN ``x`` (unless ``validate=False``), is a ``ValueError``.
    """
    return _log_bessel(v, x, scaled=False, validate=validate)


def log_bessel_ive(v, x: torch.Tensor, validate: bool = True) -> torch.Tensor:
    """log(I_v(x) e^{-x}), the log of the exponentially scaled function (scipy's ``ive``), computed scaled: its
    absolute error stays at float64 resolution of the result even where x is huge (not of x); -inf at x = +inf.
    Arguments are checked as by :func:`log_bessel_iv`."""
    return _log_bessel(v, x, scaled=True, validate=validate)

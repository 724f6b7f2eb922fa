"""log(1 + u) - u / (1 + u) for u >= 0 to relative precision: the derivative in theta of the negative binomial's
log-density at zero, -theta log1p(mu / theta), is minus this at u = mu / theta.

Taken as written it cancels for small u (both terms ~ u, the answer u^2 / 2): at u = 1e-4, the float32 ulp of
either term is most of the answer. With w = u / (2 + u), log(1 + u) = 2 atanh(w), and

    log(1 + u) - u / (1 + u) = u^2 / ((1 + u) (2 + u)) + 2 (atanh(w) - w),

a sum of two non-negative terms, the second w^3 (1/3 + w^2/5 + w^4/7 + ...) by its series for small w (nine terms
in float64, five otherwise) and ``log1p(u) / 2 - w`` from w = 0.15 on, where the first term is at least seven times
its rounding. Relative error within a few eps for every u >= 0 (tested against mpmath).
"""

from __future__ import annotations

import torch

SERIES_BELOW = 0.15  # w = u / (2 + u) below which atanh(w) - w is taken by its series
_TERMS = {torch.float64: 9}  # (0.15)^(2K+1) / (2K+3) against the answer's ~ 2 w^2: 1e-17 at K = 9; 7e-11 at K = 5
_DEFAULT_TERMS = 5


def log1p_minus_fraction(u: torch.Tensor) -> torch.Tensor:
    """``log1p(u) - u / (1 + u)`` for ``u >= 0``, without cancellation (module docstring); 0 at u = 0, log(u) - 1 +
    O(1/u) as u grows. Elementwise, no data-dependent branches: it traces and compiles."""
    w = (1.0 + 2.0 / u).reciprocal()  # u / (2 + u), 0 at u = 0 and 1 at u = inf (no inf / inf)
    w2 = w * w
    series = torch.full_like(w, 1.0 / (2 * _TERMS.get(u.dtype, _DEFAULT_TERMS) + 1))
    for k in reversed(range(_TERMS.get(u.dtype, _DEFAULT_TERMS) - 1)):  # sum_k w^(2k) / (2k + 3), by Horner
        series = series * w2 + 1.0 / (2 * k + 3)
    atanh_excess = torch.where(w < SERIES_BELOW, w2 * w * series, 0.5 * torch.log1p(u) - w)
    return (1.0 + u.reciprocal()).reciprocal() * w + 2.0 * atanh_excess  # u / (1 + u) * w = u^2 / ((1 + u) (2 + u))

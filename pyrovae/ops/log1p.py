"""log(1 + u) - u / (1 + u) for u >= 0, to relative precision, for the negative binomial's derivative in theta.

At a zero count the negative binomial's log-density is -theta log1p(mu / theta), whose derivative in theta is
-(log(1 + u) - u / (1 + u)) at u = mu / theta. Taken as written this cancels for small u (both terms ~ u, the answer
~ u^2 / 2): at u = 1e-4 the float32 ulp of either term is most of the answer. With w = u / (2 + u),
log(1 + u) = 2 atanh(w), and

    log(1 + u) - u / (1 + u) = u^2 / ((1 + u) (2 + u)) + 2 (atanh(w) - w),

a sum of two non-negative terms. atanh(w) - w = w^3 (1/3 + w^2/5 + w^4/7 + ...) by its series below w = 0.15
(nine terms in float64, four otherwise), ``log1p(u) / 2 - w`` above, where the first term is at least seven times
its rounding. Relative error within a few eps for every u >= 0 (tested against mpmath). It
runs over a whole data matrix in a step's backward, so it is written in place: about twenty passes over the
matrix, against five for the cancelling form.
"""

from __future__ import annotations

import torch

SERIES_BELOW = 0.15  # w below which atanh(w) - w is taken by its series
# terms of the series: the first left out, w^(2K+3) / (2K+3), is under 1e-17 (float64, K = 9) and 2e-9 (K = 4) of
# the answer, ~2 w^2, at the switch; above it the direct form loses about 1 / (2w) eps, 3.3 eps at the switch
_TERMS = {torch.float64: 9}
_DEFAULT_TERMS = 4


def log1p_minus_fraction(u: torch.Tensor) -> torch.Tensor:
    """``log1p(u) - u / (1 + u)`` for ``u >= 0``, without cancellation (module docstring); 0 at u = 0, log(u) - 1 +
    O(1/u) as u grows, inf at inf. Elementwise, no data-dependent branches: it traces and compiles. Written in place
    unless autograd records it (a backward's own derivative, ``create_graph=True``), the same values either way."""
    terms = _TERMS.get(u.dtype, _DEFAULT_TERMS)
    if torch.is_grad_enabled() and u.requires_grad:
        inverse = u.reciprocal()
        w = (1.0 + 2.0 * inverse).reciprocal()  # u / (2 + u), 0 at u = 0 and 1 at inf (no inf / inf)
        fraction = (1.0 + inverse).reciprocal()  # u / (1 + u)
        w2 = w * w
        series = w2 * (1.0 / (2 * terms + 1)) + 1.0 / (2 * terms - 1)
        for k in reversed(range(terms - 2)):  # sum_k w^(2k) / (2k + 3), by Horner
            series = series * w2 + 1.0 / (2 * k + 3)
        atanh_excess = torch.where(w < SERIES_BELOW, series * w2 * w, 0.5 * torch.log1p(u) - w)
        return fraction * w + 2.0 * atanh_excess  # u / (1 + u) * w = u^2 / ((1 + u) (2 + u))
    inverse = u.reciprocal()  # the same, in place: about twenty passes over a data matrix in a step's backward
    w = inverse.mul(2.0).add_(1.0).reciprocal_()
    fraction = inverse.add_(1.0).reciprocal_()
    w2 = w.square()
    series = w2.mul(1.0 / (2 * terms + 1)).add_(1.0 / (2 * terms - 1))
    for k in reversed(range(terms - 2)):
        series.mul_(w2).add_(1.0 / (2 * k + 3))
    atanh_excess = torch.where(w < SERIES_BELOW, series.mul_(w2).mul_(w), torch.log1p(u).mul_(0.5).sub_(w))
    return fraction.mul_(w).add_(atanh_excess.mul_(2.0))

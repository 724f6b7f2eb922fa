"""Log-gamma and digamma differences without cancellation.

``lgamma(a + b) - lgamma(a)`` and ``digamma(a + b) - digamma(a)`` are small differences of large numbers once ``a``
is large (the Power Spherical's normaliser and entropy at a high concentration, the negative binomial at a large
dispersion): at a = 1e10 the log-gamma difference taken directly keeps 6 digits of 16. Here they are taken
analytically: for the negative binomial by Stirling's series from theta = 10 (:func:`log_gamma_ratio`); for a
constant ``b`` by the recurrences Gamma(x + 1) = x Gamma(x) and psi(x + 1) = psi(x) + 1 / x, which shift ``a`` up by
:data:`SHIFT` into the range of Stirling's and digamma's series through sums of terms of one sign, and one formula
serves every ``a`` (no branches: it traces and compiles). The digamma and trigamma differences are sums of parts
of one sign throughout; the log-gamma difference subtracts two positive parts, which cancel only near its zero
(lgamma(a + b) = lgamma(a), a near 1): a few eps absolute there, relative precision elsewhere.
The trigamma difference is given too, so that no gradient goes through torch's ``polygamma(1, x)`` (the backward of
``torch.digamma``), which is 2e-10 to 5e-10 off (relative) for x in [0.5, 3] in float64. About 30 small operations
each, against two for ``lgamma(a + b) - lgamma(a)``: for where the last digits matter more than the time.
"""

from __future__ import annotations

import torch

ASYMPTOTIC_FROM = 10.0  # where the negative binomial's Stirling series takes over from lgamma
_STIRLING = (1.0 / 12, -1.0 / 360, 1.0 / 1260, -1.0 / 1680, 1.0 / 1188)  # log Gamma's remainder, of y^-1, y^-3, ...
SHIFT = 48  # the recurrences' steps before the series: a + 48 >= 48 for every a > 0
# From y = 48, the first term left out of each series adds under 4e-17 (relative) to a difference of two:
_DIGAMMA = (1.0 / 12, -1.0 / 120, 1.0 / 252, -1.0 / 240)  # B_2k / 2k, of y^-2, ..., y^-8 (psi = log y - 1/2y - ...)
# six terms, for digamma_ratio_excess from theta = 20 (the next, 7 / (6 * 14) y^-14, is 5e-20 there)
_DIGAMMA_SLOPE = _DIGAMMA + (1.0 / 132, -691.0 / 32760)
SLOPE_ASYMPTOTIC_FROM = 20.0
_TRIGAMMA = (1.0 / 6, -1.0 / 30, 1.0 / 42, -1.0 / 30)  # B_2k, of y^-3, ..., y^-9 (psi' = 1/y + 1/2y^2 + ...)


def _horner(inv2: torch.Tensor, coefficients: tuple[float, ...]) -> torch.Tensor:
    """c_0 + c_1 y^-2 + c_2 y^-4 + ..., by Horner's rule in ``inv2 = y^-2``."""
    total = torch.full_like(inv2, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        total = total * inv2 + c
    return total


def _stirling_remainder(y: torch.Tensor) -> torch.Tensor:
    """s(y) = log Gamma(y) - [(y - 1/2) log y - y + log(2 pi) / 2] ~ 1/(12y) - 1/(360y^3) + 1/(1260y^5) - ..., five
    terms (the next, 691 / (360360 y^11), is 2e-14 at y = 10; three left 6e-11, and the two more cost the NB's
    log-density, forward and backward, about 5% of its time on the CPU)."""
    inv = y.reciprocal()
    return inv * _horner(inv * inv, _STIRLING)


def stirling_log_gamma_ratio(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The large-theta form of :func:`log_gamma_ratio` (every term of the size of the answer but theta (log1p(u) -
    u), whose rounding, about eps x, is that of the x log(mu) beside it in the NB's log-density: a series for it cost
    a quarter of the NB's time forward and backward)."""
    u = x / theta
    log1p_u = torch.log1p(u)
    return theta * (log1p_u - u) + (x - 0.5) * log1p_u + _stirling_remainder(theta + x) - _stirling_remainder(theta)


def direct_log_gamma_ratio(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The small-theta form of :func:`log_gamma_ratio`, through ``lgamma``."""
    return torch.lgamma(x + theta) - torch.lgamma(theta) - x * torch.log(theta)


def log_gamma_ratio(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``lgamma(x + theta) - lgamma(theta) - x log(theta)`` without cancellation for large ``theta``: both forms are
    computed everywhere and each entry takes its own (no data-dependent shapes or branches: it traces, compiles and
    vmaps)."""
    large = theta >= ASYMPTOTIC_FROM
    safe = torch.where(large, theta, torch.full_like(theta, ASYMPTOTIC_FROM))
    small = torch.where(large, torch.ones_like(theta), theta)
    return torch.where(large, stirling_log_gamma_ratio(x, safe), direct_log_gamma_ratio(x, small))


def asymptotic_digamma_ratio_excess(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The large-theta form of :func:`digamma_ratio_excess`, for theta >= :data:`SLOPE_ASYMPTOTIC_FROM`."""
    far = theta + x
    inv2 = torch.stack((theta, far), -1).reciprocal().square()
    tails = inv2 * _horner(inv2, _DIGAMMA_SLOPE)
    return x / (2.0 * theta * far) + (tails[..., 0] - tails[..., 1])


def direct_digamma_ratio_excess(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The small-theta form of :func:`digamma_ratio_excess`, through ``torch.digamma``."""
    return torch.digamma(x + theta) - torch.digamma(theta) - torch.log1p(x / theta)


def digamma_ratio_excess(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``digamma(x + theta) - digamma(theta) - log1p(x / theta)`` (>= 0 for x >= 0), without cancellation for large
    ``theta``: from :data:`SLOPE_ASYMPTOTIC_FROM` on, by the asymptotic series of digamma,

        x / (2 theta (x + theta)) + r(theta) - r(x + theta),   r(y) = 1/(12 y^2) - 1/(120 y^4) + ...

    (six terms; the next is under 5e-20 at y = 20): terms of the size of the answer, O(x / theta^2), where the
    digamma difference and the logarithm are each O(x / theta). Below, through ``torch.digamma``. Both forms are
    computed everywhere and each entry takes its own (it traces and compiles)."""
    large = theta >= SLOPE_ASYMPTOTIC_FROM
    big = torch.where(large, theta, torch.full_like(theta, SLOPE_ASYMPTOTIC_FROM))
    small = torch.where(large, torch.ones_like(theta), theta)
    return torch.where(large, asymptotic_digamma_ratio_excess(x, big), direct_digamma_ratio_excess(x, small))


def _steps(a: torch.Tensor) -> torch.Tensor:
    """a + j for j = 0, ..., SHIFT - 1, in a trailing dimension."""
    return a.unsqueeze(-1) + torch.arange(SHIFT, dtype=a.dtype, device=a.device)


def _shifted_pair(a: torch.Tensor, b: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A = a + SHIFT, F = A + b, and the reciprocals of both stacked in a trailing dimension (one series for two)."""
    shifted = a + SHIFT
    far = shifted + b
    return shifted, far, torch.stack((shifted, far), -1).reciprocal()


def log_gamma_difference(a: torch.Tensor, b: float) -> torch.Tensor:
    """``lgamma(a + b) - lgamma(a)`` for a > 0 and a constant b >= 0: lgamma(A + b) - lgamma(A) at A = a + SHIFT by
    :func:`stirling_log_gamma_ratio`, less sum_j log1p(b / (a + j)), j < SHIFT. Differentiable (autograd of the same
    terms: within 3e-15 of the digamma difference)."""
    shifted = a + SHIFT
    return stirling_log_gamma_ratio(b, shifted) + b * torch.log(shifted) - torch.log1p(b / _steps(a)).sum(-1)


def digamma_difference(a: torch.Tensor, b: float) -> torch.Tensor:
    """``digamma(a + b) - digamma(a)`` for a > 0 and a constant b >= 0: psi(F) - psi(A) at A = a + SHIFT, F = A + b
    by the asymptotic series, log1p(b / A) + b / (2AF) - sum_k c_k (F^-2k - A^-2k), plus sum_j b / ((a + j)(a + j +
    b)), j < SHIFT. Differentiable (autograd of the same terms)."""
    shifted, far, inv = _shifted_pair(a, b)
    inv2 = inv.square()
    tails = inv2 * _horner(inv2, _DIGAMMA)
    steps = _steps(a)
    return (torch.log1p(b / shifted) + b / (2.0 * shifted * far) + (tails[..., 0] - tails[..., 1])
            + (b / (steps * (steps + b))).sum(-1))


def trigamma_difference(a: torch.Tensor, b: float) -> torch.Tensor:
    """``psi'(a + b) - psi'(a)`` for a > 0 and a constant b >= 0: psi'(F) - psi'(A) at A = a + SHIFT, F = A + b by
    the asymptotic series, -b / (AF) - b (A + F) / (2 A^2 F^2) + sum_k B_2k (F^-(2k+1) - A^-(2k+1)), less sum_j
    b (2(a + j) + b) / ((a + j)^2 (a + j + b)^2), j < SHIFT."""
    shifted, far, inv = _shifted_pair(a, b)
    inv2 = inv.square()
    tails = inv * inv2 * _horner(inv2, _TRIGAMMA)
    steps = _steps(a)
    reach = steps + b
    return (-b / (shifted * far) - b * (shifted + far) / (2.0 * (shifted * far).square())
            + (tails[..., 1] - tails[..., 0]) - (b * (steps + reach) / (steps * reach).square()).sum(-1))


__all__ = ["ASYMPTOTIC_FROM", "SHIFT", "digamma_difference", "digamma_ratio_excess", "log_gamma_difference",
           "log_gamma_ratio", "trigamma_difference"]

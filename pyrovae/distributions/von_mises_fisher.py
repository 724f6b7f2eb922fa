"""The von Mises-Fisher distribution with a reparameterised sampler whose gradients are unbiased."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from pyro.distributions import constraints

from pyrovae.distributions.sphere import (
    SphericalDistribution,
    log_sphere_area,
    rotate_from_north_pole,
    tangent_gaussians,
    unexpanded,
)
from pyrovae.ops import attach_bessel_terms, bessel_terms

_MAX_REJECTION_ROUNDS = 500  # passes of _ROUNDS_AT_ONCE proposals each
_ROUNDS_AT_ONCE = 2
# up to this many rows (a training batch, op-bound) the first pass draws _FIRST_ROUNDS proposals per row, so that
# at the usual acceptance rates (0.9) no row is left for a second pass in 94% of the calls (64 rows)
_SMALL_BATCH, _FIRST_ROUNDS = 4096, 3
_WIDENINGS = 3  # doublings of the implicit gradient's integration range beyond 12 widths (m = 2)
_NODES, _WEIGHTS = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(32))


_SMALL_GAMMA_SHAPE = 8.5  # Gamma(n) and Gamma(n + 1/2) from uniforms and one normal up to this shape
_GAMMA_MIN_ACCEPTANCE = 0.8  # the gamma proposal where it accepts this often (a proposal costs half of Wood's)


def _gamma_half_integer(shape: float, size: torch.Size, dtype, device) -> torch.Tensor:
    """Gamma(shape) draws for shape in {1/2, 1, 3/2, ...}: -log(u_1 ... u_n) (+ z^2 / 2 for the half) for
    small shapes, a few times faster than ``torch._standard_gamma``; that one for larger shapes."""
    n = math.floor(shape)
    if shape > _SMALL_GAMMA_SHAPE:
        return torch._standard_gamma(torch.full(size, shape, dtype=dtype, device=device))
    gamma = torch.zeros(size, dtype=dtype, device=device)
    if n:
        uniforms = 1 - torch.rand(*size, n, dtype=dtype, device=device)  # on (0, 1]: never log(0)
        gamma = -torch.log(uniforms.prod(-1).clamp_(min=torch.finfo(dtype).tiny))
    if shape != n:
        gamma = gamma + 0.5 * torch.randn(size, dtype=dtype, device=device).square()
    return gamma


def _symmetric_beta(m: int, size: tuple, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, 1 - eps) with eps ~ Beta((m-1)/2, (m-1)/2), from two uniforms (Ulrich 1984): with
    s = cos(2 pi u2) sqrt(1 - u1^(2/(m-2))), eps = (1 + s)/2. The smaller of eps and 1 - eps is taken as
    (1 - s^2) / (2 (1 + |s|)), 1 - s^2 = sin^2 + cos^2 u1^(2/(m-2)), and 1 - u1^(2/(m-2)) as -expm1, so that
    neither loses digits to cancellation. At m = 2 the power is 0 (the arcsine law)."""
    u = torch.rand((2, *size), dtype=dtype, device=device)
    angle = (2 * math.pi) * u[1]
    cosine, sine = torch.cos(angle), torch.sin(angle)
    log_power = torch.log(u[0]) * (2 / (m - 2)) if m > 2 else torch.full_like(cosine, -math.inf)
    power = torch.exp(log_power)
    s = cosine * torch.sqrt(-torch.expm1(log_power))  # 1 - u1^(2/(m-2)) to full precision at large m
    large = 0.5 * (1 + s.abs())
    small = (sine * sine + cosine * cosine * power) / (4 * large)
    positive = (s >= 0).to(dtype)  # selecting by products (exact for these finite values): torch.where is a
    negative = 1 - positive  # scalar loop on the CPU, ten times slower than a multiplication
    return positive * large + negative * small, positive * small + negative * large


def _first_accepted(proposals: torch.Tensor, accept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first accepted of each column's proposals (..., rounds, rows), and whether there was one: a few
    elementwise selections, where an ``argmax`` over the short rounds dimension is a slow strided reduction."""
    chosen, accepted = proposals[..., -1, :], accept[-1]
    for round_ in range(accept.shape[0] - 2, -1, -1):
        chosen = torch.where(accept[round_], proposals[..., round_, :], chosen)
        accepted = accepted | accept[round_]
    return chosen, accepted


def _gamma_proposal(kappa: torch.Tensor, nu: float, log_ive: torch.Tensor):
    """The best Gamma(nu + 1, rate kappa + a) proposal for delta = 1 - w: (rate, a, log M, log acceptance).

    The target density of delta is proportional to delta^nu e^(-kappa delta) (1 - delta/2)^nu on (0, 2); its
    ratio to the proposal's is r(delta) = e^(a delta) (1 - delta/2)^nu, log-concave, largest (M) at
    delta* = 2 - nu/a. Maximising the acceptance rate (kappa + a)^(nu+1) Z / (Gamma(nu+1) M) over a gives
    delta* = (nu + 1) / (kappa + a), a quadratic 2a^2 + (2 kappa - 2 nu - 1) a - nu kappa = 0 whose positive root is
    taken in its cancellation-free form. Then log M = nu (y - log(1 + y)) with y = a delta* / nu, and the acceptance
    rate is exact through Z = (Gamma(nu + 1) / 2^nu) sqrt(pi) (2/kappa)^(nu + 1/2) I_(nu+1/2)(kappa) e^-kappa.
    It is above 0.55 at every kappa and m (above 0.67 from m = 10), and near 1 (0.97) from kappa = m.
    """
    slope = 2 * kappa - (2 * nu + 1)
    # the root, in terms of 1/kappa where slope > 0 (no overflow for any finite kappa: 2 nu kappa / (slope + root))
    small = slope <= 0
    root = torch.sqrt(slope * slope + 8 * nu * kappa)
    inverse = 1 / kappa
    reduced_slope = 2 - (2 * nu + 1) * inverse
    large_root = 2 * nu / (reduced_slope + torch.sqrt(reduced_slope * reduced_slope + 8 * nu * inverse))
    rate = kappa + torch.where(small, (root - slope) / 4, large_root)
    a = rate - kappa  # the shift the rounded rate really has
    y = a * (nu + 1) / (nu * rate)
    log_m = nu * (y - torch.log1p(y))
    log_acceptance = ((nu + 1) * torch.log(rate) + 0.5 * math.log(math.pi) + (nu + 0.5) * torch.log(2 / kappa)
                      - nu * math.log(2) + log_ive - log_m)
    return rate, a, log_m, log_acceptance


@torch.compiler.disable  # a data-dependent loop: one opaque call under torch.compile
def _rejection_cosine(kappa: torch.Tensor, m: int, first_gamma: torch.Tensor, log_ive: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An exact draw of w = loc . z for m != 3: returns (w, 1 - w, 1 + w), one accepted draw per element, both ends
    without cancellation (1 + w from Wood's proposal directly, where the antipode is within reach).

    ``log_ive`` is log(I_v(kappa) e^-kappa), v = m/2 - 1 (which the distribution has computed already). Two
    rejection samplers share the work:

    * **Gamma proposal** (m >= 4) wherever it accepts at least ``_GAMMA_MIN_ACCEPTANCE`` of its proposals
      (kappa from about 0.15 m up; 0.17 m at m = 10, 0.23 m at m = 4): the density of delta = 1 - w is
      proportional to e^(-kappa delta) delta^nu (2 - delta)^nu on (0, 2), nu = (m-3)/2; delta ~ Gamma(nu + 1,
      rate kappa + a) is accepted with probability e^(a delta) (1 - delta/2)^nu / M, with the rate that accepts
      most often (:func:`_gamma_proposal`). A proposal costs one gamma variate and one uniform.
    * **Wood (1994)** elsewhere, in cancellation-free form: with b = (m-1) / (2 kappa + sqrt(4 kappa^2 +
      (m-1)^2)) and x0 = (1-b)/(1+b), a proposal eps ~ Beta((m-1)/2, (m-1)/2) (from two uniforms:
      :func:`_symmetric_beta`) gives 1 - w = 2 b eps / (1 - eps + b eps), and the test kappa w + (m-1)
      log(1 - x0 w) - c >= log u is evaluated through 1 - x0 = 2b/(1+b) and 1 - w, never through differences of
      numbers close to 1.

    The first proposal of every row takes its Gamma((m-1)/2) variate from ``first_gamma`` (the tangent
    draw's |g|^2 / 2, independent of the tangent direction); for a batch of at most 4096 rows, two more proposals
    per row join the first pass (its first accepted one is kept). The rows still rejected then draw
    ``_ROUNDS_AT_ONCE`` proposals each in one vectorised pass and keep the first accepted one, so the host
    waits on the device once per pass (the stopping test of the rejection loop), not once per proposal:
    about one pass in total at the usual acceptance rates. The arithmetic is in the concentration's precision.
    """
    dim, nu = m - 1, 0.5 * (m - 3)
    shape = kappa.shape
    kappa, log_ive = kappa.reshape(-1), log_ive.reshape(-1).to(kappa.dtype)
    if nu > 0:  # the gamma proposal's ratio is bounded for nu >= 0; at nu = 0 (m = 3) the inversion is exact
        rate, shift, log_m, log_acceptance = _gamma_proposal(kappa, nu, log_ive)
        use_gamma = log_acceptance >= math.log(_GAMMA_MIN_ACCEPTANCE)

    def propose(rows, rounds, x=None):
        """``rounds`` proposals for each of the rows ``rows``: (1 - w and 1 + w stacked, (2, rounds, len(rows));
        accepted, (rounds, len(rows))). The gamma proposal's Gamma(nu + 1) variates are ``x`` where given."""
        size = (rounds, kappa[rows].numel())
        log_u = torch.log(torch.rand(size, dtype=kappa.dtype, device=kappa.device))
        if not wood_only:
            if x is None:
                x = _gamma_half_integer(nu + 1, size, kappa.dtype, kappa.device)
            delta = x / rate[rows]  # the gamma proposal
            # -inf (rejected) for delta >= 2; u < ratio, strictly, so that u = 0 never accepts a ratio of 0
            log_ratio = shift[rows] * delta + nu * torch.log1p(-0.5 * delta.clamp(max=2)) - log_m[rows]
            accept = log_u < log_ratio
            delta = torch.stack([delta, 2 - delta])
            if gamma_only:
                return delta, accept
        eps, one_minus_eps = _symmetric_beta(m, size, kappa.dtype, kappa.device)
        b_rows, c_rows = b[rows], one_minus_x0[rows]
        denominator = one_minus_eps + b_rows * eps
        delta_wood = 2 * b_rows * eps / denominator
        log_ratio = kappa[rows] * (c_rows - delta_wood) + dim * (
            torch.log(c_rows + (1 - c_rows) * delta_wood) - log_one_minus_x0_sq[rows]
        )
        delta_wood = torch.stack([delta_wood, 2 * one_minus_eps / denominator])  # 1 + w without cancellation
        if wood_only:
            return delta_wood, log_u < log_ratio
        gamma_rows = use_gamma[rows]
        return torch.where(gamma_rows, delta, delta_wood), torch.where(gamma_rows, accept, log_u < log_ratio)

    if nu <= 0:
        gamma_only, wood_only = False, True
    elif kappa.device.type == "cpu":  # all or none of the rows: one proposal's draws and tests are skipped
        gamma_count = int(use_gamma.sum())
        gamma_only, wood_only = gamma_count == kappa.numel(), gamma_count == 0
    else:  # on a GPU both proposals cost less than a host synchronisation to find out
        gamma_only = wood_only = False
    if not gamma_only:  # Wood's constants
        reduced = dim / kappa  # b = (m-1) / (2 kappa + sqrt(4 kappa^2 + (m-1)^2)), without overflow at huge kappa
        b = reduced / (2 + torch.hypot(torch.tensor(2.0, dtype=kappa.dtype, device=kappa.device), reduced))
        one_minus_x0 = 2 * b / (1 + b)
        log_one_minus_x0_sq = torch.log(one_minus_x0) + torch.log(2 / (1 + b))
    first_gamma = first_gamma.reshape(1, -1).to(kappa.dtype)
    rounds = _FIRST_ROUNDS if kappa.numel() <= _SMALL_BATCH else 1  # a few rows: extra rounds usually spare a pass
    if rounds > 1 and not wood_only:
        extra = _gamma_half_integer(nu + 1, (rounds - 1, kappa.numel()), kappa.dtype, kappa.device)
        first_gamma = torch.cat([first_gamma, extra])
    ends, done = _first_accepted(*propose(slice(None), rounds, first_gamma))  # (1 - w, 1 + w)
    pending = torch.nonzero(~done).squeeze(-1)
    if pending.numel():  # a NaN concentration is never accepted: say so (validation is off under Pyro's JIT ELBOs)
        bad = kappa[pending]
        bad = bad[~(torch.isfinite(bad) & (bad > 0))]
        if bad.numel():
            raise ValueError(f"VonMisesFisher: a concentration of {bad[0].item()} in a draw; it must be positive "
                             "and finite (check the guide's output for NaN)")
    for _ in range(_MAX_REJECTION_ROUNDS):
        if not pending.numel():
            one_minus_w, one_plus_w = ends.reshape(2, *shape)
            upper = (one_minus_w <= 1).to(kappa.dtype)  # w from the smaller end (an arithmetic select, exact here)
            return upper * (1 - one_minus_w) + (1 - upper) * (one_plus_w - 1), one_minus_w, one_plus_w
        chosen, done = _first_accepted(*propose(pending, _ROUNDS_AT_ONCE))
        ends[:, pending[done]] = chosen[:, done]
        pending = pending[~done]
    raise RuntimeError(f"the von Mises-Fisher rejection sampler did not accept within {_MAX_REJECTION_ROUNDS} rounds")


def _exact_cosine_s2(kappa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """m = 3: w = 1 + log(u + (1 - u) e^(-2 kappa)) / kappa by inverting the CDF (differentiable in kappa)."""
    u = 1 - torch.rand_like(kappa)  # on (0, 1]: u = 0 would be the antipode at any kappa
    small = torch.log1p((1 - u) * torch.expm1(-2 * kappa))  # accurate for small kappa
    large = torch.logaddexp(torch.log(u), torch.log1p(-u) - 2 * kappa)  # accurate for large kappa and tiny u
    one_minus_w = -torch.where(kappa < 1, small, large) / kappa
    return 1 - one_minus_w, one_minus_w


def cosine_gradient(kappa: torch.Tensor, one_minus_w: torch.Tensor, m: int,
                    one_minus_mean: torch.Tensor | None = None) -> torch.Tensor:
    """dw/dkappa of the implicit reparameterisation of w = loc . z ~ p(w; kappa) on [-1, 1].

    With F the CDF of w, dw/dkappa = -(dF/dkappa) / p(w) (Figurnov, Mohamed & Mnih 2018). For the vMF
    marginal p(t) ~ e^(kappa t) (1 - t^2)^nu, nu = (m-3)/2, dp/dkappa = (t - A_m(kappa)) p, so with
    delta = 1 - w and q = 1 - t, integrating over t in [w, 1]::

        dw/dkappa = G(delta; kappa, 1 - A),  G(d; k, c) = int_0^d (c - q) e^(k (d - q)) [q (2 - q) / (d (2 - d))]^nu dq,

    and, integrating over t in [-1, w] instead (t = s - 1), the same value is G(2 - delta; -kappa, 1 + A). The
    side with d <= 1 is taken, so that 2 - q >= 1: no near-singularity of (2 - q)^nu at the antipode.

    For nu >= 0 the substitution q = d e^(-r) turns the integrand into a bump in r with log-kernel
    g(r) = k (d - q) - (nu + 1) r + nu log((2 - q) / (2 - d)). Its mode is in closed form: g' = 0 is the quadratic
    k q^2 - (2k + 2nu + 1) q + 2 (nu + 1) = 0 in q, whose positive root below d is the mode (r = 0 when there is
    none); the width is 1 / sqrt(-g'') there (or 1 / -g'(0) at r = 0). The integral runs up to
    R = r_1 + (g(r_1) - peak + 40) / D from r_1 = mode + 12 widths, D a lower bound on -g' beyond r_1 (-g'(r_1)
    where g is concave, k > 0), so that g(R) is at least 40 below the peak. Three panels of 32-point
    Gauss-Legendre cover it: up to 8 widths below the mode, the bump (to 8 widths above it; up to 40 when it is at
    r = 0), and the tail. On the circle (m = 2, nu = -1/2) the angle q = 2 sin^2(phi / 2) makes the integrand
    smooth: sqrt(d (2 - d)) int_0^phi_d (c - q) e^(k (d - q)) dphi, cut where it is below e^-45 of its peak.

    Measured against mpmath's quadrature of the definition: relative error below 1e-11 for m from 2 to 1000,
    kappa from 1e-3 to 1e5 and every w (tests/distributions/test_spherical.py). ``one_minus_mean`` is 1 - A_m(kappa)
    where the caller has it. Computed in float64.
    """
    dtype = kappa.dtype
    kappa, delta = kappa.double(), one_minus_w.double().clamp(min=1e-300, max=2.0)
    nu = 0.5 * (m - 3)
    if one_minus_mean is None:
        one_minus_mean = bessel_terms(0.5 * m - 1, kappa)[2]
    one_minus_mean = one_minus_mean.double()
    nodes, weights = _NODES.to(kappa.device), _WEIGHTS.to(kappa.device)
    mirrored = delta > 1
    span = torch.where(mirrored, 2 - delta, delta)  # exact for delta in [1, 2] (Sterbenz)
    k = torch.where(mirrored, -kappa, kappa)
    c = torch.where(mirrored, 2 - one_minus_mean, one_minus_mean)
    if nu < 0:  # the circle, in the angle; the kernel e^(k (d - q)) peaks at q = 0 (k > 0) or at q = d (k < 0)
        def angle(q):
            return 2 * torch.asin(torch.sqrt(0.5 * q).clamp(max=1.0))

        reach = 45 / kappa.clamp(min=1e-300)  # how far in q the kernel stays above e^-45 of its peak
        low = torch.where(mirrored, angle((span - reach).clamp(min=0)), 0.0)
        high = torch.where(mirrored, angle(span), angle(torch.minimum(span, reach)))
        half = 0.5 * (high - low)
        phi = (low + half).unsqueeze(-1) + half.unsqueeze(-1) * nodes  # (..., nodes)
        q = 2 * torch.sin(0.5 * phi).square()
        integrand = (c.unsqueeze(-1) - q) * torch.exp(k.unsqueeze(-1) * (span.unsqueeze(-1) - q))
        return (torch.sqrt(span * (2 - span)) * half * (integrand @ weights)).to(dtype)
    log_far_side = torch.log(2 - span)

    def log_kernel(r, q):
        return k * (span - q) - (nu + 1) * r + nu * (torch.log(2 - q) - log_far_side)

    root = 4 * (nu + 1) / ((2 * k + 2 * nu + 1) + torch.sqrt((2 * k - 1).square() + 4 * nu * (nu + 1)))
    mode = torch.log(span / root).clamp(min=0)
    q_mode = torch.minimum(root, span)
    curvature = (k * q_mode + 2 * nu * q_mode / (2 - q_mode).square()).clamp(min=0)  # -g'' at the mode
    slope_at_zero = (nu + 1) - k * span - nu * span / (2 - span)  # -g'(0), positive where the mode is at 0
    steepness = torch.maximum(torch.sqrt(curvature), torch.where(mode > 0, 0.0, slope_at_zero.clamp(min=0)))
    width = 1 / steepness.clamp(min=1e-3)
    peak = log_kernel(mode, span * torch.exp(-mode))
    far = mode + 12 * width
    q_far = span * torch.exp(-far)
    # a lower bound on -g' beyond r_1: -g'(r_1) where g is concave (k > 0); on the mirrored side -g'(r) =
    # (nu + 1) - k q - nu q / (2 - q) with -k q >= 0 and the rest increasing in r
    descent = (nu + 1) - torch.where(mirrored, 0.0, k * q_far) - nu * q_far / (2 - q_far)
    upper = far + ((log_kernel(far, q_far) - peak + 40) / descent.clamp(min=1e-12)).clamp(min=0)
    # three panels: up to the bump, the bump, and the tail; the bump is the mode +- 8 widths (e^-32 for a Gaussian);
    # where the mode is at r = 0 and the kernel falls about linearly there, up to 40 widths (e^-40) but no further
    # than r = 2 beyond 8 widths (e^-r, the scale on which the kernel's slope changes)
    low = (mode - 8 * width).clamp(min=0)
    reach = torch.where(mode > 0, 8 * width, torch.minimum(40 * width, torch.clamp(8 * width, min=2.0)))
    high = torch.minimum(mode + reach, upper)
    edges = torch.stack([torch.zeros_like(low), low, high, torch.maximum(upper, high)], -1)  # (..., 4)
    half = 0.5 * (edges[..., 1:] - edges[..., :-1])  # (..., 3)
    r = (edges[..., :-1] + half).unsqueeze(-1) + half.unsqueeze(-1) * nodes  # (..., 3, nodes)
    k, span, c, log_far_side = (t[..., None, None] for t in (k, span, c, log_far_side))
    q = span * torch.exp(-r)
    integrand = (c - q) * torch.exp(log_kernel(r, q).clamp(max=700))
    return (span[..., 0, 0] * ((integrand @ weights) * half).sum(-1)).to(dtype)


class _CosineDraw(torch.autograd.Function):
    """w = loc . z for m != 3 drawn exactly (forward) with its implicit reparameterisation gradient (backward).

    The rejection loop runs inside ``forward``, so ``torch.jit.trace`` (``elbo="jit"``, Pyro's ``JitTrace_ELBO``)
    records the draw as one opaque operation that runs the loop afresh on every call, instead of freezing
    the number of rounds it saw while tracing: the traced sampler stays exact. ``one_minus_mean`` (1 - A_m(kappa),
    which the distribution has computed already) is not differentiated.
    """

    @staticmethod
    def forward(ctx, kappa, first_gamma, m, log_ive, one_minus_mean):
        with torch.no_grad(), warnings.catch_warnings():
            # while tracing, torch warns of the loop's tests, which this opaque op re-runs on every call
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # float32 where the concentration is (the test is written without cancellation), float64 for float64
            wide = kappa.detach().to(torch.promote_types(kappa.dtype, torch.float32))
            w, one_minus_w, one_plus_w = (t.to(kappa.dtype) for t in _rejection_cosine(wide, m, first_gamma.detach(),
                                                                                        log_ive))
        ctx.save_for_backward(kappa, one_minus_w, one_minus_mean)
        ctx.m = m
        return w, one_minus_w, one_plus_w

    @staticmethod
    def backward(ctx, grad_w, grad_one_minus_w, grad_one_plus_w):
        kappa, one_minus_w, one_minus_mean = ctx.saved_tensors
        dw = cosine_gradient(kappa, one_minus_w, ctx.m, one_minus_mean)
        return (grad_w - grad_one_minus_w + grad_one_plus_w) * dw, None, None, None, None


class VonMisesFisher(SphericalDistribution):
    """The von Mises-Fisher distribution on S^(m-1): p(z) = C_m(kappa) exp(kappa loc . z).

    ``C_m(kappa) = kappa^(m/2-1) / ((2 pi)^(m/2) I_(m/2-1)(kappa))`` is computed by
    :func:`pyrovae.ops.log_bessel_iv` in torch, on the parameters' device, stable from tiny to huge
    concentrations and dimensions.

    ``rsample`` draws the cosine w = loc . z by exact inversion of its CDF for m = 3 and otherwise by rejection,
    from a gamma proposal or Wood's, whichever each row's concentration suits (:func:`_rejection_cosine`;
    vectorised over the whole batch, each row with its own mean and concentration), a uniform tangent
    direction, and a reflection that sends e1 to ``loc``. Gradients: with respect to ``loc`` they flow through
    the reflection; with respect to ``concentration`` through w by implicit reparameterisation
    (:func:`cosine_gradient`), which makes the pathwise gradient of E[f(z)] unbiased. (Differentiating the
    accepted proposal as if it were a plain reparameterisation, as s-vae-pytorch does without its correction
    term, is biased.)

    The rejection loop and the implicit gradient form one autograd operation (``_CosineDraw``), opaque to
    ``torch.jit.trace`` and ``torch.compile``: a traced ELBO (``elbo="jit"``, Pyro's ``JitTrace_ELBO``) or a
    compiled step runs the loop afresh on every call, so the traced sampler is as exact as the eager one.

    :param loc: mean directions ``(..., m)`` of unit norm, m >= 2.
    :param concentration: ``(...)``, positive.
    """

    arg_constraints = {"loc": constraints.sphere, "concentration": constraints.positive}

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)[:-1]
        kappa = self.concentration.expand(shape)
        g, half_sq_norm = tangent_gaussians(shape, self.dim, self.loc.dtype, self.loc.device)
        if self.dim == 3:
            # float64 whatever the concentration's dtype: the inverse CDF's autograd derivative cancels at tiny kappa
            w, one_minus_w = _exact_cosine_s2(kappa.double())
            w, one_minus_w = w.to(kappa.dtype), one_minus_w.to(kappa.dtype)
            one_plus_w = None
        else:
            log_ive, _, one_minus_mean = (t.expand(shape) for t in self._bessel_values())
            w, one_minus_w, one_plus_w = _CosineDraw.apply(kappa, half_sq_norm, self.dim, log_ive, one_minus_mean)
        return rotate_from_north_pole(self.loc.expand(shape + self.event_shape), w, one_minus_w, g, half_sq_norm,
                                      one_plus_w)

    def _bessel_values(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log(I_v(kappa) e^-kappa), A_m(kappa), 1 - A_m(kappa)), v = m/2 - 1, float64, of the concentration's shape
        before any ``expand``, without gradients: computed once per distribution, and again when the concentration
        is replaced or changed in place (an optimiser step on a leaf: its version counter moves)."""
        key = (self.concentration, self.concentration._version)
        cached = self.__dict__.get("_bessel_cache")
        if cached is None or cached[0] is not key[0] or cached[1] != key[1]:
            with torch.no_grad():
                kappa = unexpanded(self.concentration).double()
                cached = (*key, bessel_terms(0.5 * self.dim - 1, kappa))
            self.__dict__["_bessel_cache"] = cached
        return cached[2]

    def _bessel_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_bessel_values`, differentiable in the concentration: shared by ``log_prob``, ``entropy``, the KL
        divergence, ``mean`` and the sampler's implicit gradient; each call attaches them anew with their exact
        derivatives (one operation), so repeated backward passes through one distribution work."""
        kappa = unexpanded(self.concentration).double()
        return attach_bessel_terms(0.5 * self.dim - 1, kappa, self._bessel_values())

    def _log_normalizer_at_loc(self) -> torch.Tensor:
        """log C_m(kappa) + kappa = log p(loc), computed in float64 through the scaled Bessel function
        (log I_v(kappa) - kappa), so that it keeps its digits where log C_m and kappa are huge and opposite (in float32
        at kappa = 1e10 their sum is lost entirely); of the concentration's shape before any ``expand``."""
        m, kappa = self.dim, unexpanded(self.concentration)
        order, wide = 0.5 * m - 1, kappa.double()
        log_c = order * torch.log(wide) - 0.5 * m * math.log(2 * math.pi) - self._bessel_terms()[0]
        return torch.where(wide > 0, log_c, torch.full_like(wide, -log_sphere_area(m))).to(kappa.dtype)

    def _log_normalizer(self) -> torch.Tensor:
        """log C_m(kappa) (unexpanded shape)."""
        kappa = unexpanded(self.concentration)
        return (self._log_normalizer_at_loc().double() - kappa.double()).to(kappa.dtype)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log C_m(kappa) + kappa - kappa (1 - loc . z), with 1 - loc . z = |loc - z|^2 / 2 near loc (no cancellation
        of loc . z against 1 where the mass of a concentrated vMF is)."""
        if self._validate_args:
            self._validate_sample(value)
        cosine = (self.loc * value).sum(-1)
        near = 0.5 * (self.loc - value).square().sum(-1)
        one_minus_cosine = torch.where(cosine > 0.5, near, 1.0 - cosine)
        return self._log_normalizer_at_loc() - self.concentration * one_minus_cosine

    def _mean_resultant_length(self) -> torch.Tensor:
        """A_m(kappa) = I_(m/2)(kappa) / I_(m/2-1)(kappa) = E[loc . z]."""
        return self._bessel_terms()[1].to(self.concentration.dtype)

    def entropy(self) -> torch.Tensor:
        """-log C_m(kappa) - kappa A_m(kappa) = kappa (1 - A_m) - log p(loc), in float64."""
        kappa = unexpanded(self.concentration)
        entropy = kappa.double() * self._bessel_terms()[2] - self._log_normalizer_at_loc().double()
        return entropy.to(kappa.dtype).expand(self.batch_shape)

    @property
    def mean(self) -> torch.Tensor:
        return self._mean_resultant_length().unsqueeze(-1) * self.loc

"""Exact draws of the cosine w = loc . z of the von Mises-Fisher distribution: a gamma proposal at its best rate or
Wood's (1994) rejection sampler for m != 3, the inverse CDF on S^2. Values only: the gradient is the distribution's
(implicit reparameterisation, :mod:`pyrovae.distributions.von_mises_fisher`)."""

from __future__ import annotations

import contextlib
import math

import torch

from pyrovae.ops.capture import compile_function

_MAX_REJECTION_ROUNDS = 500  # passes of _ROUNDS_AT_ONCE proposals each
_ROUNDS_AT_ONCE = 2
# up to this many rows (a training batch, op-bound) the first pass draws _FIRST_ROUNDS proposals per row, so that
# at the usual acceptance rates (0.9) no row is left for a second pass in 94% of the calls (64 rows)
_SMALL_BATCH, _FIRST_ROUNDS = 4096, 3

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
    return _symmetric_beta_from(torch.rand((2, *size), dtype=dtype, device=device), m)


def _symmetric_beta_from(u: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_symmetric_beta` from its two uniforms ``u`` (2, ...)."""
    dtype = u.dtype
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


def _gamma_constants(kappa: torch.Tensor, log_ive: torch.Tensor, m: int):
    """Per row, for m >= 4: the gamma proposal's rate, shift and log M, and whether it is used (else Nones)."""
    nu = 0.5 * (m - 3)
    if nu <= 0:
        return None, None, None, None
    rate, shift, log_m, log_acceptance = _gamma_proposal(kappa, nu, log_ive.to(kappa.dtype))
    return rate, shift, log_m, log_acceptance >= math.log(_GAMMA_MIN_ACCEPTANCE)


def _wood_constants(kappa: torch.Tensor, m: int):
    """Per row: Wood's b, 1 - x0 and log(1 - x0^2)."""
    # b = (m-1) / (2 kappa + sqrt(4 kappa^2 + (m-1)^2)), without overflow at either end: from (m-1) / kappa for
    # kappa >= 1 (huge kappa), from r = 2 kappa / (m-1) below (tiny kappa: (m-1) / kappa is inf in float32 at 1e-37)
    large = kappa >= 1
    reduced = (m - 1) / torch.where(large, kappa, 1.0)
    r = torch.where(large, 1.0, kappa) * (2.0 / (m - 1))
    b = torch.where(large, reduced / (2 + torch.hypot(torch.full_like(reduced, 2.0), reduced)),
                    1 / (r + torch.hypot(torch.ones_like(r), r)))
    one_minus_x0 = 2 * b / (1 + b)
    return b, one_minus_x0, torch.log(one_minus_x0) + torch.log(2 / (1 + b))


def _proposal_constants(kappa: torch.Tensor, log_ive: torch.Tensor, m: int):
    """:func:`_gamma_constants` and :func:`_wood_constants`, one tuple."""
    return *_gamma_constants(kappa, log_ive, m), *_wood_constants(kappa, m)


def _proposals(kappa, constants, log_u, x, uniforms, m: int, gamma_only: bool, wood_only: bool):
    """Proposals of 1 - w and 1 + w (2, rounds, rows) and whether each is accepted (rounds, rows), from their random
    numbers (see ``draws`` in :func:`rejection_cosine`) and the rows' :func:`_proposal_constants`."""
    nu, dim = 0.5 * (m - 3), m - 1
    rate, shift, log_m, use_gamma, b, one_minus_x0, log_one_minus_x0_sq = constants
    if not wood_only:
        delta = x / rate  # the gamma proposal
        # -inf (rejected) for delta >= 2; u < ratio, strictly, so that u = 0 never accepts a ratio of 0
        log_ratio = shift * delta + nu * torch.log1p(-0.5 * delta.clamp(max=2)) - log_m
        accept = log_u < log_ratio
        delta = torch.stack([delta, 2 - delta])
        if gamma_only:
            return delta, accept
    eps, one_minus_eps = _symmetric_beta_from(uniforms, m)
    denominator = one_minus_eps + b * eps
    delta_wood = 2 * b * eps / denominator
    log_ratio = kappa * (one_minus_x0 - delta_wood) + dim * (
        torch.log(one_minus_x0 + (1 - one_minus_x0) * delta_wood) - log_one_minus_x0_sq
    )
    delta_wood = torch.stack([delta_wood, 2 * one_minus_eps / denominator])  # 1 + w without cancellation
    if wood_only:
        return delta_wood, log_u < log_ratio
    return torch.where(use_gamma, delta, delta_wood), torch.where(use_gamma, accept, log_u < log_ratio)


def _cosine_from_ends(one_minus_w: torch.Tensor, one_plus_w: torch.Tensor) -> torch.Tensor:
    """w from the smaller of 1 - w and 1 + w (an arithmetic select, exact here)."""
    upper = (one_minus_w <= 1).to(one_minus_w.dtype)
    return upper * (1 - one_minus_w) + (1 - upper) * (one_plus_w - 1)


def _first_pass_draws(kappa: torch.Tensor, first_gamma: torch.Tensor, rounds: int, m: int):
    """The random numbers of the first pass, all of them whichever proposals run, in this order: Gamma(nu + 1)
    variates for rounds 2.. (round 1 takes ``first_gamma``), log u, Wood's two uniforms: (x, log u, uniforms)."""
    size = (rounds, kappa.numel())
    x = first_gamma.reshape(1, -1).to(kappa.dtype)
    if rounds > 1:
        x = torch.cat([x, _gamma_half_integer(0.5 * (m - 1), (rounds - 1, size[1]), kappa.dtype, kappa.device)])
    log_u = torch.log(torch.rand(size, dtype=kappa.dtype, device=kappa.device))
    return x, log_u, torch.rand((2, *size), dtype=kappa.dtype, device=kappa.device)


def _fused_first_pass(kappa, log_ive, first_gamma, m: int, rounds: int):
    """The first pass as one function to compile: constants, draws (:func:`_first_pass_draws`), both proposals
    where m >= 4 (each row's chosen by its constants, as the eager pass does), the first accepted, w."""
    constants = _proposal_constants(kappa, log_ive.to(kappa.dtype), m)
    x, log_u, uniforms = _first_pass_draws(kappa, first_gamma, rounds, m)
    return (*_first_pass(kappa, constants, log_u, x, uniforms, m, False, m <= 3), constants)


def _first_pass(kappa, constants, log_u, x, uniforms, m: int, gamma_only: bool, wood_only: bool):
    """The first pass of every row: (w, the ends (2, rows), accepted (rows,)); w is meaningful where accepted."""
    ends, done = _first_accepted(*_proposals(kappa, constants, log_u, x, uniforms, m, gamma_only, wood_only))
    return _cosine_from_ends(ends[0], ends[1]), ends, done


_FUSED_DEPTH = 0  # > 0 inside fused_first_pass(): the first pass's arithmetic runs as inductor kernels
_COMPILED: dict = {}


@contextlib.contextmanager
def fused_first_pass():
    """Within the block, :func:`rejection_cosine` runs the arithmetic of its first pass (the proposals' constants,
    the proposals from their random numbers, their tests and the choice of the first accepted) as kernels compiled
    by inductor, a few calls instead of about a hundred small operations; the random numbers are drawn as outside
    the block, in the same order, so the draws are the same to float rounding. ``train(compile=True)`` runs its
    compiled step in this block (the first call of each kind compiles, for a few seconds)."""
    global _FUSED_DEPTH
    _FUSED_DEPTH += 1
    try:
        yield
    finally:
        _FUSED_DEPTH -= 1


def _compiled(function):
    if function not in _COMPILED:
        _COMPILED[function] = compile_function(function, dynamic=False, options={"fallback_random": True})
    return _COMPILED[function]


def rejection_cosine(kappa: torch.Tensor, m: int, first_gamma: torch.Tensor, log_ive: torch.Tensor
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
    A concentration with no elements (a zero-size sample or batch shape) gives empty tensors of its shape.
    """
    nu = 0.5 * (m - 3)
    shape = kappa.shape
    if not kappa.numel():  # a zero-size sample or batch shape: nothing to draw
        return kappa.new_empty(shape), kappa.new_empty(shape), kappa.new_empty(shape)
    kappa, log_ive = kappa.reshape(-1), log_ive.reshape(-1)
    rounds = _FIRST_ROUNDS if kappa.numel() <= _SMALL_BATCH else 1  # a few rows: extra rounds usually spare a pass

    def which(use_gamma):
        """(gamma_only, wood_only): on the CPU, whether all or none of the rows take the gamma proposal (the other
        proposal's arithmetic and later draws are skipped); on a GPU both proposals cost less than a host
        synchronisation to find out. At m <= 3 only Wood's (the gamma proposal's ratio is bounded for nu > 0)."""
        if nu <= 0:
            return False, True
        if kappa.device.type != "cpu":
            return False, False
        gamma_count = int(use_gamma.sum())
        return gamma_count == kappa.numel(), gamma_count == 0

    fused = _FUSED_DEPTH > 0
    if fused:  # one compiled call: its draws are the eager ones (inductor's fallback_random), in the same order
        w, ends, done, constants = _compiled(_fused_first_pass)(kappa, log_ive, first_gamma, m, rounds)
    else:
        constants = _gamma_constants(kappa, log_ive, m)
        gamma_only, wood_only = which(constants[3])
        constants = (*constants, *(_wood_constants(kappa, m) if not gamma_only else (None, None, None)))
        x, log_u, uniforms = _first_pass_draws(kappa, first_gamma, rounds, m)
        w, ends, done = _first_pass(kappa, constants, log_u, x, uniforms, m, gamma_only, wood_only)

    def draws(rounds, count):
        """The random numbers of ``rounds`` later proposals for ``count`` rows, in the order they are drawn: log u,
        the gamma proposal's Gamma(nu + 1) variates, Wood's two uniforms (each only where its proposal runs)."""
        size = (rounds, count)
        log_u = torch.log(torch.rand(size, dtype=kappa.dtype, device=kappa.device))
        x = None if wood_only else _gamma_half_integer(nu + 1, size, kappa.dtype, kappa.device)
        uniforms = None if gamma_only else torch.rand((2, *size), dtype=kappa.dtype, device=kappa.device)
        return log_u, x, uniforms

    pending = torch.nonzero(~done).squeeze(-1)
    if not pending.numel():
        return w.reshape(shape), ends[0].reshape(shape), ends[1].reshape(shape)
    if fused:  # the later passes draw as the eager ones do
        gamma_only, wood_only = which(constants[3])
    bad = kappa[pending]  # a NaN concentration is never accepted: say so (validation is off under Pyro's JIT ELBOs)
    bad = bad[~(torch.isfinite(bad) & (bad > 0))]
    if bad.numel():
        raise ValueError(f"VonMisesFisher: a concentration of {bad[0].item()} in a draw; it must be positive "
                         "and finite (check the guide's output for NaN)")
    for _ in range(_MAX_REJECTION_ROUNDS):
        rows = tuple(c[pending] if c is not None else None for c in constants)
        chosen, done = _first_accepted(*_proposals(kappa[pending], rows, *draws(_ROUNDS_AT_ONCE, pending.numel()),
                                                   m, gamma_only, wood_only))
        ends[:, pending[done]] = chosen[:, done]
        pending = pending[~done]
        if not pending.numel():
            one_minus_w, one_plus_w = ends.reshape(2, *shape)
            return _cosine_from_ends(one_minus_w, one_plus_w), one_minus_w, one_plus_w
    raise RuntimeError(f"the von Mises-Fisher rejection sampler did not accept within {_MAX_REJECTION_ROUNDS} rounds")


def exact_cosine_s2(kappa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """m = 3: w = 1 + log(u + (1 - u) e^(-2 kappa)) / kappa by inverting the CDF (differentiable in kappa)."""
    u = 1 - torch.rand_like(kappa)  # on (0, 1]: u = 0 would be the antipode at any kappa
    small = torch.log1p((1 - u) * torch.expm1(-2 * kappa))  # accurate for small kappa
    large = torch.logaddexp(torch.log(u), torch.log1p(-u) - 2 * kappa)  # accurate for large kappa and tiny u
    one_minus_w = -torch.where(kappa < 1, small, large) / kappa
    return 1 - one_minus_w, one_minus_w


@torch.library.custom_op("pyrovae::vmf_cosine", mutates_args=())
def vmf_cosine(kappa: torch.Tensor, m: int, first_gamma: torch.Tensor, log_ive: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`rejection_cosine` as one operator (``torch.ops.pyrovae.vmf_cosine``): opaque to ``make_fx`` and
    ``torch.compile``, which record one call that runs the rejection loop afresh on every step, where a capture
    would otherwise freeze the rounds it saw (or refuse the loop's tests). Not differentiable by itself: the
    distribution attaches the implicit gradient."""
    w, one_minus_w, one_plus_w = rejection_cosine(kappa, m, first_gamma, log_ive)
    return w, one_minus_w.clone(), one_plus_w.clone()  # fresh outputs (the two ends share one buffer)


@vmf_cosine.register_fake
def _vmf_cosine_shapes(kappa, m, first_gamma, log_ive):
    return torch.empty_like(kappa), torch.empty_like(kappa), torch.empty_like(kappa)

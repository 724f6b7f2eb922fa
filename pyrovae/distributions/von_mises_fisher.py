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
from pyrovae.ops import bessel_iv_ratio, log_bessel_ive

_MAX_REJECTION_ROUNDS = 500  # passes of _ROUNDS_AT_ONCE proposals each
_ROUNDS_AT_ONCE = 2
_NEWTON_STEPS = 4  # for the mode of the implicit gradient's integrand (quadratic convergence from a close start)
_WIDENINGS = 3  # doublings of its integration range beyond 12 widths
_NODES, _WEIGHTS = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(64))


_SMALL_GAMMA_SHAPE = 8.5  # Gamma(n) and Gamma(n + 1/2) from uniforms and one normal up to this shape
_GAMMA_PROPOSAL_COST = 0.1  # use the gamma proposal where its acceptance is above about exp(-0.1) = 0.9


def _gamma_half_integer(shape: float, size: torch.Size, dtype, device) -> torch.Tensor:
    """Gamma(shape) draws for shape in {1/2, 1, 3/2, ...}: -log(u_1 ... u_n) (+ z^2 / 2 for the half) for
    small shapes, a few times faster than ``torch._standard_gamma``; that one for larger shapes."""
    n = math.floor(shape)
    if shape > _SMALL_GAMMA_SHAPE:
        return torch._standard_gamma(torch.full(size, shape, dtype=dtype, device=device))
    gamma = torch.zeros(size, dtype=dtype, device=device)
    if n:
        uniforms = torch.rand(*size, n, dtype=dtype, device=device)
        gamma = -torch.log(uniforms.clamp_(min=torch.finfo(dtype).tiny).prod(-1))
    if shape != n:
        gamma = gamma + 0.5 * torch.randn(size, dtype=dtype, device=device).square()
    return gamma


@torch.compiler.disable  # a data-dependent loop: one opaque call under torch.compile
def _wood_cosine(kappa: torch.Tensor, m: int, first_gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An exact draw of w = loc . z for m != 3: returns (w, 1 - w), one accepted draw per element.

    Two rejection samplers share the work, each row taking the one that accepts more often:

    * **Gamma proposal** (m >= 4, concentrated rows, kappa large against m^2): the density of delta = 1 - w is
      proportional to e^(-kappa delta) delta^nu (2 - delta)^nu on (0, 2), nu = (m-3)/2. Proposing
      delta ~ Gamma(nu + 1, rate kappa) and accepting with probability (1 - delta/2)^nu is exact, and
      accepts with probability about (1 + nu / (2 kappa))^-(nu+1), near 1 there.
    * **Wood (1994)** elsewhere, in cancellation-free form: with b = (m-1) / (2 kappa + sqrt(4 kappa^2 +
      (m-1)^2)) and x0 = (1-b)/(1+b), a proposal eps = X / (X + Y) ~ Beta((m-1)/2, (m-1)/2) (X, Y ~
      Gamma((m-1)/2)) gives 1 - w = 2 b eps / (1 - eps + b eps), and the test kappa w + (m-1) log(1 - x0 w)
      - c >= log u is evaluated through 1 - x0 = 2b/(1+b) and 1 - w, never through differences of numbers
      close to 1.

    The first proposal of every row takes its Gamma((m-1)/2) variate from ``first_gamma`` (the tangent
    draw's |g|^2 / 2, independent of the tangent direction). The rows still rejected then draw
    ``_ROUNDS_AT_ONCE`` proposals each in one vectorised pass and keep the first accepted one, so the host
    waits on the device once per pass (the stopping test of the rejection loop), not once per proposal:
    about one pass in total at the usual acceptance rates.
    """
    dim, nu = m - 1, 0.5 * (m - 3)
    shape = kappa.shape
    kappa = kappa.reshape(-1)
    b = dim / (2 * kappa + torch.sqrt(4 * kappa * kappa + dim * dim))
    one_minus_x0 = 2 * b / (1 + b)
    log_one_minus_x0_sq = torch.log(one_minus_x0) + torch.log(2 / (1 + b))
    # the gamma proposal's acceptance ratio is bounded only for nu >= 0 (m >= 3)
    use_gamma = (nu + 1) * torch.log1p(nu / (2 * kappa)) <= _GAMMA_PROPOSAL_COST
    if nu < 0:
        use_gamma = torch.zeros_like(use_gamma)

    def propose(rows, x):
        """Proposals from gammas ``x`` (..., len(rows)) for the rows ``rows``: (1 - w, accepted)."""
        kappa_rows = kappa[rows]
        log_u = torch.log(torch.rand_like(x))
        delta = x / kappa_rows  # the gamma proposal
        accept = (delta < 2) & (log_u <= nu * torch.log1p(-0.5 * delta.clamp(max=2)))
        if gamma_only:
            return delta, accept
        y = _gamma_half_integer(0.5 * dim, x.shape, x.dtype, x.device)
        eps, one_minus_eps = x / (x + y), y / (x + y)
        b_rows, c_rows = b[rows], one_minus_x0[rows]
        delta_wood = 2 * b_rows * eps / (one_minus_eps + b_rows * eps)
        log_ratio = kappa_rows * (c_rows - delta_wood) + dim * (
            torch.log(c_rows + (1 - c_rows) * delta_wood) - log_one_minus_x0_sq[rows]
        )
        gamma_rows = use_gamma[rows]
        return torch.where(gamma_rows, delta, delta_wood), torch.where(gamma_rows, accept, log_u <= log_ratio)

    gamma_only = bool(use_gamma.all())  # then Wood's proposal, and its gamma draws, are skipped
    one_minus_w, accept = propose(slice(None), first_gamma.reshape(-1).to(kappa.dtype))
    pending = torch.nonzero(~accept).squeeze(-1)
    for _ in range(_MAX_REJECTION_ROUNDS):
        if not pending.numel():
            one_minus_w = one_minus_w.reshape(shape)
            return 1 - one_minus_w, one_minus_w
        x = _gamma_half_integer(0.5 * dim, (_ROUNDS_AT_ONCE, pending.numel()), kappa.dtype, kappa.device)
        delta, accept = propose(pending, x)  # (rounds, pending)
        first = accept.to(torch.uint8).argmax(0)  # the first accepted round of each row (0 if none)
        done = accept.any(0)
        one_minus_w[pending[done]] = delta.gather(0, first.unsqueeze(0)).squeeze(0)[done]
        pending = pending[~done]
    raise RuntimeError(f"the von Mises-Fisher rejection sampler did not accept within {_MAX_REJECTION_ROUNDS} rounds")


def _exact_cosine_s2(kappa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """m = 3: w = 1 + log(u + (1 - u) e^(-2 kappa)) / kappa by inverting the CDF (differentiable in kappa)."""
    u = torch.rand_like(kappa)
    small = torch.log1p((1 - u) * torch.expm1(-2 * kappa))  # accurate for small kappa
    large = torch.logaddexp(torch.log(u), torch.log1p(-u) - 2 * kappa)  # accurate for large kappa and tiny u
    one_minus_w = -torch.where(kappa < 1, small, large) / kappa
    return 1 - one_minus_w, one_minus_w


def cosine_gradient(kappa: torch.Tensor, one_minus_w: torch.Tensor, m: int) -> torch.Tensor:
    """dw/dkappa of the implicit reparameterisation of w = loc . z ~ p(w; kappa) on [-1, 1].

    With F the CDF of w, dw/dkappa = -(dF/dkappa) / p(w) (Figurnov, Mohamed & Mnih 2018). For the vMF
    marginal p(t) ~ e^(kappa t) (1 - t^2)^nu, nu = (m-3)/2, dp/dkappa = (t - A_m(kappa)) p, so with
    delta = 1 - w and q = 1 - t::

        dw/dkappa = int_0^delta (1 - A - q) e^(kappa (delta - q)) [q (2 - q) / (delta (2 - delta))]^nu dq.

    The substitution q = delta e^(-r) turns the integrand into a bump in r with log-kernel
    g(r) = a (1 - e^-r) - (nu+1) r + nu log((2 - delta e^-r) / (2 - delta)), a = kappa delta, integrated by
    64-point Gauss-Legendre on [0, R]. The mode of g is found by Newton's method on g' (the nu term moves it far
    from log(a / (nu+1)) in high dimensions, where w < 0), the width from g'' there, and R is widened until g has
    fallen 40 below its peak. Computed in float64.
    """
    dtype = kappa.dtype
    kappa, delta = kappa.double(), one_minus_w.double().clamp(min=1e-300, max=2.0)
    nu = 0.5 * (m - 3)
    a = kappa * delta
    one_minus_mean = 1 - bessel_iv_ratio(0.5 * m - 1, kappa)

    def log_kernel_at(r, a=a, delta=delta):
        e = torch.exp(-r)
        value = a * (-torch.expm1(-r)) - (nu + 1) * r
        if nu != 0:
            ratio = (2 - delta * e).clamp(min=1e-300) / (2 - delta).clamp(min=1e-300)
            value = value + nu * torch.log(ratio)
        return value

    def slope_and_curvature(r):
        e = torch.exp(-r)
        s = (2 - delta * e).clamp(min=1e-300)
        slope = a * e - (nu + 1) + nu * delta * e / s
        curvature = -a * e - nu * 2 * delta * e / s.square()  # g'' (negative where g is log-concave)
        return slope, curvature

    # start from the mode without the nu term, then Newton steps on g' = 0 (g' decreases for nu >= 0; on the
    # circle, m = 2, nu = -1/2 and g need not be concave: the start and its width are used as they are)
    mode = torch.log(a / (nu + 1)).clamp(min=0)
    if nu >= 0:
        for _ in range(_NEWTON_STEPS):
            slope, curvature = slope_and_curvature(mode)
            mode = (mode - slope / curvature.clamp(max=-1e-12)).clamp(min=0)
        slope, curvature = slope_and_curvature(mode)
        at_zero = mode <= 0
        steepness = torch.maximum(torch.sqrt((-curvature).clamp(min=0)),
                                  torch.where(at_zero, (-slope).clamp(min=0), torch.zeros_like(slope)))
    else:
        steepness = torch.maximum(torch.sqrt(a * torch.exp(-mode)), (nu + 1 - a).clamp(min=0))
    width = 1 / steepness.clamp(min=1e-3)
    peak = log_kernel_at(mode)
    upper = mode + 12 * width
    for _ in range(_WIDENINGS):  # widen until the kernel is 40 below its peak
        short = log_kernel_at(upper) > peak - 40
        upper = torch.where(short, mode + 2 * (upper - mode), upper)
    nodes = _NODES.to(kappa.device).double()
    weights = _WEIGHTS.to(kappa.device).double()
    r = 0.5 * upper.unsqueeze(-1) * (nodes + 1)  # (..., nodes)
    log_kernel = log_kernel_at(r, a.unsqueeze(-1), delta.unsqueeze(-1))
    q = delta.unsqueeze(-1) * torch.exp(-r)
    integrand = (one_minus_mean.unsqueeze(-1) - q) * torch.exp(log_kernel.clamp(max=700))
    gradient = delta * 0.5 * upper * (integrand * weights).sum(-1)
    return gradient.to(dtype)


class _CosineDraw(torch.autograd.Function):
    """w = loc . z for m != 3 drawn exactly (forward) with its implicit reparameterisation gradient (backward).

    The rejection loop runs inside ``forward``, so ``torch.jit.trace`` (``elbo="jit"``, Pyro's ``JitTrace_ELBO``)
    records the draw as one opaque operation that runs the loop afresh on every call, instead of freezing
    the number of rounds it saw while tracing: the traced sampler stays exact.
    """

    @staticmethod
    def forward(ctx, kappa, first_gamma, m):
        with torch.no_grad(), warnings.catch_warnings():
            # while tracing, torch warns of the loop's tests, which this opaque op re-runs on every call
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            w, one_minus_w = _wood_cosine(kappa.detach().double(), m, first_gamma.detach())
        w, one_minus_w = w.to(kappa.dtype), one_minus_w.to(kappa.dtype)
        ctx.save_for_backward(kappa, one_minus_w)
        ctx.m = m
        return w, one_minus_w

    @staticmethod
    def backward(ctx, grad_w, grad_one_minus_w):
        kappa, one_minus_w = ctx.saved_tensors
        dw = cosine_gradient(kappa, one_minus_w, ctx.m)
        return (grad_w - grad_one_minus_w) * dw, None, None


class VonMisesFisher(SphericalDistribution):
    """The von Mises-Fisher distribution on S^(m-1): p(z) = C_m(kappa) exp(kappa loc . z).

    ``C_m(kappa) = kappa^(m/2-1) / ((2 pi)^(m/2) I_(m/2-1)(kappa))`` is computed by
    :func:`pyrovae.ops.log_bessel_iv` in torch, on the parameters' device, stable from tiny to huge
    concentrations and dimensions.

    ``rsample`` draws the cosine w = loc . z by exact inversion of its CDF for m = 3 and by Wood's
    rejection sampler otherwise (vectorised over the whole batch, each row with its own mean and
    concentration), a uniform tangent direction, and a reflection that sends e1 to ``loc``. Gradients:
    with respect to ``loc`` they flow through the reflection; with respect to ``concentration`` through
    w by implicit reparameterisation (:func:`cosine_gradient`), which makes the pathwise gradient of
    E[f(z)] unbiased. (Differentiating the accepted proposal as if it were a plain reparameterisation,
    as s-vae-pytorch does without its correction term, is biased.)

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
            w, one_minus_w = _exact_cosine_s2(kappa.double())
            w, one_minus_w = w.to(kappa.dtype), one_minus_w.to(kappa.dtype)
        else:
            w, one_minus_w = _CosineDraw.apply(kappa, half_sq_norm, self.dim)
        return rotate_from_north_pole(self.loc.expand(shape + self.event_shape), w, one_minus_w, g, half_sq_norm)

    def _log_normalizer_at_loc(self) -> torch.Tensor:
        """log C_m(kappa) + kappa = log p(loc), computed in float64 through the scaled Bessel function
        (log I_v(kappa) - kappa), so that it keeps its digits where log C_m and kappa are huge and opposite (in float32
        at kappa = 1e10 their sum is lost entirely); of the concentration's shape before any ``expand``."""
        m, kappa = self.dim, unexpanded(self.concentration)
        order, wide = 0.5 * m - 1, kappa.double()
        log_c = order * torch.log(wide) - 0.5 * m * math.log(2 * math.pi) - log_bessel_ive(order, wide)
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
        return bessel_iv_ratio(0.5 * self.dim - 1, unexpanded(self.concentration))

    def entropy(self) -> torch.Tensor:
        """-log C_m(kappa) - kappa A_m(kappa) = kappa (1 - A_m) - log p(loc), in float64."""
        kappa = unexpanded(self.concentration)
        wide = kappa.double()
        one_minus_mean = 1.0 - bessel_iv_ratio(0.5 * self.dim - 1, wide)
        entropy = wide * one_minus_mean - self._log_normalizer_at_loc().double()
        return entropy.to(kappa.dtype).expand(self.batch_shape)

    @property
    def mean(self) -> torch.Tensor:
        return self._mean_resultant_length().unsqueeze(-1) * self.loc

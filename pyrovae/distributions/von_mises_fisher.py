"""The von Mises-Fisher distribution with a reparameterised sampler whose gradients are unbiased."""

from __future__ import annotations

import contextlib
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
from pyrovae.distributions.vmf_cosine import exact_cosine_s2, vmf_cosine
from pyrovae.ops import attach_bessel_terms, bessel_terms

_NODES, _WEIGHTS = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(32))


def cosine_gradient(kappa: torch.Tensor, one_minus_w: torch.Tensor, m: int,
                    one_minus_mean: torch.Tensor | None = None) -> torch.Tensor:
    """dw/dkappa of the implicit reparameterisation of w = loc . z ~ p(w; kappa) on [-1, 1].

    With F the CDF of w, dw/dkappa = -(dF/dkappa) / p(w) (Figurnov, Mohamed & Mnih 2018). For the vMF
    marginal p(t) ~ e^(kappa t) (1 - t^2)^nu, nu = (m-3)/2, dp/dkappa = (t - A_m(kappa)) p, so with
    delta = 1 - w and q = 1 - t, integrating over t in [w, 1]::

        dw/dkappa = G(delta; kappa, 1 - A),  G(d; k, c) = int_0^d (c - q) e^(k (d - q)) [q (2 - q) / (d (2 - d))]^nu dq,

    and, integrating over t in [-1, w] instead (t = s - 1), the same value is G(2 - delta; -kappa, 1 + A). The
    direct side is taken up to two standard deviations above the mean of delta (or up to 1, whichever is less), the
    mirrored one beyond: above the mean the direct integrand (c - q) changes sign and its integral is a small
    difference of large parts in the tail, while the mirrored one keeps one sign; just above the mean the mirrored
    side's bump sits at its end point, which the panels resolve less well. Both compute c - q and 2 - q from their
    differences to the end point, without cancellation.

    For nu >= 0 the substitution q = d e^(-r) turns the integrand into a bump in r with log-kernel
    g(r) = k (d - q) - (nu + 1) r + nu log((2 - q) / (2 - d)). Its mode is in closed form: g' = 0 is the quadratic
    k q^2 - (2k + 2nu + 1) q + 2 (nu + 1) = 0 in q, whose positive root below d is the mode (r = 0 when there is
    none); the width is 1 / sqrt(-g'') there (or 1 / -g'(0) at r = 0). The integral runs up to
    R = r_1 + (g(r_1) - peak + 40) / D from r_1 = mode + 12 widths, D a lower bound on -g' beyond r_1 (-g'(r_1)
    where g is concave, k > 0), so that g(R) is at least 40 below the peak. Three panels of 32-point
    Gauss-Legendre cover it: up to 8 widths below the mode, the bump (to 8 widths above it; up to 40 when it is at
    r = 0), and the tail. On the circle (m = 2, nu = -1/2) the angle q = 2 sin^2(phi / 2) makes the integrand
    smooth: sqrt(d (2 - d)) int_0^phi_d (c - q) e^(k (d - q)) dphi, cut where it is below e^-45 of its peak; on the
    mirrored side in the angle from the other pole, 2 - q = 2 sin^2(psi / 2), so that q near 2 keeps its digits.

    Measured against mpmath's quadrature of the definition: relative error below 1e-11 for m from 2 to 1000,
    kappa from 1e-3 to 1e5 and every w, tails of chance 1e-600 included, on the circle to kappa = 1e12; and from
    kappa = 1e14 to 1e150 against the limit law delta / kappa, to 1e-12 (tests/distributions/test_spherical.py).
    ``one_minus_mean`` is 1 - A_m(kappa) where the caller has it. Computed in float64.
    """
    dtype = kappa.dtype
    kappa, delta = kappa.double(), one_minus_w.double().clamp(min=1e-300, max=2.0)
    nu = 0.5 * (m - 3)
    if one_minus_mean is None:
        one_minus_mean = bessel_terms(0.5 * m - 1, kappa, validate=False)[2]
    one_minus_mean = one_minus_mean.double()
    nodes, weights = _NODES.to(kappa.device), _WEIGHTS.to(kappa.device)
    # the direct side up to two standard deviations above the mean of delta, 1 - A (the standard deviation is about
    # sqrt(2 / (m - 1)) of the mean where the concentration is large), or up to 1, whichever is less; beyond, where
    # its integral is a small difference of large parts (at m = 10, kappa = 100, delta = 0.5: -275 for 0.0049),
    # the mirrored side, whose (c - q) keeps one sign; just above the mean the mirrored side's bump sits on its end
    # point, where the panels resolve it less well (1e-10 at m = 64), and the direct side is the better one
    mirrored = delta > (one_minus_mean * (1 + 2 * math.sqrt(2 / max(m - 1, 1)))).clamp(max=1.0)
    span = torch.where(mirrored, 2 - delta, delta)  # exact for delta in [1, 2] (Sterbenz)
    k = torch.where(mirrored, -kappa, kappa)
    if nu < 0:  # the circle, in the angle t from the kernel's peak, s = 2 sin^2(t / 2) the distance to it in q
        def angle(s):
            return 2 * torch.asin(torch.sqrt(0.5 * s).clamp(max=1.0))

        # q = s on the direct side (the peak at q = 0, s up to delta); 2 - q = s on the mirrored one (the peak at
        # q = span, s from delta): there q itself would round to 2 where delta is below float64's resolution at 2
        # (from kappa ~ 1e12 the gradient lost digits, from 1e16 all of them); the kernel is e^(kappa (delta - s))
        # on both sides, and c - q = +-((1 - A) - s)
        reach = 45 / kappa.clamp(min=1e-300)  # how far in s the kernel stays above e^-45 of its peak
        low = torch.where(mirrored, angle(delta), 0.0)
        high = torch.where(mirrored, angle((delta + reach).clamp(max=2.0)), angle(torch.minimum(delta, reach)))
        half = 0.5 * (high - low)
        t = (low + half).unsqueeze(-1) + half.unsqueeze(-1) * nodes  # (..., nodes)
        s = 2 * torch.sin(0.5 * t).square()
        side = torch.where(mirrored, -1.0, 1.0).unsqueeze(-1)
        kernel = torch.exp(kappa.unsqueeze(-1) * (delta.unsqueeze(-1) - s))
        integrand = side * (one_minus_mean.unsqueeze(-1) - s) * kernel
        return (torch.sqrt(delta * (2 - delta)) * half * (integrand @ weights)).to(dtype)
    # on the mirrored side c - span = delta - (1 - A) and 2 - span = delta, from delta itself: as (2 - c) - (2 - delta)
    # and 2 - (2 - delta) they would be small differences of numbers near 2, where the kernel's mass is
    gap = torch.where(mirrored, delta - one_minus_mean, one_minus_mean - delta)  # c - span
    far_side = torch.where(mirrored, delta, 2 - delta)  # 2 - span

    def log_kernel(r, below):  # q = span e^-r, below = span - q = -span expm1(-r); 2 - q = far_side + below
        return k * below - (nu + 1) * r + nu * torch.log1p(below / far_side)

    def span_minus_q(r):
        return -span * torch.expm1(-r)

    # the root 4 (nu + 1) / D, D = (2k + 2nu + 1) + S, S = sqrt((2k - 1)^2 + 4 nu (nu + 1)), and 2 - root; for k < 0
    # (the mirrored side) D = 2 (nu + 1) + (S - (1 - 2k)), a small difference of large parts for a large |k|, written
    # without it; so is 2 - q wherever q may round to span (= 2 when delta is below float64's resolution at 2, from
    # kappa ~ 1e16: 2 - span is far_side, exact), where 0 / 0 made a NaN gradient and a zero width a zero one; and
    # span - root likewise, where the mode's r = log(span / root), of two numbers that both round to 2, fell 1,000
    # widths from the bump
    discriminant = torch.hypot(2 * k - 1, k.new_tensor(2 * math.sqrt(nu * (nu + 1))))  # no overflow of k^2
    outer = discriminant + (1 - 2 * k)
    denominator = torch.where(k >= 0, (2 * k + 2 * nu + 1) + discriminant, 2 * (nu + 1) + 4 * nu * (nu + 1) / outer)
    root = 4 * (nu + 1) / denominator
    two_minus_root = torch.where(k >= 0, 2 * (2 * k - 1 + discriminant), 8 * nu * (nu + 1) / outer) / denominator
    span_minus_root = torch.where(mirrored, two_minus_root - far_side, span - root)  # without cancellation
    above = span_minus_root > 0  # the root is below span: the mode is at r = log(span / root) > 0, else at r = 0
    mode = torch.where(above, -torch.log1p(-span_minus_root / span), 0.0)
    q_mode = torch.where(above, root, span)
    two_minus_q_mode = torch.where(above, two_minus_root, far_side)
    bend = 2 * nu * q_mode / two_minus_q_mode.square() if nu else 0.0  # the log-kernel's last term's curvature
    curvature = (k * q_mode + bend).clamp(min=0)  # -g'' at the mode
    slope_at_zero = (nu + 1) - k * span - nu * span / far_side  # -g'(0), positive where the mode is at 0
    steepness = torch.maximum(torch.sqrt(curvature), torch.where(mode > 0, 0.0, slope_at_zero.clamp(min=0)))
    width = 1 / steepness.clamp(min=1e-3)
    peak = log_kernel(mode, span_minus_q(mode))
    far = mode + 12 * width
    q_far = span * torch.exp(-far)
    # a lower bound on -g' beyond r_1: -g'(r_1) where g is concave (k > 0); on the mirrored side -g'(r) =
    # (nu + 1) - k q - nu q / (2 - q) with -k q >= 0 and the rest increasing in r
    descent = (nu + 1) - torch.where(mirrored, 0.0, k * q_far) - nu * q_far / (far_side + span_minus_q(far))
    upper = far + ((log_kernel(far, span_minus_q(far)) - peak + 40) / descent.clamp(min=1e-12)).clamp(min=0)
    # three panels: up to the bump, the bump, and the tail; the bump is the mode +- 8 widths (e^-32 for a Gaussian);
    # where the mode is at r = 0 and the kernel falls about linearly there, up to 40 widths (e^-40) but no further
    # than r = 2 beyond 8 widths (e^-r, the scale on which the kernel's slope changes)
    low = (mode - 8 * width).clamp(min=0)
    reach = torch.where(mode > 0, 8 * width, torch.minimum(40 * width, torch.clamp(8 * width, min=2.0)))
    high = torch.minimum(mode + reach, upper)
    edges = torch.stack([torch.zeros_like(low), low, high, torch.maximum(upper, high)], -1)  # (..., 4)
    half = 0.5 * (edges[..., 1:] - edges[..., :-1])  # (..., 3)
    r = (edges[..., :-1] + half).unsqueeze(-1) + half.unsqueeze(-1) * nodes  # (..., 3, nodes)
    k, span, gap, far_side = (t[..., None, None] for t in (k, span, gap, far_side))
    between = span_minus_q(r)
    integrand = (gap + between) * torch.exp(log_kernel(r, between).clamp(max=700))  # c - q = gap + (span - q)
    return (span[..., 0, 0] * ((integrand @ weights) * half).sum(-1)).to(dtype)


class _LogNormalizerAtLoc(torch.autograd.Function):
    """log p(loc) + (m/2) log(2 pi) = v log kappa - log(I_v(kappa) e^-kappa), v = m/2 - 1, in float64, with its
    derivative 1 - A_m(kappa) given directly: the two terms' own derivatives, v / kappa and v / kappa + A_m - 1, are
    huge and opposite where kappa << v (at m = 10, kappa = 1e-3: 4,000 each, for a difference of 1 - 1e-4).
    ``one_minus_mean`` is the attached 1 - A_m (from ``_bessel_terms``), so a second derivative goes through it."""

    @staticmethod
    def forward(ctx, kappa, order, log_ive, one_minus_mean):
        ctx.save_for_backward(one_minus_mean)
        return order * torch.log(kappa) - log_ive

    @staticmethod
    def backward(ctx, grad):
        (one_minus_mean,) = ctx.saved_tensors
        return grad * one_minus_mean, None, None, None


class _CosineDraw(torch.autograd.Function):
    """w = loc . z for m != 3 drawn exactly (forward) with its implicit reparameterisation gradient (backward).

    The rejection loop runs inside ``forward``, so ``torch.jit.trace`` (``elbo="jit"``, Pyro's ``JitTrace_ELBO``)
    records the draw as one opaque operation that runs the loop afresh on every call, instead of freezing
    the number of rounds it saw while tracing: the traced sampler stays exact. ``one_minus_mean`` (1 - A_m(kappa),
    which the distribution has computed already) is not differentiated.
    """

    @staticmethod
    def forward(ctx, kappa, first_gamma, m, log_ive, one_minus_mean):
        with torch.no_grad(), warnings.catch_warnings() if torch.jit.is_tracing() else contextlib.nullcontext():
            # while tracing, torch warns of the loop's tests, which this opaque op re-runs on every call (entering
            # catch_warnings resets which warnings were shown once: only then)
            if torch.jit.is_tracing():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # float32 where the concentration is (the test is written without cancellation), float64 for float64
            wide = kappa.detach().to(torch.promote_types(kappa.dtype, torch.float32))
            draws = vmf_cosine(wide, m, first_gamma.detach(), log_ive)
            w, one_minus_w, one_plus_w = (t.to(kappa.dtype) for t in draws)
        ctx.save_for_backward(kappa, one_minus_w, one_minus_mean)
        ctx.m = m
        return w, one_minus_w, one_plus_w

    @staticmethod
    def backward(ctx, grad_w, grad_one_minus_w, grad_one_plus_w):
        kappa, one_minus_w, one_minus_mean = ctx.saved_tensors
        dw = cosine_gradient(kappa, one_minus_w, ctx.m, one_minus_mean)
        return (grad_w - grad_one_minus_w + grad_one_plus_w) * dw, None, None, None, None


class _InverseCdfCosine(torch.autograd.Function):
    """w = loc . z on S^2 (m = 3) by exact inversion of its CDF (forward), with the implicit reparameterisation
    gradient (backward), as for the other dimensions: the inverse CDF's own autograd derivative, d/dkappa of
    -log1p((1 - u) expm1(-2 kappa)) / kappa, cancels to relative errors of about 1e-13 / kappa (7% at kappa = 1e-12,
    negative values at 1e-14, where dw/dkappa >= 0)."""

    @staticmethod
    def forward(ctx, kappa, one_minus_mean):
        with torch.no_grad():
            w, one_minus_w = (t.to(kappa.dtype) for t in exact_cosine_s2(kappa.detach().double()))
        ctx.save_for_backward(kappa, one_minus_w, one_minus_mean)
        return w, one_minus_w

    @staticmethod
    def backward(ctx, grad_w, grad_one_minus_w):
        kappa, one_minus_w, one_minus_mean = ctx.saved_tensors
        return (grad_w - grad_one_minus_w) * cosine_gradient(kappa, one_minus_w, 3, one_minus_mean), None


class VonMisesFisher(SphericalDistribution):
    """The von Mises-Fisher distribution on S^(m-1): p(z) = C_m(kappa) exp(kappa loc . z).

    ``C_m(kappa) = kappa^(m/2-1) / ((2 pi)^(m/2) I_(m/2-1)(kappa))`` is computed by
    :func:`pyrovae.ops.log_bessel_iv` in torch, on the parameters' device, stable from tiny to huge
    concentrations and dimensions.

    ``rsample`` draws the cosine w = loc . z by exact inversion of its CDF for m = 3 and otherwise by rejection,
    from a gamma proposal or Wood's, whichever each row's concentration suits (:func:`rejection_cosine`;
    vectorised over the whole batch, each row with its own mean and concentration), a uniform tangent
    direction, and a reflection that sends e1 to ``loc``. Gradients: with respect to ``loc`` they flow through
    the reflection; with respect to ``concentration`` through w by implicit reparameterisation
    (:func:`cosine_gradient`), which makes the pathwise gradient of E[f(z)] unbiased. (Differentiating the
    accepted proposal as if it were a plain reparameterisation, as s-vae-pytorch does without its correction
    term, is biased.)

    The rejection loop and the implicit gradient form one autograd operation (``_CosineDraw``), opaque to
    ``torch.jit.trace``, and the loop is one operator (:func:`~pyrovae.distributions.vmf_cosine.vmf_cosine`) to
    ``make_fx`` and ``torch.compile``: a traced ELBO (``elbo="jit"``, Pyro's ``JitTrace_ELBO``) or a compiled step
    (``train(compile=True)``) runs the loop afresh on every call, so their sampler is as exact as the eager one.

    :param loc: mean directions ``(..., m)`` of unit norm, m >= 2.
    :param concentration: ``(...)``, positive; or ``(..., 1)``, one per row of ``loc`` (s-vae-pytorch's layout:
        the trailing 1 is dropped, :func:`~pyrovae.distributions.sphere.concentration_batch_shape`).
    """

    arg_constraints = {"loc": constraints.sphere, "concentration": constraints.positive}

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)[:-1]
        kappa = self.concentration.expand(shape)
        g, half_sq_norm = tangent_gaussians(shape, self.dim, self.loc.dtype, self.loc.device)
        log_ive, _, one_minus_mean = (t.expand(shape) for t in self._bessel_values())
        if self.dim == 3:
            w, one_minus_w = _InverseCdfCosine.apply(kappa, one_minus_mean)
            one_plus_w = None
        else:
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
                cached = (*key, bessel_terms(0.5 * self.dim - 1, kappa, validate=False))
            self.__dict__["_bessel_cache"] = cached
        return cached[2]

    def _wide_concentration(self) -> torch.Tensor:
        """The concentration in float64, of its shape before any ``expand``: one node, through which every term of
        a result passes, so that their gradients add up in float64 before the one cast back (two float64 copies
        would each be cast to float32 and cancel there: the entropy's kappa-gradient at m = 10, kappa = 1e-3
        came out with the wrong sign)."""
        return unexpanded(self.concentration).double()

    def _bessel_terms(self, wide: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_bessel_values`, differentiable in the concentration (``wide``: its float64 copy, when the caller
        has one): shared by ``log_prob``, ``entropy``, the KL divergence, ``mean`` and the sampler's implicit
        gradient; each call attaches them anew with their exact derivatives (one operation), so repeated backward
        passes through one distribution work."""
        wide = self._wide_concentration() if wide is None else wide
        return attach_bessel_terms(0.5 * self.dim - 1, wide, self._bessel_values())

    def _wide_log_normalizer_at_loc(self, wide: torch.Tensor) -> torch.Tensor:
        """log C_m(kappa) + kappa = log p(loc) in float64 from the float64 concentration ``wide``: through the scaled
        Bessel function (log I_v(kappa) - kappa), so that it keeps its digits where log C_m and kappa are huge and
        opposite (in float32 at kappa = 1e10 their sum is lost entirely), and with its derivative 1 - A_m(kappa)
        given directly (:class:`_LogNormalizerAtLoc`)."""
        m = self.dim
        log_ive, _, one_minus_mean = self._bessel_terms(wide)
        log_c = _LogNormalizerAtLoc.apply(wide, 0.5 * m - 1, log_ive, one_minus_mean) - 0.5 * m * math.log(2 * math.pi)
        # at kappa = 0 the uniform density, with the limit of its derivative, 1 - A_m(0) = 1
        return torch.where(wide > 0, log_c, wide - log_sphere_area(m))

    def _log_normalizer_at_loc(self) -> torch.Tensor:
        """log C_m(kappa) + kappa = log p(loc) (:meth:`_wide_log_normalizer_at_loc`), in the concentration's dtype
        and of its shape before any ``expand``."""
        return self._wide_log_normalizer_at_loc(self._wide_concentration()).to(self.concentration.dtype)

    def _log_normalizer(self) -> torch.Tensor:
        """log C_m(kappa) (unexpanded shape)."""
        wide = self._wide_concentration()
        return (self._wide_log_normalizer_at_loc(wide) - wide).to(self.concentration.dtype)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log C_m(kappa) + kappa - kappa (1 - loc . z), with 1 - loc . z = ``|loc - z|^2 / 2`` near loc (no
        cancellation of loc . z against 1 where the mass of a concentrated vMF is)."""
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
        wide = self._wide_concentration()
        entropy = wide * self._bessel_terms(wide)[2] - self._wide_log_normalizer_at_loc(wide)
        return entropy.to(self.concentration.dtype).expand(self.batch_shape)

    @property
    def mean(self) -> torch.Tensor:
        return self._mean_resultant_length().unsqueeze(-1) * self.loc

    @property
    def variance(self) -> torch.Tensor:
        raise NotImplementedError("VonMisesFisher.variance is not implemented; use samples (or the mean resultant "
                                  "length, mean.norm(dim=-1), as the concentration's measure of spread)")

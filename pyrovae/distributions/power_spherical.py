"""The Power Spherical distribution (De Cao & Aziz 2020): a rejection-free alternative to the vMF."""

from __future__ import annotations

import math

import torch
from pyro.distributions import constraints

from pyrovae.distributions.sphere import SphericalDistribution, rotate_from_north_pole, tangent_gaussians
from pyrovae.ops.gamma import digamma_difference, log_gamma_difference, trigamma_difference


class _EntropyTerms(torch.autograd.Function):
    """kappa (psi(a + b) - psi(a)) - (lgamma(a + b) - lgamma(a)) at a = kappa + b, the entropy's part in kappa, whose
    derivative kappa (psi'(a + b) - psi'(a)) is taken directly: by the chain rule it is a difference of two digamma
    differences, and at small kappa the rounding of one of them is larger than the answer. Forward and reverse
    mode, vmap and torch.func's transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(kappa, b):
        alpha = kappa + b
        return kappa * digamma_difference(alpha, b) - log_gamma_difference(alpha, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        kappa, b = inputs
        ctx.save_for_backward(kappa)
        ctx.save_for_forward(kappa)
        ctx.b = b

    @staticmethod
    def _slope(ctx) -> torch.Tensor:
        (kappa,) = ctx.saved_tensors
        return kappa * trigamma_difference(kappa + ctx.b, ctx.b)

    @staticmethod
    def backward(ctx, grad):
        return grad * _EntropyTerms._slope(ctx), None

    @staticmethod
    def jvp(ctx, tangent, _):
        return tangent * _EntropyTerms._slope(ctx)


class PowerSpherical(SphericalDistribution):
    """p(z) = N(kappa, m)^-1 (1 + loc . z)^kappa on S^(m-1), with N = 2^(a+b) pi^b Gamma(a) / Gamma(a+b)
    after the change t = loc . z, for a = (m-1)/2 + kappa and b = (m-1)/2.

    The cosine t to the mean direction is ``2 B - 1`` with ``B ~ Beta(a, b)``, drawn as the ratio of two
    reparameterised Gamma variables, so that ``1 - t = 2 G_b / (G_a + G_b)`` keeps its precision at high
    concentration; the tangent part is uniform on S^(m-2). No rejection, so ``rsample`` is one pass and
    pathwise gradients are exact.

    :param loc: mean directions ``(..., m)``, unit norm.
    :param concentration: concentrations ``(...)``, non-negative; or ``(..., 1)``, one per row of ``loc`` (the
        trailing 1 is dropped, :func:`~pyrovae.distributions.sphere.concentration_batch_shape`).
    """

    arg_constraints = {"loc": constraints.sphere, "concentration": constraints.nonnegative}

    def _wide_concentration(self) -> torch.Tensor:
        """The concentration in float64: one node through which every term of a result passes, so that their
        gradients add up in float64 before the one cast back (two float64 copies, each cast to float32, cancelled
        there: d log p(loc)/dkappa was 19% off at kappa = 1e7 and 0 from 1e10)."""
        return self.concentration.double()

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)[:-1]
        # w = 2 eps - 1 with eps ~ Beta(alpha, beta), alpha = beta + kappa, beta = (m-1)/2: the tangent draw's
        # |g|^2 / 2 is the Gamma(beta) variate, so only Gamma(alpha) is drawn
        alpha = self.concentration + 0.5 * (self.dim - 1)
        g, gamma_b = tangent_gaussians(shape, self.dim, self.loc.dtype, self.loc.device)
        gamma_a = torch._standard_gamma(alpha.expand(shape).contiguous())
        total = gamma_a + gamma_b
        w, one_minus_w, one_plus_w = (gamma_a - gamma_b) / total, 2.0 * gamma_b / total, 2.0 * gamma_a / total
        return rotate_from_north_pole(self.loc.expand(shape + self.event_shape), w, one_minus_w, g, gamma_b, one_plus_w)

    def _log_prob_at_loc(self, kappa: torch.Tensor) -> torch.Tensor:
        """log p(loc) = -log N + kappa log 2 = lgamma(a + b) - lgamma(a) - 2b log 2 - b log pi, of a float64 ``kappa``
        (:meth:`_wide_concentration`; kappa log 2 cancels out of (a + b) log 2 by hand). The log-gamma difference
        is taken through ``lgamma``, whose rounding, about eps a log a, is 1.5e-11 (absolute) at kappa = 1e4 and
        3e-5 at 1e10 (:func:`~pyrovae.ops.gamma.log_gamma_difference` is exact there but costs a Power
        Spherical S-VAE step 4-7%; the entropy and the KL take it)."""
        b = 0.5 * (self.dim - 1)
        alpha = kappa + b
        return torch.lgamma(alpha + b) - torch.lgamma(alpha) - b * (2.0 * math.log(2.0) + math.log(math.pi))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(loc) + kappa log((1 + t) / 2), t = loc . z, in float64, with (1 - t) / 2 = ``|loc - z|^2 / 4`` on
        loc's side (where a concentrated distribution's mass is, and kappa multiplies any rounding of the logarithm)
        and (1 + t) / 2 = ``|loc + z|^2 / 4`` on the antipode's (a draw rounded close to it keeps a finite
        log-density instead of log(0); at kappa = 0 the antipode's too)."""
        if self._validate_args:
            self._validate_sample(value)
        loc, value64 = self.loc.double(), value.double()
        away = (loc * value64).sum(-1) < 0
        near = 0.25 * (loc - value64 * torch.where(away, -1.0, 1.0).unsqueeze(-1)).square().sum(-1)
        kappa = self._wide_concentration()
        # each branch finite where the other is taken, and kappa = 0 uniform at the antipode itself (a masked
        # 0 * kappa / 0 would reach loc's and z's gradients); elsewhere kappa's gradient is log((1 + t) / 2)
        antipodal = torch.where(away & ((kappa != 0) | (near != 0)), near, 1.0)
        scaled_log = torch.where(away, torch.xlogy(kappa, antipodal), kappa * torch.log1p(-near))
        log_density = self._log_prob_at_loc(kappa) + scaled_log
        return log_density.to(torch.promote_types(self.concentration.dtype, value.dtype))

    def entropy(self) -> torch.Tensor:
        """-log p(loc) - kappa E[log((1 + t) / 2)], E[log((1 + t) / 2)] = digamma(a) - digamma(a + b); in float64,
        without cancellation (:mod:`pyrovae.ops.gamma`), its gradient kappa (psi'(a + b) - psi'(a)) directly."""
        b = 0.5 * (self.dim - 1)
        entropy = _EntropyTerms.apply(self._wide_concentration(), b) + b * (2.0 * math.log(2.0) + math.log(math.pi))
        return entropy.to(self.concentration.dtype)

    @property
    def mean(self) -> torch.Tensor:
        # E[t] = (a - b) / (a + b) = kappa / (kappa + m - 1), in float64: in float32 a = b + kappa rounds a small
        # kappa away (m = 500, kappa = 1e-3: 0.7% off; m = 2, kappa = 1e-8: 0)
        kappa = self._wide_concentration()
        mean = (kappa / (kappa + (self.dim - 1))).to(self.concentration.dtype)
        return mean.unsqueeze(-1) * self.loc

    @property
    def variance(self) -> torch.Tensor:
        raise NotImplementedError("PowerSpherical.variance is not implemented; use samples")

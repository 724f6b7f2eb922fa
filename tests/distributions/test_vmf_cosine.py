"""The von Mises-Fisher cosine's exact samplers (pyrovae.distributions.vmf_cosine): each proposal against scipy and
quadrature, both samplers against scipy's vMF in both precisions, and float32 edge cases."""

import math

import numpy as np
import pyro
import pytest
import torch
from scipy import stats

from pyrovae.distributions import VonMisesFisher
from pyrovae.distributions.vmf_cosine import (
    _GAMMA_MIN_ACCEPTANCE,
    _gamma_half_integer,
    _gamma_proposal,
    _symmetric_beta,
    exact_cosine_s2,
    fused_first_pass,
    rejection_cosine,
)
from pyrovae.ops import bessel_iv_ratio, bessel_terms
from tests.distributions.test_spherical import unit


def uses_gamma_proposal(m, kappa):
    nu = 0.5 * (m - 3)
    k = torch.tensor([kappa], dtype=torch.float64)
    log_acceptance = _gamma_proposal(k, nu, bessel_terms(0.5 * m - 1, k)[0])[3]
    return nu > 0 and math.exp(log_acceptance.item()) >= _GAMMA_MIN_ACCEPTANCE


# Wood's sampler: (10, 1), (100, 11), (2, 40), (20, 3); the gamma proposal: (5, 10), (20, 3.5), (50, 30), (10, 300),
# (4, 1e3) ((20, 3) and (20, 3.5) either side of the switch, where the gamma proposal's rate is furthest from kappa);
# m = 3 by inversion
KS_CASES = [(3, 2.0), (5, 10.0), (10, 1.0), (2, 40.0), (100, 11.0), (20, 3.0), (20, 3.5), (50, 30.0), (10, 300.0),
            (4, 1e3)]


def test_the_ks_cases_cover_both_samplers():
    assert [uses_gamma_proposal(m, kappa) for m, kappa in KS_CASES] == [False, True, False, False, False, False, True,
                                                                         True, True, True]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("m,kappa", KS_CASES)
def test_vmf_samples_match_scipy_two_sample_ks(m, kappa, dtype):
    loc = unit(m, seed=3)
    ours = VonMisesFisher(loc.to(dtype), torch.tensor(kappa, dtype=dtype)).sample((20000,)).double() @ loc
    theirs = stats.vonmises_fisher(loc.numpy(), kappa).rvs(20000, random_state=2) @ loc.numpy()
    assert stats.ks_2samp(ours.numpy(), theirs).pvalue > 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("m", [2, 4, 10, 101])
def test_symmetric_beta_matches_scipy_and_keeps_both_tails(m, dtype):
    """Wood's proposal: eps ~ Beta((m-1)/2, (m-1)/2) from two uniforms, with eps and 1 - eps each to full relative
    precision (the smaller one is not 1 minus the larger)."""
    torch.manual_seed(m)
    eps, one_minus_eps = _symmetric_beta(m, (40000,), dtype, "cpu")
    assert stats.kstest(eps.double().numpy(), stats.beta(0.5 * (m - 1), 0.5 * (m - 1)).cdf).pvalue > 1e-3
    assert torch.equal(eps.lt(0.5), one_minus_eps.gt(0.5))
    small = torch.minimum(eps, one_minus_eps)
    assert torch.allclose(eps + one_minus_eps, torch.ones_like(eps), rtol=0, atol=2 * torch.finfo(dtype).eps)
    assert (small > 0).all()
    if m == 2:  # the arcsine law's tails are reached, not rounded to 0
        assert small.min() < 1e-6


def test_float32_draws_have_no_wild_tails_and_any_finite_concentration(monkeypatch):
    """A float32 uniform is exactly 0 once in 2^24 draws: it must not become the antipode (m = 3 inversion) or a
    gamma variate of 87 (the clamped log). And every finite float32 concentration samples, up to 3e38."""
    with monkeypatch.context() as patch:
        patch.setattr(torch, "rand_like", torch.zeros_like)
        patch.setattr(torch, "rand", lambda *size, **options: torch.zeros(*size, **options))
        _, one_minus_w = exact_cosine_s2(torch.tensor([100.0, 1.0]))
        assert (one_minus_w == 0).all()  # u = 1 - 0: the mode, not the antipode
        assert (_gamma_half_integer(1.5, torch.Size([3]), torch.float32, "cpu") < 20).all()  # 87 with log(tiny)
    for kappa in (1e20, 1e30, 3e38):
        for m in (4, 10, 1000):
            q = VonMisesFisher(unit(m, seed=1).float(), torch.full((1000,), kappa))
            z = q.sample()
            assert torch.isfinite(z).all() and torch.allclose(z.norm(dim=-1), torch.ones(1000))
            k = torch.full((4000,), kappa)
            first = _gamma_half_integer(0.5 * (m - 1), k.shape, torch.float32, "cpu")
            _, one_minus_w, _ = rejection_cosine(k, m, first, bessel_terms(0.5 * m - 1, k.double())[0])
            # 1 - w ~ Gamma((m-1)/2, rate kappa) in the limit
            assert one_minus_w.double().mean().item() * kappa / (0.5 * (m - 1)) == pytest.approx(1, abs=0.1), (m, kappa)


@pytest.mark.parametrize("m", [4, 5, 10, 20, 100, 1000])
def test_gamma_proposal_bound_and_acceptance_rate(m):
    """The gamma proposal's envelope M is the largest ratio target / proposal (so the test is exact) and its
    acceptance rate is the quadrature of the target against the scaled proposal, at concentrations 1e-2..1e4."""
    integrate, special = pytest.importorskip("scipy.integrate"), pytest.importorskip("scipy.special")
    nu = 0.5 * (m - 3)
    grid = np.linspace(1e-9, 2 - 1e-9, 100001)
    for kappa in (1e-2, 1.0, 3.0, 10.0, 30.0, 100.0, 1e3, 1e4):
        k = torch.tensor([kappa], dtype=torch.float64)
        rate, shift, log_m, log_acceptance = (t.item() for t in _gamma_proposal(k, nu, bessel_terms(0.5 * m - 1, k)[0]))
        points = np.append(grid, 2 - nu / shift)
        log_ratio = shift * points + nu * np.log1p(-points / 2) - log_m
        assert log_ratio.max() <= 1e-12 and log_ratio[-1] > -1e-12, (m, kappa)  # the largest ratio, at 2 - nu / a

        def accepted(t, rate=rate, shift=shift, log_m=log_m):
            """The proposal's Gamma(nu + 1) density at t = rate delta, times the acceptance probability."""
            d = t / rate
            log_gamma = nu * math.log(t) - t - special.gammaln(nu + 1)
            return math.exp(log_gamma + shift * d + nu * math.log1p(-d / 2) - log_m)

        top = min(2 * rate, nu + 1 + 60 * math.sqrt(nu + 1))  # the Gamma(nu + 1) mass beyond is below 1e-20
        expected = integrate.quad(accepted, 0, top, points=[nu, nu + 1 + 5 * math.sqrt(nu + 1)], limit=400)[0]
        assert math.exp(log_acceptance) == pytest.approx(expected, rel=1e-6), (m, kappa)
        assert math.exp(log_acceptance) > 0.55


@pytest.mark.parametrize("m", [4, 10, 100])
def test_vmf_rows_with_different_concentrations_and_samplers(m):
    """One batch mixing rows for the gamma proposal and for Wood's: each row's cosine has the right law."""
    kappas = torch.tensor([0.5, 10.0, 300.0, 1e4], dtype=torch.float64)
    loc = torch.stack([unit(m, seed=s) for s in range(4)])
    z = VonMisesFisher(loc, kappas).sample((20000,))
    cosine = (z * loc).sum(-1)
    exact = bessel_iv_ratio(m / 2 - 1, kappas)
    stderr = cosine.std(0) / math.sqrt(20000)
    assert ((cosine.mean(0) - exact).abs() < 5 * stderr).all()
    for row, kappa in enumerate(kappas.tolist()):
        reference = stats.vonmises_fisher(loc[row].numpy(), kappa).rvs(20000, random_state=row) @ loc[row].numpy()
        assert stats.ks_2samp(cosine[:, row].numpy(), reference).pvalue > 1e-3


@pytest.mark.parametrize("shape", [0.5, 1.0, 4.5, 8.0, 12.5])
def test_half_integer_gammas_match_scipy(shape):
    pyro.set_rng_seed(0)
    draws = _gamma_half_integer(shape, torch.Size([20000]), torch.float64, "cpu").numpy()
    assert stats.kstest(draws, stats.gamma(shape).cdf).pvalue > 1e-3


def test_float32_draws_near_the_antipode_keep_finite_gradients():
    """At small kappa on the circle a float32 draw used to land exactly on w = -1 (1e-4 of draws: 1 + w rounded from
    2 - (1 - w)); sqrt's infinite derivative there times dw/dkappa = 0 made NaN gradients. 1 + w now comes from Wood's
    proposal without cancellation, and the rotation's sine is clamped above 0."""
    torch.manual_seed(0)
    kappa = torch.full((200000,), 0.01, requires_grad=True)
    loc = torch.nn.functional.normalize(torch.tensor([0.6, 0.8]), dim=0).expand(200000, 2)
    VonMisesFisher(loc, kappa).rsample().sum().backward()
    assert torch.isfinite(kappa.grad).all()


@pytest.mark.parametrize("m, kappas", [
    (11, [0.5] * 1000 + [40.0] * 1000),  # both proposals in one call
    (101, [30.0] * 2000),  # Wood's alone, where a few rows (5 of 2,000 here) need later passes
])
def test_the_fused_first_pass_draws_what_the_eager_one_draws(m, kappas):
    """Under fused_first_pass() (train(compile=True)'s compiled step) the first pass is one compiled call that draws
    the same random numbers in the same order: the same cosines to float rounding, later passes included."""
    kappa = torch.tensor(kappas)
    log_ive = bessel_terms(0.5 * m - 1, kappa.double(), validate=False)[0]
    first = torch.randn(len(kappas), m - 1, generator=torch.Generator().manual_seed(0)).square().sum(-1) / 2
    torch.manual_seed(4)
    eager = rejection_cosine(kappa, m, first, log_ive)
    with fused_first_pass():
        torch.manual_seed(4)
        fused = rejection_cosine(kappa, m, first, log_ive)
    for a, b in zip(eager, fused):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    torch.manual_seed(4)
    rejection_cosine(kappa, m, first, log_ive)
    after_eager = torch.rand(3)
    with fused_first_pass():
        torch.manual_seed(4)
        rejection_cosine(kappa, m, first, log_ive)
    torch.testing.assert_close(torch.rand(3), after_eager, rtol=0, atol=0)  # as many numbers drawn

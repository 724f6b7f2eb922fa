"""The spherical distributions against scipy.stats.vonmises_fisher, closed forms and Monte Carlo."""

import math

import numpy as np
import pyro
import pytest
import torch
from scipy import stats

from pyrovae.distributions import HypersphericalUniform, PowerSpherical, VonMisesFisher, kl_to_uniform
from pyrovae.distributions.sphere import log_sphere_area
from pyrovae.distributions.vmf_cosine import exact_cosine_s2
from pyrovae.distributions.von_mises_fisher import cosine_gradient
from pyrovae.ops import bessel_iv_ratio


def unit(m, seed=0, dtype=torch.float64):
    x = torch.randn(m, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x / x.norm()


def exact_mean_derivative(m, kappa):
    k = torch.tensor(float(kappa), dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(bessel_iv_ratio(0.5 * m - 1, k), k)
    return grad.item()


@pytest.mark.parametrize("m", [2, 3, 5, 10, 64])
@pytest.mark.parametrize("kappa", [1e-3, 0.7, 12.0, 350.0])
def test_vmf_log_prob_and_entropy_match_scipy(m, kappa):
    loc = unit(m, seed=m)
    reference = stats.vonmises_fisher(loc.numpy(), kappa)
    x = torch.from_numpy(reference.rvs(20, random_state=1))
    q = VonMisesFisher(loc, torch.tensor(kappa, dtype=torch.float64))
    np.testing.assert_allclose(q.log_prob(x).numpy(), reference.logpdf(x.numpy()), rtol=1e-6)
    np.testing.assert_allclose(q.entropy().item(), reference.entropy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("m,kappa", [(2, 3.0), (3, 0.5), (7, 25.0), (100, 300.0), (100, 11.0), (1000, 50.0)])
def test_vmf_sample_mean_is_a_m_times_loc(m, kappa):
    loc = unit(m, seed=5)
    q = VonMisesFisher(loc, torch.tensor(kappa, dtype=torch.float64))
    z = q.sample((20000,))
    assert torch.allclose(z.norm(dim=-1), torch.ones(20000, dtype=torch.float64), atol=1e-12)
    stderr = z.std(0).max() / math.sqrt(20000)
    assert (z.mean(0) - q.mean).abs().max() < 5 * stderr
    assert torch.allclose(q.mean, bessel_iv_ratio(m / 2 - 1, torch.tensor(kappa, dtype=torch.float64)) * loc)


@pytest.mark.parametrize(
    "m,kappa", [(2, 0.3), (2, 20.0), (3, 4.0), (4, 1.0), (5, 2.0), (5, 60.0), (10, 5.0), (100, 11.0), (100, 150.0)],
)
def test_pathwise_gradient_wrt_concentration_is_unbiased(m, kappa):
    """d/dkappa E[loc . z] = A_m'(kappa): the per-replicate pathwise gradients average to it within MC error."""
    replicates, draws = 400, 200
    loc = unit(m, seed=7)
    concentration = torch.full((replicates,), kappa, dtype=torch.float64, requires_grad=True)
    z = VonMisesFisher(loc, concentration).rsample((draws,))
    (grads,) = torch.autograd.grad((z @ loc).mean(0).sum(), concentration)
    exact = exact_mean_derivative(m, kappa)
    assert abs(grads.mean().item() - exact) < 4.5 * grads.std().item() / math.sqrt(replicates) + 1e-12


@pytest.mark.parametrize("kappa", [1e-3, 0.5, 3.0, 80.0, 1e4])
def test_implicit_gradient_equals_the_exact_inverse_cdf_derivative_on_s2(kappa):
    concentration = torch.full((64,), kappa, dtype=torch.float64, requires_grad=True)
    w, one_minus_w = exact_cosine_s2(concentration)
    (exact,) = torch.autograd.grad(w.sum(), concentration)
    implicit = cosine_gradient(concentration.detach(), one_minus_w.detach(), 3)
    torch.testing.assert_close(implicit, exact, rtol=1e-9, atol=1e-15)


def mp_cosine_gradient(m, kappa, delta):
    """dw/dkappa = -(dF/dkappa) / p(w) from its definition by mpmath's adaptive quadrature at 30 digits:
    int_w^1 (t - A) p(t) / p(w) dt for w >= 0, and the equal -int_-1^w (t - A) p(t) / p(w) dt for w < 0 (the integral
    over the short side: over the long one, the terms cancel to far more digits than 30), with p(t) / p(w) =
    e^(kappa (t - w)) ((1 - t^2) / (1 - w^2))^nu; on the circle in the angle, where (1 - t^2)^-1/2 is singular."""
    import mpmath

    mpmath.mp.dps = 30
    nu, k, d = mpmath.mpf(m - 3) / 2, mpmath.mpf(kappa), mpmath.mpf(delta)
    mean = mpmath.besseli(mpmath.mpf(m) / 2, k) / mpmath.besseli(mpmath.mpf(m) / 2 - 1, k)
    w = 1 - d
    if m == 2:  # t = cos(phi): dt (1 - t^2)^-1/2 = dphi
        def f(phi):
            return (mpmath.cos(phi) - mean) * mpmath.exp(k * (mpmath.cos(phi) - w))
        ends = (0, mpmath.acos(w)) if w >= 0 else (mpmath.acos(w), mpmath.pi)
        sign = 1 if w >= 0 else -1
        return float(sign * mpmath.sqrt(1 - w * w) * mpmath.quad(f, mpmath.linspace(*ends, 8)))

    def f(t):
        return (t - mean) * mpmath.exp(k * (t - w)) * ((1 - t * t) / (1 - w * w)) ** nu
    if w >= 0:  # breaks where the integrand's scales are: near t = 1 and around its mode
        breaks = sorted({w, 1, *(1 - d * t for t in (1e-6, 1e-4, 1e-2, 0.1, 0.3, 0.6)),
                         *([1 - 2 * (nu + 1) / k] if 2 * (nu + 1) / k < d else [])})
        return float(mpmath.quad(f, breaks))
    e = 1 + w
    return float(-mpmath.quad(f, sorted({-1, w, *(-1 + e * t for t in (1e-6, 1e-4, 1e-2, 0.1, 0.3, 0.6))})))


@pytest.mark.parametrize("m", [2, 4, 5, 11, 100, 1000])
def test_implicit_gradient_matches_mpmath_quadrature(m):
    """At concentrations from 1e-3 to 1e5 and at cosines from the sampler plus both ends (w near 1, and w near -1,
    where the (2 - q)^nu factor is nearly singular and the mirrored integral is taken): relative error below 1e-10."""
    torch.manual_seed(m)
    for kappa in (1e-3, 0.5, 7.0, 150.0, 1e5):
        draws = VonMisesFisher(unit(m), torch.tensor(kappa, dtype=torch.float64)).sample((3,)) @ unit(m)
        one_minus_w = torch.cat([1 - draws, torch.tensor([1e-7, 1.9995], dtype=torch.float64)])
        k = torch.full_like(one_minus_w, kappa)
        got = cosine_gradient(k, one_minus_w, m)
        for value, delta in zip(got.tolist(), one_minus_w.tolist()):
            expected = mp_cosine_gradient(m, kappa, delta)
            assert abs(value - expected) <= 1e-10 * abs(expected) + 1e-300, (m, kappa, delta, value, expected)


@pytest.mark.parametrize("kappa", [1e7, 1e10, 1e12])
def test_implicit_gradient_on_the_circle_keeps_its_digits_at_large_concentrations(kappa):
    """On the circle the tail beyond the mean (the mirrored side) was integrated in the angle from e1, where
    q = 1 - t rounds near 2: 1e-10 off at kappa = 1e6, 1e-7 at 1e10, 2e-4 at 1e12 (and 0 from 1e16)."""
    mean_delta = 0.5 / kappa  # 1 - A_2(kappa), nearly
    one_minus_w = torch.tensor([0.01, 0.5, 1.0, 3.0, 6.0, 12.0, 30.0], dtype=torch.float64) * mean_delta
    got = cosine_gradient(torch.full_like(one_minus_w, kappa), one_minus_w, 2)
    for value, delta in zip(got.tolist(), one_minus_w.tolist()):
        expected = mp_cosine_gradient(2, kappa, delta)
        assert abs(value - expected) <= 1e-10 * abs(expected), (kappa, delta, value, expected)


@pytest.mark.parametrize("m", [2, 3, 4, 10, 50, 1000])
def test_implicit_gradient_at_huge_concentrations_is_the_limit_laws(m):
    """As kappa grows, delta = 1 - w tends to a Gamma((m - 1) / 2) variate over kappa (the factor (2 - delta)^nu of
    its density is 2^nu (1 + O(delta))), a scale family, so dw/dkappa = delta / kappa (1 + O(m / kappa)). From
    kappa ~ 1e16, where delta is below float64's resolution at 2, the mirrored side's mode and width were computed
    from numbers that round to 2: NaN gradients (m = 3), zeros (m = 4, 10), or wrong ones (m = 50 from 1e19)."""
    x = torch.tensor([1e-3, 0.1, 0.5, 1.0, 2.0, 6.0, 12.0, 30.0], dtype=torch.float64)  # multiples of the mean
    for kappa in (1e14, 1e17, 1e20, 1e50, 1e150):
        delta = x * (m - 1) / 2 / kappa
        got = cosine_gradient(torch.full_like(delta, kappa), delta, m)
        torch.testing.assert_close(got * kappa / delta, torch.ones_like(delta), rtol=1e-10, atol=0,
                                   msg=lambda message, kappa=kappa: f"kappa = {kappa:g}: {message}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [2, 3, 4, 10, 100, 1024])
def test_vmf_and_power_spherical_are_robust(m, dtype):
    kappa = torch.tensor([1e-4, 1e-1, 1.0, 1e2, 1e4, 1e6], dtype=dtype, requires_grad=True)
    raw = torch.randn(6, m, dtype=dtype)
    raw[0] = 0
    raw[0, 0] = 1.0  # loc = e1
    raw[1] = 0
    raw[1, 0] = -1.0  # loc = -e1
    raw = raw.requires_grad_()
    for family in (VonMisesFisher, PowerSpherical):
        loc = raw / raw.norm(dim=-1, keepdim=True)
        q = family(loc, kappa)
        z = q.rsample((3,))
        assert z.shape == (3, 6, m) and z.dtype == dtype
        assert torch.isfinite(z).all()
        assert torch.allclose(z.norm(dim=-1), torch.ones(3, 6, dtype=dtype), atol=10 * torch.finfo(dtype).eps * m**0.5)
        log_p, kl = q.log_prob(z), kl_to_uniform(q)
        assert torch.isfinite(log_p).all() and torch.isfinite(kl).all()
        assert (kl >= -1e-4 * kl.detach().abs().clamp(min=1)).all(), (family, kl)
        grads = torch.autograd.grad((z * torch.randn_like(z)).sum() + log_p.sum() + kl.sum(), (raw, kappa))
        assert all(torch.isfinite(g).all() for g in grads), family


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("family", [VonMisesFisher, PowerSpherical])
def test_a_tangent_draw_of_exact_zeros_still_samples_on_the_sphere_in_a_uniform_direction(family, m, monkeypatch):
    """torch.randn returns exactly 0.0 about once in 2.5e7 float32 draws; at m = 2 the whole tangent draw is then
    zero, and the sample was w loc, off the sphere (log_prob refused it under validation). Here every row's tangent
    coordinates are zero: the points stay on the sphere, and the tangent direction takes either sign of e2 half the
    time (the sign of the unused first normal)."""
    from pyrovae.distributions import sphere

    drawn = torch.randn

    def randn_without_tangent(*size, **options):
        x = drawn(*size, **options)
        x[..., 1:] = 0.0
        return x

    monkeypatch.setattr(sphere.torch, "randn", randn_without_tangent)
    loc = torch.zeros(m)
    loc[0] = 1.0  # the samplers' rotation from e1 to loc = e1 keeps e2
    q = family(loc, torch.tensor(4.0), validate_args=True)
    z = q.rsample((20000,))
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(20000), atol=1e-6, rtol=0)
    assert torch.isfinite(q.log_prob(z)).all()  # on the support: validation would refuse a point off the sphere
    side = z[:, 1].sign()  # the sign of the tangent part along e2
    assert (side != 0).all() and abs(side.mean().item()) < 4 / math.sqrt(20000)


def test_the_regime_where_the_reference_sampler_is_wrong():
    """10 < kappa < m: s-vae-pytorch gives mean mu.z = -0.381 at m = 100, kappa = 11; the exact value is 0.109."""
    loc = unit(100, seed=9)
    w = VonMisesFisher(loc, torch.tensor(11.0, dtype=torch.float64)).sample((20000,)) @ loc
    assert abs(w.mean().item() - 0.1092) < 5 * w.std().item() / math.sqrt(20000)
    assert exact_mean_derivative(5, 2.0) == pytest.approx(0.1474, abs=1e-4)


def test_vmf_concentrates_at_huge_kappa():
    loc = unit(5, seed=1)
    z = VonMisesFisher(loc, torch.tensor(1e6, dtype=torch.float64)).sample((2000,))
    one_minus_w = 1 - z @ loc
    # 1 - w is Gamma((m-1)/2, kappa) in the limit: mean (m-1) / (2 kappa)
    assert abs(one_minus_w.mean().item() / (4 / 2e6) - 1) < 0.1


@pytest.mark.parametrize("m", [2, 3, 5, 10, 64, 256])
@pytest.mark.parametrize("family", [VonMisesFisher, PowerSpherical])
def test_kl_to_uniform_and_entropy_match_monte_carlo_in_every_dimension(family, m):
    """KL(q || uniform) = E_q[log q - log u] and H(q) = -E_q[log q], within 5 standard errors of 40,000 draws,
    at small, moderate and large concentrations; also KL = log |S^(m-1)| - H(q) exactly (issue 14: the vMF KL
    was off by 2 lgamma(m/2) wherever lgamma(m/2) != 0, and checked at m = 4 only)."""
    torch.manual_seed(m)
    uniform = HypersphericalUniform(m, dtype=torch.float64)
    for kappa in (0.5, float(m), 10.0 * m):
        q = family(unit(m, seed=2), torch.tensor(kappa, dtype=torch.float64))
        z = q.sample((40000,))
        log_q = q.log_prob(z)
        log_ratio = log_q - uniform.log_prob(z)
        stderr = log_ratio.std() / math.sqrt(len(z))
        assert abs(log_ratio.mean() - kl_to_uniform(q)) < 5 * stderr + 1e-9, (m, kappa)
        assert abs(-log_q.mean() - q.entropy()) < 5 * log_q.std() / math.sqrt(len(z)) + 1e-9, (m, kappa)
        assert kl_to_uniform(q).item() == pytest.approx(log_sphere_area(m) - q.entropy().item(), rel=1e-9, abs=1e-9)


def test_vmf_kl_gradient_is_alive_at_small_concentrations():
    """The KL of a barely concentrated vMF is about kappa^2 / (2m) > 0: no clamp may cut its gradient."""
    for m in (3, 5, 10):
        kappa = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        kl = kl_to_uniform(VonMisesFisher(unit(m, seed=1), kappa))
        (gradient,) = torch.autograd.grad(kl, kappa)
        assert kl.item() == pytest.approx(0.09 / (2 * m), rel=0.05)
        assert gradient.item() == pytest.approx(0.3 / m, rel=0.1)


def test_power_spherical_normalises_and_mean():
    m, kappa = 3, 5.0
    q = PowerSpherical(unit(m, seed=4), torch.tensor(kappa, dtype=torch.float64))
    uniform = HypersphericalUniform(m, dtype=torch.float64)
    u = uniform.sample((400000,))
    assert abs((q.log_prob(u) - uniform.log_prob(u)).exp().mean().item() - 1) < 0.02  # integrates to one
    z = q.sample((100000,))
    assert (z.mean(0) - q.mean).abs().max() < 0.01
    assert torch.allclose(q.mean.norm(), torch.tensor(kappa / (kappa + m - 1), dtype=torch.float64))


def test_power_spherical_gradient_wrt_concentration():
    m, kappa, replicates = 6, 4.0, 400
    loc = unit(m, seed=8)
    concentration = torch.full((replicates,), kappa, dtype=torch.float64, requires_grad=True)
    z = PowerSpherical(loc, concentration).rsample((200,))
    (grads,) = torch.autograd.grad((z @ loc).mean(0).sum(), concentration)
    exact = (m - 1) / (kappa + m - 1) ** 2  # d/dkappa kappa / (kappa + m - 1)
    assert abs(grads.mean().item() - exact) < 4.5 * grads.std().item() / math.sqrt(replicates)


def test_uniform_is_the_ambient_dimension_and_shapes():
    assert HypersphericalUniform(3).log_prob(torch.tensor([1.0, 0, 0])).item() == pytest.approx(-math.log(4 * math.pi))
    assert HypersphericalUniform(2).entropy().item() == pytest.approx(math.log(2 * math.pi))
    u = HypersphericalUniform(5, batch_shape=(4,))
    assert u.sample((2,)).shape == (2, 4, 5) and u.event_shape == (5,)
    assert u.expand((3, 4)).sample().shape == (3, 4, 5)
    with pytest.raises(ValueError, match="ambient dimension"):
        HypersphericalUniform(1)


def test_shapes_expand_and_pyro_plates():
    loc = unit(4).expand(3, 4)
    q = VonMisesFisher(loc, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert q.batch_shape == (3,) and q.event_shape == (4,)
    assert q.expand((2, 3)).rsample().shape == (2, 3, 4)
    assert VonMisesFisher(unit(4), torch.ones(5, dtype=torch.float64)).batch_shape == (5,)
    assert torch.equal(q.mode, loc) and torch.equal(q.expand((2, 3)).mode, loc.expand(2, 3, 4))
    assert torch.equal(PowerSpherical(unit(4), torch.ones(5, dtype=torch.float64)).mode, unit(4).expand(5, 4))

    def model():
        with pyro.plate("data", 3):
            return pyro.sample("z", VonMisesFisher(loc, torch.ones(3, dtype=torch.float64)))

    trace = pyro.poutine.trace(model).get_trace()
    assert trace.nodes["z"]["value"].shape == (3, 4)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="m >= 2"):
        VonMisesFisher(torch.ones(1), torch.ones(()))
    with pytest.raises(ValueError):
        VonMisesFisher(torch.tensor([1.0, 1.0]), torch.ones(()), validate_args=True)  # not unit norm
    with pytest.raises(ValueError):
        PowerSpherical(torch.tensor([1.0, 0.0]), -torch.ones(()), validate_args=True)
    with pytest.raises(TypeError, match="floating-point"):
        VonMisesFisher(torch.tensor([1, 0, 0]), 1.0)
    # validation off (as under Pyro's JIT ELBOs): a NaN concentration is named, not 500 rejection rounds
    loc = torch.nn.functional.normalize(torch.randn(4, 11), dim=-1)
    with pytest.raises(ValueError, match="concentration of nan"):
        VonMisesFisher(loc, torch.tensor([1.0, 2.0, math.nan, 3.0]), validate_args=False).rsample()


@pytest.mark.cuda
def test_on_cuda():
    loc = unit(10).cuda()
    kappa = torch.tensor([0.5, 50.0], dtype=torch.float64, device="cuda", requires_grad=True)
    z = VonMisesFisher(loc, kappa).rsample((100,))
    assert z.device.type == "cuda" and torch.isfinite(z).all()
    (grad,) = torch.autograd.grad(z[..., 0].sum(), kappa)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("family", [VonMisesFisher, PowerSpherical])
def test_expanded_distributions_score_like_materialised_ones(family):
    """The normaliser is computed once per concentration under an expand (S samples of B data: B Bessel calls)."""
    loc = torch.nn.functional.normalize(torch.randn(7, 11, dtype=torch.float64), dim=-1)
    kappa = torch.rand(7, dtype=torch.float64) * 50 + 0.5
    expanded = family(loc, kappa).expand((30, 7))
    materialised = family(loc.expand(30, 7, 11).contiguous(), kappa.expand(30, 7).contiguous())
    z = expanded.sample()
    assert torch.allclose(expanded.log_prob(z), materialised.log_prob(z), rtol=1e-12, atol=1e-12)
    assert torch.allclose(expanded.entropy(), materialised.entropy()) and expanded.entropy().shape == (30, 7)
    assert torch.allclose(expanded.mean, materialised.mean) and expanded.mean.shape == (30, 7, 11)


def test_extreme_concentrations_in_float32_keep_their_digits():
    """Issue 14: in float32 the vMF log-density at loc was 0.0 at kappa = 1e10 (true ~31.8 at m = 4), the Power
    Spherical entropy was off by up to 21 nats at m = 64, and its tiny-concentration draws at m = 2 landed on -loc
    with log-density -inf."""
    loc = torch.zeros(4)
    loc[0] = 1.0
    for kappa in (1e4, 1e7, 1e10):
        single = VonMisesFisher(loc, torch.tensor(kappa)).log_prob(loc)
        double = VonMisesFisher(loc.double(), torch.tensor(kappa, dtype=torch.float64)).log_prob(loc.double())
        mpmath = pytest.importorskip("mpmath")
        mpmath.mp.dps = 30  # log C_4(kappa) + kappa = log kappa - 2 log(2 pi) - log(I_1(kappa) e^-kappa)
        expected = float(mpmath.log(kappa) - 2 * mpmath.log(2 * mpmath.pi) - mpmath.log(mpmath.besseli(1, kappa))
                         + kappa)
        assert double.item() == pytest.approx(expected, rel=1e-9) and single.item() == pytest.approx(expected, rel=1e-6)
    for m in (2, 3, 10, 16, 64, 256):  # at m = 2 and kappa = 1e7, float32 rounded (m - 1) / 2 away: off by log(2) / 2
        for kappa in (0.1, 10.0, 1e3, 1e5, 1e7):
            single = PowerSpherical(unit(m, seed=1).float(), torch.tensor(kappa))
            double = PowerSpherical(single.loc.double(), torch.tensor(kappa, dtype=torch.float64),
                                    validate_args=False)  # the same inputs, computed in float64
            assert single.entropy().item() == pytest.approx(double.entropy().item(), rel=1e-5, abs=1e-3), (m, kappa)
            points = torch.stack([unit(m, seed=1), unit(m, seed=2)]).float()  # loc, and a point away from it
            assert torch.allclose(single.log_prob(points).double(), double.log_prob(points.double()), rtol=1e-5,
                                  atol=1e-3), (m, kappa)
            assert single.log_prob(points).dtype == torch.float32
    torch.manual_seed(0)
    circle = torch.tensor([1.0, 0.0])
    q = PowerSpherical(circle, torch.full((20000,), 1e-4))
    z = q.sample()
    assert torch.isfinite(q.log_prob(z)).all()


def test_vmf_terms_computed_once_differentiate_any_number_of_times():
    """The Bessel terms are computed once per distribution; log_prob, entropy and KL of one distribution with leaf
    parameters can still be differentiated again and again (as when it is reused across optimisation steps), and
    each gradient is exact (gradcheck against finite differences)."""
    loc = unit(6, seed=3)
    kappa = torch.tensor([0.5, 7.0, 80.0], dtype=torch.float64, requires_grad=True)
    q = VonMisesFisher(loc, kappa)
    z = q.sample((4,))
    first = torch.autograd.grad(q.log_prob(z).sum() + q.entropy().sum() + kl_to_uniform(q).sum(), kappa)[0]
    second = torch.autograd.grad(q.log_prob(z).sum() + q.entropy().sum() + kl_to_uniform(q).sum(), kappa)[0]
    torch.testing.assert_close(first, second)

    def scores(k):
        p = VonMisesFisher(loc, k)
        return p.log_prob(z) + kl_to_uniform(p) + p.entropy()

    assert torch.autograd.gradcheck(scores, (kappa,))


def test_vmf_terms_follow_an_in_place_change_of_the_concentration():
    """A distribution kept across optimiser steps sees its leaf concentration change in place: the cached Bessel
    terms must follow (they were keyed on the tensor alone, so entropy, log_prob, mean and dw/dkappa went stale)."""
    loc = unit(11, seed=4)
    kappa = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    q = VonMisesFisher(loc, kappa)
    z = q.sample((5,))
    q.entropy(), q.log_prob(z), q.mean
    with torch.no_grad():
        kappa.mul_(10.0)
    fresh = VonMisesFisher(loc, kappa)
    assert torch.allclose(q.entropy(), fresh.entropy()) and torch.allclose(q.log_prob(z), fresh.log_prob(z))
    assert torch.allclose(q.mean, fresh.mean)


def test_kl_to_uniform_names_a_distribution_not_on_the_sphere():
    with pytest.raises(TypeError, match="a VonMisesFisher or a PowerSpherical, got Normal"):
        kl_to_uniform(torch.distributions.Normal(0.0, 1.0))


def test_variance_is_refused_with_a_message_for_both_families():
    # VonMisesFisher.variance used to raise torch's bare NotImplementedError, with no message
    loc, kappa = torch.tensor([0.0, 0.0, 1.0]), torch.tensor(2.0)
    for family in (VonMisesFisher, PowerSpherical):
        with pytest.raises(NotImplementedError, match=f"{family.__name__}.variance is not implemented; use samples"):
            _ = family(loc, kappa).variance

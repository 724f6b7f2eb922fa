"""The spherical distributions where floating point is hardest, against mpmath and limits: the vMF sampler's
implicit gradient in its upper tail, gradients at vanishing concentrations, tiny float32 concentrations, the KLs to
the uniform where they are tiny, the Power Spherical's entropy from tiny to huge concentrations; and the
messages for points off the sphere."""

import math

import pytest
import torch

from pyrovae.distributions import HypersphericalUniform, PowerSpherical, VonMisesFisher, kl_to_uniform
from pyrovae.distributions.sphere import log_sphere_area
from pyrovae.distributions.von_mises_fisher import cosine_gradient
from pyrovae.ops.gamma import digamma_difference
from tests.distributions.test_spherical import unit


def mp_cosine_gradient_tail(m, kappa, delta):
    """dw/dkappa at 40 digits as the integral over q = 1 - t on the side where (1 - A - q) keeps one sign: over [0,
    delta] up to the mean 1 - A, over [delta, 2] beyond it (the other side is a difference of large parts there)."""
    import mpmath

    mpmath.mp.dps = 40
    k, nu, d = mpmath.mpf(kappa), mpmath.mpf(m - 3) / 2, mpmath.mpf(delta)
    c = 1 - mpmath.besseli(mpmath.mpf(m) / 2, k) / mpmath.besseli(mpmath.mpf(m) / 2 - 1, k)

    def f(q):
        return (c - q) * mpmath.exp(-k * (q - d) + nu * (mpmath.log(q * (2 - q)) - mpmath.log(d * (2 - d))))

    fractions = (0, 1e-12, 1e-9, 1e-6, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999, 1)
    if d <= c:
        return float(mpmath.quad(f, [d * t for t in fractions])), float(c)
    return float(-mpmath.quad(f, [d + (2 - d) * t for t in fractions])), float(c)


@pytest.mark.parametrize(("m", "kappa"), [(4, 100.0), (10, 100.0), (10, 1e4), (64, 1e3), (64, 1e4), (1000, 1e5),
                                          (5, 30.0)])
def test_implicit_gradient_in_the_upper_tail_and_around_the_mean(m, kappa):
    """Above the mean of 1 - w the direct integral is a small difference of large parts: it gave -275 for 0.0049
    (m = 10, kappa = 100, delta = 0.5) and 6.7e18 for 1e-8; rare draws, but every sample's gradient counts. From
    half the mean to far in the tail (chances down to 1e-600), against mpmath: relative error below 1e-11."""
    _, mean = mp_cosine_gradient_tail(m, kappa, 0.5)
    for multiple in (0.5, 1.0, 1.05, 1.3, 1.6, 2.0, 4.0, 10.0, 25.0):
        delta = mean * multiple
        if delta >= 1.99:
            continue
        expected, _ = mp_cosine_gradient_tail(m, kappa, delta)
        got = cosine_gradient(torch.tensor([kappa], dtype=torch.float64), torch.tensor([delta], dtype=torch.float64),
                              m).item()
        assert abs(got - expected) <= 1e-11 * abs(expected), (m, kappa, multiple, got, expected)

@pytest.mark.parametrize("m", [2, 3, 10, 64, 256, 1000, 4096])
def test_the_kl_to_the_uniform_is_exact_at_small_concentrations(m):
    """KL against mpmath where it is tiny: it was the difference of terms of size v |log kappa| (vMF) or log |S|
    (Power Spherical), 7.9e-15 for 7.8e-19 at m = 64, kappa = 1e-8, and a clamp at 0 cut its gradient where the
    rounding fell below zero. vMF: kappa A - log S_v(kappa^2 / 4); Power Spherical: F(2b) - F(b), b = (m - 1) / 2,
    F(x) = lgamma(x + kappa) - lgamma(x) - kappa psi(x + kappa)."""
    import mpmath

    mpmath.mp.dps = 50
    v, b = mpmath.mpf(m) / 2 - 1, mpmath.mpf(m - 1) / 2

    def vmf(k):
        mean = mpmath.besseli(v + 1, k) / mpmath.besseli(v, k)
        return k * mean - mpmath.log(mpmath.besseli(v, k) * mpmath.gamma(v + 1) / (k / 2) ** v)

    def power(k):
        def f(x):
            return mpmath.loggamma(x + k) - mpmath.loggamma(x) - k * mpmath.digamma(x + k)
        return f(2 * b) - f(b)

    for kappa in (1e-8, 1e-5, 1e-3, 0.02, 0.3, 3.0):
        k = mpmath.mpf(kappa)
        for family, reference in ((VonMisesFisher, vmf), (PowerSpherical, power)):
            concentration = torch.tensor(kappa, dtype=torch.float64, requires_grad=True)
            kl = kl_to_uniform(family(unit(m), concentration))
            (gradient,) = torch.autograd.grad(kl, concentration)
            assert kl.item() == pytest.approx(float(reference(k)), rel=1e-11), (family.__name__, kappa)
            slope = float(mpmath.diff(reference, k))
            assert gradient.item() == pytest.approx(slope, rel=1e-8), (family.__name__, kappa)

@pytest.mark.parametrize("m", [2, 3, 10, 64])
def test_vmf_gradients_at_a_vanishing_concentration_are_their_limits(m):
    """At kappa = 1e-310 (validation lets it through) the gradients were NaN; at kappa = 0 (validation off) those of
    log p(loc) and the entropy were swapped, 0 and 1 for 1 - A(0) = 1 and -kappa A'(kappa) = 0."""
    loc = unit(m)
    for value in (1e-310, 0.0):
        kappa = torch.tensor(value, dtype=torch.float64, requires_grad=True)
        q = VonMisesFisher(loc, kappa, validate_args=False)
        gradients = [torch.autograd.grad(value, kappa)[0].item()
                     for value in (q.log_prob(loc), q.entropy(), kl_to_uniform(q), q.mean @ loc)]
        assert gradients == pytest.approx([1.0, 0.0, 0.0, 1 / m], abs=1e-12), (m, value, gradients)
        assert q.log_prob(loc).item() == pytest.approx(-log_sphere_area(m), rel=1e-12)


@pytest.mark.parametrize(("m", "kappa"), [(1000, 1e-37), (10, 1e-38), (2, 1e-39), (5, 1e-38)])
def test_the_sampler_draws_at_tiny_float32_concentrations(m, kappa):
    """(m - 1) / kappa overflowed to inf in float32, Wood's b became NaN and no draw was ever accepted."""
    z = VonMisesFisher(unit(m, dtype=torch.float32), torch.tensor(kappa)).rsample((4000,))
    assert torch.isfinite(z).all() and torch.allclose(z.norm(dim=-1), torch.ones(4000), atol=1e-5)
    w = (z @ unit(m, dtype=torch.float32)).double()
    assert abs(w.mean().item()) < 5 * math.sqrt(1 / m / 4000)  # uniform: E[w] = 0, Var[w] = 1 / m


@pytest.mark.parametrize("kappa", [1e-14, 1e-10, 1e-6])
def test_the_s2_draws_gradient_at_tiny_concentrations_is_the_limit_law(kappa):
    """On S^2, w = 1 - delta with delta / 2 = 1 - u uniform as kappa -> 0, and dw/dkappa -> delta (2 - delta) / 2
    (the Bernoulli cumulants of -log1p((1 - u) expm1(-2 kappa)) / kappa). Differentiating the inverse CDF itself
    cancelled: 7% off at kappa = 1e-12, negative at 1e-14."""
    loc = unit(3)
    concentration = torch.full((2000,), kappa, dtype=torch.float64, requires_grad=True)
    w = VonMisesFisher(loc, concentration).rsample() @ loc
    (gradient,) = torch.autograd.grad(w.sum(), concentration)
    delta = (1 - w).detach()
    torch.testing.assert_close(gradient, delta * (2 - delta) / 2, rtol=1e-9 + 4 * kappa, atol=1e-15)


@pytest.mark.parametrize("family", [VonMisesFisher, PowerSpherical])
def test_off_sphere_locations_and_points_are_named_with_their_norm_and_the_fix(family):
    """torch's generic message printed the tensor and named neither the norm nor the fix; a float32 unit vector
    cast to float64 (off by about 1e-7, beyond float64's tolerance) gets a word of its own."""
    with pytest.raises(ValueError, match=r"loc must be unit vectors .* at index \(1,\) has norm 2.0; normalise"):
        family(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor(2.0))
    cast = torch.nn.functional.normalize(torch.tensor([0.3, 0.5, 0.7]), dim=-1).double()
    with pytest.raises(ValueError, match="a float32 unit vector cast to float64 is off by about 1e-7"):
        family(cast, torch.tensor(2.0, dtype=torch.float64))
    q = family(unit(3), torch.tensor(2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"log_prob: the points must be unit vectors .*support.* norm 0.5"):
        q.log_prob(torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("family", [VonMisesFisher, PowerSpherical])
def test_the_kl_to_a_batched_uniform_has_the_broadcast_batch_shape(family):
    q = family(unit(3).expand(4, 3), torch.full((4,), 2.0, dtype=torch.float64))
    kl = torch.distributions.kl_divergence(q, HypersphericalUniform(3, batch_shape=(5, 4), dtype=torch.float64))
    assert kl.shape == (5, 4) and torch.equal(kl[2], kl_to_uniform(q))
    with pytest.raises(ValueError, match=r"batch shapes \(4,\) and \(3,\), which do not broadcast"):
        torch.distributions.kl_divergence(q, HypersphericalUniform(3, batch_shape=(3,), dtype=torch.float64))


@pytest.mark.parametrize("m", [2, 3, 10, 64, 1000])
def test_the_power_spherical_entropy_and_its_gradient_from_tiny_to_huge_concentrations(m):
    """H = kappa (psi(a + b) - psi(a)) - (lgamma(a + b) - lgamma(a)) + 2b log 2 + b log pi, a = b + kappa, and dH/dkappa
    = kappa (psi'(a + b) - psi'(a)), against mpmath. Through lgamma and digamma the entropy was 1e-6 off at kappa =
    1e10 (differences of numbers of size kappa log kappa) and its gradient 3e-5 there and 6.5e-10 at kappa = 1 (torch's
    trigamma)."""
    import mpmath

    mpmath.mp.dps = 50
    b = mpmath.mpf(m - 1) / 2
    for kappa in (1e-8, 1e-3, 0.5, 1.0, 3.0, 10.0, 1e3, 1e6, 1e10, 1e13):
        k = mpmath.mpf(kappa)
        a = b + k
        at_loc = mpmath.loggamma(a + b) - mpmath.loggamma(a) - b * mpmath.log(4 * mpmath.pi)
        entropy = k * (mpmath.digamma(a + b) - mpmath.digamma(a)) - at_loc
        slope = k * (mpmath.polygamma(1, a + b) - mpmath.polygamma(1, a))
        concentration = torch.tensor(kappa, dtype=torch.float64, requires_grad=True)
        got = PowerSpherical(unit(m), concentration).entropy()
        (gradient,) = torch.autograd.grad(got, concentration)
        assert got.item() == pytest.approx(float(entropy), rel=1e-14, abs=1e-300), (m, kappa)
        assert gradient.item() == pytest.approx(float(slope), rel=1e-14), (m, kappa)
        if kappa >= 1e3:  # above the small-kappa series: the KL is log |S| - H
            kl = kl_to_uniform(PowerSpherical(unit(m), torch.tensor(kappa, dtype=torch.float64)))
            assert kl.item() == pytest.approx(float(at_loc - k * (mpmath.digamma(a + b) - mpmath.digamma(a))
                                                    + log_sphere_area(m)), rel=1e-14)


def test_the_power_spherical_at_zero_concentration_is_uniform_even_at_the_antipode():
    """kappa log((1 + t) / 2) at kappa = 0 and t = -1 was 0 * -inf = NaN; the uniform's density is everywhere."""
    loc = unit(5)
    q = PowerSpherical(loc, torch.tensor(0.0, dtype=torch.float64))
    points = torch.stack([loc, -loc, unit(5, seed=3)])
    torch.testing.assert_close(q.log_prob(points), torch.full((3,), -log_sphere_area(5), dtype=torch.float64))


def test_a_concentration_outside_its_constraint_is_named_with_the_fix():
    """torch's message named the constraint only; scipy's points a concentration of 0 to the uniform, and so do we."""
    with pytest.raises(ValueError, match=r"VonMisesFisher: the concentration must be positive, got 0; .*uniform.*"
                                         r"HypersphericalUniform\(m\)"):
        VonMisesFisher(unit(3), torch.tensor(0.0, dtype=torch.float64))
    for family, kind in ((VonMisesFisher, "positive"), (PowerSpherical, "non-negative")):
        with pytest.raises(ValueError, match=rf"must be {kind}, got -2 at index \(1,\); .*softplus"):
            family(unit(3).expand(2, 3), torch.tensor([1.0, -2.0], dtype=torch.float64))
    assert PowerSpherical(unit(3), torch.tensor(0.0, dtype=torch.float64)).concentration.item() == 0.0


def test_power_spherical_gradients_at_the_mode_and_under_torch_func():
    """log_prob at z = loc had NaN gradients in loc and z (the branch not taken, 0 * kappa / 0); the entropy's own
    backward must serve forward mode and torch.func too."""
    loc = unit(5).requires_grad_()
    for kappa, points in ((3.0, (unit(5),)), (0.0, (unit(5), -unit(5)))):
        for z in points:
            z = z.clone().requires_grad_()
            value = PowerSpherical(loc, torch.tensor(kappa, dtype=torch.float64)).log_prob(z)
            assert all(torch.isfinite(g).all() for g in torch.autograd.grad(value, (loc, z))), (kappa, z)
    for kappa in (0.0, 2.0):  # d log p / d kappa = psi(a + b) - psi(a) + log((1 + t) / 2), on both hemispheres
        concentration = torch.tensor(kappa, dtype=torch.float64, requires_grad=True)
        t = torch.tensor([0.5, -0.5, -0.999], dtype=torch.float64)
        axes = torch.eye(5, dtype=torch.float64)
        points = t.unsqueeze(-1) * axes[0] + (1 - t.square()).sqrt().unsqueeze(-1) * axes[1]
        value = PowerSpherical(axes[0], concentration).log_prob(points)
        slope = torch.stack([torch.autograd.grad(v, concentration, retain_graph=True)[0] for v in value])
        psi = digamma_difference(torch.tensor(kappa + 2.0, dtype=torch.float64), 2.0)
        torch.testing.assert_close(slope, psi + torch.log((1 + t) / 2))
    kappa = torch.tensor([0.0, 0.5, 3.0, 1e4], dtype=torch.float64)
    direction = unit(5)

    def entropy(k):
        return PowerSpherical(direction.expand(*k.shape, 5), k, validate_args=False).entropy()

    leaf = kappa.clone().requires_grad_()
    (slope,) = torch.autograd.grad(entropy(leaf).sum(), leaf)
    torch.testing.assert_close(torch.func.grad(lambda k: entropy(k).sum())(kappa), slope)
    torch.testing.assert_close(torch.func.jacfwd(entropy)(kappa).diagonal(), slope)
    torch.testing.assert_close(torch.func.vmap(entropy)(kappa.unsqueeze(-1)).squeeze(-1), entropy(kappa))

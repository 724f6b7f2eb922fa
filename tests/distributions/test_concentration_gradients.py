"""The concentration's gradients of the von Mises-Fisher's log p(loc), entropy and KL to the uniform, against mpmath,
from kappa far below m/2 to kappa = 1e13, in float32 and float64; the KL at huge kappa against log|S| - H; and the
Bessel ratio's derivative far beyond its order. Exact: d log p(loc)/dkappa = 1 - A_m, dH/dkappa = -kappa A_m',
dKL/dkappa = kappa A_m', with A_m = I_(m/2) / I_(m/2-1) and A' = 1 - A^2 - (m - 1) A / kappa."""

import mpmath
import pytest
import torch

from pyrovae.distributions import VonMisesFisher, kl_to_uniform
from pyrovae.distributions.sphere import log_sphere_area
from pyrovae.ops import bessel_iv_ratio


@pytest.fixture(autouse=True)
def _sixty_digits():
    """The mpmath references of every test here to 60 digits (per test: see tests/conftest.py)."""
    with mpmath.workdps(60):
        yield


def exact(m: int, kappa: float) -> tuple[float, float]:
    """(1 - A_m(kappa), A_m'(kappa)) to 60 digits."""
    v, k = mpmath.mpf(m) / 2 - 1, mpmath.mpf(kappa)
    a = mpmath.besseli(v + 1, k) / mpmath.besseli(v, k)
    return float(1 - a), float(1 - a * a - (2 * v + 1) * a / k)


def gradients(m: int, kappa: float, dtype) -> dict:
    out = {}
    for name, f in (("log_p_loc", lambda d: d.log_prob(d.loc)), ("entropy", lambda d: d.entropy()),
                    ("kl", kl_to_uniform)):
        k = torch.tensor(kappa, dtype=dtype, requires_grad=True)
        (grad,) = torch.autograd.grad(f(VonMisesFisher(torch.eye(m, dtype=dtype)[0], k)), k)
        out[name] = float(grad)
    return out


# (m, kappa): kappa far below, near and far above v = m/2 - 1; the float32 errors were 22% at (500, 0.1) and the
# wrong sign at (10, 1e-3); float64 lost the KL's gradient at kappa = 1e-8 and from kappa ~ 1e7
POINTS = [(3, 1e-8), (10, 1e-3), (500, 0.1), (100, 1.0), (3, 1e-3), (500, 10.0), (10, 30.0), (2, 1e5), (100, 1e7),
          (2, 1e10), (10, 1e13)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("m", "kappa"), POINTS)
def test_concentration_gradients_against_mpmath(m, kappa, dtype):
    one_minus_a, a_prime = exact(m, kappa)
    expected = {"log_p_loc": one_minus_a, "entropy": -kappa * a_prime, "kl": kappa * a_prime}
    tolerance = 2e-6 if dtype == torch.float32 else 1e-10
    for name, value in gradients(m, kappa, dtype).items():
        assert value == pytest.approx(expected[name], rel=tolerance, abs=1e-300), (name, value, expected[name])


@pytest.mark.parametrize(("m", "kappa", "dtype"), [(2, 1e15, torch.float64), (2, 1e17, torch.float64),
                                                   (10, 1e12, torch.float64), (2, 1e20, torch.float32),
                                                   (100, 1e20, torch.float32)])
def test_the_kl_at_huge_concentrations_is_log_area_minus_entropy(m, kappa, dtype):
    """The KL's large-kappa form subtracts no two terms of size kappa (it lost every digit by kappa = 1e17)."""
    d = VonMisesFisher(torch.eye(m, dtype=torch.float64)[0], torch.tensor(kappa, dtype=torch.float64))
    expected = log_sphere_area(m) - float(d.entropy())
    found = VonMisesFisher(torch.eye(m, dtype=dtype)[0], torch.tensor(kappa, dtype=dtype))
    assert float(kl_to_uniform(found)) == pytest.approx(expected, rel=1e-12 if dtype == torch.float64 else 1e-6)


@pytest.mark.parametrize("v", [0.0, 0.5, 3.0, 49.0, 2000.0])
@pytest.mark.parametrize("scale", [0.5, 1.0, 10.0, 1e3])
def test_the_ratio_derivative_far_beyond_its_order(v, scale):
    """R_v' by the asymptotic series where x > (v+1)^2 + 25, by the recurrence below: both against mpmath."""
    x = scale * ((v + 1) ** 2 + 25)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(bessel_iv_ratio(v, xt), xt)
    vm, xm = mpmath.mpf(v), mpmath.mpf(x)
    r = mpmath.besseli(vm + 1, xm) / mpmath.besseli(vm, xm)
    expected = float(1 - r * r - (2 * vm + 1) * r / xm)
    # below the switch the recurrence's terms cancel: relative error about eps x^2 / (2v + 1)
    tolerance = max(1e-12, 4e-16 * x * x / (2 * v + 1)) if scale < 1 else 1e-12
    assert float(grad) == pytest.approx(expected, rel=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("m", "kappa"), [(2, 1e-3), (10, 1.0), (100, 1e3), (3, 1e5), (2, 1e7), (3, 1e7)])
def test_power_spherical_concentration_gradient_and_mean(m, kappa, dtype):
    """d log p(loc)/dkappa = digamma(a + b) - digamma(a) (a = b + kappa, b = (m - 1)/2), and E[t] = kappa / (kappa +
    m - 1): float32 was 19% off at kappa = 1e7 (two float64 copies cast back and cancelled), its mean 0.7% at m = 500,
    kappa = 1e-3."""
    from pyrovae.distributions import PowerSpherical

    b = mpmath.mpf(m - 1) / 2
    expected = float(mpmath.digamma(b + kappa + b) - mpmath.digamma(b + kappa))
    k = torch.tensor(kappa, dtype=dtype, requires_grad=True)
    d = PowerSpherical(torch.eye(m, dtype=dtype)[0], k)
    (grad,) = torch.autograd.grad(d.log_prob(d.loc), k)
    assert float(grad) == pytest.approx(expected, rel=1e-6 if dtype == torch.float32 else 1e-7)
    mean = PowerSpherical(torch.eye(500 if m == 2 else m, dtype=dtype)[0], torch.tensor(kappa, dtype=dtype)).mean[0]
    assert float(mean) == pytest.approx(kappa / (kappa + (499 if m == 2 else m - 1)), rel=1e-6)

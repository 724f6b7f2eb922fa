"""Log-gamma, digamma and trigamma differences against mpmath, from a = 1e-12 to 1e15, and their gradients."""

import mpmath
import pytest
import torch

from pyrovae.ops.gamma import digamma_difference, digamma_ratio_excess, log_gamma_difference, trigamma_difference

POINTS = (1e-12, 1e-6, 1e-3, 0.1, 0.5, 1.0, 1.5, 2.5, 7.3, 9.99, 10.0, 47.9, 48.0, 100.0, 1e3, 1e5, 1e8, 1e12, 1e15)
HALF_WIDTHS = (0.5, 1.0, 1.5, 4.5, 12.0, 127.5, 1023.5, 2047.5)  # b = (m - 1) / 2 for m = 2, 3, 4, 10, ..., 4096


def references(a: float, b: float) -> tuple[float, float, float]:
    with mpmath.workdps(50):
        x = mpmath.mpf(a)
        return (float(mpmath.loggamma(x + b) - mpmath.loggamma(x)), float(mpmath.digamma(x + b) - mpmath.digamma(x)),
                float(mpmath.polygamma(1, x + b) - mpmath.polygamma(1, x)))


@pytest.mark.parametrize("b", HALF_WIDTHS)
def test_the_differences_and_their_gradients_against_mpmath(b):
    """Taken directly, lgamma(a + b) - lgamma(a) keeps 6 digits of 16 at a = 1e10, the digamma difference fewer, and
    torch's trigamma (the backward of digamma) is 5e-10 off near a = 1. Here every value and gradient is within a
    few units of rounding, on both sides of the switch to the series (a + 48) and far beyond."""
    a = torch.tensor(POINTS, dtype=torch.float64, requires_grad=True)
    log_gamma, digamma, trigamma = (torch.tensor(column, dtype=torch.float64)
                                    for column in zip(*(references(x, b) for x in POINTS)))
    got = log_gamma_difference(a, b)
    # near its zero (lgamma(a + b) = lgamma(a)) the log-gamma difference is a difference of its own size's terms
    assert torch.allclose(got, log_gamma, rtol=1e-14, atol=1e-15)
    (slope,) = torch.autograd.grad(got.sum(), a)
    torch.testing.assert_close(slope, digamma, rtol=1e-14, atol=0)
    got = digamma_difference(a, b)
    torch.testing.assert_close(got, digamma, rtol=1e-14, atol=0)
    (slope,) = torch.autograd.grad(got.sum(), a)
    torch.testing.assert_close(slope, trigamma, rtol=1e-14, atol=0)
    torch.testing.assert_close(trigamma_difference(a.detach(), b), trigamma, rtol=1e-14, atol=0)


def test_shapes_dtypes_and_a_trace():
    """Elementwise in any batch shape, in the input's dtype, without branches on values (a trace holds for others)."""
    a = torch.rand(3, 4) * 100 + 1e-3
    for f in (log_gamma_difference, digamma_difference, trigamma_difference):
        assert f(a, 4.5).shape == (3, 4) and f(a, 4.5).dtype == torch.float32
        traced = torch.jit.trace(lambda x, f=f: f(x, 4.5), (a.double(),))
        other = torch.logspace(-9, 12, 12, dtype=torch.float64).reshape(3, 4)
        torch.testing.assert_close(traced(other), f(other, 4.5), rtol=0, atol=0)


def test_digamma_ratio_excess_against_mpmath():
    """digamma(x + theta) - digamma(theta) - log1p(x / theta) for counts x from 1 to 1e6 and theta from 1e-3 to 1e12,
    both sides of the switch to the series (theta = 20): within a few eps (relative) of 50 digits from theta = 20,
    where each of its terms is of the size of the answer; below, through torch.digamma, within a few eps of the
    digamma values' size."""
    xs, thetas = (1.0, 2.0, 3.0, 17.0, 250.0, 1e4, 1e6), (1e-3, 0.1, 1.0, 5.0, 19.9, 20.0, 30.0, 1e3, 1e6, 1e12)
    x = torch.tensor(xs, dtype=torch.float64).repeat(len(thetas))
    theta = torch.tensor(thetas, dtype=torch.float64).repeat_interleave(len(xs))
    got = digamma_ratio_excess(x, theta)
    with mpmath.workdps(50):
        pairs = [(mpmath.mpf(a), mpmath.mpf(t)) for a, t in zip(x.tolist(), theta.tolist())]
        expected = [float(mpmath.digamma(a + t) - mpmath.digamma(t) - mpmath.log1p(a / t)) for a, t in pairs]
        expected = torch.tensor(expected, dtype=torch.float64)
        size = torch.tensor([float(abs(mpmath.digamma(a + t)) + abs(mpmath.digamma(t))) for a, t in pairs],
                            dtype=torch.float64)
    series = theta >= 20
    torch.testing.assert_close(got[series], expected[series], rtol=8e-16, atol=0)
    assert ((got - expected).abs()[~series] <= 8e-16 * size[~series]).all()
    assert (got >= 0).all()

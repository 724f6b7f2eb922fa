"""log I_v(x) and I_{v+1}(x) / I_v(x) against scipy and mpmath, and their derivatives."""

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import special

from pyrovae.ops import bessel_iv_ratio, bessel_terms, log_bessel_iv, log_bessel_ive

ORDERS = [0.0, 0.5, 1.0, 1.5, 4.0, 9.0, 15.0, 20.0, 29.5, 30.0, 31.0, 49.0, 100.0, 511.0]
# 12-23 is where Debye's expansion at the switch order 30 is least accurate (issue 14: 8.5e-10 with four terms)
XS = [1e-4, 1e-2, 0.3, 1.0, 5.0, 10.0, 12.5, 14.2, 15.3, 17.0, 19.0, 21.4, 22.0, 22.7, 30.0, 100.0, 1e3, 1e4, 1e6]


@pytest.fixture(autouse=True)
def _forty_digits():
    """The mpmath references of every test here to 40 digits (per test: see tests/conftest.py)."""
    with mpmath.workdps(40):
        yield


def mp_log_iv(v, x):
    return float(mpmath.log(mpmath.besseli(v, x)))


def mp_ratio(v, x):
    return float(mpmath.besseli(v + 1, x) / mpmath.besseli(v, x))


@pytest.mark.parametrize("v", ORDERS)
def test_log_iv_matches_mpmath_from_tiny_to_huge(v):
    x = torch.tensor(XS, dtype=torch.float64)
    expected = torch.tensor([mp_log_iv(v, value) for value in XS], dtype=torch.float64)
    scale = expected.abs().clamp(min=1)
    assert ((log_bessel_iv(v, x) - expected).abs() / scale).max() < 5e-12  # the documented bound
    single = x.float()  # compared at the float32-rounded arguments: the rounding of x is not the function's error
    expected_single = torch.tensor([mp_log_iv(v, float(value)) for value in single], dtype=torch.float64)
    assert ((log_bessel_iv(v, single).double() - expected_single).abs() / scale).max() < 1e-6


@pytest.mark.parametrize("v", ORDERS)
def test_ratio_matches_mpmath(v):
    x = torch.tensor(XS, dtype=torch.float64)
    expected = torch.tensor([mp_ratio(v, value) for value in XS], dtype=torch.float64)
    assert ((bessel_iv_ratio(v, x) - expected).abs() / expected).max() < 1e-13
    assert ((bessel_iv_ratio(v, x.float()).double() - expected).abs() / expected).max() < 1e-6


def test_against_scipy_on_a_grid_with_broadcasting():
    v = torch.tensor([0.0, 0.5, 2.0, 7.5, 63.0], dtype=torch.float64).unsqueeze(-1)
    x = torch.logspace(-3, 2.5, 40, dtype=torch.float64)
    expected = np.log(special.ive(v.numpy(), x.numpy())) + x.numpy()
    got = log_bessel_iv(v, x)
    assert got.shape == (5, 40)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(log_bessel_ive(v, x).numpy(), np.log(special.ive(v.numpy(), x.numpy())), atol=1e-9)
    ratio = special.ive(v.numpy() + 1, x.numpy()) / special.ive(v.numpy(), x.numpy())
    np.testing.assert_allclose(bessel_iv_ratio(v, x).numpy(), ratio, rtol=1e-12)


def test_values_at_zero_and_bad_orders():
    zero = torch.zeros(3, dtype=torch.float64)
    assert torch.equal(log_bessel_iv(0.0, zero), zero)
    assert torch.isneginf(log_bessel_iv(1.5, zero)).all()
    assert torch.equal(bessel_iv_ratio(2.0, zero), zero)
    with pytest.raises(ValueError, match="non-negative"):
        log_bessel_iv(-1.0, torch.ones(2))


@pytest.mark.parametrize("v", [0.0, 0.5, 3.0, 40.0])
def test_gradients_are_exact(v):
    x = torch.tensor([1e-3, 0.7, 4.0, 60.0, 900.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: log_bessel_iv(v, t), (x,))
    assert torch.autograd.gradcheck(lambda t: bessel_iv_ratio(v, t), (x,))
    # independently: I_v' = (I_{v-1} + I_{v+1}) / 2, from scipy's scaled functions
    (grad,) = torch.autograd.grad(log_bessel_iv(v, x).sum(), x)
    xs = x.detach().numpy()
    expected = (special.ive(v - 1, xs) + special.ive(v + 1, xs)) / (2 * special.ive(v, xs))
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-9)


def test_ratio_gradient_at_zero_is_the_limit():
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(bessel_iv_ratio(torch.tensor([0.0, 4.0]), x).sum(), x)
    assert torch.allclose(grad, torch.tensor([1 / 2, 1 / 10], dtype=torch.float64))


def test_keeps_dtype_and_extreme_inputs_finite():
    x = torch.tensor([1e-30, 1e-8, 1e8], dtype=torch.float32)
    for v in (0.0, 255.0):
        assert log_bessel_iv(v, x).dtype == torch.float32 and torch.isfinite(log_bessel_iv(v, x)).all()
        ratio = bessel_iv_ratio(v, x)
        assert torch.isfinite(ratio).all() and (ratio >= 0).all() and (ratio <= 1).all()
    assert log_bessel_iv(0.0, torch.tensor(1e8)).item() == pytest.approx(1e8 - 0.5 * math.log(2 * math.pi * 1e8))


@pytest.mark.cuda
def test_on_cuda_matches_cpu():
    x = torch.logspace(-3, 5, 50, dtype=torch.float64)
    for v in (0.0, 0.5, 127.0):
        torch.testing.assert_close(log_bessel_iv(v, x.cuda()).cpu(), log_bessel_iv(v, x))
        torch.testing.assert_close(bessel_iv_ratio(v, x.cuda()).cpu(), bessel_iv_ratio(v, x))


@pytest.mark.parametrize("v", [0.0, 0.5, 1.0, 2.5, 4.5, 7.0, 14.0, 22.5, 29.5, 30.0, 39.5, 40.0, 63.5])
def test_fixed_order_terms_match_mpmath_densely(v):
    """bessel_terms (the power series below x = 30, the Chebyshev fit above, Debye from order 40) at 90 points from
    1e-6 to 1e8, densest around the switch at 30: log I_v to 2e-14 relative, R_v to 1e-13 and 1 - R_v to 1e-13
    relative (it is formed without cancellation, so it keeps its digits where R_v rounds to 1)."""
    xs = np.concatenate([np.logspace(-6, 8, 60), np.linspace(27.0, 33.0, 30)])
    x = torch.tensor(xs, dtype=torch.float64)
    log_ive, ratio, one_minus_ratio = bessel_terms(v, x)
    for i, value in enumerate(xs):
        big, next_big = mpmath.besseli(v, value), mpmath.besseli(v + 1, value)
        log_iv = float(mpmath.log(big))
        scale = max(1.0, abs(log_iv), abs(log_iv - value))  # log I_v = log(I_v e^-x) + x: as exact as its terms
        assert abs(float(log_ive[i]) + value - log_iv) <= 2e-14 * scale, (v, value)
        assert abs(float(ratio[i]) - float(next_big / big)) <= 1e-13 * float(next_big / big), (v, value)
        exact_gap = float(1 - next_big / big)
        assert abs(float(one_minus_ratio[i]) - exact_gap) <= 1e-13 * exact_gap, (v, value)


def test_fixed_order_terms_gradients_are_exact():
    x = torch.tensor([1e-3, 0.7, 4.0, 29.9, 30.1, 60.0, 900.0], dtype=torch.float64, requires_grad=True)
    for v in (0.0, 0.5, 4.5, 29.5, 49.0):
        assert torch.autograd.gradcheck(lambda t, v=v: bessel_terms(v, t), (x,))


def test_fixed_order_terms_trace_any_number_of_times():
    """Two evaluations of one fixed order in one torch.jit.trace (a vMF prior and guide, two particles) used to fail
    with "unordered_map::at"; the traced function must recompute, not freeze, and differentiate like the eager one."""

    def two(x):
        total = x.sum()
        return bessel_terms(4.5, total)[0] + bessel_terms(4.5, 2 * total)[1]

    x = torch.rand(3, dtype=torch.float64, requires_grad=True)
    traced = torch.jit.trace(two, (x,), check_trace=False)
    fresh = torch.rand(3, dtype=torch.float64, requires_grad=True)
    (traced_grad,) = torch.autograd.grad(traced(fresh), fresh)
    (eager_grad,) = torch.autograd.grad(two(fresh), fresh)
    assert torch.allclose(traced(fresh), two(fresh)) and torch.allclose(traced_grad, eager_grad)


PUBLIC = {"log_bessel_iv": log_bessel_iv, "log_bessel_ive": log_bessel_ive, "bessel_iv_ratio": bessel_iv_ratio,
          "bessel_terms": lambda v, x, **kw: bessel_terms(v, x, **kw)[0]}


@pytest.mark.parametrize("name", PUBLIC)
@pytest.mark.parametrize("order", [0.5, 45.0, "tensor"])
def test_nan_and_negative_arguments_are_named(name, order):
    """A NaN or negative x was read as 0 or passed through in silence; it is a ValueError naming value and index."""
    function = PUBLIC[name]
    if order == "tensor":
        if name == "bessel_terms":
            return  # one Python order only
        order = torch.tensor([1.0, 2.0, 70.0], dtype=torch.float64)
    for bad, match in [(math.nan, "x = nan at index \\(1,\\)"), (-2.0, "x = -2.0 at index \\(1,\\).*pass \\|x\\|")]:
        x = torch.tensor([1.0, bad, 3.0], dtype=torch.float64)
        with pytest.raises(ValueError, match=match):
            function(order, x)
        assert torch.isnan(function(order, x, validate=False)[1]) == math.isnan(bad)  # the documented opt-out


@pytest.mark.parametrize("name", PUBLIC)
def test_bad_orders_are_named(name):
    x = torch.ones(3, dtype=torch.float64)
    for order in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="orders v must be finite and non-negative"):
            PUBLIC[name](order, x)
    if name != "bessel_terms":
        with pytest.raises(ValueError, match="got nan"):
            PUBLIC[name](torch.tensor([1.0, math.nan]), x[:2])
        with pytest.raises(ValueError, match="got inf"):
            PUBLIC[name](torch.tensor([1.0, math.inf]), x[:2])


@pytest.mark.parametrize("v", [0.0, 2.5, 45.0, 300.0])
def test_infinite_and_huge_arguments_give_the_limits(v):
    """x = +inf was NaN (inf - inf in the Debye and continued-fraction forms); x = 1e300 was NaN from order 40 on
    (x^2 overflowed). Against the large-x expansion log I_v(x) = x - log(2 pi x) / 2 + O(v^2 / x)."""
    x = torch.tensor([math.inf, 1e300, 1e200], dtype=torch.float64, requires_grad=True)
    log_iv, log_ive, ratio = log_bessel_iv(v, x), log_bessel_ive(v, x), bessel_iv_ratio(v, x)
    values = [t.detach() for t in (log_iv, log_ive, ratio)]
    assert values[0][0] == math.inf and values[1][0] == -math.inf and values[2][0] == 1.0
    for i, value in ((1, 1e300), (2, 1e200)):
        expected = -0.5 * math.log(2 * math.pi * value)  # the 1/x term is below float64 resolution here
        assert float(values[1][i]) == pytest.approx(expected, rel=1e-14)
        assert float(values[0][i]) == pytest.approx(value, rel=1e-14)
        assert float(values[2][i]) == 1.0
    terms = bessel_terms(v, x.detach())
    assert terms[0][0] == -math.inf and terms[1][0] == 1.0 and terms[2][0] == 0.0
    for out in (log_ive, ratio):
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(grad).all()


def test_distributions_skip_the_check_and_validate_their_own_concentration():
    from pyrovae.distributions import VonMisesFisher

    loc = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="concentration"):
        VonMisesFisher(loc, torch.tensor([math.nan], dtype=torch.float64), validate_args=True)
    unchecked = VonMisesFisher(loc, torch.tensor([math.nan], dtype=torch.float64), validate_args=False)
    assert torch.isnan(unchecked.log_prob(loc)).all()  # NaN in, NaN out: no error from inside the Bessel terms


@pytest.mark.parametrize("v", [0.5, 1.0, 4.5, 39.5, 40.0, 100.0])
def test_the_ratio_gradient_at_zero_and_at_subnormal_arguments_is_its_limit(v):
    """R_v'(0) = 1 / (2v + 2): it came out NaN below order 40 (autograd hands the unused log I output a zero
    gradient, which was multiplied by that output's infinite slope at x = 0), and so did the vMF's gradients at
    concentrations the validation lets through (1e-310)."""
    for x0 in (0.0, 5e-324, 1e-310):
        x = torch.tensor([x0], dtype=torch.float64, requires_grad=True)
        (ratio_gradient,) = torch.autograd.grad(bessel_iv_ratio(v, x).sum(), x)
        log_ive, ratio, gap = bessel_terms(v, x)
        (terms_gradient,) = torch.autograd.grad(ratio.sum(), x, retain_graph=True)
        (gap_gradient,) = torch.autograd.grad(gap.sum(), x)
        for got in (ratio_gradient, terms_gradient, -gap_gradient):
            assert got.item() == pytest.approx(1 / (2 * v + 2), rel=1e-12), (v, x0)

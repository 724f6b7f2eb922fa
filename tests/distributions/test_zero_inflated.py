"""The zero-inflated distributions against an independent reference (scipy's pmfs and the mixture formula in numpy),
over gate logits from -40 to 40 in float32 and float64, before and after the gate has been read (issue 24)."""

from __future__ import annotations

import itertools

import mpmath
import numpy as np
import pytest
import torch
from scipy import special, stats

from pyrovae.distributions import ZeroInflatedNegativeBinomial, ZeroInflatedPoisson

GATE_LOGITS = np.linspace(-40.0, 40.0, 17)  # steps of 5, 20 and 40 (the found cases) included
COUNTS = np.array([0.0, 1.0, 3.0, 17.0, 250.0])
MEANS = [1e-3, 0.5, 2.0, 30.0, 1e3]
DISPERSIONS = [0.1, 1.0, 10.0, 1e4]
DTYPES = [torch.float32, torch.float64]


def _grid(dtype, *parameters):
    """Every combination of the parameters and gate logits, flattened to a batch, rounded to ``dtype`` (the reference
    is computed at the rounded values: the rounding of the parameters is not the density's error)."""
    columns = [np.array(c) for c in zip(*itertools.product(*parameters, GATE_LOGITS))]
    return [torch.tensor(c, dtype=dtype) for c in columns]


def _reference(log_base: np.ndarray, gate_logits: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """log of gate [x = 0] + (1 - gate) p(x), gate = expit(g), in float64 with log-sigmoids from logaddexp."""
    log_gate, log_keep = -np.logaddexp(0.0, -gate_logits), -np.logaddexp(0.0, gate_logits)
    return np.where(counts == 0, np.logaddexp(log_gate, log_keep + log_base), log_keep + log_base)


def _read_everything(d) -> None:
    """What Pyro's ZeroInflatedDistribution caches on first use: the gate (by sample, mean and variance)."""
    d.sample()
    d.sample((3,))
    d.mean, d.variance, d.gate  # noqa: B018 - read for their side effects, if any


def _check(d, reference, dtype):
    counts = torch.tensor(COUNTS, dtype=dtype).unsqueeze(-1)  # (counts, 1) against the batch
    rtol, atol = (1e-10, 1e-10) if dtype == torch.float64 else (2e-6, 2e-5)
    before = d.log_prob(counts)
    np.testing.assert_allclose(before.double().numpy(), reference, rtol=rtol, atol=atol)
    _read_everything(d)
    after = d.log_prob(counts)
    assert torch.equal(before, after), "log_prob changed after sample/mean/variance/gate were read"
    expanded = d.expand((2,) + d.batch_shape)  # expand after the gate was read (used to raise)
    assert torch.equal(expanded.log_prob(counts.unsqueeze(1))[:, 0], before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zinb_log_prob_matches_the_reference_before_and_after_the_gate_is_read(dtype):
    mean, theta, gate_logits = _grid(dtype, MEANS, DISPERSIONS)
    m, t, g = (v.double().numpy() for v in (mean, theta, gate_logits))
    log_nb = stats.nbinom.logpmf(COUNTS[:, None], t, t / (t + m))
    _check(ZeroInflatedNegativeBinomial(mean, theta, gate_logits), _reference(log_nb, g, COUNTS[:, None]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zip_log_prob_matches_the_reference_before_and_after_the_gate_is_read(dtype):
    rate, gate_logits = _grid(dtype, MEANS)
    r, g = rate.double().numpy(), gate_logits.double().numpy()
    log_poisson = stats.poisson.logpmf(COUNTS[:, None], r)
    _check(ZeroInflatedPoisson(rate, gate_logits), _reference(log_poisson, g, COUNTS[:, None]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_found_case_keeps_its_value(dtype):
    """ZINB(mean 2, theta 1, gate logits 20).log_prob(3) was -22.3 before ``.mean`` and -inf after, in float32."""
    d = ZeroInflatedNegativeBinomial(torch.tensor(2.0, dtype=dtype), torch.tensor(1.0, dtype=dtype),
                                     torch.tensor(20.0, dtype=dtype))
    expected = -np.logaddexp(0.0, 20.0) + stats.nbinom.logpmf(3, 1.0, 1.0 / 3.0)
    for read in (lambda: None, d.sample, lambda: d.mean, lambda: d.variance):
        read()
        assert float(d.log_prob(torch.tensor(3.0, dtype=dtype))) == pytest.approx(expected, rel=1e-6)
    z = ZeroInflatedPoisson(torch.tensor(3.0, dtype=dtype), torch.tensor(40.0, dtype=dtype))
    z.mean  # noqa: B018
    expected = -np.logaddexp(0.0, 40.0) + stats.poisson.logpmf(2, 3.0)
    assert float(z.log_prob(torch.tensor(2.0, dtype=dtype))) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gate_mean_and_variance_are_the_mixtures(dtype):
    mean, theta, gate_logits = _grid(torch.float64, [0.5, 30.0], [0.1, 10.0])
    d = ZeroInflatedNegativeBinomial(mean.to(dtype), theta.to(dtype), gate_logits.to(dtype))
    gate, keep = special.expit(gate_logits.numpy()), special.expit(-gate_logits.numpy())  # keep = 1 - gate
    m, t = mean.numpy(), theta.numpy()
    base_variance = m + m * m / t
    np.testing.assert_allclose(d.gate.double().numpy(), gate, rtol=1e-6)
    np.testing.assert_allclose(d.mean.double().numpy(), keep * m, rtol=1e-6, atol=1e-30)
    mpmath.mp.dps = 60  # E[x^2] - E[x]^2 with the digits to spare its cancellation
    variance = []
    for g, mu, v in zip(gate_logits.numpy(), m, base_variance):
        kept = 1 / (1 + mpmath.exp(mpmath.mpf(g)))
        variance.append(float(kept * (v + mpmath.mpf(mu) ** 2) - (kept * mu) ** 2))
    np.testing.assert_allclose(d.variance.double().numpy(), variance, rtol=1e-5, atol=1e-30)
    assert (d.variance >= 0).all()  # no difference of squares to round below zero


def test_gradients_stay_finite_at_saturated_gates():
    gate_logits = torch.tensor(GATE_LOGITS, dtype=torch.float32, requires_grad=True)
    mean = torch.full_like(gate_logits, 2.0).requires_grad_()
    d = ZeroInflatedNegativeBinomial(mean, torch.ones_like(mean), gate_logits)
    d.mean  # noqa: B018
    log_prob = d.log_prob(torch.tensor([[0.0], [3.0]]))
    gate_grad, mean_grad = torch.autograd.grad(log_prob.sum(), (gate_logits, mean))
    assert torch.isfinite(gate_grad).all() and torch.isfinite(mean_grad).all()
    # d/dg log(1 - gate) = -gate: -1 at g = 40 (it was -inf/NaN through log1p(-sigmoid(g)))
    (nonzero_grad,) = torch.autograd.grad(d.log_prob(torch.tensor(3.0)).sum(), gate_logits)
    np.testing.assert_allclose(nonzero_grad.numpy(), -special.expit(GATE_LOGITS), rtol=1e-6, atol=1e-7)


def test_constructor_validates_every_parameter():
    one = torch.ones(2)
    with pytest.raises(ValueError, match=r"ZeroInflatedNegativeBinomial: mean must be finite and non-negative.*-1\.0"):
        ZeroInflatedNegativeBinomial(torch.tensor([-1.0, 2.0]), one, torch.zeros(2), validate_args=True)
    with pytest.raises(ValueError, match="mean must be finite and non-negative.*nan"):
        ZeroInflatedNegativeBinomial(torch.tensor([1.0, float("nan")]), one, torch.zeros(2), validate_args=True)
    with pytest.raises(ValueError, match="inverse_dispersion must be positive"):
        ZeroInflatedNegativeBinomial(one, torch.tensor([0.0, 1.0]), torch.zeros(2), validate_args=True)
    with pytest.raises(ValueError, match="gate_logits must be a real number"):
        ZeroInflatedNegativeBinomial(one, one, torch.tensor([0.0, float("nan")]), validate_args=True)
    with pytest.raises(ValueError, match="ZeroInflatedPoisson: rate must be finite and positive"):
        ZeroInflatedPoisson(torch.tensor([-2.0, 1.0]), torch.zeros(2), validate_args=True)
    # validation off (as under Pyro's JIT ELBOs) constructs; an expand keeps the setting
    d = ZeroInflatedNegativeBinomial(torch.tensor([-1.0, 2.0]), one, torch.zeros(2), validate_args=False)
    assert not d.expand((3, 2))._validate_args


def test_values_off_the_support_are_refused():
    d = ZeroInflatedPoisson(torch.ones(2), torch.zeros(2), validate_args=True)
    for bad in ([-1.0, 0.0], [0.5, 1.0]):
        with pytest.raises(ValueError, match="support"):
            d.log_prob(torch.tensor(bad))


def test_expand_refuses_shapes_it_cannot_broadcast_to():
    d = ZeroInflatedNegativeBinomial(torch.ones(2), torch.ones(2), torch.zeros(2))
    d.mean  # noqa: B018
    with pytest.raises(ValueError, match=r"batch shape \(2,\) cannot be expanded to batch shape \(3,\)"):
        d.expand((3,))
    assert d.expand((4, 1, 2)).expand((4, 5, 2)).batch_shape == (4, 5, 2)


def _mp_log_f0(g, mean, theta):
    """log(gate + (1 - gate) p(0)) in 50 digits; theta None for the Poisson."""
    gate = 1 / (1 + mpmath.exp(-g))
    p0 = mpmath.exp(-mean) if theta is None else (1 + mean / theta) ** (-theta)
    return mpmath.log(gate + (1 - gate) * p0)


@pytest.mark.parametrize("theta", [None, 0.1, 1.0, 1e4, 1e8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_zero_and_its_gradients_keep_relative_precision(dtype, theta):
    """log f(0) and its derivatives in g and the mean against 50 digits, relative, over gates from -40 to 40 and
    means from 1e-8 to 1e3: where f(0) is near 1 the value is tiny (-2e-17 at g = 20, mean 1e-8) and logaddexp had
    kept 7 digits of it in float64; the gradients through autograd lost theirs to sigmoid's and expm1's backward
    (d/dg 0 instead of 4e-26 at g = -40, d/dmean 2e-4 off at mean 30)."""
    mean, gate_logits = _grid(dtype, [1e-8, 1e-3, 0.5, 2.0, 30.0, 1e3])
    gate_logits.requires_grad_(), mean.requires_grad_()
    if theta is None:
        d = ZeroInflatedPoisson(mean, gate_logits)
    else:
        d = ZeroInflatedNegativeBinomial(mean, torch.tensor(theta, dtype=dtype), gate_logits)
    value = d.log_prob(torch.zeros((), dtype=dtype))
    by_gate, by_mean = torch.autograd.grad(value.sum(), (gate_logits, mean))
    mp_theta = None if theta is None else mpmath.mpf(float(torch.tensor(theta, dtype=dtype)))
    expected = []
    with mpmath.workdps(50):
        for g, m in zip(gate_logits.tolist(), mean.tolist()):
            point = (mpmath.mpf(g), mpmath.mpf(m))
            expected.append([float(mpmath.diff(lambda a, b: _mp_log_f0(a, b, mp_theta), point, order))
                             for order in ((0, 0), (1, 0), (0, 1))])
    rtol = [1e-14, 1e-14, 2e-14] if dtype == torch.float64 else [1e-6, 1e-5, 2e-5]
    for got, reference, tol in zip((value, by_gate, by_mean), np.array(expected).T, rtol):
        np.testing.assert_allclose(got.detach().double().numpy(), reference, rtol=tol, atol=0)


def test_the_zero_is_exact_at_mean_zero_and_differentiable_in_every_mode():
    """p(0) = 1 at mean 0: log f(0) = 0 and d/dmean = -(1 - gate) (finite: no log of 1 - p(0)); gradcheck and
    gradgradcheck-free forward mode (jvp) and vmap agree with finite differences."""
    gate_logits = torch.tensor([-3.0, 0.0, 4.0], dtype=torch.float64, requires_grad=True)
    mean = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    value = ZeroInflatedPoisson(mean, gate_logits, validate_args=False).log_prob(torch.zeros(3, dtype=torch.float64))
    assert torch.equal(value.detach().abs(), torch.zeros(3, dtype=torch.float64))
    (by_mean,) = torch.autograd.grad(value.sum(), mean)
    torch.testing.assert_close(by_mean, -torch.sigmoid(-gate_logits.detach()), rtol=1e-15, atol=0)
    counts = torch.tensor([[0.0, 0.0, 2.0], [0.0, 1.0, 0.0]], dtype=torch.float64)

    def log_prob(g, m, t):
        return ZeroInflatedNegativeBinomial(m, t, g, validate_args=False).log_prob(counts)

    args = (torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True),
            torch.tensor([0.2, 1.5, 7.0], dtype=torch.float64, requires_grad=True),
            torch.tensor([0.5, 3.0, 40.0], dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(log_prob, args, check_forward_ad=True)
    batched = torch.func.vmap(lambda g: log_prob(g, *args[1:]))(torch.stack([args[0], 2 * args[0]]).detach())
    torch.testing.assert_close(batched[1], log_prob(2 * args[0].detach(), *args[1:]))

"""The negative binomial at infinite inverse dispersion is the Poisson (scipy.stats.poisson), and its parameters are
validated (issue 24)."""

from __future__ import annotations

import contextlib
import itertools
import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats

from pyrovae.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial, ZeroInflatedPoisson

INF = math.inf
MEANS = np.array([1e-8, 0.3, 7.0, 1e3, 1e6])
COUNTS = np.array([0.0, 1.0, 2.0, 7.0, 1000.0, 1e6])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_infinite_inverse_dispersion_is_the_poisson(dtype):
    mean = torch.tensor(MEANS, dtype=dtype)
    d = NegativeBinomial(mean, torch.full_like(mean, INF), validate_args=True)
    counts = torch.tensor(COUNTS, dtype=dtype).unsqueeze(-1)  # (counts, 1) against the batch of means
    expected = stats.poisson.logpmf(COUNTS[:, None], mean.double().numpy())
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(d.log_prob(counts).double().numpy(), expected, rtol=rtol, atol=1e-300)
    assert torch.equal(d.mean, mean) and torch.equal(d.variance, mean)


def test_finite_and_infinite_dispersions_side_by_side():
    """One tensor of dispersions, some infinite (genes with no overdispersion): each element is its own law, and the
    infinite ones are continuous with theta = 1e15 (where scipy's lgamma differences have lost their digits)."""
    mean = torch.tensor([0.3, 7.0, 40.0, 2.0], dtype=torch.float64)
    theta = torch.tensor([INF, 2.0, INF, 50.0], dtype=torch.float64)
    counts = torch.tensor([[0.0], [1.0], [5.0], [60.0]], dtype=torch.float64)
    got = NegativeBinomial(mean, theta).log_prob(counts).numpy()
    m, t = mean.numpy(), theta.numpy()
    finite_t = np.where(np.isinf(t), 1.0, t)
    nb = stats.nbinom.logpmf(counts.numpy(), finite_t, finite_t / (finite_t + m))
    expected = np.where(np.isinf(t), stats.poisson.logpmf(counts.numpy(), m), nb)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    near = NegativeBinomial(mean, torch.full_like(mean, 1e15)).log_prob(counts)
    limit = NegativeBinomial(mean, torch.full_like(mean, INF)).log_prob(counts)
    torch.testing.assert_close(near, limit, rtol=1e-9, atol=1e-9)


def test_gradients_at_infinite_dispersion_are_the_poissons():
    mean = torch.tensor([0.5, 4.0], dtype=torch.float64, requires_grad=True)
    counts = torch.tensor([0.0, 3.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(NegativeBinomial(mean, torch.full((2,), INF, dtype=torch.float64))
                                  .log_prob(counts).sum(), mean)
    torch.testing.assert_close(grad, counts / mean.detach() - 1)  # d/dmu (x log mu - mu)


def test_samples_at_infinite_dispersion_have_the_poisson_moments():
    torch.manual_seed(0)
    mean = torch.tensor([0.0, 0.4, 12.0], dtype=torch.float64)
    x = NegativeBinomial(mean, torch.full_like(mean, INF)).sample((20_000,))
    assert torch.isfinite(x).all() and (x == x.round()).all() and (x[:, 0] == 0).all()
    stderr = (mean / 20_000).sqrt()
    assert ((x.mean(0) - mean).abs() <= 5 * stderr + 1e-12).all()
    # the Poisson's index of dispersion is 1: sample variance / mean, within 5 of its standard errors (sqrt(2 / n))
    ratio = x[:, 1:].var(0) / mean[1:]
    assert ((ratio - 1).abs() <= 5 * math.sqrt(2 / 20_000)).all()
    # finite theta still the gamma-Poisson mixture: variance mu + mu^2 / theta
    finite = NegativeBinomial(torch.tensor([3.0]), torch.tensor([0.5])).sample((40_000,))
    assert float(finite.var()) == pytest.approx(3.0 + 9.0 / 0.5, rel=0.1)


def test_zero_inflated_forms_reach_the_same_limit():
    mean = torch.tensor([0.3, 5.0], dtype=torch.float64)
    gate_logits = torch.tensor([-2.0, 1.0], dtype=torch.float64)
    counts = torch.tensor([[0.0], [4.0]], dtype=torch.float64)
    zinb = ZeroInflatedNegativeBinomial(mean, torch.full_like(mean, INF), gate_logits)
    torch.testing.assert_close(zinb.log_prob(counts), ZeroInflatedPoisson(mean, gate_logits).log_prob(counts))


def test_parameters_are_validated():
    with pytest.raises(ValueError, match=r"NegativeBinomial: mean must be finite and non-negative.*-1\.0 at index"):
        NegativeBinomial(torch.tensor([1.0, -1.0]), torch.ones(2), validate_args=True)
    with pytest.raises(ValueError, match="inverse_dispersion must be positive.*nan"):
        NegativeBinomial(torch.ones(2), torch.tensor([1.0, float("nan")]), validate_args=True)
    with pytest.raises(ValueError, match=r"cannot be expanded to batch shape \(3,\)"):
        NegativeBinomial(torch.ones(2), torch.ones(2)).expand((3,))


@pytest.mark.parametrize("family", ["NegativeBinomial", "ZeroInflatedNegativeBinomial", "Poisson",
                                    "ZeroInflatedPoisson"])
def test_an_infinite_mean_is_refused(family):
    """torch's nonnegative and positive constraints let infinity through: the log-densities were -inf and NaN."""
    import pyrovae.distributions as distributions

    mean = torch.tensor([2.0, INF])
    extra = {"NegativeBinomial": (torch.ones(2),), "ZeroInflatedNegativeBinomial": (torch.ones(2), torch.zeros(2)),
             "Poisson": (), "ZeroInflatedPoisson": (torch.zeros(2),)}[family]
    with pytest.raises(ValueError, match=r"(mean|rate).*[Ff]inite"):
        getattr(distributions, family)(mean, *extra, validate_args=True)


def test_python_numbers_are_parameters_as_in_torch():
    """NegativeBinomial(2.0, 1.5) as torch's distributions take numbers (it failed on 'float'.shape); a number
    beside a tensor takes its dtype."""
    counts = torch.tensor([0.0, 3.0, 10.0], dtype=torch.float64)
    expected = stats.nbinom.logpmf(counts.numpy(), 1.5, 1.5 / 3.5)
    for mean, theta in ((2.0, 1.5), (torch.tensor(2.0, dtype=torch.float64), 1.5), (2, torch.tensor(1.5))):
        d = NegativeBinomial(mean, theta, validate_args=True)
        np.testing.assert_allclose(d.log_prob(counts).double().numpy(), expected, rtol=1e-6)
    assert NegativeBinomial(torch.tensor(2.0, dtype=torch.float64), 1.5).theta.dtype == torch.float64
    zinb = ZeroInflatedNegativeBinomial(2.0, 1.5, 0.0)
    np.testing.assert_allclose(zinb.log_prob(counts).double()[1:].numpy(), expected[1:] + math.log(0.5), rtol=1e-6)


def test_the_gamma_ratio_of_large_dispersions_is_exact_to_float64():
    """lgamma(x + theta) - lgamma(theta) - x log theta against mpmath, from theta = 10 (where the Stirling form takes
    over) to 1e12: three remainder terms left 6e-11 (absolute; 22% of a gradient of 1e-10 at x = 1, theta = 10).
    theta (log1p(u) - u) keeps a rounding of about eps x (that of x log(mu) in the log-density)."""
    import mpmath

    from pyrovae.distributions.negative_binomial import log_gamma_ratio

    mpmath.mp.dps = 40
    for x in (1.0, 2.0, 5.0, 37.0, 1e4, 1e6):
        for theta in (10.0, 10.5, 30.0, 1e4, 1e8, 1e12):
            wide = mpmath.mpf(x), mpmath.mpf(theta)
            expected = mpmath.loggamma(wide[0] + wide[1]) - mpmath.loggamma(wide[1]) - wide[0] * mpmath.log(wide[1])
            got = log_gamma_ratio(torch.tensor([x], dtype=torch.float64), torch.tensor([theta], dtype=torch.float64))
            assert abs(got.item() - float(expected)) <= 1e-13 * abs(float(expected)) + 3e-14 + 1e-15 * x, (x, theta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_draws_are_scored_as_the_general_sparse_path_scores_them(dtype, monkeypatch):
    """Draws of the means (importance samples, AIS chains) in front of one batch of counts: the non-zero entries
    are found in the counts alone and read from every draw's row at once (1.43x faster AIS on 2,000 genes), with the
    general path's values bit for bit and its gradients to float rounding, whatever the layout."""
    from pyrovae.distributions import sparse_counts
    from pyrovae.distributions.negative_binomial import nb_log_prob
    from pyrovae.distributions.poisson import poisson_log_prob

    torch.manual_seed(0)
    x = torch.poisson(torch.rand(7, 30) * 2).to(dtype)
    mu = (torch.rand(9, 7, 30) * 3).to(dtype)
    theta = (torch.rand(30) * 30 + 0.1).to(dtype)
    theta[:5] = INF  # Poisson genes among the NB's
    cases = [(nb_log_prob, (x, mu, theta)), (poisson_log_prob, (x, mu)), (nb_log_prob, (x, mu[:, None], theta)),
             (nb_log_prob, (x, mu.reshape(3, 3, 7, 30), theta.expand(7, 30))),
             (nb_log_prob, (x.expand(9, 7, 30), mu, theta)), (nb_log_prob, (x, mu[:2], theta))]
    fast, taken = sparse_counts._score_draws, []

    def recorded(*arguments):
        result = fast(*arguments)
        taken.append(result is not None)
        return result

    for f, args in cases:
        results = []
        for path in (recorded, lambda *a, **k: None):
            monkeypatch.setattr(sparse_counts, "_score_draws", path)
            leaves = [args[0]] + [a.clone().requires_grad_() for a in args[1:]]
            value = f(*leaves)
            results.append((value.detach(), torch.autograd.grad(value.sum(), leaves[1:])))
        (fast_value, fast_grads), (value, grads) = results
        assert torch.equal(fast_value, value)
        for mine, theirs in zip(fast_grads, grads):
            torch.testing.assert_close(mine, theirs, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
    assert taken == [True] * 5  # two draws are too few to pay: the general path, without trying the other


def test_float32_dispersion_gradients_under_many_draws_keep_float32_precision():
    """With four or more draws of the means per datum, theta reaches the counts' terms and the means' terms through
    two gathers, each about x / theta and cancelling: cast back to float32 apart, their sum lost three digits (7e-6
    relative here); added in float64 first, it keeps float32's."""
    generator = torch.Generator().manual_seed(0)
    theta = torch.tensor([1e-3, 0.01, 0.05, 0.2, 1.0, 5.0, 20.0], dtype=torch.float64)
    mean = 20 * torch.rand(8, 128, 7, generator=generator, dtype=torch.float64) + 0.5
    x = torch.poisson(mean[0], generator=generator)

    def gradient(dtype):
        leaf = theta.to(dtype).clone().requires_grad_()
        NegativeBinomial(mean.to(dtype), leaf).log_prob(x.to(dtype)).sum().backward()
        return leaf.grad.double()

    reference = gradient(torch.float64)
    torch.testing.assert_close(gradient(torch.float32), reference, rtol=5e-7, atol=0)


def test_the_mode_reaches_the_poissons():
    """torch's formula, (theta - 1) exp(logits), was inf * 0 = NaN at theta = infinity."""
    mean = torch.tensor([3.5, 3.5, 3.5, 0.4, 7.0], dtype=torch.float64)
    theta = torch.tensor([INF, 1e12, 2.0, 5.0, 0.5], dtype=torch.float64)
    assert NegativeBinomial(mean, theta).mode.tolist() == [3.0, 3.0, 1.0, 0.0, 0.0]
    assert torch.equal(NegativeBinomial(mean[:2], theta[:2]).mode, torch.distributions.Poisson(mean[:2]).mode)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_at_zero_counts_keep_relative_precision(dtype):
    """d/dtheta log NB(0 | mu, theta) = -(log1p(u) - u / (1 + u)), u = mu / theta, against 40 digits over theta from
    1e-3 to 1e8 and means from 1e-3 to 1e3: through autograd it was 0.1% off at theta = 10 in float32, 14% at 1e3
    and all rounding from 1e4 (an answer of u^2 / 2 from two terms of size u); d/dmu = -1 / (1 + u)."""
    thetas, means = [1e-3, 0.1, 1.0, 10.0, 30.0, 1e3, 1e4, 1e6, 1e8], [1e-3, 0.5, 2.0, 30.0, 1e3]
    mean = torch.tensor(means, dtype=dtype).repeat(len(thetas)).requires_grad_()
    theta = torch.tensor(thetas, dtype=dtype).repeat_interleave(len(means)).requires_grad_()
    by_mean, by_theta = torch.autograd.grad(NegativeBinomial(mean, theta).log_prob(torch.zeros_like(mean)).sum(),
                                            (mean, theta))
    with mpmath.workdps(40):
        u = [mpmath.mpf(m) / mpmath.mpf(t) for m, t in zip(mean.tolist(), theta.tolist())]
        expected_theta = [float(-(mpmath.log1p(v) - v / (1 + v))) for v in u]
        expected_mean = [float(-1 / (1 + v)) for v in u]
    tol = 6 * torch.finfo(dtype).eps
    np.testing.assert_allclose(by_theta.double().numpy(), expected_theta, rtol=tol, atol=0)
    np.testing.assert_allclose(by_mean.double().numpy(), expected_mean, rtol=tol, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dispersion_gradients_at_nonzero_counts_keep_their_precision(dtype):
    """d/dtheta log NB(x | mu, theta) at x > 0 against 50 digits, for theta from 1e-3 to 1e8, relative to the size of
    its terms, digamma(x + theta) - digamma(theta) - log1p(x / theta) >= 0 and log1p(c) - c <= 0 at c = (x - mu) /
    (theta + mu), which is that of the answer away from its zeros: within eps64 (4000 + theta), under float32's
    rounding for every theta up to 1e8 (measured: 1e-13 at theta = 1e3, 8e-9 at 1e8). Through autograd it was a sum
    of terms of size x / theta: 1e-9 off at theta = 10, 1e-4 at 1e6 and of the wrong sign at 1e8."""
    counts, means = [1.0, 2.0, 3.0, 17.0, 250.0], [1e-3, 0.5, 2.0, 30.0, 1e3]
    thetas = [1e-3, 0.1, 1.0, 5.0, 19.9, 20.0, 30.0, 1e3, 1e4, 1e6, 1e8]
    x, mu, theta = (torch.tensor(c, dtype=dtype) for c in zip(*itertools.product(counts, means, thetas)))
    theta.requires_grad_(), mu.requires_grad_()
    by_mu, by_theta = torch.autograd.grad(NegativeBinomial(mu, theta).log_prob(x).sum(), (mu, theta))
    expected, size, expected_mu = [], [], []
    with mpmath.workdps(50):
        for k, m, t in zip(*(map(mpmath.mpf, v.tolist()) for v in (x, mu, theta))):
            excess = mpmath.digamma(k + t) - mpmath.digamma(t) - mpmath.log1p(k / t)
            c = (k - m) / (t + m)
            expected.append(float(excess + mpmath.log1p(c) - c))
            size.append(float(excess - (mpmath.log1p(c) - c)))
            expected_mu.append(float(t * (k - m) / (m * (t + m))))
    eps64 = torch.finfo(torch.float64).eps
    tol = eps64 * (4000 + theta.detach().double()) + (0 if dtype == torch.float64 else torch.finfo(dtype).eps)
    error = (by_theta.double() - torch.tensor(expected, dtype=torch.float64)).abs()
    assert (error <= tol * torch.tensor(size, dtype=torch.float64)).all(), (error / torch.tensor(size)).max()
    torch.testing.assert_close(by_mu.double(), torch.tensor(expected_mu, dtype=torch.float64),
                               rtol=4 * torch.finfo(dtype).eps, atol=0)


def test_gradients_of_the_log_density_match_finite_differences_in_both_modes():
    """theta per gene broadcast against means per cell and gene, zero and non-zero counts, reverse and forward mode,
    and second derivatives (``create_graph=True``: the written-out derivatives are differentiable in turn)."""
    counts = torch.tensor([[0.0, 0.0, 2.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    mean = torch.tensor([[0.2, 1.5, 7.0], [3.0, 0.01, 2.0]], dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([0.5, 3.0, 40.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, t: NegativeBinomial(m, t).log_prob(counts), (mean, theta),
                                    check_forward_ad=True)
    assert torch.autograd.gradgradcheck(lambda m, t: NegativeBinomial(m, t).log_prob(counts), (mean, theta))
    gate = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda m, t, g: ZeroInflatedNegativeBinomial(m, t, g).log_prob(counts), (mean, theta, gate))


def test_a_captured_step_scores_a_zero_mean_at_a_zero_count_with_a_finite_gradient():
    """Captured (``compile=True``), zero counts are scored densely at k = 1 and discarded: at a mean of 0 that
    discarded branch made the mean's gradient NaN (0 * inf); its parameters are 1 there now, as eager's is."""
    from pyrovae.distributions.negative_binomial import nb_log_prob
    from pyrovae.ops.capture import capture_mode

    counts, theta = torch.tensor([0.0, 0.0, 3.0]), torch.tensor([2.0, 2.0, 2.0])
    grads = []
    for captured in (False, True):
        mean = torch.tensor([0.0, 1.0, 2.5], requires_grad=True)
        with capture_mode() if captured else contextlib.nullcontext():
            value = nb_log_prob(counts, mean, theta)
        grads.append(torch.autograd.grad(value.sum(), mean)[0])
    assert torch.isfinite(grads[1]).all()
    torch.testing.assert_close(grads[1], grads[0])

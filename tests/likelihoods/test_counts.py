"""Count likelihoods against scipy.stats (float64), mpmath at the extremes, and the Poisson limit."""

import contextlib
import math

import numpy as np
import pytest
import torch
from pyrovae.guides import NormalGuide
from pyrovae.models import VAE
from scipy import stats

from pyrovae.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from pyrovae.distributions.negative_binomial import log_gamma_ratio
from pyrovae.infer import train
from pyrovae.likelihoods import get_likelihood
from pyrovae.ops.capture import capture_mode

COUNTS = np.array([0, 1, 2, 5, 17, 100, 419, 10_000])


def _nb(mean, theta, dtype=torch.float64):
    return NegativeBinomial(torch.tensor(mean, dtype=dtype), torch.tensor(theta, dtype=dtype))


@pytest.mark.parametrize("theta", [1e-3, 0.5, 9.999, 10.0, 10.001, 73.0, 1e4])
@pytest.mark.parametrize("mean", [1e-3, 0.3, 7.0, 1e3, 1e6])
def test_nb_log_prob_matches_scipy(mean, theta):
    expected = stats.nbinom.logpmf(COUNTS, theta, theta / (theta + mean))
    actual = _nb(mean, theta).log_prob(torch.tensor(COUNTS, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("theta, mean", [(1e8, 1e-8), (1e8, 0.3), (1e8, 7.0), (1e6, 1e-8), (1e4, 1e-8), (10.0, 1e-8)])
def test_nb_log_prob_at_extremes_matches_mpmath(mean, theta):
    # scipy's lgamma difference loses up to 0.6% here (theta = 1e8, mean = 1e-8); mpmath at 50 digits does not
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    m, t = mpmath.mpf(mean), mpmath.mpf(theta)
    for x in [0, 1, 3, 40]:
        k = mpmath.mpf(x)
        exact = mpmath.loggamma(k + t) - mpmath.loggamma(t) - mpmath.loggamma(k + 1)
        exact += t * mpmath.log(t / (t + m)) + k * mpmath.log(m / (t + m))
        actual = float(_nb(mean, theta).log_prob(torch.tensor(float(x), dtype=torch.float64)))
        assert actual == pytest.approx(float(exact), rel=1e-11, abs=1e-11)


def test_nb_tends_to_poisson():
    mean = torch.tensor([1e-8, 0.3, 7.0, 1e3, 1e6, 1e6], dtype=torch.float64)
    x = torch.tensor([0.0, 1.0, 7.0, 1000.0, 0.0, 1e6], dtype=torch.float64)
    poisson = torch.distributions.Poisson(mean).log_prob(x)
    nb64 = NegativeBinomial(mean, torch.full_like(mean, 1e16)).log_prob(x)
    np.testing.assert_allclose(nb64.numpy(), poisson.numpy(), rtol=1e-9, atol=1e-5)
    # float32 at theta = 1e8, counts up to 1e3 (the naive lgamma(x + 1e8) - lgamma(1e8) is ~100 nats off)
    nb32 = NegativeBinomial(mean[:4].float(), torch.full((4,), 1e8)).log_prob(x[:4].float())
    np.testing.assert_allclose(nb32.double().numpy(), poisson[:4].numpy(), rtol=1e-6, atol=3e-4)


def test_nb_float32_agrees_with_float64_for_realistic_counts():
    torch.manual_seed(0)
    mean = torch.exp(torch.empty(2000).uniform_(math.log(1e-8), math.log(1e4))).double()
    theta = torch.exp(torch.empty(2000).uniform_(math.log(1e-3), math.log(1e8))).double()
    x = torch.distributions.Poisson(mean).sample().clamp(max=5000)
    exact = NegativeBinomial(mean, theta).log_prob(x)
    single = NegativeBinomial(mean.float(), theta.float()).log_prob(x.float()).double()
    # float32 keeps ~7 digits of each term: x log mean, log x!, (x + theta) log1p(mean / theta)
    terms = x * mean.log().abs() + torch.lgamma(x + 1) + x + mean + 1
    assert ((single - exact).abs() <= 8 * torch.finfo(torch.float32).eps * terms).all()


def test_log_gamma_ratio_is_continuous_and_differentiable_across_branches():
    x = torch.tensor([0.0, 1.0, 4.0, 30.0, 500.0], dtype=torch.float64)
    below = log_gamma_ratio(x, torch.full_like(x, 10.0 - 1e-10))
    above = log_gamma_ratio(x, torch.full_like(x, 10.0))
    np.testing.assert_allclose(below.numpy(), above.numpy(), atol=1e-8)
    for theta in [0.7, 9.5, 10.5, 3e3, 1e7]:
        t = torch.full_like(x, theta, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: log_gamma_ratio(x, t), (t,))


def test_nb_with_thetas_either_side_of_the_branch_matches_scipy_and_the_captured_form():
    """Entries are split by theta between the two forms of log_gamma_ratio; a captured step computes both
    everywhere and selects: the same values and gradients, and scipy's values, on a cells x genes batch."""
    rng = np.random.default_rng(3)
    theta = np.concatenate([np.exp(rng.uniform(np.log(1e-3), np.log(1e6), 47)), [10.0, 10.0 - 1e-9, np.inf]])
    mean = np.exp(rng.uniform(np.log(1e-3), np.log(1e4), (6, theta.size)))
    x = rng.poisson(mean) * (rng.random(mean.shape) < 0.6)
    with np.errstate(invalid="ignore"):  # the last gene's theta is infinite: its column is the Poisson's
        p = theta / (theta + mean)
    expected = torch.where(torch.isinf(torch.from_numpy(theta)), torch.distributions.Poisson(torch.from_numpy(mean))
                           .log_prob(torch.from_numpy(x).double()), torch.from_numpy(stats.nbinom.logpmf(x, theta, p)))
    for with_limit in (True, False):
        columns = slice(None) if with_limit else slice(0, -1)
        args = (torch.from_numpy(x[:, columns]).float(), torch.from_numpy(mean[:, columns]),
                torch.from_numpy(theta[columns]))
        results = []
        for captured in (False, True):
            mu, th = (a.clone().requires_grad_() for a in args[1:])
            with capture_mode() if captured else contextlib.nullcontext():
                log_prob = NegativeBinomial(mu, th).log_prob(args[0])
            results.append((log_prob.detach(), *torch.autograd.grad(log_prob.sum(), (mu, th))))
        np.testing.assert_allclose(results[0][0].numpy(), expected[:, columns].numpy(), rtol=1e-9, atol=1e-9)
        for eager, captured in zip(*results):
            torch.testing.assert_close(eager, captured, rtol=0, atol=0)


@pytest.mark.parametrize("captured", [False, True])
@pytest.mark.parametrize("mean_shape", [(7, 5, 50), (7, 1, 50), (3, 7, 5, 50)])
def test_draws_of_the_mean_share_each_counts_terms(mean_shape, captured):
    """Means with a draws dimension the counts and dispersions lack (importance samples, AIS chains) take each
    count's Gamma terms once, not once per draw: the values and gradients of scoring each draw alone, and scipy's."""
    rng = np.random.default_rng(5)
    theta_values = np.concatenate([np.exp(rng.uniform(np.log(1e-3), np.log(1e6), 47)), [10.0, 3.0, np.inf]])
    theta = torch.from_numpy(theta_values).requires_grad_()
    mean = torch.from_numpy(np.exp(rng.uniform(np.log(1e-3), np.log(1e3), mean_shape))).requires_grad_()
    x = torch.from_numpy(rng.poisson(3.0, (5, 50)) * (rng.random((5, 50)) < 0.5)).float()
    with capture_mode() if captured else contextlib.nullcontext():
        together = NegativeBinomial(mean, theta).log_prob(x)
        flat = mean.reshape(-1, *mean_shape[-2:])  # one draw at a time: no draws dimension to share terms over
        alone = torch.stack([NegativeBinomial(m, theta).log_prob(x) for m in flat]).reshape(together.shape)
    torch.testing.assert_close(together, alone, rtol=1e-15, atol=1e-12)
    gradients = [torch.autograd.grad(value.sum(), (mean, theta)) for value in (together, alone)]
    for a, b in zip(*gradients):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    means, counts = np.broadcast_to(mean.detach().numpy(), together.shape), np.broadcast_to(x.numpy(), together.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = stats.nbinom.logpmf(counts, theta_values, theta_values / (theta_values + means))
    expected[..., -1] = stats.poisson.logpmf(counts[..., -1], means[..., -1])
    exact = (theta_values <= 1e4) | np.isinf(theta_values)  # beyond, scipy's lgamma difference loses digits
    np.testing.assert_allclose(together.detach().numpy()[..., exact], expected[..., exact], rtol=1e-9, atol=1e-9)
    rate = mean.detach().float().requires_grad_()  # the Poisson shares log x! the same way
    with capture_mode() if captured else contextlib.nullcontext():
        together = Poisson(rate).log_prob(x)
        alone = torch.stack([Poisson(r).log_prob(x) for r in rate.reshape(-1, *mean_shape[-2:])])
    alone = alone.reshape(together.shape)
    torch.testing.assert_close(together, alone, rtol=0, atol=0)
    torch.testing.assert_close(*(torch.autograd.grad(v.sum(), rate)[0] for v in (together, alone)), rtol=0, atol=0)
    np.testing.assert_allclose(together.detach().numpy(), stats.poisson.logpmf(counts, rate.detach().double().numpy()),
                               rtol=1e-6, atol=1e-6)


def test_terms_are_shared_when_a_plate_has_expanded_the_dispersion(monkeypatch):
    """Under Pyro's plates a distribution is .expand()-ed, which broadcasts theta to the draws' shape (stride 0):
    each count's terms are still computed once per datum, not once per draw."""
    from pyrovae.distributions import negative_binomial

    torch.manual_seed(2)
    x = torch.poisson(torch.full((5, 40), 2.0)) * (torch.rand(5, 40) < 0.5)
    mean, theta = torch.rand(8, 5, 40, dtype=torch.float64) * 4, torch.rand(40, dtype=torch.float64) * 20
    scored, count_terms = [], negative_binomial._count_terms
    monkeypatch.setattr(negative_binomial, "_count_terms", lambda k, t: scored.append(k.numel()) or count_terms(k, t))
    expanded = NegativeBinomial(mean, theta).expand((8, 5, 40))
    assert expanded.theta.stride()[:2] == (0, 0)
    together = expanded.log_prob(x)
    assert scored == [int((x != 0).sum())]  # once per datum
    alone = torch.stack([NegativeBinomial(m, theta).log_prob(x) for m in mean])
    torch.testing.assert_close(together, alone, rtol=1e-15, atol=1e-12)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")
def test_a_trace_made_with_an_expanded_dispersion_holds_for_a_materialised_one():
    """Sharing reads which dimensions were broadcast from the strides, which a trace would keep: traced, it is off."""
    torch.manual_seed(4)
    x = torch.poisson(torch.full((5, 12), 2.0))
    mean = torch.rand(6, 5, 12, dtype=torch.float64) * 3 + 0.1

    def log_density(mean, theta):
        return NegativeBinomial(mean, theta, validate_args=False).log_prob(x)

    traced = torch.jit.trace(log_density, (mean, (torch.rand(12, dtype=torch.float64) + 1).expand(6, 5, 12)),
                             check_trace=False)
    theta = torch.rand(6, 5, 12, dtype=torch.float64) + 1  # a dispersion per draw, cell and gene: nothing broadcast
    torch.testing.assert_close(traced(mean, theta), log_density(mean, theta), rtol=0, atol=0)


def test_one_count_against_many_means():
    """A 0-d count scored against draws of its mean (the draws-sharing path with a datum of no shape)."""
    means = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    np.testing.assert_allclose(NegativeBinomial(means, torch.tensor(2.0, dtype=torch.float64)).log_prob(
        torch.tensor(3.0)).numpy(), stats.nbinom.logpmf(3, 2.0, 2.0 / (2.0 + means.numpy())), rtol=1e-12)
    np.testing.assert_allclose(Poisson(means).log_prob(torch.tensor(3.0)).numpy(),
                               stats.poisson.logpmf(3, means.numpy()), rtol=1e-12)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("traced_at", [50.0, 0.5, "mixed"])
def test_a_traced_nb_log_density_holds_for_thetas_its_trace_did_not_see(traced_at):
    """elbo="jit" traces the step once: which branches the eager path skips must not be decided by the first batch."""
    torch.manual_seed(0)
    x = torch.poisson(torch.full((4, 6), 3.0))
    mean = torch.rand(4, 6, dtype=torch.float64) * 5 + 0.1

    def thetas(kind):
        if kind == "mixed":
            return torch.tensor([0.3, 2.0, 9.0, 10.0, 400.0, 1e7], dtype=torch.float64)
        if kind == "with_limit":
            return torch.tensor([0.3, 2.0, 9.0, math.inf, 400.0, 1e7], dtype=torch.float64)
        return torch.full((6,), kind, dtype=torch.float64)

    def log_density(mean, theta):
        return NegativeBinomial(mean, theta, validate_args=False).log_prob(x)

    traced = torch.jit.trace(log_density, (mean, thetas(traced_at)), check_trace=False)
    for kind in (50.0, 0.5, 1e9, "mixed", "with_limit"):
        theta = thetas(kind).requires_grad_()
        expected, actual = log_density(mean, theta), traced(mean, theta)
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
        grads = [torch.autograd.grad(value.sum(), theta)[0] for value in (expected, actual)]
        # the same terms summed in another order: d/dtheta at theta = 1e9 is 1e-18, a difference of terms of 1e-9
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-20)


def test_nb_gradients_are_finite_at_extremes():
    mean = torch.tensor([1e-8, 1e-8, 1e6, 1e6, 3.0], requires_grad=True)
    theta = torch.tensor([1e-3, 1e8, 1e-3, 1e8, 1e8], requires_grad=True)
    x = torch.tensor([0.0, 0.0, 1e6, 0.0, 3.0])
    NegativeBinomial(mean, theta).log_prob(x).sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(theta.grad).all()


def test_nb_sample_moments():
    torch.manual_seed(1)
    d = NegativeBinomial(torch.tensor([0.5, 20.0]), torch.tensor([0.3, 4.0]))
    draws = d.sample((200_000,))
    np.testing.assert_allclose(draws.mean(0).numpy(), [0.5, 20.0], rtol=0.02)
    np.testing.assert_allclose(draws.var(0).numpy(), (d.mean + d.mean**2 / d.theta).numpy(), rtol=0.05)
    assert d.expand((3, 2)).log_prob(torch.ones(3, 2)).shape == (3, 2)


@pytest.mark.parametrize("gate_logit", [-30.0, -2.0, 0.0, 3.0, 30.0])
def test_zinb_matches_mixture_formula(gate_logit):
    mean, theta = 4.0, 2.5
    log_gate, log_no_gate = -np.logaddexp(0, -gate_logit), -np.logaddexp(0, gate_logit)
    log_nb = stats.nbinom.logpmf(COUNTS, theta, theta / (theta + mean))
    expected = np.where(COUNTS == 0, np.logaddexp(log_gate, log_no_gate + log_nb), log_no_gate + log_nb)
    d = ZeroInflatedNegativeBinomial(
        torch.tensor(mean, dtype=torch.float64), torch.tensor(theta, dtype=torch.float64),
        torch.tensor([gate_logit], dtype=torch.float64),
    )
    np.testing.assert_allclose(d.log_prob(torch.tensor(COUNTS, dtype=torch.float64)).numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize("mean", [1e-8, 0.3, 7.0, 1e3, 1e6])
def test_poisson_and_zip_match_scipy(mean):
    x = torch.tensor(COUNTS, dtype=torch.float64)
    poisson = get_likelihood("poisson", 8, library="none")
    h = torch.full((8,), math.log(mean), dtype=torch.float64)
    np.testing.assert_allclose(poisson(h).base_dist.log_prob(x).numpy(), stats.poisson.logpmf(COUNTS, mean), rtol=1e-10)
    zip_ = get_likelihood("zip", 8, library="none")
    gate = 0.2
    outputs = torch.cat([h, torch.full((8,), math.log(gate / (1 - gate)), dtype=torch.float64)])
    log_pmf = stats.poisson.logpmf(COUNTS, mean)
    expected = np.where(COUNTS == 0, np.logaddexp(np.log(gate), np.log1p(-gate) + log_pmf), np.log1p(-gate) + log_pmf)
    np.testing.assert_allclose(zip_(outputs).base_dist.log_prob(x).numpy(), expected, rtol=1e-9, atol=1e-15)


def test_observed_library_scales_softmax_means():
    torch.manual_seed(2)
    h = torch.randn(4, 6)
    library = torch.tensor([10.0, 200.0, 3.0, 1.0])
    for name in ["poisson", "constrained_poisson", "nb", "zip", "zinb"]:
        likelihood = get_likelihood(name, 6)
        outputs = torch.cat([h] * likelihood.num_outputs, -1)
        d = likelihood(outputs, library).base_dist
        mean = d.mean if name != "zip" and name != "zinb" else d.base_dist.mean
        np.testing.assert_allclose(mean.sum(-1).numpy(), library.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="library"):
        get_likelihood("nb", 6)(h)
    with pytest.raises(ValueError, match="constrained_poisson"):
        get_likelihood("constrained_poisson", 6, library="none")


def test_dispersion_per_gene_and_cell():
    per_gene = get_likelihood("nb", 5)
    assert per_gene.num_outputs == 1 and per_gene.log_inverse_dispersion.shape == (5,)
    per_cell = get_likelihood("zinb", 5, dispersion="gene-cell")
    assert per_cell.num_outputs == 3 and not list(per_cell.parameters())
    outputs = torch.zeros(2, 15)
    outputs[:, 5:10] = torch.log(torch.tensor(7.0))
    assert torch.allclose(per_cell(outputs, torch.ones(2)).base_dist.theta, torch.tensor(7.0))


def test_count_data_errors_name_the_problem():
    likelihood = get_likelihood("nb", 3)
    with pytest.raises(ValueError, match=r"non-negative integer counts, found -1.0 at \(cell, gene\) \(1, 2\)"):
        likelihood.check_data(torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, -1.0]]))
    with pytest.raises(ValueError, match="found 0.5"):
        likelihood.check_data(torch.tensor([[1.0, 0.5, 2.0]]))
    with pytest.raises(ValueError, match=r"a cell \(row 1 of the \d+ checked\) has no counts.*scanpy.pp.filter_cells"):
        likelihood.check_data(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]]))
    model, guide = VAE(3, 2, [4], likelihood="poisson"), NormalGuide(3, 2, [4])
    with pytest.raises(ValueError, match="NaN|nan"):
        train(model, guide, torch.tensor([[1.0, float("nan"), 2.0]]), epochs=1, progress=False)


def test_latent_library_needs_a_guide_that_samples_it():
    counts = torch.tensor([[1.0, 4.0, 2.0], [3.0, 0.0, 9.0]])
    model = VAE(3, 2, [4], likelihood=get_likelihood("nb", 3, library="latent").fit_library_prior(counts))
    assert model.likelihood.library_loc == pytest.approx(float(torch.log(torch.tensor([7.0, 12.0])).mean()))
    with pytest.raises(ValueError, match="'library' has no counterpart in the guide"):
        train(model, NormalGuide(3, 2, [4]), counts, epochs=1, progress=False)
    history = train(model, NormalGuide(3, 2, [4], latent_library=True), counts, epochs=2, progress=False)
    assert math.isfinite(history.records[-1]["loss"])
    unset = VAE(3, 2, [4], likelihood=get_likelihood("nb", 3, library="latent"))
    with pytest.raises(ValueError, match="fit_library_prior"):
        unset.sample(2)


def test_sparse_poisson_log_prob_equals_torch_for_any_broadcast():
    torch.manual_seed(3)
    rate = torch.rand(4, 1, 6, dtype=torch.float64) * 3
    x = torch.distributions.Poisson(torch.ones(5, 6)).sample().double()
    expected = torch.distributions.Poisson(rate).log_prob(x)
    assert torch.allclose(Poisson(rate).log_prob(x), expected)
    scalar = Poisson(torch.tensor(2.0)).log_prob(torch.tensor(3.0))
    assert torch.allclose(scalar, torch.tensor(2.0).log() * 3 - 2 - math.log(6))
    assert torch.allclose(NegativeBinomial(rate, torch.tensor(1e16, dtype=torch.float64)).log_prob(x), expected)

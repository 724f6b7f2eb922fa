"""proposal="auto": every certified estimate is right (against the exact marginal of probabilistic PCA), a proposal
too narrow to see its own error is never certified, and each stage is used only where the one before failed."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae.infer import log_likelihood
from pyrovae.infer.estimation import certify
from tests.infer.estimation.test_log_likelihood import SIGMA, Z_DIM, exact_log_marginal, make_guide, make_model, ppca


def _auto(model, guide, x, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return log_likelihood(model, guide, x, num_samples=500, proposal="auto", **options)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale_factor, shift", [(1.0, 0.0), (0.15, 0.0), (1.6, 0.4), (0.4, 1.0)])
def test_every_certified_estimate_is_within_three_standard_errors(seed, scale_factor, shift):
    W, mu, x = ppca(seed)
    result = _auto(make_model(W, mu), make_guide(W, mu, scale_factor, shift), x)
    exact = exact_log_marginal(W, mu, x)
    certified = result.certified
    assert certified.float().mean() >= 0.9
    error = (result.per_datum - exact).abs()
    assert (error[certified] <= 3 * result.mc_stderr[certified] + 0.02).all(), (error, result.reasons())
    assert set(result.estimator) <= set(certify.STAGES)
    assert result.cost["guide"]["data"] == 40 and result.cost["refined+defensive"]["data"] == 40
    assert not result.certified[[name == "guide" for name in result.estimator]].any()
    assert torch.equal(result.flagged, ~result.certified)


def test_a_far_too_narrow_guide_is_never_certified_by_itself():
    """Its weights look fine (k-hat < 0.7 for some data) from draws that never reach the mass it misses: the
    plain certificate passes them, the wider check of "auto" does not, and the refined stage gets them right."""
    W, mu, x = ppca(2)
    model, narrow = make_model(W, mu), make_guide(W, mu, scale_factor=0.15)
    exact = exact_log_marginal(W, mu, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = log_likelihood(model, narrow, x, num_samples=500)
    fooled = plain.certified & ((plain.per_datum - exact).abs() > 1.0)
    assert fooled.any()  # the weakness the check exists for
    result = _auto(model, narrow, x)
    assert "guide" not in result.estimator
    assert result.certified.all() and ((result.per_datum - exact).abs() < 0.1).all()
    summary = result.summary()
    assert summary["frac_certified"] == 1.0 and summary["estimators"] == {"refined+defensive": 40}


@pytest.mark.parametrize("scale_factor", [1e-2, 1e-4])
def test_a_guide_a_hundred_to_ten_thousand_times_too_narrow_is_estimated_right_by_the_refined_stage(scale_factor):
    """Adam's steps move a log scale by about their learning rate each: from a start 100 times too narrow the
    refinement stayed several times too narrow, its weights nearly constant over draws that never reach the
    posterior's mass, and "auto" certified 6 of 40 estimates up to 1.1 nats low (at 1/10,000, all 4 it certified,
    up to 9.4 nats). The encoder's start's spread is calibrated first (pyrovae.infer.estimation.calibration's
    SPREAD_FACTORS): every datum certified by the refined stage, and right."""
    W, mu, x = ppca(4)
    result = _auto(make_model(W, mu), make_guide(W, mu, scale_factor), x, seed=0)
    exact = exact_log_marginal(W, mu, x)
    assert result.certified.all() and result.estimator == ("refined+defensive",) * 40
    assert ((result.per_datum - exact).abs() <= 3 * result.mc_stderr + 0.02).all(), result.per_datum - exact


def _two_sites(seed: int, z_factor: float, l_factor: float):
    """PPCA's z beside a scalar latent l ~ N(0, 2^2) seen three times with noise 0.3 (a library size beside the
    cell's state, say), a posteriori independent: the model, a guide exact but for a factor on each site's spread,
    the data and the exact log-marginal."""
    W, mu, x = ppca(seed)
    generator = torch.Generator().manual_seed(100 + seed)
    l = 2.0 * torch.randn(40, 1, generator=generator, dtype=torch.float64)
    data = torch.cat([x, l + 0.3 * torch.randn(40, 3, generator=generator, dtype=torch.float64)], -1)
    covariance = 4.0 * torch.ones(3, 3, dtype=torch.float64) + 0.09 * torch.eye(3, dtype=torch.float64)
    exact = exact_log_marginal(W, mu, x) + dist.MultivariateNormal(torch.zeros(3, dtype=torch.float64),
                                                                   covariance).log_prob(data[:, -3:])
    precision = 1 / 4.0 + 3 / 0.09
    M_inv = torch.linalg.inv(W.T @ W + SIGMA**2 * torch.eye(Z_DIM, dtype=torch.float64))
    z_tril = torch.linalg.cholesky(SIGMA**2 * M_inv) * z_factor

    def model(data):
        with pyro.plate("data", data.shape[-2]):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z_DIM, dtype=data.dtype), 1.0).to_event(1))
            l = pyro.sample("l", dist.Normal(torch.zeros(1, dtype=data.dtype), 2.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + mu, SIGMA).to_event(1), obs=data[:, :-3])
            pyro.sample("y", dist.Normal(l.expand(*l.shape[:-1], 3), 0.3).to_event(1), obs=data[:, -3:])

    def guide(data):
        with pyro.plate("data", data.shape[-2]):
            pyro.sample("z", dist.MultivariateNormal((data[:, :-3] - mu) @ W @ M_inv.T, scale_tril=z_tril))
            loc = data[:, -3:].sum(-1, keepdim=True) / 0.09 / precision
            pyro.sample("l", dist.Normal(loc, l_factor / math.sqrt(precision)).to_event(1))

    return model, guide, data, exact


@pytest.mark.parametrize("z_factor, l_factor", [(1.0, 1e-2), (1e-2, 1e2)])
def test_a_guide_too_narrow_in_one_latent_site_of_two_is_estimated_right(z_factor, l_factor):
    """One factor for every site cannot correct a guide too narrow in one site and right (or too wide) in the
    other: "auto" certified 11 of 80 estimates up to 0.58 nats low (l at 1/100) and 2 of 80 up to 1.2 (z at 1/100,
    l at 100 times) with it alone. Each site's spread is calibrated in turn after the common factor."""
    model, guide, data, exact = _two_sites(0, z_factor, l_factor)
    result = _auto(model, guide, data, seed=0)
    assert result.certified.float().mean() >= 0.95
    error = (result.per_datum - exact)[result.certified]
    assert (error.abs() <= 3 * result.mc_stderr[result.certified] + 0.02).all(), error


@pytest.mark.parametrize("factor", [1e-2, 1e2])
def test_a_guide_too_narrow_or_too_wide_in_one_direction_is_estimated_right(factor):
    """A factor for the whole site cannot correct a guide right in one coordinate and far off in the other: "auto"
    certified 7 of 120 estimates up to 0.60 nats low (1/100 in one coordinate) and 10 of 120 up to 0.64 (100 times)
    with it alone. Each coordinate's spread is then read off the ELBO's slope along it."""
    W, mu, x = ppca(1)
    M_inv = torch.linalg.inv(W.T @ W + SIGMA**2 * torch.eye(Z_DIM, dtype=torch.float64))
    scale = torch.linalg.cholesky(SIGMA**2 * M_inv).diagonal() * torch.tensor([1.0, factor], dtype=torch.float64)

    def guide(x):  # mean-field, its second coordinate's scale off by the factor
        with pyro.plate("data", x.shape[-2]):
            pyro.sample("z", dist.Normal((x - mu) @ W @ M_inv.T, scale).to_event(1))

    result = _auto(make_model(W, mu), guide, x, seed=1)
    exact = exact_log_marginal(W, mu, x)
    assert result.certified.float().mean() >= 0.95
    error = (result.per_datum - exact)[result.certified]
    assert (error.abs() <= 3 * result.mc_stderr[result.certified] + 0.02).all(), error


def test_an_exact_guide_is_certified_by_the_refined_stage_without_ais():
    """The guide's weights never certify by themselves, even where the guide is exact: the refined stage's search
    for modes certifies them, and nothing goes on to AIS."""
    W, mu, x = ppca(3)
    result = _auto(make_model(W, mu), make_guide(W, mu), x, seed=1)
    # (the wider check's false alarms, about one datum in 600 here, would send a datum on to AIS: a cost, not an error)
    assert result.estimator == ("refined+defensive",) * 40 and result.certified.all()
    assert result.cost["refined+defensive"]["data"] == 40 and result.cost["ais"]["data"] == 0
    # the refined stage draws REFINED_DRAWS x 500 weights, and each datum's Monte Carlo error is read against them
    # (against 500, an effective sample size above 500 would give an error of 0)
    assert (result.draws == certify.REFINED_DRAWS * 500).all() and (result.ess > 500).any()
    assert (result.mc_stderr > 0).all()
    assert result.reasons() == ["certified"] * 40
    exact = exact_log_marginal(W, mu, x)
    assert ((result.per_datum - exact).abs() <= 3 * result.mc_stderr + 0.02).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_guide_on_the_wrong_mode_is_never_certified(seed):
    """A 1-D latent with a decoder in z^2 whose guide sits at -sqrt(x) for every datum (the minor mode for about half
    of them): its weights are tame (k-hat < 0.7) and 0.1-9.6 nats low, and a copy three times wider does not reach the
    other mode. An "auto" that let the guide's weights certify passed all of them; now every certified estimate is
    within its error of the quadrature."""
    from tests.infer.estimation.test_multimodal_proposals import _square_toy

    model, guide, x, exact, two_modes = _square_toy(seed, 30)
    pyro.set_rng_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = log_likelihood(model, guide, x, num_samples=500)
    assert (plain.certified & (exact - plain.per_datum > 1.0)).sum() >= 3, "the toy must fool the guide's weights"
    result = _auto(model, guide, x)
    error = (result.per_datum - exact).abs()
    certified = result.certified
    assert certified.float().mean() >= 0.8 and "guide" not in [result.estimator[i] for i in range(30) if certified[i]]
    assert (error[certified] <= 3 * result.mc_stderr[certified] + result.mc_stderr[certified].square() + 0.02).all(), \
        error[certified]


def test_ais_is_the_last_stage_and_certified_from_its_chains(monkeypatch):
    """With importance sampling made unable to certify, every datum goes to AIS, whose estimate over 128 chains is
    certified by the same rule and is right."""
    original = certify._refined_stage

    def never_certified(*args, **kwargs):
        estimate, certified = original(*args, **kwargs)
        return estimate, torch.zeros_like(certified)

    monkeypatch.setattr(certify, "_refined_stage", never_certified)
    W, mu, x = ppca(4)
    x = x[:12]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # (at 40 steps about one datum in 24 had an uncertified AIS estimate: the test's seed decided the outcome)
        pyro.set_rng_seed(0)
        result = certify.auto_log_likelihood(make_model(W, mu), make_guide(W, mu, 0.5, 0.5), x, num_samples=200,
                                             ais_chains=128, ais_steps=100)
    exact = exact_log_marginal(W, mu, x)
    assert result.estimator == ("ais",) * 12 and result.cost["ais"]["data"] == 12
    assert result.certified.all()
    assert ((result.per_datum - exact).abs() <= 3 * result.mc_stderr + 0.02).all()


def test_the_certificate_names_its_reasons():
    W, mu, x = ppca(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        narrow = log_likelihood(make_model(W, mu), make_guide(W, mu, scale_factor=0.05), x, num_samples=500)
    reasons = narrow.reasons()
    assert any(r.startswith("k-hat") for r in reasons) and not narrow.certified.all()
    assert all(r.startswith("certified by its weights alone") == bool(c) for r, c in zip(reasons, narrow.certified))


def _everything_to_ais(monkeypatch):
    """No importance-sampling stage certifies: every datum goes on to AIS."""
    original = certify._refined_stage

    def uncertified(*args, **kwargs):
        estimate, certified = original(*args, **kwargs)
        return estimate, torch.zeros_like(certified)

    monkeypatch.setattr(certify, "_refined_stage", uncertified)


@pytest.mark.parametrize("gap", [0.02, 3.0])
def test_the_ais_schedule_is_checked_by_bidirectional_monte_carlo(monkeypatch, gap):
    """The schedule's BDMC gap on simulated data decides whether AIS certifies (that a short schedule shows a wide
    gap is tested in test_bdmc.py); here the gap is set, to test what auto does with it."""
    from pyrovae import make_pair
    from pyrovae.infer.estimation.bdmc import BDMC

    _everything_to_ais(monkeypatch)
    calls = []

    def fake_bdmc(model, guide, **options):
        calls.append(options)
        return BDMC(torch.zeros(16), torch.full((16,), gap), torch.zeros(16, 6), options["num_steps"])

    monkeypatch.setattr(certify, "bdmc", fake_bdmc)
    torch.manual_seed(0)
    model, guide = make_pair("vae", 6, 2, (8,), likelihood="gaussian")
    result = certify.auto_log_likelihood(model, guide, torch.randn(8, 6), num_samples=100, ais_chains=64, ais_steps=30)
    assert result.cost["ais"]["data"] == 8 and len(calls) == 1 and calls[0]["num_steps"] == 30
    by_ais = [name == "ais" for name in result.estimator]
    assert sum(by_ais) >= 4  # the others kept the refined stage's estimate, whose k-hat was lower
    assert result.schedule_gap == pytest.approx(gap) and result.cost["ais"]["schedule_gap"] == pytest.approx(gap)
    if gap > certify.SCHEDULE_MAX_GAP:  # far from exact: no AIS estimate is certified, and the reason says why
        assert not result.certified.any()
        reasons = result.reasons()
        assert all("the AIS schedule is 3.00 nats from exact" in reasons[i] for i in range(8) if by_ais[i])
    else:
        assert result.certified.float().mean() > 0.5


def test_a_plain_model_leaves_the_schedule_unchecked(monkeypatch):
    _everything_to_ais(monkeypatch)
    W, mu, x = ppca(4)
    result = certify.auto_log_likelihood(make_model(W, mu), make_guide(W, mu, 1.5), x[:6], num_samples=100,
                                         ais_chains=64, ais_steps=20)
    assert result.cost["ais"]["data"] == 6 and result.schedule_gap is None  # AIS ran on all, its schedule unchecked
    reasons = [why for why, name in zip(result.reasons(), result.estimator) if name == "ais"]
    assert any(why.startswith("certified by its weights (the AIS schedule was not checked") for why in reasons)
    assert not any(why == "certified" for why in reasons)


def test_counts_scaled_by_their_observed_library_leave_the_schedule_unchecked_without_a_warning(monkeypatch):
    """Their data cannot be simulated (the library is the data's own total): no BDMC is tried, and the reasons say
    why; a simulation that fails for another reason is warned of."""
    from pyrovae import make_pair

    _everything_to_ais(monkeypatch)
    monkeypatch.setattr(certify, "bdmc", lambda *a, **k: pytest.fail("bdmc was tried"))
    torch.manual_seed(0)
    model, guide = make_pair("vae", 8, 2, (8,), likelihood="nb")
    counts = torch.poisson(torch.full((6, 8), 4.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = certify.auto_log_likelihood(model, guide, counts, num_samples=50, ais_chains=16, ais_steps=5)
    assert result.cost["ais"]["data"] == 6 and result.schedule_gap is None


def test_a_failed_simulation_is_warned_of(monkeypatch):
    from pyrovae import make_pair

    _everything_to_ais(monkeypatch)

    def failing(*args, **options):
        raise ValueError("a simulation that failed")

    monkeypatch.setattr(certify, "bdmc", failing)
    torch.manual_seed(0)
    model, guide = make_pair("vae", 6, 2, (8,), likelihood="gaussian")
    with pytest.warns(UserWarning, match=r"could not check the AIS schedule .*\(a simulation that failed\)"):
        result = certify.auto_log_likelihood(model, guide, torch.randn(6, 6), num_samples=50, ais_chains=16,
                                             ais_steps=5)
    assert result.schedule_gap is None


def test_a_model_with_covariates_has_its_schedule_checked_on_data_of_those_covariates(monkeypatch):
    """The schedule went unchecked, silently, for every model with covariates (bdmc simulated without them and
    failed): it simulates data of the covariates of the first cells scored now."""
    from pyrovae import make_pair

    _everything_to_ais(monkeypatch)
    real, calls = certify.bdmc, []

    def spy(model, guide, **options):
        calls.append(options)
        return real(model, guide, **options)

    monkeypatch.setattr(certify, "bdmc", spy)
    torch.manual_seed(0)
    model, guide = make_pair("vae", 6, 2, (8,), likelihood="gaussian", categorical=(3,))
    x, cat = torch.randn(20, 6), torch.randint(0, 3, (20, 1))
    result = certify.auto_log_likelihood(model, guide, (x, cat), num_samples=50, ais_chains=16, ais_steps=5,
                                         batch_size=10)
    assert result.schedule_gap is not None and math.isfinite(result.schedule_gap)
    assert len(calls) == 1 and torch.equal(calls[0]["cat"], cat[:16]) and calls[0]["cont"] is None


def test_an_uncertified_stage_with_infinite_k_hat_never_displaces_the_estimate_before_it(monkeypatch):
    """A refined proposal degenerate enough that its own density underflows at its draws gave weights of +1e20 and
    k-hat = inf (a GMVAE on CellBench counts): such an estimate is no estimate, and the guide's lower bound stays."""
    original = certify._refined_stage

    def broken_second_stage(*args, **kwargs):  # the refined stage: weights blown up, k-hat inf
        estimate, certified = original(*args, **kwargs)
        estimate.per_datum[:] = 1e20
        estimate.khat[:] = float("inf")
        return estimate, torch.zeros_like(certified)

    monkeypatch.setattr(certify, "_refined_stage", broken_second_stage)
    monkeypatch.setattr(certify, "_ais", lambda *args: (_ for _ in ()).throw(NotImplementedError))
    W, mu, x = ppca(5)
    result = _auto(make_model(W, mu), make_guide(W, mu, 0.5, 0.5), x[:10])
    assert result.estimator == ("guide",) * 10 and (result.per_datum < 0).all()
    assert result.cost["refined+defensive"]["data"] == 10  # tried, and not taken
    assert not result.certified.any()

"""What the log-likelihood estimators refuse, flag and certify (issue 24): a point-mass guide, collapsed draws,
NaN weights, knobs out of range; the per-datum Monte Carlo error against the spread of repeated estimates."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyrovae.guides import DeltaGuide, FlowGuide
from pyrovae.models import VAE

from pyrovae.infer import DefensiveProposal, RefinedProposal, ais_log_likelihood, evaluate, log_likelihood
from tests.infer.estimation.test_log_likelihood import X_DIM, Z_DIM, exact_log_marginal, make_guide, make_model, ppca


@pytest.mark.parametrize("proposal", ["guide", "defensive", "refined", "refined+defensive"])
def test_a_point_mass_guide_is_refused_by_every_proposal(proposal):
    """The AE's q = Delta has no density: its 'estimate' would be the joint log p(x, f(x)) with k-hat -inf."""
    torch.manual_seed(0)
    model, guide = VAE(12, 3, (8,)), DeltaGuide(12, 3, (8,))
    x = torch.rand(10, 12).round()
    with pytest.raises(ValueError, match=r"point mass.*refit"):
        log_likelihood(model, guide, x, num_samples=8, proposal=proposal)


def test_a_plain_point_mass_guide_is_refused_and_annealing_from_it_too():
    W, mu, x = ppca(0)
    model = make_model(W, mu)

    def delta_guide(x):
        with pyro.plate("data", x.shape[-2]):
            pyro.sample("z", dist.Delta(x[..., :Z_DIM], event_dim=1))

    with pytest.raises(ValueError, match="point mass"):
        log_likelihood(model, delta_guide, x, num_samples=1)  # refused even where a single draw cannot tell
    with pytest.raises(ValueError, match="point mass"):
        ais_log_likelihood(model, delta_guide, x, num_chains=2, num_steps=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_draws_that_collapse_onto_one_point_are_flagged_not_trusted(dtype):
    """A Normal whose scale underflowed below the dtype's resolution draws one value: its constant weights must
    not read as a perfect guide (k-hat -inf); those data get k-hat inf and a warning, the others are untouched."""
    W, mu, x = (t.to(dtype) for t in ppca(0))
    model = make_model(W, mu)
    scale = torch.full((x.shape[0], 1), 0.5, dtype=dtype)
    scale[:5] = torch.finfo(dtype).tiny  # below the resolution of a location near 3

    def guide(x):
        with pyro.plate("data", x.shape[-2]):
            pyro.sample("z", dist.Normal(torch.full((x.shape[0], Z_DIM), 3.0, dtype=dtype), scale).to_event(1))

    with pytest.warns(UserWarning, match="same point"):
        result = log_likelihood(model, guide, x, num_samples=50)
    assert torch.isinf(result.khat[:5]).all() and (result.khat[:5] > 0).all()
    assert torch.isfinite(result.khat[5:]).all() and result.flagged[:5].all()


def test_nan_weights_count_as_zero_and_flag_their_datum():
    W, mu, x = ppca(1)

    def model(x):  # as make_model, without validation: a NaN latent reaches the weights
        with pyro.plate("data", x.shape[-2]):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z_DIM, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + mu, 0.5, validate_args=False).to_event(1), obs=x)

    def guide(x):  # the exact posterior, except a NaN location for datum 0
        loc = torch.zeros(x.shape[0], Z_DIM, dtype=x.dtype)
        loc[0] = math.nan
        with pyro.plate("data", x.shape[-2]):
            pyro.sample("z", dist.Normal(loc, 1.0, validate_args=False).to_event(1))

    with pytest.warns(UserWarning, match="NaN"):
        result = log_likelihood(model, guide, x, num_samples=100)
    assert result.khat[0] == math.inf and result.flagged[0] and result.per_datum[0] == -math.inf
    assert torch.isfinite(result.khat[1:]).all()


def test_refined_proposal_knobs_out_of_range_are_refused():
    for kwargs, match in [({"steps": 0}, "steps"), ({"steps": -3}, "steps"), ({"steps": 2.5}, "steps"),
                          ({"lr": 0.0}, "lr"), ({"lr": -0.1}, "lr"), ({"lr": math.nan}, "lr"),
                          ({"lr": math.inf}, "lr"), ({"num_particles": 0}, "num_particles"),
                          ({"starts": 0}, "starts"), ({"candidates": 0}, "candidates"),
                          ({"starts": 5, "candidates": 3}, "candidates"), ({"objective": "kl"}, "objective")]:
        with pytest.raises(ValueError, match=match):
            RefinedProposal(**kwargs)
    for kwargs, match in [({"weight": 0.0}, "weight"), ({"weight": 1.0}, "weight"), ({"scale": 0.5}, "scale"),
                          ({"df": 0.0}, "df"), ({"weight": math.nan}, "weight")]:
        with pytest.raises(ValueError, match=match):
            DefensiveProposal(**kwargs)
    W, mu, x = ppca(0)
    with pytest.raises(ValueError, match="num_samples"):
        log_likelihood(make_model(W, mu), make_guide(W, mu), x, num_samples=0)


def test_full_covariance_of_a_flow_guide_is_refused():
    """A flow has no full-covariance member (a spherical guide has: the projected normal,
    tests/infer/estimation/test_sphere_refinement.py)."""
    torch.manual_seed(0)
    model, guide = VAE(12, 3, (8,)), FlowGuide(12, 3, (8,))
    x = torch.rand(6, 12).round()
    with pytest.raises(ValueError, match=r"full_covariance.*TransformedDistribution.*full_covariance=False"):
        log_likelihood(model, guide, x, num_samples=4, proposal=RefinedProposal(full_covariance=True, steps=2))
    with pytest.raises(ValueError, match="full_covariance"):
        log_likelihood(model, guide, x, num_samples=4, proposal="refined-full")


@pytest.mark.parametrize("max_data", [0, -1, 2.5, True])
def test_evaluate_refuses_max_data_out_of_range(max_data):
    model, guide = VAE(12, 3, (8,)), DeltaGuide(12, 3, (8,))
    with pytest.raises(ValueError, match="max_data"):
        evaluate(model, guide, torch.rand(6, 12).round(), max_data=max_data)


def test_monte_carlo_stderr_matches_the_spread_of_repeated_estimates():
    """The per-datum delta-method error against the empirical standard deviation over 40 repeats, for a guide
    1.6 times too wide and shifted (k-hat < 0.5), and the effective sample size within (1, S]."""
    W, mu, x = ppca(3)
    x = x[:8]
    model, guide = make_model(W, mu), make_guide(W, mu, scale_factor=1.6, shift=0.3)
    pyro.set_rng_seed(0)
    runs = [log_likelihood(model, guide, x, num_samples=200) for _ in range(40)]
    spread = torch.stack([r.per_datum for r in runs]).std(0)
    predicted = torch.stack([r.mc_stderr for r in runs]).mean(0)
    assert ((predicted / spread) - 1).abs().max() < 0.35, (predicted, spread)
    ess = runs[0].ess
    assert ((ess > 1) & (ess <= 200)).all()
    bias = (torch.stack([r.per_datum for r in runs]).mean(0) - exact_log_marginal(W, mu, x)).abs()
    assert (bias < 3 * spread / math.sqrt(40) + predicted.square()).all()  # unbiased up to the log's O(var) bias
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runs[0].num_modes is None and not runs[0].flagged.any() and "frac_multimodal" not in runs[0].summary()
    assert X_DIM == x.shape[1]

"""Bidirectional Monte Carlo against the exact marginal of probabilistic PCA: the forward bound below it, the reverse
bound above it, a gap that closes as the schedule grows, and a short schedule that shows as a wide gap."""

import pytest
import torch

from pyrovae import make_pair
from pyrovae.infer.estimation.bdmc import bdmc
from tests.infer.estimation.test_log_likelihood import (
    SIGMA,
    X_DIM,
    Z_DIM,
    exact_log_marginal,
    make_guide,
    make_model,
    ppca,
)


def simulated(seed=0, num_data=16):
    W, mu, _ = ppca(seed)
    generator = torch.Generator().manual_seed(100 + seed)
    z = torch.randn(num_data, Z_DIM, generator=generator, dtype=torch.float64)
    x = z @ W.T + mu + SIGMA * torch.randn(num_data, X_DIM, generator=generator, dtype=torch.float64)
    return W, mu, x, z


@pytest.mark.parametrize("seed", [0])
def test_the_bounds_bracket_the_exact_marginal_and_close_with_more_steps(seed):
    W, mu, x, z = simulated(seed)
    exact = exact_log_marginal(W, mu, x)
    gaps = []
    for steps in (2, 20, 200):
        torch.manual_seed(seed)
        result = bdmc(make_model(W, mu), make_guide(W, mu, 3.0, 1.0), num_chains=16, num_steps=steps, x=x,
                      latents={"z": z})
        # stochastic bounds: on average over the data, with a little Monte Carlo slack
        assert float((result.lower - exact).mean()) < 0.05 and float((result.upper - exact).mean()) > -0.05
        gaps.append(result.mean_gap)
    assert gaps[0] > 2.0 > gaps[1] > gaps[2] and gaps[2] < 0.2, gaps  # a 2-step schedule is far from exact


def test_an_exact_start_has_no_gap():
    W, mu, x, z = simulated(2)
    result = bdmc(make_model(W, mu), make_guide(W, mu), num_chains=8, num_steps=5, x=x, latents={"z": z})
    torch.testing.assert_close(result.lower, exact_log_marginal(W, mu, x), atol=1e-6, rtol=0)
    torch.testing.assert_close(result.upper, result.lower, atol=1e-6, rtol=0)


def test_a_pyrovae_model_is_simulated_from_its_prior_predictive():
    torch.manual_seed(0)
    model, guide = make_pair("vae", 12, 2, (8,), likelihood="gaussian")
    result = bdmc(model, guide, num_data=6, num_chains=8, num_steps=30)
    assert result.x.shape == (6, 12) and result.gap.shape == (6,)
    assert torch.isfinite(result.gap).all() and result.mean_gap > -0.5


def test_a_plain_model_needs_its_data_and_latents():
    W, mu, x, _ = simulated()
    with pytest.raises(ValueError, match="pass x and the latents"):
        bdmc(make_model(W, mu), make_guide(W, mu))
    with pytest.raises(ValueError, match="needs the latents that generated x"):
        bdmc(make_model(W, mu), make_guide(W, mu), x=x)


def test_a_model_with_covariates_simulates_data_of_the_covariates_given():
    torch.manual_seed(0)
    model, guide = make_pair("vae", 12, 2, (8,), likelihood="gaussian", categorical=(3,), continuous=1)
    with pytest.raises(ValueError, match="built with covariates: pass bdmc the covariates of the data to simulate"):
        bdmc(model, guide, num_data=6, num_chains=8, num_steps=5)
    cat, cont = torch.randint(0, 3, (5, 1)), torch.randn(5, 1)
    result = bdmc(model, guide, num_chains=8, num_steps=20, cat=cat, cont=cont)
    assert result.x.shape == (5, 12) and torch.isfinite(result.gap).all() and result.mean_gap > -0.5
    with pytest.raises(ValueError, match="one row per datum each, got 5 and 4 rows"):
        bdmc(model, guide, cat=cat, cont=cont[:4])

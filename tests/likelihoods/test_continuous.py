"""Likelihoods against scipy.stats and closed forms."""

import numpy as np
import pytest
import torch
from scipy import stats

from pyrovae.likelihoods import Gaussian, Likelihood, get_likelihood, likelihood_names, register_likelihood


def test_bernoulli_matches_scipy():
    likelihood = get_likelihood("bernoulli", 6)
    logits = torch.randn(4, 6, dtype=torch.float64)
    x = (torch.rand(4, 6) < 0.5).double()
    expected = stats.bernoulli(torch.sigmoid(logits).numpy()).logpmf(x.numpy()).sum(-1)
    np.testing.assert_allclose(likelihood(logits).log_prob(x).numpy(), expected, rtol=1e-10)


def test_gaussian_fixed_inverse_variance_matches_scipy():
    likelihood = get_likelihood(Gaussian(inverse_variance=500.0), 3)
    loc, x = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    expected = stats.norm(loc.numpy(), 500.0**-0.5).logpdf(x.numpy()).sum(-1)
    np.testing.assert_allclose(likelihood(loc).log_prob(x).numpy(), expected, rtol=1e-10)
    assert not list(likelihood.parameters())


def test_gaussian_sigmoid_link_matches_scipy():
    likelihood = get_likelihood(Gaussian(scale=0.3, link="sigmoid"), 4)
    outputs, x = torch.randn(2, 4, dtype=torch.float64), torch.rand(2, 4, dtype=torch.float64)
    expected = stats.norm(1 / (1 + np.exp(-outputs.numpy())), 0.3).logpdf(x.numpy()).sum(-1)
    np.testing.assert_allclose(likelihood(outputs).log_prob(x).numpy(), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="link must be one of"):
        Gaussian(link="exp")
    with pytest.raises(TypeError, match="positional"):  # read as scale 10 where get_likelihood takes the width
        Gaussian(10, link="sigmoid")


def test_gaussian_learned_scale_is_a_parameter():
    likelihood = get_likelihood("gaussian", 3)
    assert [p.shape for p in likelihood.parameters()] == [(3,)]
    assert torch.allclose(likelihood.scale, torch.ones(3))
    likelihood.raw_scale.data.fill_(-50.0)
    assert torch.allclose(likelihood.scale, torch.full((3,), 1e-3))


def test_continuous_bernoulli_normalises():
    likelihood = get_likelihood("continuous_bernoulli", 1)
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64).unsqueeze(-1)
    for logit in (-3.0, 0.0, 0.4, 5.0):
        density = likelihood(torch.full_like(grid, logit)).log_prob(grid).exp()
        assert torch.trapezoid(density, grid.squeeze(-1)).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        likelihood.check_data(torch.tensor([[1.5]]))


def test_registry_and_errors():
    assert {"bernoulli", "gaussian", "continuous_bernoulli"} <= set(likelihood_names())

    @register_likelihood("test_laplace")
    class Laplace(Likelihood):
        def forward(self, outputs):
            import pyro.distributions as dist

            return dist.Laplace(outputs, 1.0).to_event(1)

    assert isinstance(get_likelihood("test_laplace", 2), Laplace)
    with pytest.raises(ValueError, match="needs 1 decoder output"):
        get_likelihood("bernoulli", 4)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="either scale or inverse_variance"):
        Gaussian(scale=1.0, inverse_variance=1.0)
    with pytest.raises(ValueError, match="bound to x_dim=2"):
        get_likelihood(get_likelihood("gaussian", 2), 3)

"""pyrovae's MultivariateNormal against Pyro's (torch's): the same draws from the same noise, the same gradients, in
every broadcasting of the Cholesky factors against the draws, and the right covariance by Monte Carlo."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

from pyrovae.distributions import MultivariateNormal, widen
from pyrovae.infer.estimation.family_parameters import as_full_covariance, rebuilt, unconstrained


def _factor(*batch: int, d: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(*batch, d, d, generator=generator, dtype=torch.float64)
    return torch.linalg.cholesky(a @ a.mT / d + 0.5 * torch.eye(d, dtype=torch.float64))


CASES = [  # (loc's batch shape, scale_tril's batch shape, sample shape, d)
    ((5,), (5,), (8,), 3),
    ((5,), (), (8,), 4),  # one factor shared by the batch
    ((4, 5), (5,), (3, 2), 2),  # a factor per column, broadcast along the rows
    ((4, 1), (1, 5), (6,), 3),  # both broadcast
    ((), (), (7,), 40),
    ((16,), (16,), (), 40),  # no sample shape
    ((2, 3), (2, 3), (4,), 1),
    ((), (5,), (3,), 2),  # a batch of factors about one mean
]


@pytest.mark.parametrize("loc_batch,tril_batch,sample_shape,d", CASES)
def test_draws_and_gradients_are_torchs(loc_batch, tril_batch, sample_shape, d):
    loc = torch.randn(*loc_batch, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    tril = _factor(*tril_batch, d=d, seed=2)
    ours_params = [loc.clone().requires_grad_(), tril.clone().requires_grad_()]
    torch_params = [loc.clone().requires_grad_(), tril.clone().requires_grad_()]
    ours = MultivariateNormal(ours_params[0], scale_tril=ours_params[1])
    theirs = dist.MultivariateNormal(torch_params[0], scale_tril=torch_params[1])
    assert ours.batch_shape == theirs.batch_shape and ours.event_shape == theirs.event_shape
    torch.manual_seed(3)
    a = ours.rsample(sample_shape)
    torch.manual_seed(3)
    b = theirs.rsample(sample_shape)
    assert a.shape == b.shape == torch.Size(sample_shape) + theirs.batch_shape + (d,)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    weights = torch.randn(a.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads = torch.autograd.grad((weights * a).sum() + ours.log_prob(a.detach()).sum(), ours_params)
    expected = torch.autograd.grad((weights * b).sum() + theirs.log_prob(b.detach()).sum(), torch_params)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_float32_draws_agree_with_torchs_to_rounding():
    loc = torch.randn(64, 40)
    tril = _factor(64, d=40, seed=5).float()
    torch.manual_seed(0)
    a = MultivariateNormal(loc, scale_tril=tril).rsample((8,))
    torch.manual_seed(0)
    b = dist.MultivariateNormal(loc, scale_tril=tril).rsample((8,))
    torch.testing.assert_close(a, b)


def test_covariance_by_monte_carlo():
    """The draws' covariance is L L^T: each entry within 5 standard errors of it (the error of a sample covariance
    entry is sqrt((S_ii S_jj + S_ij^2) / n))."""
    d, n = 5, 200_000
    tril = _factor(d=d, seed=6)
    sigma = tril @ tril.T
    torch.manual_seed(7)
    draws = MultivariateNormal(torch.zeros(d, dtype=torch.float64), scale_tril=tril).sample((n,))
    empirical = torch.cov(draws.T)
    error = ((sigma.diagonal()[:, None] * sigma.diagonal()[None, :] + sigma**2) / n).sqrt()
    assert ((empirical - sigma).abs() < 5 * error).all()


def test_expand_and_widen_keep_the_class():
    law = MultivariateNormal(torch.zeros(3, 2), scale_tril=torch.eye(2))
    expanded = law.expand((4, 3))
    assert type(expanded) is MultivariateNormal and expanded.batch_shape == (4, 3)
    assert expanded.rsample((2,)).shape == (2, 4, 3, 2)
    wide = widen(dist.MultivariateNormal(torch.zeros(3, 2), scale_tril=torch.eye(2)), 2.0)
    assert type(wide) is MultivariateNormal
    torch.testing.assert_close(wide.covariance_matrix, 4 * torch.eye(2).expand(3, 2, 2))


def test_refinement_builds_it():
    """A diagonal Gaussian guide, and a full-covariance one of torch's, are refined as this class: the same law."""
    diagonal = dist.Normal(torch.zeros(3, 2), torch.ones(3, 2)).to_event(1)
    full = as_full_covariance(diagonal, "z")
    assert type(full) is MultivariateNormal
    assert type(rebuilt(full, unconstrained(full))) is MultivariateNormal
    given = dist.MultivariateNormal(torch.zeros(3, 2), scale_tril=_factor(3, d=2, seed=8).float())
    converted = as_full_covariance(given, "z")
    assert type(converted) is MultivariateNormal
    value = torch.randn(3, 2)
    torch.testing.assert_close(converted.log_prob(value), given.log_prob(value))


def test_traced_products_are_the_eager_ones_without_tracer_warnings():
    """Under torch.jit.trace (JitTrace_ELBO), where sizes are tensors, the factors broadcast against the points: the
    same products and triangular solves, and no TracerWarning from grouping the points by size."""
    import warnings

    from pyrovae.distributions.shapes import per_factor

    tril = _factor(4, d=3, seed=9).float()
    points = torch.randn(5, 4, 3)
    solve = lambda a, b: torch.linalg.solve_triangular(a, b, upper=False)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        for apply in (torch.matmul, solve):
            function = lambda a, b, apply=apply: per_factor(apply, a, b, torch.Size([5, 4]))  # noqa: E731
            traced = torch.jit.trace(function, (tril, points), check_trace=False)
            torch.testing.assert_close(traced(tril, points), function(tril, points))
        law = lambda loc, a: MultivariateNormal(loc, scale_tril=a, validate_args=False).rsample((5,))  # noqa: E731
        assert torch.jit.trace(law, (torch.zeros(4, 3), tril), check_trace=False)(torch.zeros(4, 3), tril).shape \
            == (5, 4, 3)

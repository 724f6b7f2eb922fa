"""Shapes of the spherical distributions (issue 24): the (n, 1) concentration layout of s-vae-pytorch, infer_shapes
agreeing with the constructor, zero-size sample and batch shapes, and expand refusing what it cannot broadcast to."""

from __future__ import annotations

import pytest
import torch

from pyrovae.distributions import DefensiveMixture, HypersphericalUniform, PowerSpherical, VonMisesFisher, widen
from pyrovae.distributions.sphere import concentration_batch_shape

FAMILIES = [VonMisesFisher, PowerSpherical]


def _loc(*shape, dtype=torch.float64):
    raw = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=dtype)
    return raw / raw.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("m", [2, 3, 5])
def test_a_concentration_of_shape_n_by_1_is_one_per_row(family, m):
    """(n, 1) with loc (n, m) was a batch of (n, n); it is the batch of n that (n,) gives, with the same density."""
    n = 4
    loc, kappa = _loc(n, m), torch.linspace(0.5, 8.0, n, dtype=torch.float64)
    column, flat = family(loc, kappa.unsqueeze(-1)), family(loc, kappa)
    assert column.batch_shape == flat.batch_shape == (n,) and column.event_shape == (m,)
    torch.testing.assert_close(column.concentration, kappa)
    z = flat.sample((3,))
    torch.testing.assert_close(column.log_prob(z), flat.log_prob(z))
    assert column.rsample((2,)).shape == (2, n, m)
    # the rule with more batch dimensions, and its escape to an outer product
    assert family(_loc(2, n, m), torch.ones(2, n, 1, dtype=torch.float64)).batch_shape == (2, n)
    assert family(_loc(n, m), torch.ones(3, n, 1, dtype=torch.float64)).batch_shape == (3, n)
    assert family(_loc(n, m)[None], torch.ones(3, 1, dtype=torch.float64)).batch_shape == (3, n)
    assert family(_loc(m), torch.ones(1, dtype=torch.float64)).batch_shape == ()


@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_that_do_not_broadcast_are_named(family):
    with pytest.raises(ValueError, match=r"concentration of shape \(3,\) does not broadcast.*shape \(4,\) or \(4, 1\)"):
        family(_loc(4, 5), torch.ones(3, 1, dtype=torch.float64))


LOC_AND_CONCENTRATION_SHAPES = [
    ((5,), ()), ((5,), (1,)), ((5,), (3,)), ((4, 5), ()), ((4, 5), (4,)), ((4, 5), (4, 1)), ((4, 5), (1,)),
    ((4, 5), (2, 4)), ((4, 5), (2, 4, 1)), ((1, 4, 5), (3, 1)), ((2, 1, 5), (3,)), ((2, 1, 5), (2, 3, 1)),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("loc_shape, concentration_shape", LOC_AND_CONCENTRATION_SHAPES)
def test_infer_shapes_agrees_with_the_constructor(family, loc_shape, concentration_shape):
    d = family(_loc(*loc_shape), torch.ones(concentration_shape, dtype=torch.float64))
    assert family.infer_shapes(loc=loc_shape, concentration=concentration_shape) == (d.batch_shape, d.event_shape)
    assert concentration_batch_shape(loc_shape, concentration_shape) == d.batch_shape
    assert d.sample().shape == d.batch_shape + d.event_shape


def test_uniform_infer_shapes_and_expand():
    assert HypersphericalUniform.infer_shapes(dim=4, batch_shape=(2,)) == ((2,), (4,))
    with pytest.raises(NotImplementedError, match="infer_shapes\\(dim=m"):
        HypersphericalUniform.infer_shapes()
    u = HypersphericalUniform(3, batch_shape=(2,))
    for bad in [(3,), (2, 3), (0,)]:
        with pytest.raises(ValueError, match=r"batch shape \(2,\) cannot be expanded"):
            u.expand(bad)
    assert u.expand((5, 2)).batch_shape == (5, 2)
    assert HypersphericalUniform(3, batch_shape=(1,)).expand((4, 3)).sample().shape == (4, 3, 3)


@pytest.mark.parametrize("m", [2, 3, 4, 10])
@pytest.mark.parametrize("family", FAMILIES)
def test_zero_size_samples_and_batches_are_empty(family, m):
    """VonMisesFisher(...).rsample((0,)) raised a NameError inside its sampler (m != 3)."""
    kappa = torch.tensor([1.0, 30.0], dtype=torch.float64, requires_grad=True)
    d = family(_loc(2, m), kappa)
    for sample_shape in [(0,), (0, 3), (3, 0)]:
        z = d.rsample(sample_shape)
        assert z.shape == sample_shape + (2, m) and z.dtype == torch.float64
    z = d.rsample((0,))
    (grad,) = torch.autograd.grad(z.sum(), kappa, allow_unused=True)
    assert grad is None or torch.equal(grad, torch.zeros_like(kappa))
    empty = family(_loc(2, m)[:0], kappa[:0])
    assert empty.rsample((3,)).shape == (3, 0, m) and empty.log_prob(empty.sample()).shape == (0,)
    assert d.expand((0, 2)).sample((2,)).shape == (2, 0, 2, m)


def test_zero_size_shapes_for_the_uniform_and_the_mixture():
    assert HypersphericalUniform(4, batch_shape=(2,)).rsample((0,)).shape == (0, 2, 4)
    q = VonMisesFisher(_loc(2, 6), torch.tensor([2.0, 9.0], dtype=torch.float64))
    mixture = DefensiveMixture(q, widen(q), 0.2)
    assert mixture.sample((0,)).shape == (0, 2, 6) and mixture.expand((0, 2)).sample().shape == (0, 2, 6)

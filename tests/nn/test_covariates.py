"""The covariates' encoding: one-hot codes then continuous values, and the conditional MLP that takes them."""

import math

import pytest
import torch

from pyrovae.nn.covariates import ConditionalMLP, Covariates


def test_covariate_features_are_one_hot_codes_then_continuous_values():
    covariates = Covariates((3, 2), 1)
    cat = torch.tensor([[2, 0], [0, 1]])
    cont = torch.tensor([[0.5], [-1.0]])
    expected = torch.tensor([[0, 0, 1, 1, 0, 0.5], [1, 0, 0, 0, 1, -1.0]])
    assert torch.equal(covariates(cat, cont), expected)
    assert covariates.size == 6 and covariates.num_batches == 3


@pytest.mark.parametrize("inject", ["all", "first"])
def test_conditional_mlp_is_a_linear_layer_on_the_concatenation(inject):
    torch.manual_seed(0)
    net = ConditionalMLP(4, 3, (5,), 2, activation="tanh", inject=inject)
    h, s = torch.randn(7, 4), torch.randn(7, 3)
    first = torch.tanh(torch.cat([h, s], -1) @ torch.cat([net.linears[0].weight, net.side[0].weight], 1).T
                       + net.linears[0].bias)
    out = first @ net.linears[1].weight.T + net.linears[1].bias
    if inject == "all":
        out = out + s @ net.side[1].weight.T
    assert torch.allclose(net(h, s), out, atol=1e-6)
    # leading sample dimensions broadcast against the data's covariates
    assert torch.allclose(net(h.expand(3, 7, 4), s)[1], net(h, s), atol=1e-6)



@pytest.mark.parametrize("inject", ["all", "first"])
def test_conditional_mlp_starts_as_a_linear_layer_on_the_concatenation_would(inject):
    # every injected layer's W, V and b uniform within 1 / sqrt(width of h + width of s), as nn.Linear over [h, s]:
    # V on its own fan-in (a one-hot's few columns) would start several times wider, a random offset per batch
    torch.manual_seed(0)
    net = ConditionalMLP(400, 3, (64,), 10, inject=inject)
    for i, (linear, side) in enumerate(zip(net.linears, net.side)):
        if side is None:
            assert inject == "first" and i == 1
            bound = 1 / math.sqrt(linear.in_features)  # torch's own start
        else:
            bound = 1 / math.sqrt(linear.in_features + 3)
            assert side.weight.abs().max() <= bound and side.weight.abs().max() > 0.9 * bound
        assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.9 * bound
        assert linear.bias.abs().max() <= bound

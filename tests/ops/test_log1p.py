"""log1p(u) - u / (1 + u) against mpmath, relative, from u = 1e-12 to 1e12, at 0 and at infinity."""

import math

import mpmath
import numpy as np
import pytest
import torch

from pyrovae.ops.capture import compile_function
from pyrovae.ops.log1p import log1p_minus_fraction

# eighth decades, and both sides of where the series hands over (w = u / (2 + u) = 0.1 and 0.15)
POINTS = [10.0 ** (e / 8) for e in range(-96, 97)] + [2 * w / (1 - w) * f for w in (0.1, 0.15)
                                                     for f in (0.999999, 1.0, 1.000001)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log1p_minus_fraction_keeps_relative_precision(dtype):
    u = torch.tensor(POINTS, dtype=dtype)
    with mpmath.workdps(40):
        expected = [float(mpmath.log1p(v) - v / (1 + v)) for v in map(mpmath.mpf, u.tolist())]
    np.testing.assert_allclose(log1p_minus_fraction(u).double().numpy(), expected,
                               rtol=8 * torch.finfo(dtype).eps, atol=0)


def test_log1p_minus_fraction_at_the_ends():
    ends = log1p_minus_fraction(torch.tensor([0.0, math.inf], dtype=torch.float64))
    assert ends.tolist() == [0.0, math.inf]
    compiled = compile_function(log1p_minus_fraction, backend="aot_eager", fullgraph=True)  # no data-dependent branch
    u = torch.logspace(-6, 6, 13, dtype=torch.float64)
    torch.testing.assert_close(compiled(u), log1p_minus_fraction(u), rtol=1e-15, atol=0)


def test_log1p_minus_fraction_in_place_or_recorded_is_the_same():
    """Written in place where autograd does not record it (a backward), out of place where it does (its own
    derivative): bit for bit the same values, and a gradient where one is asked for."""
    u = torch.logspace(-8, 8, 161, dtype=torch.float32)
    recorded = u.clone().requires_grad_()
    value = log1p_minus_fraction(recorded)
    assert torch.equal(value.detach(), log1p_minus_fraction(u))
    (slope,) = torch.autograd.grad(value.sum(), recorded)
    torch.testing.assert_close(slope, u / (1 + u) ** 2)  # d/du (log1p(u) - u / (1 + u)) = u / (1 + u)^2

"""slerp (pyrovae.distributions.sphere): constant angular speed against the closed form, and end points without a
direction refused by name (issue 24)."""

from __future__ import annotations

import math

import pytest
import torch

from pyrovae.distributions import slerp


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [2, 3, 17])
def test_slerp_moves_at_constant_angular_speed(m, dtype):
    generator = torch.Generator().manual_seed(m)
    start, end = torch.randn(2, 4, m, generator=generator, dtype=torch.float64).mul(3.0).to(dtype).unbind(0)
    path = slerp(start, end, 7).double()  # (7, 4, m)
    unit_start, unit_end = (v.double() / v.double().norm(dim=-1, keepdim=True) for v in (start, end))
    omega = torch.arccos((unit_start * unit_end).sum(-1).clamp(-1, 1))
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(path.norm(dim=-1), torch.ones(7, 4, dtype=torch.float64), atol=tolerance, rtol=0)
    for k in range(7):  # the angle to the start is k / 6 of the whole: sin-weighted combination in closed form
        t = k / 6
        expected = (torch.sin((1 - t) * omega)[:, None] * unit_start + torch.sin(t * omega)[:, None] * unit_end)
        expected = expected / torch.sin(omega)[:, None]
        torch.testing.assert_close(path[k], expected, atol=10 * tolerance, rtol=0)


@pytest.mark.parametrize("bad", [0.0, math.nan, math.inf])
def test_slerp_refuses_end_points_without_a_direction(bad):
    good = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    broken = good.clone()
    broken[1] = bad
    with pytest.raises(ValueError, match=r"slerp: start at index \(1,\) has norm .*non-zero, finite vector"):
        slerp(broken, good.flip(0), 5)
    with pytest.raises(ValueError, match=r"slerp: end at index \(1,\)"):
        slerp(good.flip(0), broken, 5)


@pytest.mark.parametrize("steps", [0, -2, 2.5, True])
def test_slerp_refuses_a_number_of_steps_that_is_not_a_count(steps):
    with pytest.raises(ValueError, match="integer >= 1"):
        slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), steps)

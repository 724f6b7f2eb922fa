"""FlowGuide: a normalised density (grid integration), cached and fresh log-densities agree, Pyro trains it, and it
refits to a frozen decoder."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyrovae.guides import FlowGuide

from pyrovae.infer import log_likelihood, refit_guide
from tests.infer.guides_and_models import small_pair


@pytest.mark.parametrize("flow", ["affine", "spline"])
def test_flow_density_integrates_to_one(flow):
    torch.manual_seed(0)
    guide = FlowGuide(3, 2, hidden=(8,), flow=flow, num_flows=2)
    with torch.no_grad():  # a non-trivial flow: random output layers
        for p in guide.parameters():
            p.add_(0.3 * torch.randn_like(p))
        q = guide.encode(torch.randn(1, 3))
        side = torch.linspace(-12, 12, 601)
        grid = torch.stack(torch.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 1, 2)
        density = q.log_prob(grid).exp().reshape(601, 601)
        total = torch.trapezoid(torch.trapezoid(density, side), side)
    assert abs(total.item() - 1.0) < 2e-3, total


@pytest.mark.parametrize("flow", ["affine", "spline"])
def test_cached_and_fresh_log_densities_agree(flow):
    torch.manual_seed(1)
    guide = FlowGuide(4, 3, hidden=(8,), flow=flow)
    with torch.no_grad():
        q = guide.encode(torch.randn(5, 4))
        z = q.sample((7,))
        cached = q.log_prob(z)
        fresh = q.log_prob(z.clone())  # not the object the flow cached: inverted afresh
    assert torch.allclose(cached, fresh, atol=1e-4)


def test_pyro_svi_trains_a_flow_guide_and_refit_scores_it():
    torch.manual_seed(2)
    pyro.clear_param_store()
    model, _ = small_pair(x_dim=6, z_dim=2)
    guide = FlowGuide(6, 2, hidden=(6,))
    x = torch.randn(64, 6)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(60)]
    assert sum(losses[-10:]) < sum(losses[:10])
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()}
    refitted = FlowGuide(6, 2, hidden=(6,), flow="spline")
    history, ll = refit_guide(model, refitted, x, x[:16], epochs=2, num_samples=20, progress=False)
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters())
    assert ll.per_datum.shape == (16,) and torch.isfinite(ll.per_datum).all()
    assert torch.isfinite(log_likelihood(model, refitted, x[:8], num_samples=10, proposal="refined").per_datum).all()


def test_flow_guide_bad_arguments():
    with pytest.raises(ValueError, match="flow must be"):
        FlowGuide(3, 2, flow="planar")
    with pytest.raises(ValueError, match="num_flows"):
        FlowGuide(3, 2, num_flows=0)

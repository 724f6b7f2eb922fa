"""Each latent family's parameters as the refinement calibrates them: every datum's spread, and each coordinate's."""

import pyro.distributions as dist
import pytest
import torch

from pyrovae.distributions import PowerSpherical, ProjectedNormal, VonMisesFisher
from pyrovae.infer.estimation.family_parameters import (
    as_full_covariance,
    direction_slopes,
    directions_respread,
    rebuilt,
    respread,
    unconstrained,
)


def test_respread_multiplies_each_datums_spread_in_every_family():
    """respread (the calibration of a refinement's start): datum i's spread times factor i, along the data
    dimension wherever it is: a Gaussian's scale or Cholesky factor, a vMF / Power Spherical concentration over the
    factor squared, a projected normal's mean shortened by it; everything else unchanged."""
    torch.manual_seed(0)
    factor = torch.tensor([1.0, 3.0, 0.5, 100.0], dtype=torch.float64)
    loc, scale = torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64) + 0.1
    tril = torch.eye(3, dtype=torch.float64) + 0.3 * torch.randn(4, 3, 3, dtype=torch.float64).tril(-1)
    direction = torch.nn.functional.normalize(loc, dim=-1)
    kappa = torch.rand(4, dtype=torch.float64) * 50 + 1
    laws = {
        "normal": dist.Normal(loc, scale).to_event(1),
        "lognormal": dist.LogNormal(loc, scale).to_event(1),
        "full": dist.MultivariateNormal(loc, scale_tril=tril),
        "vmf": VonMisesFisher(direction, kappa),
        "power": PowerSpherical(direction, kappa),
        "projected": ProjectedNormal(5 * loc, tril),
        "enumerated": dist.Normal(loc.expand(2, 4, 3), scale).to_event(1),  # the data at dimension 1
    }
    for name, fn in laws.items():
        index = 1 if name == "enumerated" else 0
        wide = rebuilt(fn, respread(unconstrained(fn), factor.log(), index))
        if name == "full":
            assert torch.allclose(wide.scale_tril, tril * factor.reshape(4, 1, 1))
            assert torch.allclose(wide.loc, loc)
        elif name in ("vmf", "power"):
            assert torch.allclose(wide.concentration, kappa / factor**2) and torch.allclose(wide.loc, direction)
        elif name == "projected":
            assert torch.allclose(wide.loc, 5 * loc / factor.unsqueeze(-1)) and torch.allclose(wide.scale_tril, tril)
        else:
            expected = scale.expand(2, 4, 3) if name == "enumerated" else scale
            shape = (1, 4, 1) if name == "enumerated" else (4, 1)
            assert torch.allclose(wide.base_dist.scale, expected * factor.reshape(shape))
            assert torch.allclose(wide.base_dist.loc, fn.base_dist.loc)
    # a diagonal Gaussian refined with full covariance: its calibrated start is the same law as the diagonal one's
    full = as_full_covariance(laws["normal"], "z")
    wide = rebuilt(full, respread(unconstrained(full), factor.log(), 0))
    assert torch.allclose(wide.scale_tril, torch.diag_embed(scale * factor.unsqueeze(-1)))


@pytest.mark.parametrize("family", ["normal", "full"])
def test_each_coordinates_spread_is_scaled_and_its_slope_is_the_derivative_along_that_scaling(family):
    """directions_respread: coordinate j's scale (or row j of the Cholesky factor, the covariance D S D) times
    factor j, per datum; direction_slopes: the derivative of an objective along log factor j, against central
    differences of the objective of the rescaled law."""
    torch.manual_seed(1)
    loc, scale = torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64) + 0.3
    tril = torch.diag_embed(scale) + 0.3 * torch.randn(4, 3, 3, dtype=torch.float64).tril(-1)
    fn = dist.Normal(loc, scale).to_event(1) if family == "normal" else dist.MultivariateNormal(loc, scale_tril=tril)
    params = unconstrained(fn)
    factor = torch.rand(4, 3, dtype=torch.float64) * 3 + 0.2
    wide = rebuilt(fn, directions_respread(params, factor.log()))
    covariance = fn.covariance_matrix if family == "full" else torch.diag_embed(scale.square())
    expected = factor.unsqueeze(-1) * covariance * factor.unsqueeze(-2)
    assert torch.allclose(wide.covariance_matrix if family == "full" else torch.diag_embed(wide.variance), expected)
    assert torch.allclose(wide.mean, loc)

    points = torch.randn(16, 4, 3, dtype=torch.float64)

    def objective(p):  # a datum's mean log-density of fixed points plus its entropy: smooth in every parameter
        law = rebuilt(fn, p)
        return law.log_prob(points).mean(0) + law.entropy()

    leaves = {key: value.clone().requires_grad_() for key, value in params.items()}
    grads = torch.autograd.grad(objective(leaves).sum(), [leaves[key] for key in leaves], allow_unused=True)
    slope = direction_slopes(params, dict(zip(leaves, grads, strict=True)))
    for j in range(3):
        step = torch.zeros(4, 3, dtype=torch.float64)
        step[:, j] = 1e-5
        difference = (objective(directions_respread(params, step)) - objective(directions_respread(params, -step)))
        assert torch.allclose(slope[:, j], difference / 2e-5, atol=1e-6, rtol=1e-6)

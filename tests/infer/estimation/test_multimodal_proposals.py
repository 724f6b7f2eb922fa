"""The refined proposals on bimodal posteriors, against exact log p(x) by quadrature (issue 24).

Three toys whose amortised guide points at the wrong one of two modes, so that per-datum refinement from the
encoder alone climbs to the minor mode and never draws the major one (k-hat cannot see it): a circle latent (an
S-VAE on S^1), a 1-D Gaussian latent with a decoder in z^2, and a two-component GMVAE-like model with that decoder.
Each estimate must lie within 3 Monte Carlo standard errors of the exact value, or be flagged (k-hat > 0.7 or a
multimodal posterior); and the flag must fire where the exact posterior has two modes of real mass.
"""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae.distributions import PowerSpherical, VonMisesFisher
from pyrovae.infer import RefinedProposal, log_likelihood

SIGMA = 0.2


def _two_modes(log_density, side, boundary):
    """(N,) bool: the posterior on the grid has two well-separated modes of real mass: each side (``side`` > 0,
    < 0) holds at least 10% of it, and its density at the ``boundary`` grid points between them is below 1e-3 of
    its peak."""
    total = log_density.logsumexp(-1)
    halves = [log_density.masked_fill(~(sign * side > 0), -math.inf).logsumexp(-1) for sign in (1, -1)]
    balanced = torch.minimum(*halves) - total > math.log(0.1)
    dip = log_density[:, boundary].max(-1).values - log_density.max(-1).values < math.log(1e-3)
    return balanced & dip


def _within_error_or_flagged(result, exact, floor=0.02):
    """Each datum's estimate is within 3 Monte Carlo standard errors (plus the bias of a log of a mean, and a
    floor) of the exact value, or flagged."""
    error = (result.per_datum - exact).abs()
    tolerance = 3 * result.mc_stderr + result.mc_stderr.square() + floor
    return (error <= tolerance) | result.flagged, error <= tolerance


def _quiet_log_likelihood(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the guide's own k-hat warning
        return log_likelihood(*args, **kwargs)


# ---- (a) the circle: an S-VAE on S^1 whose decoder sees |z_2| strongly and z_2 weakly --------------------------

def _circle_decoder(z):
    return torch.stack([2 * z[..., 0], 2 * z[..., 1].abs(), 0.3 * z[..., 1]], -1)


def _circle_toy(family, seed, num_data):
    """z uniform on S^1, x ~ N(decoder(z), 0.2^2 I): the angles z and its mirror (z_1, -z_2) explain x alike but for
    the weak third coordinate, so p(z | x) has two modes of unequal mass. The guide points at the mirror."""

    def model(x):
        with pyro.plate("data", x.shape[-2]):
            z = pyro.sample("z", dist.ProjectedNormal(torch.zeros(2, dtype=x.dtype)))  # uniform on S^1
            pyro.sample("x", dist.Normal(_circle_decoder(z), SIGMA).to_event(1), obs=x)

    def guide(x):
        mirror = torch.stack([x[..., 0] / 2, -torch.sign(x[..., 2]) * (x[..., 1] / 2).abs()], -1)
        with pyro.plate("data", x.shape[-2]):
            pyro.sample("z", family(mirror / mirror.norm(dim=-1, keepdim=True),
                                    torch.full((x.shape[0],), 50.0, dtype=x.dtype)))

    g = torch.Generator().manual_seed(seed)
    theta = 2 * math.pi * torch.rand(num_data, generator=g, dtype=torch.float64)
    z = torch.stack([theta.cos(), theta.sin()], -1)
    x = _circle_decoder(z) + SIGMA * torch.randn(num_data, 3, generator=g, dtype=torch.float64)
    grid = torch.linspace(0, 2 * math.pi, 20001, dtype=torch.float64)[:-1]
    points = torch.stack([grid.cos(), grid.sin()], -1)
    log_lik = dist.Normal(_circle_decoder(points), SIGMA).log_prob(x.unsqueeze(1)).sum(-1)  # (N, G)
    exact = log_lik.logsumexp(-1) - math.log(grid.numel())  # the mean over a uniform grid of a periodic function
    return model, guide, x, exact, _two_modes(log_lik, points[:, 1], boundary=[0, grid.numel() // 2])


@pytest.mark.parametrize("seed", [0, 1])
def test_refined_finds_the_major_mode_on_the_circle(seed):
    """The issue's case: from the encoder alone, refinement stays at the mirror mode and is wrong by nats with a
    k-hat that reads as reliable; from several starts the estimate is within its error of the quadrature, or
    flagged, and the multimodal flag fires where both modes hold mass."""
    model, guide, x, exact, two_modes = _circle_toy(PowerSpherical, seed, 24)
    pyro.set_rng_seed(seed)
    single = _quiet_log_likelihood(model, guide, x, num_samples=200,
                                   proposal=RefinedProposal(steps=40, starts=1))
    missed = (exact - single.per_datum > 2.0) & (single.khat < 0.7)
    assert missed.sum() >= 3, "the toy must reproduce the silent miss"
    result = _quiet_log_likelihood(model, guide, x, num_samples=200, proposal=RefinedProposal(steps=40))
    ok, accurate = _within_error_or_flagged(result, exact)
    assert ok.all(), (result.per_datum - exact)[~ok]
    assert accurate.float().mean() >= 0.9
    assert two_modes.any() and (result.num_modes[two_modes] >= 2).all()  # two modes of real mass: reported
    assert result.summary()["frac_multimodal"] > 0 and result.flagged[two_modes].all()


def test_refined_defensive_with_a_von_mises_fisher_guide_on_the_circle():
    """The named proposals, as a user calls them, with the S-VAE's vMF guide."""
    model, guide, x, exact, _ = _circle_toy(VonMisesFisher, 2, 10)
    pyro.set_rng_seed(2)
    result = _quiet_log_likelihood(model, guide, x, num_samples=200, proposal="refined+defensive")
    ok, accurate = _within_error_or_flagged(result, exact)
    assert ok.all() and accurate.float().mean() >= 0.9, (result.per_datum - exact)


# ---- (b) a 1-D Gaussian latent with a decoder in z^2 ----------------------------------------------------------------

def _square_decoder(z, tilt):
    """(..., ) -> (..., 3): z^2 in three coordinates, one of them tilted by ``tilt * z`` (unequal modes)."""
    z = z.unsqueeze(-1)
    return torch.cat([z.square().expand(*z.shape[:-1], 2), z.square() + tilt * z], -1)


def _grid_log_marginal(log_prior, x, tilt):
    """log of the integral of exp(log_prior(z)) p(x | z) dz on a fine grid, and whether p(z | x) has two
    well-separated modes (either side of 0)."""
    grid = torch.linspace(-8, 8, 32001, dtype=torch.float64)
    log_joint = log_prior(grid) + dist.Normal(_square_decoder(grid, tilt), SIGMA).log_prob(
        x.unsqueeze(1)).sum(-1)  # (N, G)
    return log_joint.logsumexp(-1) + math.log(grid[1] - grid[0]), _two_modes(log_joint, grid, [grid.numel() // 2])


def _square_toy(seed, num_data, tilt=0.15):
    def model(x):
        with pyro.plate("data", x.shape[-2]):
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            pyro.sample("x", dist.Normal(_square_decoder(z, tilt), SIGMA).to_event(1), obs=x)

    def guide(x):  # at -sqrt of the data, whatever the tilt says: the wrong mode for about half the data
        root = x[..., :2].mean(-1).clamp_min(1e-3).sqrt()
        with pyro.plate("data", x.shape[-2]):
            pyro.sample("z", dist.Normal(-root, SIGMA / (2 * root + 0.5)))

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num_data, generator=g, dtype=torch.float64) * 1.5
    x = _square_decoder(z, tilt) + SIGMA * torch.randn(num_data, 3, generator=g, dtype=torch.float64)
    exact, two_modes = _grid_log_marginal(dist.Normal(0.0, 1.0).log_prob, x, tilt)
    return model, guide, x, exact, two_modes


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("proposal", ["refined", "refined+defensive"])
def test_refined_on_a_one_dimensional_bimodal_posterior(seed, proposal):
    model, guide, x, exact, two_modes = _square_toy(seed, 30)
    pyro.set_rng_seed(seed)
    result = _quiet_log_likelihood(model, guide, x, num_samples=200, proposal=proposal)
    ok, accurate = _within_error_or_flagged(result, exact)
    assert ok.all(), (result.per_datum - exact)[~ok]
    assert accurate.float().mean() >= 0.9
    assert two_modes.any() and (result.num_modes[two_modes] >= 2).all()


# ---- (c) a two-component GMVAE-like model with the z^2 decoder ------------------------------------------------------

def _mixture_toy(seed, num_data, tilt=0.15):
    """y ~ Cat(0.4, 0.6), z | y ~ N(m_y, s_y^2), x | z as in (b); q(z | x, y) at the wrong sign, y enumerated."""
    pi = torch.tensor([0.4, 0.6], dtype=torch.float64)
    means, scales = torch.tensor([-0.5, 1.0], dtype=torch.float64), torch.tensor([1.0, 0.7], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[-2]):
            y = pyro.sample("y", dist.Categorical(pi))
            z = pyro.sample("z", dist.Normal(means[y], scales[y]))
            pyro.sample("x", dist.Normal(_square_decoder(z, tilt), SIGMA).to_event(1), obs=x)

    def guide(x):
        root = x[..., :2].mean(-1).clamp_min(1e-3).sqrt()
        with pyro.plate("data", x.shape[-2]):
            y = pyro.sample("y", dist.Categorical(logits=torch.zeros(x.shape[0], 2, dtype=x.dtype)),
                            infer={"enumerate": "parallel"})
            sign = torch.where(means[y] > 0, -1.0, 1.0)  # against each component's own side
            pyro.sample("z", dist.Normal(sign * root, SIGMA / (2 * root + 0.5)))

    def log_prior(z):
        return torch.stack([dist.Normal(means[k], scales[k]).log_prob(z) + pi[k].log() for k in range(2)]).logsumexp(0)

    g = torch.Generator().manual_seed(seed)
    y = torch.multinomial(pi, num_data, replacement=True, generator=g)
    z = means[y] + scales[y] * torch.randn(num_data, generator=g, dtype=torch.float64)
    x = _square_decoder(z, tilt) + SIGMA * torch.randn(num_data, 3, generator=g, dtype=torch.float64)
    exact, two_modes = _grid_log_marginal(log_prior, x, tilt)
    return model, guide, x, exact, two_modes


@pytest.mark.parametrize("seed", [0, 1])
def test_refined_on_a_two_component_mixture_with_bimodal_components(seed):
    model, guide, x, exact, _ = _mixture_toy(seed, 30)
    pyro.set_rng_seed(seed)
    single = _quiet_log_likelihood(model, guide, x, num_samples=200, proposal=RefinedProposal(starts=1, steps=50))
    assert ((exact - single.per_datum > 1.0) & (single.khat < 0.7)).any(), "the toy must reproduce the silent miss"
    result = _quiet_log_likelihood(model, guide, x, num_samples=200,
                                   proposal=RefinedProposal(steps=50))
    ok, accurate = _within_error_or_flagged(result, exact)
    assert ok.all(), (result.per_datum - exact)[~ok]
    assert accurate.float().mean() >= 0.9


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("factor", [1e-2, 10.0])
def test_auto_with_a_guide_far_too_narrow_or_too_wide_on_a_bimodal_posterior_certifies_nothing_wrong(seed, factor):
    """The z^2 toy with the guide's scale at 1/100: its refinement stayed too narrow and "auto" certified estimates
    up to 0.85 nats low (29 of 180 data); with the encoder's start calibrated alone, a mode found from a prior start
    kept the old spread and too little weight in the mixture (20 of 180). Every start gets the encoder's factor.
    At 10 times its scale a start spanning both modes was not clearly worse by a mean over independent draws, and
    its optimum settled between them (13 of 180 certified wrong, up to 4.2 nats): the factors are compared on common
    draws, by their mean and median gain."""
    model, _, x, exact, _ = _square_toy(seed, 30)

    def off(x):  # the toy's guide at a factor of its scale
        root = x[..., :2].mean(-1).clamp_min(1e-3).sqrt()
        with pyro.plate("data", x.shape[-2]):
            pyro.sample("z", dist.Normal(-root, SIGMA / (2 * root + 0.5) * factor))

    result = _quiet_log_likelihood(model, off, x, proposal="auto", seed=seed, num_samples=200, ais_chains=64,
                                   ais_steps=50)
    error = (result.per_datum - exact).abs()
    wrong = result.certified & (error > 3 * result.mc_stderr + result.mc_stderr.square() + 0.05)
    assert not wrong.any(), (result.per_datum - exact)[wrong]
    assert result.certified.float().mean() >= 0.8

"""Annealed importance sampling on the sphere, through the radial lift, against exact marginals in closed form.

z uniform on S^(n-1) and x | z ~ N(B z + c, sigma^2 I) with B^T B = b^2 I: z^T B^T B z = b^2 is constant on the
sphere, so p(x | z) is proportional to exp(v . z) with v = B^T (x - c) / sigma^2, the posterior is exactly a von
Mises-Fisher and log p(x) = log N-part + log E_uniform[exp(v . z)], a Bessel function (scipy's ``ive``) in any n.
"""

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy.special import ive

from pyrovae import make_pair
from pyrovae.distributions import HypersphericalUniform, PowerSpherical, VonMisesFisher
from pyrovae.distributions.sphere import log_sphere_area
from pyrovae.infer import ais_log_likelihood, gap_report, log_likelihood
from pyrovae.infer.estimation import certify
from pyrovae.infer.estimation.ais import RadialLift
from pyrovae.infer.estimation.bdmc import bdmc
from tests.infer.estimation.test_proposals import _circle_pair

SIGMA, SCALE = 0.5, 3.0


def _decoder(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """B (n + 2, n) with B^T B = SCALE^2 I, and c (n + 2,)."""
    q, _ = torch.linalg.qr(torch.randn(n + 2, n, generator=generator, dtype=torch.float64))
    return SCALE * q, torch.randn(n + 2, generator=generator, dtype=torch.float64)


def conjugate_sphere(n: int, num_data: int = 16, seed: int = 0, shift: float = 0.4, concentration: float = 0.5):
    """The model above on S^(n-1), a vMF guide whose direction is off by up to ``shift`` per coordinate and whose
    concentration is ``concentration`` times the posterior's; data drawn from the model with their z (exact
    posterior draws), and the exact log p(x)."""
    g = torch.Generator().manual_seed(seed)
    B, c = _decoder(n, g)

    def model(x):
        with pyro.plate("data", x.shape[-2]):
            z = pyro.sample("z", HypersphericalUniform(n, dtype=x.dtype))
            pyro.sample("x", dist.Normal(z @ B.T + c, SIGMA).to_event(1), obs=x)

    mixing = torch.randn(n + 2, n, generator=g, dtype=torch.float64)  # a fixed error, a smooth function of x

    def guide(x):
        v = (x - c) @ B / SIGMA**2
        direction = v / v.norm(dim=-1, keepdim=True) + shift * torch.sin(3 * x @ mixing)
        with pyro.plate("data", x.shape[-2]):
            pyro.sample("z", VonMisesFisher(direction / direction.norm(dim=-1, keepdim=True),
                                            concentration * v.norm(dim=-1)))

    z = torch.randn(num_data, n, generator=g, dtype=torch.float64)
    z = z / z.norm(dim=-1, keepdim=True)
    x = z @ B.T + c + SIGMA * torch.randn(num_data, n + 2, generator=g, dtype=torch.float64)
    return model, guide, x, z, exact_log_marginal(x, B, c)


def exact_log_marginal(x: torch.Tensor, B: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """log p(x) of the model above, (N,)."""
    n = B.shape[1]
    kappa = ((x - c) @ B / SIGMA**2).norm(dim=-1).numpy()
    nu = n / 2 - 1
    log_mean_exp = math.lgamma(n / 2) + nu * np.log(2 / kappa) + np.log(ive(nu, kappa)) + kappa
    gaussian = (-0.5 * ((x - c).square().sum(-1) + SCALE**2) / SIGMA**2
                - (n + 2) * math.log(SIGMA * math.sqrt(2 * math.pi)))
    return gaussian + torch.from_numpy(log_mean_exp)


@pytest.mark.parametrize("n", [2, 3, 6, 21])
def test_the_lifted_uniform_is_the_gaussian_it_projects_from(n):
    """Lifting the uniform density on S^(n-1) gives exactly N(0, scale^2 I) on R^n (the law of u = radius x
    direction with a chi radius), and inv draws from it: its radius has the chi law's mean and spread."""
    lift = RadialLift(n)
    u = torch.randn(50, n, dtype=torch.float64) * 3.0
    lifted = -log_sphere_area(n) + lift.log_abs_det_jacobian(u, lift(u))
    gaussian = dist.Normal(torch.zeros(n, dtype=u.dtype), lift.scale).log_prob(u).sum(-1)
    assert torch.allclose(lifted, gaussian, rtol=0, atol=1e-10)
    z = torch.nn.functional.normalize(torch.randn(20000, n, dtype=torch.float64), dim=-1)
    radius = lift.inv(z).norm(dim=-1)
    assert torch.allclose(lift(lift.inv(z)), z, atol=1e-12)
    mean = lift.scale * math.sqrt(2) * math.exp(math.lgamma((n + 1) / 2) - math.lgamma(n / 2))
    spread = lift.scale * math.sqrt(n - mean**2 / lift.scale**2)
    assert abs(float(radius.mean()) - mean) < 4 * spread / math.sqrt(z.shape[0])
    assert abs(float(radius.std()) / spread - 1) < 0.05


@pytest.mark.parametrize("n", [2, 3, 6, 21])
def test_ais_on_the_sphere_converges_to_the_exact_marginal(n):
    torch.manual_seed(n)
    model, guide, x, _, exact = conjugate_sphere(n, shift=1.0)
    one_step = ais_log_likelihood(model, guide, x, num_chains=16, num_steps=1)  # importance sampling from the guide
    annealed = ais_log_likelihood(model, guide, x, num_chains=32, num_steps=300)
    assert float((exact - one_step.per_datum).mean()) > 3.0
    assert abs(float((annealed.per_datum - exact).mean())) < 0.1, annealed.per_datum - exact
    assert 0.5 < annealed.acceptance < 0.85


@pytest.mark.parametrize("family", [VonMisesFisher, PowerSpherical])
def test_ais_on_the_circle_matches_quadrature_from_either_spherical_guide(family):
    """A non-conjugate posterior (the circle model of the proposal tests, uniform prior as a ProjectedNormal)."""
    torch.manual_seed(0)
    model, guide, x, exact = _circle_pair(family)
    annealed = ais_log_likelihood(model, guide, x, num_chains=32, num_steps=300)
    assert abs(float((annealed.per_datum - exact).mean())) < 0.05, annealed.per_datum - exact


@pytest.mark.parametrize("n", [3, 21])
def test_bidirectional_monte_carlo_on_the_sphere_brackets_and_closes(n):
    """Reverse AIS starts from the exact posterior draw lifted with a random radius: the bounds bracket the exact
    marginal and meet as the schedule grows."""
    torch.manual_seed(1)
    model, guide, x, z, exact = conjugate_sphere(n, shift=0.8, concentration=0.3)
    gaps = []
    for steps in (2, 300):
        result = bdmc(model, guide, num_chains=16, num_steps=steps, x=x, latents={"z": z})
        assert float((result.lower - exact).mean()) < 0.05 and float((result.upper - exact).mean()) > -0.05
        gaps.append(result.mean_gap)
    assert gaps[0] > 1.0 and abs(gaps[1]) < 0.15, gaps


def test_auto_escalates_a_spherical_model_to_ais_and_certifies_it_right(monkeypatch):
    """With importance sampling made unable to certify, the spherical model's data reach the AIS stage, whose
    certified estimates are within three standard errors of the exact marginal."""
    original = certify._refined_stage

    def never_certified(*args, **kwargs):
        estimate, certified = original(*args, **kwargs)
        return estimate, torch.zeros_like(certified)

    monkeypatch.setattr(certify, "_refined_stage", never_certified)
    torch.manual_seed(2)
    model, guide, x, _, exact = conjugate_sphere(6, num_data=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = certify.auto_log_likelihood(model, guide, x, num_samples=200, ais_chains=128, ais_steps=60)
    assert result.estimator == ("ais",) * 12 and result.cost["ais"]["data"] == 12 and (result.draws == 128).all()
    assert result.certified.float().mean() >= 0.9
    certified = result.certified
    assert ((result.per_datum - exact).abs()[certified] <= 3 * result.mc_stderr[certified] + 0.02).all()


def test_log_likelihood_passes_the_ais_stage_settings_to_auto_and_refuses_them_elsewhere(monkeypatch):
    seen, result = {}, SimpleNamespace(certified=torch.ones(4, dtype=torch.bool))

    def fake_auto(*args, **kwargs):
        seen.update(kwargs)
        return result

    monkeypatch.setattr(certify, "auto_log_likelihood", fake_auto)
    model, guide, x, _, _ = conjugate_sphere(3, num_data=4)
    assert log_likelihood(model, guide, x, proposal="auto", ais_chains=8, ais_steps=3) is result
    assert seen == {"ais_chains": 8, "ais_steps": 3}
    with pytest.raises(ValueError, match="ais_chains and ais_steps set the AIS stage of proposal='auto'"):
        log_likelihood(model, guide, x, proposal="guide", ais_steps=3)
    with pytest.raises(ValueError, match="ais_chains"):
        log_likelihood(model, guide, x, proposal="auto", ais_chains=0)


def test_the_gap_report_of_a_spherical_model_has_its_ais_row_and_it_is_exact():
    torch.manual_seed(0)
    model, guide, x, _, exact = conjugate_sphere(6, shift=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = gap_report(model, guide, x, num_samples=200, ais_chains=32, ais_steps=100)
    assert any(name.startswith("AIS") for name in report.rows)
    assert abs(report.log_likelihood - float(exact.mean())) < 0.03


def test_independent_spheres_are_lifted_each_and_annealed_exactly():
    """A vMF ``.to_event(1)`` over two spheres (support: an independent sphere): each is lifted on its own, and AIS
    reaches the sum of the two exact marginals."""
    torch.manual_seed(4)
    n = 4
    g = torch.Generator().manual_seed(4)
    B, c = _decoder(n, g)

    def model(x):
        with pyro.plate("data", x.shape[-2]):
            prior = HypersphericalUniform(n, batch_shape=(x.shape[0], 2), dtype=x.dtype).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(z @ B.T + c, SIGMA).to_event(2), obs=x.reshape(-1, 2, n + 2))

    def guide(x):
        v = (x.reshape(-1, 2, n + 2) - c) @ B / SIGMA**2
        with pyro.plate("data", x.shape[-2]):
            pyro.sample("z", VonMisesFisher(v / v.norm(dim=-1, keepdim=True), 2.0 * v.norm(dim=-1)).to_event(1))

    z = torch.nn.functional.normalize(torch.randn(10, 2, n, generator=g, dtype=torch.float64), dim=-1)
    x = (z @ B.T + c + SIGMA * torch.randn(10, 2, n + 2, generator=g, dtype=torch.float64)).reshape(10, -1)
    exact = exact_log_marginal(x[:, : n + 2], B, c) + exact_log_marginal(x[:, n + 2:], B, c)
    annealed = ais_log_likelihood(model, guide, x, num_chains=32, num_steps=300)
    assert abs(float((annealed.per_datum - exact).mean())) < 0.1, annealed.per_datum - exact


def test_auto_checks_the_schedule_of_pyrovae_s_vae_on_the_sphere(monkeypatch):
    """The S-VAE of make_pair has a prior predictive, so "auto" checks its AIS schedule by BDMC on the sphere (the
    refined stage is made to certify nothing, so that the data reach AIS)."""
    original = certify._refined_stage
    monkeypatch.setattr(certify, "_refined_stage",
                        lambda *args, **kwargs: (original(*args, **kwargs)[0], torch.zeros(6, dtype=torch.bool)))
    torch.manual_seed(5)
    model, guide = make_pair("svae-vmf", 12, 3, (16,))
    x = torch.bernoulli(torch.full((6, 12), 0.3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = log_likelihood(model, guide, x, num_samples=20, proposal="auto", ais_chains=16, ais_steps=5)
    assert result.schedule_gap is not None and math.isfinite(result.schedule_gap)

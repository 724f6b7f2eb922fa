"""The S-VAE model with its spherical guides: one model, guides swapped in one line."""

import math

import pytest
import torch
from pyrovae.guides import NormalGuide, PowerSphericalGuide, VMFGuide
from pyrovae.models import SVAE

from pyrovae.data import circle_clusters
from pyrovae.distributions import HypersphericalUniform, VonMisesFisher
from pyrovae.infer import log_likelihood, train
from pyrovae.likelihoods import Gaussian
from pyrovae.ops import bessel_iv_ratio
from pyrovae.ops.capture import compile_function


@pytest.fixture(scope="module")
def circle():
    data, _ = circle_clusters(256, num_features=20, seed=0)
    return data


@pytest.mark.parametrize("guide_class,elbo", [(VMFGuide, "trace"), (VMFGuide, "meanfield"), (VMFGuide, "iwae"),
                                              (VMFGuide, "jit"), (PowerSphericalGuide, "jit"),
                                              (PowerSphericalGuide, "trace")])
def test_svae_trains_with_either_guide(circle, guide_class, elbo):
    model = SVAE(20, 2, hidden=(32,), likelihood=Gaussian(scale=0.5))
    guide = guide_class(20, 2, hidden=(32,))
    particles = 3 if elbo == "iwae" else 1
    history = train(model, guide, circle, epochs=3, batch_size=64, elbo=elbo, num_particles=particles,
                    progress=False, seed=0)
    assert history.last["train_elbo"] > history.records[0]["train_elbo"] - 1.0
    z = guide.encode(circle.x[:10]).rsample()
    assert torch.allclose(z.norm(dim=-1), torch.ones(10), atol=1e-5)
    ll = log_likelihood(model, guide, circle.x[:32], num_samples=16)
    assert torch.isfinite(ll.per_datum).all()
    assert isinstance(model.prior(), HypersphericalUniform) and model.prior().event_shape == (2,)


def test_normal_guide_on_the_sphere_is_refused(circle):
    with pytest.raises(ValueError, match="Sphere"):
        train(SVAE(20, 3, hidden=(16,)), NormalGuide(20, 3, hidden=(16,)), circle.x.sigmoid().round(), epochs=1,
              progress=False)


@pytest.mark.parametrize("m", [4, 11, 40])
def test_traced_vmf_sampler_draws_afresh_exactly_with_exact_gradients(m):
    """torch.jit.trace of a vMF draw (what elbo="jit" and JitTrace_ELBO do) runs the rejection loop on every call:
    each call gives new draws whose mean cosine is A_m(kappa), and the traced pathwise gradient of E[loc . z] is
    A_m'(kappa) = 1 - A^2 - (m - 1) A / kappa, within Monte Carlo error."""
    torch.manual_seed(0)
    num_samples, kappa0 = 40000, [0.5, float(m), 30.0]
    loc = torch.nn.functional.normalize(torch.randn(3, m, dtype=torch.float64), dim=-1)

    def mean_cosines(kappa):
        z = VonMisesFisher(loc, kappa, validate_args=False).rsample((num_samples,))
        return (z * loc).sum(-1)  # (num_samples, 3)

    kappa = torch.tensor(kappa0, dtype=torch.float64, requires_grad=True)
    traced = torch.jit.trace(mean_cosines, (kappa,), check_trace=False)
    first, second = traced(kappa), traced(kappa)
    assert not torch.equal(first, second)
    ratio = bessel_iv_ratio(0.5 * m - 1, kappa.detach())
    for draws in (first, second):
        stderr = draws.detach().std(0) / num_samples**0.5
        assert ((draws.detach().mean(0) - ratio).abs() < 5 * stderr).all()
    (gradient,) = torch.autograd.grad(second.mean(0).sum(), kappa)
    k = kappa.detach()
    expected = 1 - ratio**2 - (m - 1) * ratio / k
    tolerance = 0.05 * expected.abs() + 5e-3
    assert ((gradient - expected).abs() < tolerance).all(), (gradient, expected)


def test_jit_elbos_with_a_vmf_prior_and_guide_and_two_particles(circle):
    """Two vMF terms in one traced ELBO (a vMF prior and a vMF guide; or two particles of an S-VAE under
    elbo="jit") failed to trace ("unordered_map::at"); the traced loss must equal the eager one on the same draws."""
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
    from pyro.optim import Adam

    torch.manual_seed(0)
    data = torch.nn.functional.normalize(torch.randn(50, 5) + torch.tensor([3.0, 0, 0, 0, 0]), dim=-1)

    def model(data):
        direction = pyro.sample("direction", VonMisesFisher(torch.eye(5)[1], torch.tensor(2.0)))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", VonMisesFisher(direction, torch.tensor(10.0)), obs=data)

    def guide(data):
        loc = pyro.param("loc", torch.eye(5)[2], constraint=dist.constraints.sphere)
        kappa = pyro.param("kappa", torch.tensor(5.0), constraint=dist.constraints.positive)
        pyro.sample("direction", VonMisesFisher(loc, kappa))

    for elbo in (JitTrace_ELBO(), Trace_ELBO()):
        pyro.clear_param_store()
        svi = SVI(model, guide, Adam({"lr": 0.05}), elbo)
        losses = [svi.step(data) for _ in range(200)]
        assert all(map(math.isfinite, losses))
        assert (pyro.param("loc") @ data.mean(0) / data.mean(0).norm()).item() > 0.99  # the posterior's direction
    model, guide = SVAE(20, 11, hidden=(16,), likelihood=Gaussian(scale=0.5)), VMFGuide(20, 11, hidden=(16,))
    history = train(model, guide, circle, epochs=2, elbo="jit", num_particles=2, progress=False, seed=0)
    assert all(math.isfinite(record["train_elbo"]) for record in history.records)


def test_latent_dimension_is_ambient():
    with pytest.raises(ValueError, match="ambient dimension"):
        SVAE(5, 1)
    assert SVAE(5, 11).sample(3).shape == (3, 5)


def test_vmf_draws_under_torch_compile_are_fresh_and_differentiable():
    """torch.compile treats the rejection loop as one opaque call (a graph break there, by design)."""
    torch.manual_seed(0)
    loc = torch.nn.functional.normalize(torch.randn(64, 11), dim=-1).requires_grad_()
    kappa = (torch.rand(64) * 20 + 1).requires_grad_()

    def loss(loc, kappa):
        q = VonMisesFisher(loc, kappa, validate_args=False)
        z = q.rsample()
        return (z * loc).sum(-1), q.log_prob(z)

    compiled = compile_function(loss)  # torch.compile, keeping torch's validation on for the later tests
    first, log_density = compiled(loc, kappa)
    second, _ = compiled(loc, kappa)
    assert not torch.equal(first, second) and torch.isfinite(log_density).all()
    (first.sum() + log_density.sum()).backward()
    assert torch.isfinite(kappa.grad).all() and torch.isfinite(loc.grad).all() and kappa.grad.abs().sum() > 0

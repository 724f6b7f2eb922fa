"""The S-VAE model with its spherical guides: one model, guides swapped in one line."""

import pytest
import torch
from pyrovae.guides import NormalGuide, PowerSphericalGuide, VMFGuide
from pyrovae.models import SVAE

from pyrovae.data import circle_clusters
from pyrovae.distributions import HypersphericalUniform
from pyrovae.infer import log_likelihood, train
from pyrovae.likelihoods import Gaussian


@pytest.fixture(scope="module")
def circle():
    data, _ = circle_clusters(256, num_features=20, seed=0)
    return data


@pytest.mark.parametrize("guide_class,elbo", [(VMFGuide, "trace"), (VMFGuide, "meanfield"), (VMFGuide, "iwae"),
                                              (PowerSphericalGuide, "jit"), (PowerSphericalGuide, "trace")])
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


def test_vmf_cannot_be_traced_and_says_what_to_do(circle):
    with pytest.raises(RuntimeError, match="cannot be traced"):
        train(SVAE(20, 4, hidden=(16,), likelihood=Gaussian(scale=1.0)), VMFGuide(20, 4, hidden=(16,)), circle,
              epochs=1, elbo="jit", progress=False)


def test_latent_dimension_is_ambient():
    with pytest.raises(ValueError, match="ambient dimension"):
        SVAE(5, 1)
    assert SVAE(5, 11).sample(3).shape == (3, 5)

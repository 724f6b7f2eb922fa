"""Guides: swapped on one model, a mismatched pair refused with a clear error, one set of construction arguments."""

import pyro.distributions as dist
import pytest
import torch
from pyrovae.guides import AmortizedGuide, DeltaGuide, NormalGuide
from pyrovae.models import VAE
from torch import nn

from pyrovae.infer import check_model_guide, train
from tests.models.test_vae import binary


def test_guides_swap_on_one_model():
    x = binary(64)
    model = VAE(784, 4, hidden=(16,))
    for guide in (NormalGuide(784, 4, hidden=(16,)), DeltaGuide(784, 4, hidden=(16,))):
        history = train(model, guide, x, epochs=2, batch_size=32, progress=False)
        assert len(history) == 2


class LogNormalGuide(AmortizedGuide):
    def __init__(self):
        super().__init__()
        self.x_dim, self.z_dim = 784, 4
        self.net = nn.Linear(784, 4)

    def encode(self, x):
        return dist.LogNormal(self.net(x), 1.0).to_event(1)


def test_mismatched_pairs_fail_with_clear_errors():
    x = binary(8)
    model = VAE(784, 4, hidden=(16,))
    with pytest.raises(ValueError, match=r"support .*GreaterThan.* lives on .*Real"):
        check_model_guide(model, LogNormalGuide(), x)
    with pytest.raises(ValueError, match=r"event shape \(4,\)"):
        check_model_guide(model, NormalGuide(784, 6, hidden=(16,)), x)
    with pytest.raises(ValueError, match="support"):
        train(model, LogNormalGuide(), x, epochs=1, progress=False)


GUIDE_OPTIONS = ("hidden", "activation", "encoder", "input_transform", "latent_library", "batch_norm", "dropout")


def test_every_guide_takes_the_same_construction_arguments():
    import inspect

    from pyrovae.guides import GMVAEGuide, PowerSphericalGuide, VMFGuide

    for guide_class in (NormalGuide, DeltaGuide, VMFGuide, PowerSphericalGuide, GMVAEGuide):
        parameters = inspect.signature(guide_class).parameters
        assert set(GUIDE_OPTIONS) <= set(parameters), (guide_class.__name__, set(GUIDE_OPTIONS) - set(parameters))
    counts = torch.poisson(torch.full((8, 20), 3.0))
    for guide in (VMFGuide(20, 4, (16, 8), "tanh", input_transform="log1p", batch_norm=True, dropout=0.1),
                  DeltaGuide(20, 4, (16, 8), batch_norm=True, dropout=0.1),
                  GMVAEGuide(20, 3, (16, 8), num_components=4, encoder=nn.Linear(20, 8))):
        assert guide.encode(counts).batch_shape == (8,)


"""Guides: swapped on one model, a mismatched pair refused with a clear error, one set of construction arguments."""

import pyro.distributions as dist
import pytest
import torch
from pyrovae.guides import AmortizedGuide, DeltaGuide, GMVAEGuide, NormalGuide, VMFGuide
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



@pytest.mark.parametrize("make", [lambda: NormalGuide(20, 2, encoder=nn.Linear(20, 3)),  # 4: a scale shared silently
                                  lambda: VMFGuide(20, 3, encoder=nn.Linear(20, 5)),
                                  lambda: DeltaGuide(20, 2, encoder=nn.Linear(20, 3)),
                                  lambda: GMVAEGuide(20, 2, (16, 8), num_components=3, encoder=nn.Linear(20, 6))],
                         ids=["normal", "vmf", "delta", "gmvae"])
def test_a_custom_encoder_of_the_wrong_width_is_named(make):
    """NormalGuide with a 3-wide encoder for z_dim = 2 split it into a loc of 2 and one scale broadcast over both,
    and trained silently; other widths failed inside torch's split or unpacking."""
    guide = make()
    needed = {"NormalGuide": 4, "VMFGuide": 4, "DeltaGuide": 2, "GMVAEGuide": 8}[type(guide).__name__]
    with pytest.raises(ValueError, match=rf"{type(guide).__name__}: the encoder returns \d features per datum, and "
                                         rf"this guide reads {needed} from it: build the custom encoder with {needed}"):
        guide(torch.poisson(torch.full((8, 20), 3.0)))

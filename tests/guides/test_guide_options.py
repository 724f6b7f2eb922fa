"""The guides' construction options are defined once, in AmortizedGuide, and forwarded: every
guide lists them in one order with one set of defaults, a new guide is a few lines, and old call
forms fail with a clear error."""

import inspect

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from pyrovae.guides import (
    AmortizedGuide,
    DeltaGuide,
    FlowGuide,
    GMVAEGuide,
    NormalGuide,
    PowerSphericalGuide,
    VMFGuide,
)
from pyrovae.guides.base import EncoderOptions
from pyrovae.models import VAE
from torch import nn

from pyrovae.likelihoods import get_likelihood

GUIDES = (NormalGuide, DeltaGuide, VMFGuide, PowerSphericalGuide, GMVAEGuide, FlowGuide)
OWN_OPTIONS = {
    NormalGuide: {"min_scale"},
    DeltaGuide: set(),
    VMFGuide: set(),
    PowerSphericalGuide: set(),
    GMVAEGuide: {"num_components", "min_scale", "classification_weight", "feature_batch_norm", "classifier_hidden"},
    FlowGuide: {"min_scale", "flow", "num_flows", "flow_hidden", "context_dim"},
}


def _shared():
    parameters = inspect.signature(AmortizedGuide).parameters
    return {name: p for name, p in parameters.items() if name not in ("x_dim", "z_dim")}


@pytest.mark.parametrize("guide_class", GUIDES, ids=lambda c: c.__name__)
def test_every_guide_lists_the_shared_options_with_the_base_class_defaults(guide_class):
    parameters = inspect.signature(guide_class).parameters
    assert list(parameters)[:5] == ["x_dim", "z_dim", "hidden", "activation", "encoder"]
    for name in ("x_dim", "z_dim"):  # required in every built-in guide
        assert parameters[name].default is inspect.Parameter.empty
    for name, shared in _shared().items():
        assert parameters[name].kind == shared.kind, name
        assert parameters[name].default == shared.default, name
    own = {name for name in parameters if name not in _shared() and name not in ("x_dim", "z_dim")}
    assert own == OWN_OPTIONS[guide_class]
    assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in own)


@pytest.mark.parametrize("guide_class", GUIDES, ids=lambda c: c.__name__)
def test_every_guide_checks_and_keeps_the_shared_options(guide_class):
    own = {"num_components": 3} if guide_class is GMVAEGuide else {}
    guide = guide_class(10, 3, [8, 6], "tanh", input_transform="log1p", batch_norm=True,
                        dropout=0.25, **own)
    assert guide.encoder_options == EncoderOptions((8, 6), "tanh", None, "log1p", False, True, 0.25)
    who = guide_class.__name__
    with pytest.raises(ValueError, match=f"{who}: dropout must be a finite number >= 0 and < 1"):
        guide_class(10, 3, dropout=1.5, **own)
    with pytest.raises(ValueError, match="input_transform must be None or 'log1p'"):
        guide_class(10, 3, input_transform="log", **own)
    with pytest.raises(TypeError, match=f"{who} encoder must be an nn.Module"):
        guide_class(10, 3, encoder="mlp", **own)


class LaplaceGuide(AmortizedGuide):
    """The example of guides/base.py's docstring: a new guide in a few lines."""

    def __init__(self, x_dim: int, z_dim: int, *args, **options) -> None:
        super().__init__(x_dim, z_dim, *args, **options)
        self.build_encoder(2 * self.z_dim)

    def encode(self, x, cat=None, cont=None):
        loc, raw_scale = self.encoded(x, cat, cont).split(self.z_dim, dim=-1)
        return dist.Laplace(loc, nn.functional.softplus(raw_scale) + 1e-5).to_event(1)


def test_a_new_guide_is_a_few_lines_and_takes_every_shared_option():
    parameters = list(inspect.signature(LaplaceGuide).parameters)
    assert parameters == list(inspect.signature(DeltaGuide).parameters)
    guide = LaplaceGuide(12, 2, (8,), categorical=(3,), input_transform="log1p",
                         latent_library=True)
    assert guide.library_encoder is not None and guide.covariates.size == 3
    likelihood = get_likelihood("poisson", 12, library="latent", library_prior=(3.0, 0.5))
    model = VAE(12, 2, hidden=(8,), likelihood=likelihood, categorical=(3,))
    x = torch.poisson(torch.full((16, 12), 2.0))
    cat = torch.randint(0, 3, (16, 1))
    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, cat) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(name.startswith("LaplaceGuide") for name in pyro.get_param_store().keys())


def test_a_subclass_of_a_guide_lists_what_it_forwards():
    class WideNormalGuide(NormalGuide):
        def __init__(self, x_dim: int, z_dim: int, *args, width: int = 64, **options) -> None:
            super().__init__(x_dim, z_dim, (width,), *args, **options)

    parameters = inspect.signature(WideNormalGuide).parameters
    assert "width" in parameters and "min_scale" in parameters and "name" in parameters
    assert WideNormalGuide(10, 2, width=5, min_scale=1e-3).encoder_options.hidden == (5,)


def test_a_guide_with_its_own_network_may_still_call_the_base_class_bare():
    class Bare(AmortizedGuide):
        def __init__(self, name=None):
            super().__init__(name=name)
            self.x_dim, self.z_dim = 4, 2
            self.net = nn.Linear(4, 2)

        def encode(self, x):
            return dist.Normal(self.net(x), 1.0).to_event(1)

    guide = Bare("bare")
    # none of the base class's modules (encoder, covariates)
    assert [name for name, _ in guide.named_children()] == ["net"]
    assert guide.encode(torch.zeros(3, 4)).batch_shape == (3,)
    fix = r"pass a name by keyword: super\(\).__init__\(name='bare'\)"
    with pytest.raises(TypeError, match=fix):
        AmortizedGuide("bare")


def test_the_call_forms_before_0_7_fail_with_the_argument_to_move():
    missing = "missing 1 required keyword-only argument: 'num_components'"
    with pytest.raises(TypeError, match=missing):
        GMVAEGuide(10, 2, 3, (8,))  # num_components was third
    with pytest.raises(TypeError, match=missing):
        GMVAEGuide(10, 2, 3, hidden=(8,))
    with pytest.raises(TypeError, match="positional arguments"):
        FlowGuide(10, 2, (8,), "relu", None, 1e-3)  # min_scale was sixth
    assert GMVAEGuide(10, 2, (8,), num_components=3).num_components == 3

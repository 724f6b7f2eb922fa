"""Every number a model, guide or trunk is built with is checked where it is given (issue 24): a ValueError names
the owner, the argument, what was expected and what was given, before any network is built."""

import inspect
import math

import numpy as np
import pytest
import torch
from pyrovae.guides import DeltaGuide, FlowGuide, GMVAEGuide, NormalGuide, PowerSphericalGuide, VMFGuide
from pyrovae.models import GMVAE, SVAE, VAE

from pyrovae import make_pair
from pyrovae.likelihoods import Bernoulli, Likelihood, get_likelihood, likelihood_names, register_likelihood
from pyrovae.nn import MLP, ConvDecoder, ConvEncoder
from pyrovae.nn.covariates import ConditionalMLP, Covariates

D = 12
CASES = {
    "x_dim-half": (lambda: VAE(784.5, 3), r"VAE: x_dim must be an integer >= 1, got 784.5 \(float\)"),
    "x_dim-float": (lambda: VAE(784.0, 3), r"x_dim must be an integer >= 1, got 784.0 .*pass an int"),
    "x_dim-string": (lambda: VAE("784", 3), r"x_dim must be an integer >= 1, got '784' .*pass the number, 784"),
    "x_dim-zero": (lambda: VAE(0, 3), "VAE: x_dim must be an integer >= 1, got 0"),
    "x_dim-bool": (lambda: VAE(True, 3), "x_dim must be an integer >= 1, got True"),
    "x_dim-tensor": (lambda: VAE(torch.tensor(12), 3), r"pass a Python int"),
    "z_dim-negative": (lambda: VAE(D, -2), "VAE: z_dim must be an integer >= 1, got -2"),
    "hidden-zero": (lambda: VAE(D, 3, (8, 0)), r"VAE: hidden\[1\] must be an integer >= 1, got 0"),
    "hidden-float": (lambda: VAE(D, 3, (8.5,)), r"hidden\[0\] must be an integer >= 1, got 8.5"),
    "hidden-string": (lambda: VAE(D, 3, "400"), "hidden must be a sequence of positive integer widths"),
    "dropout-one": (lambda: VAE(D, 3, dropout=1.0), r"dropout must be a finite number >= 0 and < 1, got 1.0"),
    "name-divider": (lambda: VAE(D, 3, name="a$$$b"), "name must be a non-empty string without"),
    "name-empty": (lambda: NormalGuide(D, 3, name=""), "name must be a non-empty string"),
    "svae-z_dim-one": (lambda: SVAE(D, 1), r"SVAE: z_dim \(the sphere's ambient dimension\) must be an integer >= 2"),
    "svae-z_dim-float": (lambda: SVAE(D, 3.0), r"z_dim \(the sphere's ambient dimension\) must be an integer"),
    "gmvae-components-zero": (lambda: GMVAE(D, 2, 0), "GMVAE: num_components must be an integer >= 1, got 0"),
    "gmvae-components-float": (lambda: GMVAE(D, 2, 2.5), "num_components must be an integer >= 1, got 2.5"),
    "gmvae-spread-zero": (lambda: GMVAE(D, 2, 3, init_spread=0.0), "init_spread must be a finite number > 0, got 0.0"),
    "gmvae-spread-negative": (lambda: GMVAE(D, 2, 3, init_spread=-1.0), "init_spread must be a finite number > 0"),
    "gmvae-spread-nan": (lambda: GMVAE(D, 2, 3, init_spread=math.nan), "init_spread must be a finite number > 0"),
    "gmvae-guide-components": (lambda: GMVAEGuide(D, 2, (8,), num_components=0),
                               "GMVAEGuide: num_components must be an integer"),
    "gmvae-guide-no-hidden": (lambda: GMVAEGuide(D, 2, (), num_components=3),
                              "GMVAEGuide needs at least one hidden layer"),
    "gmvae-guide-min-scale": (lambda: GMVAEGuide(D, 2, (8,), num_components=3, min_scale=0.0),
                              "min_scale must be a finite num"),
    "gmvae-guide-alpha": (lambda: GMVAEGuide(D, 2, (8,), num_components=3, classification_weight=-1.0),
                          "classification_weight must be a finite number >= 0"),
    "normal-min-scale-zero": (lambda: NormalGuide(D, 3, min_scale=0.0), "NormalGuide: min_scale must be a finite"),
    "normal-min-scale-negative": (lambda: NormalGuide(D, 3, min_scale=-1e-3), "min_scale must be a finite number > 0"),
    "normal-min-scale-inf": (lambda: NormalGuide(D, 3, min_scale=math.inf), "min_scale must be a finite number > 0"),
    "normal-x_dim": (lambda: NormalGuide(12.5, 3), "NormalGuide: x_dim must be an integer >= 1, got 12.5"),
    "normal-hidden": (lambda: NormalGuide(D, 3, (-4,)), r"NormalGuide: hidden\[0\] must be an integer >= 1"),
    "delta-z_dim": (lambda: DeltaGuide(D, 0), "DeltaGuide: z_dim must be an integer >= 1, got 0"),
    "vmf-z_dim": (lambda: VMFGuide(D, 1), r"VMFGuide: z_dim \(the sphere's ambient dimension\) must be an integer"),
    "power-z_dim": (lambda: PowerSphericalGuide(D, 3.5), r"z_dim \(the sphere's ambient dimension\) must be"),
    "flow-num-flows": (lambda: FlowGuide(D, 3, num_flows=0), "FlowGuide: num_flows must be an integer >= 1, got 0"),
    "flow-context": (lambda: FlowGuide(D, 3, context_dim=0), "FlowGuide: context_dim must be an integer >= 1"),
    "flow-min-scale": (lambda: FlowGuide(D, 3, min_scale=-1.0), "FlowGuide: min_scale must be a finite number > 0"),
    "flow-hidden": (lambda: FlowGuide(D, 3, flow_hidden=(0,)), r"flow_hidden\[0\] must be an integer >= 1"),
    "mlp-out": (lambda: MLP(4, (8,), 0), "MLP: out_features must be an integer >= 1, got 0"),
    "mlp-dropout": (lambda: MLP(4, (8,), 2, dropout=-0.1), "MLP: dropout must be a finite number >= 0"),
    "conditional-side": (lambda: ConditionalMLP(4, 0, (8,), 3), "ConditionalMLP: side_features must be an integer"),
    "covariates-levels-float": (lambda: Covariates((2.5,)), r"categorical\[0\] \(its number of levels\) must be an"),
    "covariates-levels-zero": (lambda: Covariates((3, 0)), r"categorical\[1\] \(its number of levels\) must be an"),
    "covariates-continuous": (lambda: Covariates((), -1), "continuous .* must be an integer >= 0, got -1"),
    "covariates-string": (lambda: Covariates("batch"), "categorical must list the number of levels"),
    "conv-channels": (lambda: ConvEncoder(10, channels=(0, 8)), r"ConvEncoder: channels\[0\] must be an integer"),
    "conv-kernel": (lambda: ConvDecoder(5, kernel_size=1), "ConvDecoder: kernel_size must be an integer >= 2, got 1"),
    "conv-image": (lambda: ConvEncoder(10, image_shape=(1, 28.0, 28)), r"image_shape\[1\] must be an integer"),
    "pair-latent": (lambda: make_pair("vae", D, 0), "make_pair: latent_dim must be an integer >= 1, got 0"),
    "pair-name": (lambda: make_pair("vae", D, 2, name=""), "make_pair: name must be a non-empty string"),
    "pair-library-latent": (lambda: make_pair("vae", D, 2, likelihood="nb", likelihood_options={"library": "latent"},
                                              latent_library=False),
                            "the likelihood's library size is latent, so the guide must encode it"),
    "pair-library-observed": (lambda: make_pair("vae", D, 2, likelihood="nb", latent_library=True),
                              "the likelihood's is observed .* leave latent_library unset"),
}


@pytest.mark.parametrize("kind", ["vae", "svae-vmf", "gmvae"])
def test_make_pair_gives_the_guide_a_library_size_where_the_likelihood_has_a_latent_one(kind):
    options = {"num_components": 3} if kind == "gmvae" else {}
    model, guide = make_pair(kind, D, 2, (8,), "nb", likelihood_options={"library": "latent"}, **options)
    assert guide.library_encoder is not None and model.pair_arguments["latent_library"] is True
    model, guide = make_pair(kind, D, 2, (8,), "nb", **options)
    assert guide.library_encoder is None and model.pair_arguments["latent_library"] is False


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_construction_number_is_named(case):
    build, message = CASES[case]
    with pytest.raises(ValueError, match=message):
        build()


def test_integers_of_any_integer_type_are_accepted():
    model = VAE(np.int64(D), np.int32(3), (np.int64(8),))
    guide = GMVAEGuide(np.int64(D), 3, [8], num_components=np.int16(4), min_scale=np.float32(1e-4))
    assert (model.x_dim, model.z_dim, guide.num_components) == (D, 3, 4)
    assert all(type(v) is int for v in (model.x_dim, model.z_dim, guide.num_components))
    assert isinstance(guide.min_scale, float) and guide.min_scale == pytest.approx(1e-4)


def test_every_guide_lists_its_positional_arguments_in_one_order():
    """x_dim, z_dim, hidden, activation, encoder in every guide; a guide's own options are keyword-only."""
    common = ["x_dim", "z_dim", "hidden", "activation", "encoder"]
    for guide_class in (NormalGuide, DeltaGuide, VMFGuide, PowerSphericalGuide, FlowGuide, GMVAEGuide):
        positional = [name for name, p in inspect.signature(guide_class).parameters.items()
                      if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        assert positional == common, guide_class.__name__
        assert "name" in inspect.signature(guide_class).parameters
    trunk = torch.nn.Linear(D, 8)
    guide = GMVAEGuide(D, 2, (8,), "tanh", trunk, num_components=3, min_scale=1e-3)
    assert guide.encoder is trunk and guide.min_scale == 1e-3
    with pytest.raises(TypeError, match="num_components"):  # the order before 0.7: num_components third
        GMVAEGuide(D, 2, 3, (8,))
    with pytest.raises(TypeError, match="positional"):  # min_scale is a keyword
        NormalGuide(D, 2, (8,), "tanh", None, 1e-3)


def test_register_likelihood_refuses_to_replace_a_name_unless_asked():
    with pytest.raises(ValueError, match=r"'bernoulli' is already registered .*Bernoulli.*overwrite=True"):
        @register_likelihood("bernoulli")
        class NotBernoulli(Likelihood):
            pass
    assert isinstance(get_likelihood("bernoulli", 3), Bernoulli)  # the built-in one still answers to its name

    class Shouting(Bernoulli):
        pass

    try:
        register_likelihood("bernoulli", overwrite=True)(Shouting)
        assert type(get_likelihood("bernoulli", 3)) is Shouting
    finally:
        register_likelihood("bernoulli", overwrite=True)(Bernoulli)
    assert type(get_likelihood("bernoulli", 3)) is Bernoulli
    register_likelihood("bernoulli")(Bernoulli)  # the same class again (a reloaded module) is no replacement
    with pytest.raises(ValueError, match="non-empty string name"):
        register_likelihood("")
    assert "bernoulli" in likelihood_names()

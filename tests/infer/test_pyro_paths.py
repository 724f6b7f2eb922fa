"""Pyro's own idioms on pyrovae pairs keep the contract (issue 24): a mismatched pair is refused under Pyro's SVI
and Predictive as under train, Predictive draws from the prior without data, and data a model cannot take are named
with the fix (the saved param store: test_pyro_param_store.py)."""

import warnings

import numpy as np
import pyro
import pyro.infer as pinfer
import pytest
import torch
from pyro import poutine
from pyrovae.guides import GMVAEGuide, NormalGuide, PowerSphericalGuide, VMFGuide
from pyrovae.models import GMVAE, SVAE, VAE
from torch import nn

from pyrovae.infer import contract
from pyrovae.likelihoods import get_likelihood
from tests.infer.pyro_pairs import ELBOS, X_DIM, binary, svi

# ---- 1. the pairing checks under Pyro's SVI and Predictive ----------------------------------------------------

MISMATCHED = {
    "svae-normal": (lambda: (SVAE(X_DIM, 3, (8,)), NormalGuide(X_DIM, 3, (8,))), "lives on Sphere"),
    "vae-vmf": (lambda: (VAE(X_DIM, 3, (8,)), VMFGuide(X_DIM, 3, (8,))), "has support Sphere"),
    "vae-wider-latent": (lambda: (VAE(X_DIM, 3, (8,)), NormalGuide(X_DIM, 4, (8,))), r"event shape \(3,\)"),
    "gmvae-fewer-components": (lambda: (GMVAE(X_DIM, 2, 4, (8,)), GMVAEGuide(X_DIM, 2, (8,), num_components=3)),
                               "takes values 0..2 and the model 0..3"),
    "gmvae-more-components": (lambda: (GMVAE(X_DIM, 2, 4, (8,)), GMVAEGuide(X_DIM, 2, (8,), num_components=5)),
                              "takes values 0..4 and the model 0..3"),
    "gmvae-normal-guide": (lambda: (GMVAE(X_DIM, 2, 4, (8,)), NormalGuide(X_DIM, 2, (8,))),
                           "latent site 'y' has no counterpart"),
}


def test_pyros_reparam_and_scoped_names_train_under_svi():
    """A guide trace without the model's latent names is not judged: poutine.reparam's guide samples z_decentered,
    a scoped model's guide vae/z, and both are Pyro programs that train."""
    from pyro.contrib.autoname import scope
    from pyro.infer.autoguide import AutoNormal
    from pyro.infer.reparam import LocScaleReparam

    for model in (poutine.reparam(VAE(X_DIM, 3, (8,)), {"z": LocScaleReparam(0.0)}),
                  scope(VAE(X_DIM, 3, (8,)), prefix="vae")):
        pyro.clear_param_store()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.isfinite(svi(model, AutoNormal(model)).step(binary()))


@pytest.mark.parametrize("elbo", list(ELBOS))
@pytest.mark.parametrize("pair", list(MISMATCHED))
def test_pyros_svi_refuses_a_mismatched_pair_on_its_first_step(pair, elbo):
    make, message = MISMATCHED[pair]
    model, guide = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=message):
            svi(model, guide, elbo).step(binary())


@pytest.mark.parametrize("elbo", list(ELBOS))
def test_pyros_svi_refuses_covariates_of_other_levels(elbo):
    cat = torch.randint(0, 2, (16, 1), generator=torch.Generator().manual_seed(0))  # valid for both sides
    model, guide = VAE(X_DIM, 3, (8,), categorical=(3,)), NormalGuide(X_DIM, 3, (8,), categorical=(2,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"categorical=\(3,\).*guide with categorical=\(2,\)"):
            svi(model, guide, elbo).step(binary(), cat)


@pytest.mark.parametrize("elbo", ["TraceEnum_ELBO", "JitTraceEnum_ELBO"])
def test_enumeration_over_the_data_plate_is_named(elbo):
    """max_plate_nesting=0 would enumerate the GMVAE's component on the data plate's dimension (a size mismatch)."""
    model, guide = GMVAE(X_DIM, 2, 3, (8,)), GMVAEGuide(X_DIM, 2, (8,), num_components=3)
    step = pinfer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), getattr(pinfer, elbo)(max_plate_nesting=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"enumeration was set to start at dim -1, the plate's own: pass "
                                             r"max_plate_nesting=1"):
            step.step(binary())


def test_a_component_summed_out_in_the_model_pairs_with_a_guide_of_z_alone():
    """Pyro's idiom (its mixture tutorials): config_enumerate on the model and TraceEnum_ELBO sum y out there, so
    a guide of z alone (an autoguide, a plain NormalGuide) is its pair under SVI. Without the enumeration, or where
    pyrovae scores the ELBO by the guide's latents (train, evaluate, log_likelihood), it is refused by name."""
    from pyro.infer.autoguide import AutoNormal

    from pyrovae.infer import log_likelihood, train

    model = pinfer.config_enumerate(GMVAE(X_DIM, 2, 3, (8,)), "parallel")
    for guide in (AutoNormal(poutine.block(model, hide=["y"])), NormalGuide(X_DIM, 2, (8,))):
        pyro.clear_param_store()
        step = pinfer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pinfer.TraceEnum_ELBO(max_plate_nesting=1))
        assert all(np.isfinite(step.step(binary())) for _ in range(2))
    unsummed = pinfer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pinfer.Trace_ELBO())  # the same pair
    with pytest.raises(ValueError, match=r"'y' has no counterpart in the guide .* config_enumerate\(model\) and "
                                         r"TraceEnum_ELBO"):
        unsummed.step(binary())
    # a config of Pyro's usual kind, reading more of the site than its name and distribution: with a guide of y
    # (it crashed the check, which asked it about a bare message) and with a guide of z alone
    plated = poutine.infer_config(GMVAE(X_DIM, 2, 3, (8,)), lambda site: (
        {"enumerate": "parallel"} if site["type"] == "sample" and not site["is_observed"]
        and site["cond_indep_stack"] and site["fn"].has_enumerate_support else {}))
    for guide in (GMVAEGuide(X_DIM, 2, (8,), num_components=3), NormalGuide(X_DIM, 2, (8,))):
        pyro.clear_param_store()
        step = pinfer.SVI(plated, guide, pyro.optim.Adam({"lr": 1e-2}), pinfer.TraceEnum_ELBO(max_plate_nesting=1))
        assert np.isfinite(step.step(binary()))
    for use in (lambda g: train(model, g, binary(), epochs=1, elbo="enum", progress=False, eval_size=0),
                lambda g: log_likelihood(model, g, binary(), num_samples=4)):
        with pytest.raises(ValueError, match=r"the model sums \['y'\] out \(config_enumerate\) and the guide does "
                                             r"not sample it: Pyro's SVI with TraceEnum_ELBO trains such a pair"):
            use(NormalGuide(X_DIM, 2, (8,)))


@pytest.mark.parametrize("pair", ["svae-normal", "vae-wider-latent", "gmvae-more-components"])
def test_predictive_with_a_mismatched_guide_is_refused(pair):
    """Predictive hands the model the guide's values only: those off the prior's support or of another shape are
    refused (a vMF guide's unit vectors are valid values of a Normal prior, and cannot be told apart)."""
    make, _ = MISMATCHED[pair]
    model, guide = make()
    with pytest.raises(ValueError, match="outside the support|event shape"):
        pinfer.Predictive(model, guide=guide, num_samples=3)(binary())


def test_the_pairing_check_runs_once_per_pair_and_kind_of_guide(monkeypatch):
    calls = []
    original = contract.check_sites
    monkeypatch.setattr(contract, "check_sites", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    model, guide = SVAE(X_DIM, 3, (8,)), VMFGuide(X_DIM, 3, (8,))
    runner = svi(model, guide)
    for _ in range(4):
        runner.step(binary())
    assert len(calls) == 1
    runner = svi(model, PowerSphericalGuide(X_DIM, 3, (8,)))  # another guide: checked once more
    for _ in range(3):
        runner.step(binary())
    assert len(calls) == 2


def test_a_plain_function_guide_with_pyro_module_and_pyro_param_pairs_with_our_model():
    pyro.clear_param_store()
    model = VAE(X_DIM, 2, (8,))
    encoder = nn.Linear(X_DIM, 2)

    def guide(x):
        pyro.module("encoder", encoder)
        scale = pyro.param("scale", torch.ones(2), constraint=pyro.distributions.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(encoder(x), scale).to_event(1))

    x = binary(64)
    for elbo in ("Trace_ELBO", "JitTrace_ELBO"):
        runner = svi(model, guide, elbo, lr=3e-2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            losses = [runner.step(x) for _ in range(60)]
        assert np.mean(losses[-10:]) < np.mean(losses[:10]), elbo

    def sphere_guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", pyro.distributions.Normal(encoder(x), 1.0).to_event(1))

    with pytest.raises(ValueError, match="Sphere"):  # a plain function on the wrong support is refused too
        svi(SVAE(X_DIM, 2, (8,)), sphere_guide).step(x)


# ---- 2. the prior predictive without data --------------------------------------------------------------------

def test_predictive_without_data_draws_from_the_prior():
    model = VAE(X_DIM, 3, (8,))
    draws = pinfer.Predictive(model, num_samples=200)(num_data=50)
    assert draws["z"].shape == (200, 50, 3) and draws["x"].shape == (200, 50, X_DIM)
    z = draws["z"].reshape(-1, 3)
    standard_error = 1 / np.sqrt(z.shape[0])  # N(0, 1): mean 0, variance 1 (sd of the variance estimate sqrt 2/n)
    assert z.mean(0).abs().max() < 4 * standard_error
    assert (z.var(0) - 1).abs().max() < 4 * np.sqrt(2) * standard_error
    assert set(draws["x"].unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(model(None, num_data=7) or 7, 7)  # the plain call without data runs too


@pytest.mark.parametrize("kind", ["svae", "gmvae", "latent-library"])
def test_predictive_without_data_for_every_kind_of_model(kind):
    if kind == "svae":
        model = SVAE(X_DIM, 4, (8,))
    elif kind == "gmvae":
        model = GMVAE(X_DIM, 2, 3, (8,))
    else:
        likelihood = get_likelihood("nb", X_DIM, library="latent", library_prior=(2.0, 0.5))
        model = VAE(X_DIM, 2, (8,), likelihood=likelihood)
    draws = pinfer.Predictive(model, num_samples=5)(num_data=6)
    assert draws["x"].shape == (5, 6, X_DIM)
    if kind == "svae":
        torch.testing.assert_close(draws["z"].norm(dim=-1), torch.ones(5, 6))
    if kind == "gmvae":
        assert draws["y"].shape == (5, 6) and set(draws["y"].unique().tolist()) <= {0, 1, 2}
    if kind == "latent-library":
        assert (draws["library"] > 0).all() and (draws["x"] >= 0).all()


def test_predictive_without_data_or_num_data_names_the_fix():
    with pytest.raises(ValueError, match=r"num_data.*Predictive\(model, num_samples=4\)\(num_data=10\).*sample\(10\)"):
        pinfer.Predictive(VAE(X_DIM, 3, (8,)), num_samples=4)()
    observed = VAE(X_DIM, 3, (8,), likelihood=get_likelihood("nb", X_DIM))
    with pytest.raises(ValueError, match=r"observed library size.*model.sample\(n, library=...\)"):
        pinfer.Predictive(observed, num_samples=4)(num_data=3)
    with pytest.raises(ValueError, match="num_data must be an integer >= 1"):
        VAE(X_DIM, 3, (8,))(None, num_data=2.5)


def test_predictive_with_covariates_takes_the_number_of_data_from_them():
    likelihood = get_likelihood("nb", X_DIM, library="latent", library_prior=(2.0, 0.5), dispersion="gene-batch")
    model = VAE(X_DIM, 2, (8,), likelihood=likelihood, categorical=(3,), continuous=1)
    cat, cont = torch.tensor([[0], [2], [1], [1]]), torch.randn(4, 1)
    draws = pinfer.Predictive(model, num_samples=2)(None, cat, cont)
    assert draws["x"].shape == (2, 4, X_DIM) and draws["library"].shape == (2, 4)
    with pytest.raises(ValueError, match=r"expected cat of shape \(5, 1\)"):
        pinfer.Predictive(model, num_samples=2)(None, cat, cont, num_data=5)


# ---- 3. data a model cannot take, under Pyro's SVI --------------------------------------------------------------

BAD_DATA = {
    "int": (lambda x: x.long(), TypeError, r"got torch.int64; cast it with x.to\(torch.float32\) \(x.float\(\)"),
    "float64": (lambda x: x.double(), TypeError, r"float32 parameters but was given torch.float64 .*x.float\(\)"),
    "nan": (lambda x: x.index_put_((torch.tensor(3), torch.tensor(5)), torch.tensor(float("nan"))), ValueError,
            "nan at row 3, column 5"),
    "vector": (lambda x: x[0], ValueError, r"got \(12,\): a single datum: add a batch dimension with x.unsqueeze\(0\)"),
    "images": (lambda x: x.reshape(16, 3, 4), ValueError, r"flatten each datum .* x.flatten\(1\)"),
    "numpy": (lambda x: x.numpy(), TypeError, r"torch.Tensor .* got ndarray; convert it with torch.as_tensor"),
    "width": (lambda x: x[:, :5], ValueError, r"expected data of shape \(batch, 12\), got \(16, 5\)"),
    "empty": (lambda x: x[:0], ValueError, r"given an empty batch, of shape \(0, 12\): pass at least one datum"),
}


@pytest.mark.parametrize("elbo", ["Trace_ELBO", "JitTrace_ELBO"])
@pytest.mark.parametrize("case", list(BAD_DATA))
def test_data_a_pair_cannot_take_are_named_with_the_fix_under_svi(case, elbo):
    make, error, message = BAD_DATA[case]
    model, guide = VAE(X_DIM, 3, (8,)), NormalGuide(X_DIM, 3, (8,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error, match=message):
            svi(model, guide, elbo).step(make(binary()))
    with pytest.raises(error, match=message):  # the model alone (Predictive, poutine) says the same
        poutine.trace(model).get_trace(make(binary()))


def test_values_outside_the_likelihoods_support_are_named_under_svi():
    with pytest.raises(ValueError, match="bernoulli likelihood needs 0/1 data"):
        svi(VAE(X_DIM, 3, (8,)), NormalGuide(X_DIM, 3, (8,))).step(binary() * 0.5)
    counts = VAE(X_DIM, 3, (8,), likelihood="poisson")
    with pytest.raises(ValueError, match="non-negative integer counts"):
        svi(counts, NormalGuide(X_DIM, 3, (8,))).step(-binary())
    log1p = NormalGuide(X_DIM, 3, (8,), input_transform="log1p")  # the guide, run first, reads the data first
    with pytest.raises(ValueError, match=r"encodes log\(1 \+ x\) .* hold -1.0 at row \d+, column \d+: pass the raw"):
        svi(counts, log1p).step(-binary())
    with pytest.raises(ValueError, match=r"encodes log\(1 \+ x\)"):  # the guide alone, as Predictive runs it
        poutine.trace(log1p).get_trace(-binary())


def test_value_checks_read_each_data_tensor_once_and_only_while_validating(monkeypatch):
    model, guide = VAE(X_DIM, 3, (8,)), NormalGuide(X_DIM, 3, (8,))
    calls = []
    check = model.likelihood.check_data
    monkeypatch.setattr(model.likelihood, "check_data", lambda x: (calls.append(1), check(x))[1])
    runner, x = svi(model, guide), binary()
    for _ in range(3):
        runner.step(x)
    assert len(calls) == 1  # one data tensor, read once
    runner.step(binary(seed=1))
    assert len(calls) == 2  # another one is read again
    with pyro.validation_enabled(False):
        runner.step(binary(seed=2))
    assert len(calls) == 2  # no host round trip with validation off


@pytest.mark.parametrize("kind, likelihood", [("vae", "bernoulli"), ("svae-vmf", "bernoulli"),
                                              ("svae-power", "bernoulli"), ("gmvae", "bernoulli"), ("vae", "poisson"),
                                              ("vae", "nb"), ("vae", "zip"), ("gmvae", "zinb")])
def test_pyros_jit_elbos_trace_every_pair_without_a_warning(kind, likelihood):
    """The shape checks of encoders and decoders, and the sparse path of the count likelihoods, stay out of a
    traced step: no TracerWarning from pyrovae's code (torch's own binary cross-entropy compares sizes under the
    trace too: not ours to silence)."""
    from pyrovae import make_pair

    pyro.clear_param_store()
    model, guide = make_pair(kind, X_DIM, 2, (8,), likelihood, **({"num_components": 3} if kind == "gmvae" else {}),
                             input_transform=None if likelihood == "bernoulli" else "log1p")
    elbo = pinfer.JitTraceEnum_ELBO(max_plate_nesting=1) if kind == "gmvae" else pinfer.JitTrace_ELBO()
    step = pinfer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    data = binary() if likelihood == "bernoulli" else counts(0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert all(np.isfinite(step.step(data)) for _ in range(2))
    ours = [f"{w.filename}:{w.lineno}" for w in caught if issubclass(w.category, torch.jit.TracerWarning)
            and "site-packages" not in w.filename]
    assert not ours


def counts(rate: float, seed: int = 0) -> torch.Tensor:
    """Poisson counts with at least one count per row (a cell without counts has no library size)."""
    x = torch.poisson(torch.full((16, X_DIM), rate), generator=torch.Generator().manual_seed(seed))
    x[:, 0] += 1
    return x


@pytest.mark.parametrize("likelihood", ["poisson", "nb", "zip", "zinb"])
def test_pyros_jit_elbo_on_counts_equals_the_plain_elbo_on_data_of_other_sparsity(likelihood):
    """A guard on the count likelihoods' sparse path (non-zero counts gathered by position): traced on sparse data,
    the trace still holds for dense data (the step draws the same latents: Trace_ELBO's loss to float rounding).
    An example batch without any count, the one case a traced branch on the count would freeze, cannot be traced:
    a cell without counts is refused."""
    from pyrovae import make_pair

    pyro.clear_param_store()
    model, guide = make_pair("vae", X_DIM, 2, (8,), likelihood, input_transform="log1p")
    jit = pinfer.JitTrace_ELBO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pyro.set_rng_seed(0)
        jit.loss_and_grads(model, guide, counts(0.2))  # traced here: most counts are zero
        pyro.set_rng_seed(1)
        traced = jit.loss_and_grads(model, guide, counts(5.0, seed=1))
    pyro.set_rng_seed(1)
    assert traced == pytest.approx(pinfer.Trace_ELBO().loss(model, guide, counts(5.0, seed=1)), rel=1e-6)

"""Pyro's own idioms on pyrovae pairs keep the contract (issue 24): a saved param store reloads into rebuilt
objects, a mismatched pair is refused under Pyro's SVI and Predictive as under train, Predictive draws from the
prior without data, and data a model cannot take are named with the fix."""

import gc
import subprocess
import sys
import textwrap
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

from pyrovae.infer import contract, encode_data, locate
from pyrovae.likelihoods import get_likelihood
from pyrovae.nn import pyro_name

X_DIM = 12
ELBOS = {
    "Trace_ELBO": lambda: pinfer.Trace_ELBO(),
    "JitTrace_ELBO": lambda: pinfer.JitTrace_ELBO(),
    "TraceEnum_ELBO": lambda: pinfer.TraceEnum_ELBO(max_plate_nesting=1),
}


def binary(n=16, seed=0):
    return torch.rand(n, X_DIM, generator=torch.Generator().manual_seed(seed)).round()


def svi(model, guide, elbo="Trace_ELBO", lr=1e-2):
    return pinfer.SVI(model, guide, pyro.optim.Adam({"lr": lr}), ELBOS[elbo]())


def elbo_estimate(model, guide, x, num_particles=2000):
    """A Monte Carlo ELBO with enough particles to tell a trained pair from an untrained one."""
    pyro.set_rng_seed(5)
    loss = pinfer.Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        return -loss.loss(model, guide, x)


def _train_pair(x, steps=150, **names):
    model, guide = VAE(X_DIM, 3, (8,), **names.get("model", {})), NormalGuide(X_DIM, 3, (8,), **names.get("guide", {}))
    runner = svi(model, guide, lr=3e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            runner.step(x)
    return model, guide


# ---- 1. the param store saved and loaded into rebuilt objects -------------------------------------------------

def test_a_saved_store_loads_into_a_rebuilt_pair_in_the_same_process(tmp_path):
    pyro.clear_param_store()
    gc.collect()  # earlier tests' objects, whose names a later collection would free in the middle of this one
    x = binary(64)
    model, guide = _train_pair(x)
    trained = elbo_estimate(model, guide, x)
    saved = {f"{i}.{n}": p.detach().clone() for i, m in enumerate((model, guide)) for n, p in m.named_parameters()}
    pyro.get_param_store().save(tmp_path / "store.pt")
    del model, guide
    gc.collect()  # the script's old objects are gone, as when the cell that built them is run again
    pyro.clear_param_store()
    torch.manual_seed(123)  # other initial values than the saved ones
    model, guide = VAE(X_DIM, 3, (8,)), NormalGuide(X_DIM, 3, (8,))
    untrained = elbo_estimate(model, guide, x)
    pyro.get_param_store().load(tmp_path / "store.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every loaded value reaches a module: no warning
        reloaded = elbo_estimate(model, guide, x)
    for i, m in enumerate((model, guide)):
        for n, p in m.named_parameters():
            assert torch.equal(p, saved[f"{i}.{n}"]), n
    assert reloaded == pytest.approx(trained, abs=1e-4)
    assert untrained < trained - 5  # the check could fail: the rebuilt pair started elsewhere


@pytest.mark.slow
def test_a_saved_store_loads_into_a_rebuilt_pair_in_a_fresh_process(tmp_path):
    x = binary(64)
    model, guide = _train_pair(x)
    pyro.get_param_store().save(tmp_path / "store.pt")
    np.save(tmp_path / "expected.npy", torch.cat([p.detach().flatten() for m in (model, guide)
                                                  for p in m.parameters()]).numpy())
    script = textwrap.dedent(f"""
        import warnings, numpy as np, pyro, torch
        warnings.simplefilter("error")
        from pyrovae.models import VAE
        from pyrovae.guides import NormalGuide
        model, guide = VAE({X_DIM}, 3, (8,)), NormalGuide({X_DIM}, 3, (8,))
        pyro.get_param_store().load({str(tmp_path / "store.pt")!r})
        guide(torch.zeros(1, {X_DIM})); model(torch.zeros(1, {X_DIM}))  # the first calls take the loaded values
        got = torch.cat([p.detach().flatten() for m in (model, guide) for p in m.parameters()]).numpy()
        assert np.array_equal(got, np.load({str(tmp_path / "expected.npy")!r})), "values differ"
        print("restored")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "restored" in result.stdout, result.stderr[-3000:]


def test_default_names_are_stable_unique_among_live_modules_and_copies_are_new():
    import copy

    pyro.clear_param_store()
    gc.collect()
    first, second = VAE(X_DIM, 3, (8,)), VAE(X_DIM, 3, (8,))
    names = {pyro_name(first), pyro_name(second)}
    assert len(names) == 2 and all(n.split("_")[0] == "VAE" for n in names)
    twin = copy.deepcopy(first)
    assert pyro_name(twin) not in names
    runner = svi(twin, NormalGuide(X_DIM, 3, (8,)))
    before = {n: p.detach().clone() for n, p in first.named_parameters()}
    for _ in range(5):
        runner.step(binary())
    assert all(torch.equal(p, before[n]) for n, p in first.named_parameters())  # the copy trains alone
    assert not all(torch.equal(p, before[n]) for n, p in twin.named_parameters())
    del first, second, twin, runner
    gc.collect()
    assert pyro_name(VAE(X_DIM, 3, (8,), name="mine")) == "mine"


def test_two_live_pairs_with_one_explicit_name_are_kept_apart_with_a_warning():
    model = VAE(X_DIM, 3, (8,), name="shared")
    with pytest.warns(UserWarning, match="another live module is named 'shared'"):
        other = VAE(X_DIM, 3, (8,), name="shared")
    assert pyro_name(other) != pyro_name(model) == "shared"
    guide_a, guide_b = NormalGuide(X_DIM, 3, (8,)), NormalGuide(X_DIM, 3, (8,))
    svi(model, guide_a).step(binary())
    frozen = {n: p.detach().clone() for n, p in other.named_parameters()}
    for _ in range(3):
        svi(model, guide_a).step(binary())
    svi(other, guide_b).step(binary())  # registers too, but never takes the first pair's tensors
    store = pyro.get_param_store()
    assert store[pyro_name(model) + "$$$decoder.layers.0.weight"] is model.decoder.layers[0].weight
    assert store[pyro_name(other) + "$$$decoder.layers.0.weight"] is other.decoder.layers[0].weight
    assert not torch.equal(frozen["decoder.layers.0.weight"], model.decoder.layers[0].weight)


def test_a_dead_modules_entries_leave_the_store():
    model = VAE(X_DIM, 3, (8,), name="short_lived")
    svi(model, NormalGuide(X_DIM, 3, (8,))).step(binary())
    assert any(name.startswith("short_lived$$$") for name in pyro.get_param_store().keys())
    del model
    gc.collect()
    assert not any(name.startswith("short_lived$$$") for name in pyro.get_param_store().keys())


def test_loaded_values_that_reach_no_module_are_named_in_a_warning(tmp_path):
    pyro.clear_param_store()
    x = binary()
    model, guide = _train_pair(x, steps=2, model={"name": "saved_model"}, guide={"name": "saved_guide"})
    pyro.get_param_store().save(tmp_path / "store.pt")
    del model, guide
    gc.collect()
    pyro.clear_param_store()
    model, guide = VAE(X_DIM, 3, (8,), name="renamed_model"), NormalGuide(X_DIM, 3, (8,), name="renamed_guide")
    pyro.get_param_store().load(tmp_path / "store.pt")
    with pytest.warns(UserWarning, match="under 'saved_model' .* no live module is named for"):
        svi(model, guide).step(x)


def test_loaded_values_of_another_architecture_are_named(tmp_path):
    pyro.clear_param_store()
    deep = VAE(X_DIM, 3, (8, 8), name="arch")
    deep(binary())
    pyro.get_param_store().save(tmp_path / "store.pt")
    del deep
    gc.collect()
    pyro.clear_param_store()
    shallow = VAE(X_DIM, 3, (8,), name="arch")
    pyro.get_param_store().load(tmp_path / "store.pt")
    with pytest.raises(ValueError, match="another architecture"):  # a shape that differs is an error ...
        shallow(binary())
    pyro.clear_param_store()
    extra = torch.zeros(3)
    pyro.get_param_store()["arch$$$decoder.layers.9.bias"] = extra  # ... a parameter it lacks, a warning
    with pytest.warns(UserWarning, match="parameters it does not have .*decoder.layers.9.bias"):
        shallow(binary())


def test_a_store_loaded_while_the_saved_objects_live_names_who_gets_it(tmp_path):
    pyro.clear_param_store()
    x = binary()
    model, guide = _train_pair(x, steps=2)
    pyro.get_param_store().save(tmp_path / "store.pt")
    new_model = VAE(X_DIM, 3, (8,))  # the old model still lives, so the new one has another name
    pyro.get_param_store().load(tmp_path / "store.pt")
    with pytest.warns(UserWarning, match="the name of another live VAE"):
        new_model(x)
    assert model is not None and guide is not None


def _counts(n=16, seed=0):
    return torch.poisson(torch.full((n, X_DIM), 3.0), generator=torch.Generator().manual_seed(seed))


READERS = {  # what a research script reads from a reloaded pair without ever calling its forward
    "encode_data": (lambda: (VAE(X_DIM, 3, (8,)), NormalGuide(X_DIM, 3, (8,))), binary,
                    lambda m, g, x: encode_data(g, x)),
    "locate": (lambda: (SVAE(X_DIM, 3, (8,)), VMFGuide(X_DIM, 3, (8,))), binary, lambda m, g, x: locate(g, x)),
    "decode": (lambda: (VAE(X_DIM, 3, (8,)), NormalGuide(X_DIM, 3, (8,))), binary,
               lambda m, g, x: m.decode(torch.linspace(-1, 1, 9).reshape(3, 3)).mean),
    "sample": (lambda: (GMVAE(X_DIM, 2, 3, (8,)), GMVAEGuide(X_DIM, 2, (8,), num_components=3)), binary,
               lambda m, g, x: (pyro.set_rng_seed(1), m.sample(4, mean=True))[1]),
    "prior": (lambda: (GMVAE(X_DIM, 2, 3, (8,)), GMVAEGuide(X_DIM, 2, (8,), num_components=3)), binary,
              lambda m, g, x: m.prior().log_prob(torch.ones(2))),
    "classify": (lambda: (GMVAE(X_DIM, 2, 3, (8,)), GMVAEGuide(X_DIM, 2, (8,), num_components=3)), binary,
                 lambda m, g, x: g.classify(x)),
    "latent library": (lambda: (VAE(X_DIM, 3, (8,), likelihood=get_likelihood("nb", X_DIM, library="latent",
                                                                    library_prior=(4.0, 0.3))),
                                NormalGuide(X_DIM, 3, (8,), latent_library=True)), _counts,
                       lambda m, g, x: g.encode_library(x).mean),
    "decoder_outputs": (lambda: (VAE(X_DIM, 3, (8,), "nb"), NormalGuide(X_DIM, 3, (8,))), _counts,
                        lambda m, g, x: m.likelihood.proportions(m.decoder_outputs(torch.zeros(3)))),
}


@pytest.mark.parametrize("reader", list(READERS))
def test_a_loaded_store_is_what_every_reader_of_the_weights_sees(tmp_path, reader):
    """Not only forward: encode, decode, prior, sample and the analyses built on them take the loaded values."""
    build, data, read = READERS[reader]
    pyro.clear_param_store()
    gc.collect()
    x = data()
    model, guide = build()
    pyro.set_rng_seed(0)
    model(x), guide(x)  # registered, as after training
    with torch.no_grad():
        for p in [*model.parameters(), *guide.parameters()]:
            p.add_(0.5 * torch.randn_like(p))  # "trained": far from any initial value
    expected = read(model, guide, x)
    pyro.get_param_store().save(tmp_path / "store.pt")
    del model, guide
    gc.collect()
    pyro.clear_param_store()
    torch.manual_seed(123)
    model, guide = build()
    assert not torch.allclose(read(model, guide, x), expected)  # the check could fail
    pyro.get_param_store().load(tmp_path / "store.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.allclose(read(model, guide, x), expected)


# ---- 2. the pairing checks under Pyro's SVI and Predictive ----------------------------------------------------

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


# ---- 3. the prior predictive without data --------------------------------------------------------------------

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


# ---- 4. data a model cannot take, under Pyro's SVI --------------------------------------------------------------

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

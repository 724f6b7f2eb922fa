"""Pyro's param store on pyrovae pairs (issue 24): saved, it reloads into rebuilt objects, in this process or a
fresh one; names are stable and unique; values that reach no module, or another architecture, are named."""

import gc
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pyro
import pytest
import torch
from pyrovae.guides import GMVAEGuide, NormalGuide, VMFGuide
from pyrovae.models import GMVAE, SVAE, VAE

from pyrovae.infer import encode_data, locate
from pyrovae.likelihoods import get_likelihood
from pyrovae.nn import pyro_name
from tests.infer.pyro_pairs import X_DIM, binary, elbo_estimate, svi, train_pair


def test_a_saved_store_loads_into_a_rebuilt_pair_in_the_same_process(tmp_path):
    pyro.clear_param_store()
    gc.collect()  # earlier tests' objects, whose names a later collection would free in the middle of this one
    x = binary(64)
    model, guide = train_pair(x)
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
    model, guide = train_pair(x)
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
    model, guide = train_pair(x, steps=2, model={"name": "saved_model"}, guide={"name": "saved_guide"})
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
    model, guide = train_pair(x, steps=2)
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


def test_a_loaded_store_is_what_a_saved_module_holds_and_a_later_load_state_dict_is_kept(tmp_path):
    """state_dict, save_pair and torch.save of a pair right after the store was loaded hold the loaded values (they
    held the new objects' random start before); a load_state_dict after the store's load is the state kept."""
    from pyrovae import load_pair, make_pair, save_pair

    pyro.clear_param_store()
    gc.collect()
    x = binary(64)
    model, guide = make_pair("vae", X_DIM, 3, (8,))
    model(x), guide(x)
    with torch.no_grad():
        for p in [*model.parameters(), *guide.parameters()]:
            p.add_(0.5 * torch.randn_like(p))
    trained = {role: {k: v.clone() for k, v in m.state_dict().items()} for role, m in (("model", model),
                                                                                     ("guide", guide))}
    pyro.get_param_store().save(tmp_path / "store.pt")
    del model, guide
    gc.collect()
    pyro.clear_param_store()
    torch.manual_seed(123)
    model, guide = make_pair("vae", X_DIM, 3, (8,))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    pyro.get_param_store().load(tmp_path / "store.pt")
    assert all(torch.equal(v, trained["model"][k]) for k, v in model.state_dict().items())
    save_pair(tmp_path / "pair", model, guide)
    torch.save(guide, tmp_path / "guide.pt")
    reloaded_model, reloaded_guide, _ = load_pair(tmp_path / "pair")
    for role, module in (("model", reloaded_model), ("guide", reloaded_guide)):
        assert all(torch.equal(v, trained[role][k]) for k, v in module.state_dict().items()), role
    pickled = torch.load(tmp_path / "guide.pt", weights_only=False)
    assert all(torch.equal(v, trained["guide"][k]) for k, v in pickled.state_dict().items())
    del reloaded_model, reloaded_guide, pickled, model, guide
    gc.collect()
    pyro.clear_param_store()
    model = make_pair("vae", X_DIM, 3, (8,))[0]
    pyro.get_param_store().load(tmp_path / "store.pt")
    model.load_state_dict(start)  # loaded after the store: this state is the model's, at its next call too
    model(x)
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())

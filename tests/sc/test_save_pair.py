"""save_pair / load_pair: a functional pair reloads bit for bit, from its recorded make_pair arguments or into
objects the user builds; a likelihood instance is saved by its registry name and options; a crafted weights file
is refused without running it."""

import hashlib
import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from pyrovae.guides import NormalGuide
from pyrovae.models import VAE

import pyrovae
from pyrovae.infer import History, encode_data
from pyrovae.likelihoods import Likelihood, NegativeBinomialLikelihood
from pyrovae.pairs import load_pair, make_pair, save_pair

X_DIM, LATENT = 12, 3
KINDS = {"vae": {}, "ae": {}, "svae-vmf": {}, "svae-power": {}, "gmvae": {"num_components": 3}}


def _data(num_cells=16):
    generator = torch.Generator().manual_seed(1)
    x = torch.poisson(torch.rand(num_cells, X_DIM, generator=generator) * 4, generator=generator)
    x[:, 0] += 1  # no empty cell
    cat = torch.arange(num_cells).remainder(2).unsqueeze(1)
    return x, cat, torch.rand(num_cells, 1, generator=generator)


def _perturb(*modules):
    """Move every parameter off its initial value, so that a load which silently kept fresh weights fails."""
    with torch.no_grad():
        for module in modules:
            for parameter in module.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_reloads_bit_identical(tmp_path, kind):
    model, guide = make_pair(kind, X_DIM, LATENT, (8,), "zinb", input_transform="log1p", batch_norm=True,
                             categorical=(2,), continuous=1, **KINDS[kind])
    _perturb(model, guide)
    history = History(records=[{"epoch": 0, "loss": 3.5}, {"epoch": 1, "loss": 2.25}], best_epoch=1)
    save_pair(tmp_path, model, guide, history)
    loaded_model, loaded_guide, loaded_history = load_pair(tmp_path)
    assert type(loaded_model) is type(model) and type(loaded_guide) is type(guide)
    assert loaded_history.to_dict() == history.to_dict()
    x, cat, cont = _data()
    latent = encode_data(guide, (x, cat, cont))
    assert torch.equal(encode_data(loaded_guide, (x, cat, cont)), latent)
    library = x.sum(-1)
    model.eval(), loaded_model.eval()
    with torch.no_grad():
        decoded = model.decode(latent, library, cat, cont).mean
        assert torch.equal(loaded_model.decode(latent, library, cat, cont).mean, decoded)
    config = json.loads((tmp_path / "pair.json").read_text())
    assert config["pyrovae_version"] == pyrovae.__version__ and config["pair"]["kind"] == kind


def test_likelihood_instance_saved_by_name_and_options(tmp_path):
    likelihood = NegativeBinomialLikelihood(dispersion="gene-cell", library="none")
    model, guide = make_pair("vae", X_DIM, LATENT, (8,), likelihood, input_transform="log1p")
    save_pair(tmp_path, model, guide)
    saved = json.loads((tmp_path / "pair.json").read_text())["pair"]
    assert saved["likelihood"] == "nb" and saved["likelihood_options"] == {"dispersion": "gene-cell",
                                                                           "library": "none"}
    loaded, _, history = load_pair(tmp_path)
    assert history is None
    assert (loaded.likelihood.dispersion, loaded.likelihood.library) == ("gene-cell", "none")


def test_count_pairs_encode_log1p_by_default_and_saved_pairs_keep_their_transform(tmp_path):
    """make_pair encoded raw counts unless told; a pair saved then records input_transform None and keeps it."""
    for likelihood, expected in (("nb", "log1p"), (NegativeBinomialLikelihood(), "log1p"), ("bernoulli", None)):
        model, guide = make_pair("vae", X_DIM, LATENT, (8,), likelihood)
        assert guide.encoder_options.input_transform == guide.pair_arguments["input_transform"] == expected
    _, guide = make_pair("vae", X_DIM, LATENT, (8,), "nb", encoder=torch.nn.Linear(X_DIM, 2 * LATENT))
    assert guide.encoder_options.input_transform is None  # a custom encoder reads the data as given
    model, guide = make_pair("vae", X_DIM, LATENT, (8,), "zinb", input_transform=None)
    save_pair(tmp_path, model, guide)
    _, loaded, _ = load_pair(tmp_path)
    assert loaded.encoder_options.input_transform is None


def test_unregistered_likelihood_is_refused_with_the_fix(tmp_path):
    class Private(Likelihood):
        def forward(self, outputs):
            raise NotImplementedError

    model, guide = make_pair("vae", X_DIM, LATENT, (8,), Private())
    with pytest.raises(ValueError, match="not registered under a name.*register_likelihood"):
        save_pair(tmp_path, model, guide)


def test_weights_load_into_objects_the_user_built(tmp_path):
    model, guide = VAE(X_DIM, LATENT, (8,), "poisson"), NormalGuide(X_DIM, LATENT, (8,))
    _perturb(model, guide)
    save_pair(tmp_path, model, guide)
    with pytest.raises(ValueError, match="not built by make_pair.*load_pair\\(folder, model=model, guide=guide\\)"):
        load_pair(tmp_path)
    rebuilt_model, rebuilt_guide = VAE(X_DIM, LATENT, (8,), "poisson"), NormalGuide(X_DIM, LATENT, (8,))
    load_pair(tmp_path, model=rebuilt_model, guide=rebuilt_guide)
    for old, new in ((model, rebuilt_model), (guide, rebuilt_guide)):
        for a, b in zip(old.state_dict().values(), new.state_dict().values()):  # NaN: an unset library prior
            assert torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
    wider = NormalGuide(X_DIM, LATENT, (9,))
    with pytest.raises(ValueError, match=r"guide saved in .* does not fit.*saved \(8, 12\), here \(9, 12\)"):
        load_pair(tmp_path, model=VAE(X_DIM, LATENT, (8,), "poisson"), guide=wider)


def test_objects_of_another_likelihood_or_an_activation_module_are_named(tmp_path):
    """Weights of a saved NB pair would load into a ZIP or Poisson model of the same shapes and be read as that law's:
    refused, naming both. A pair whose activation is a module (code) is saved as a custom one, with the warning."""
    model, guide = make_pair("vae", X_DIM, LATENT, (8,), likelihood="poisson")
    save_pair(tmp_path / "poisson", model, guide)
    other = make_pair("vae", X_DIM, LATENT, (8,), likelihood="bernoulli")
    with pytest.raises(ValueError, match=r"likelihood 'poisson' .* given has 'bernoulli'.*saved likelihood"):
        load_pair(tmp_path / "poisson", *other)
    load_pair(tmp_path / "poisson", *make_pair("vae", X_DIM, LATENT, (8,), likelihood="poisson"))  # the same: loads
    model, guide = make_pair("vae", X_DIM, LATENT, (8,), likelihood="poisson", activation=torch.nn.ELU())
    with pytest.warns(UserWarning, match="activation given as a module"):
        save_pair(tmp_path / "elu", model, guide)
    with pytest.raises(ValueError, match="activation given as a module"):
        load_pair(tmp_path / "elu")
    numbers = make_pair("vae", X_DIM, LATENT, (8,), likelihood="poisson", dropout=np.float32(0.25))
    save_pair(tmp_path / "numpy", *numbers)  # a numpy number is configuration, written as Python's
    assert load_pair(tmp_path / "numpy")[0].pair_arguments["dropout"] == 0.25
    rebuilt = make_pair("vae", X_DIM, LATENT, (8,), likelihood="poisson", activation=torch.nn.ELU())
    load_pair(tmp_path / "elu", *rebuilt)
    for a, b in zip(model.state_dict().values(), rebuilt[0].state_dict().values()):  # NaN: an unset library prior
        assert torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)


class _RunsCode:
    """A pickle whose loading would call os.system: torch.load(weights_only=True) must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_crafted_weights_file_is_refused_without_running_it(tmp_path):
    model, guide = make_pair("vae", X_DIM, LATENT, (8,), "poisson")
    save_pair(tmp_path, model, guide)
    marker = tmp_path / "code_ran"
    for write in (lambda f: torch.save({"model": _RunsCode(marker), "guide": {}}, f),
                  lambda f: f.write_bytes(pickle.dumps({"model": _RunsCode(marker), "guide": {}}))):
        write(tmp_path / "weights.pt")
        config = json.loads((tmp_path / "pair.json").read_text())  # whoever crafts the file writes its digest too
        config["weights_sha256"] = hashlib.sha256((tmp_path / "weights.pt").read_bytes()).hexdigest()
        (tmp_path / "pair.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match="refused: it is not a plain dict of tensors.*was not executed") as error:
            load_pair(tmp_path)
        assert not marker.exists() and "weights_only" not in str(error.value)
    pickle.loads(pickle.dumps(_RunsCode(marker)))  # the payload is live: unpickling it does run the command
    assert marker.exists()


def test_the_two_files_of_two_saves_are_not_loaded_as_one(tmp_path):
    """weights.pt of one save beside pair.json of another (a file copied in, or changed since) is refused."""
    model, guide = make_pair("vae", X_DIM, LATENT, (8,), "poisson")
    save_pair(tmp_path / "a", model, guide)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_pair(tmp_path / "b", model, guide)
    (tmp_path / "a" / "weights.pt").write_bytes((tmp_path / "b" / "weights.pt").read_bytes())
    with pytest.raises(ValueError, match="is not the weights file .*pair.json was saved with"):
        load_pair(tmp_path / "a")
    assert torch.equal(next(load_pair(tmp_path / "b")[0].parameters()), next(model.parameters()))


def test_a_save_interrupted_between_its_files_keeps_the_pair_it_replaces(tmp_path, monkeypatch):
    """A second save into a folder that dies after writing its weights, before its pair.json: the first pair still
    loads, whole; the next save completes and leaves no copy of old weights behind."""
    from pyrovae.pairs import saving as pairs

    model, guide = make_pair("vae", X_DIM, LATENT, (8,), "poisson")
    save_pair(tmp_path, model, guide)
    first = [p.clone() for p in model.parameters()]
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    writes = []
    real = pairs.atomic_write

    def dies_before_the_config(path, write, binary=True):
        writes.append(path)
        if path.name == "pair.json":
            raise KeyboardInterrupt
        return real(path, write, binary=binary)

    monkeypatch.setattr(pairs, "atomic_write", dies_before_the_config)
    with pytest.raises(KeyboardInterrupt):
        save_pair(tmp_path, model, guide)
    monkeypatch.undo()
    loaded = load_pair(tmp_path)[0]
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), first))
    save_pair(tmp_path, model, guide)
    assert torch.equal(next(load_pair(tmp_path)[0].parameters()), next(model.parameters()))
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["weights.pt"]


def test_another_version_warns(tmp_path):
    model, guide = make_pair("vae", X_DIM, LATENT, (8,), "poisson")
    save_pair(tmp_path, model, guide)
    config = json.loads((tmp_path / "pair.json").read_text())
    config["pyrovae_version"] = "0.0.1"
    (tmp_path / "pair.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="saved by pyrovae 0.0.1 and is loaded by pyrovae"):
        load_pair(tmp_path)


def test_a_swapped_pair_is_refused_and_another_kind_replaced_with_a_word(tmp_path):
    model, guide = make_pair("vae", 12, 2, (8,))
    with pytest.raises(TypeError, match="got a NormalGuide as the model and a VAE as the guide: pass the model first"):
        save_pair(tmp_path, guide, model)
    save_pair(tmp_path, model, guide)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_pair(tmp_path, model, guide)  # the same pair again (more training): replaced quietly
    other_model, other_guide = make_pair("svae-vmf", 12, 2, (8,))
    with pytest.warns(UserWarning, match="held a VAE / NormalGuide pair, now replaced by a SVAE / VMFGuide pair"):
        save_pair(tmp_path, other_model, other_guide)
    assert type(load_pair(tmp_path)[1]).__name__ == "VMFGuide"


def test_a_saved_pair_loads_only_into_its_own_classes_and_keeps_its_dtype(tmp_path):
    """A vMF guide's weights loaded into a Power Spherical guide (the same shapes) without a word, and a float64
    pair came back in float32, its weights rounded."""
    from pyrovae.guides import PowerSphericalGuide, VMFGuide
    from pyrovae.models import SVAE

    model, guide = make_pair("svae-vmf", X_DIM, LATENT, (8,), "gaussian")
    model, guide = model.double(), guide.double()
    save_pair(tmp_path, model, guide)
    loaded, loaded_guide, _ = load_pair(tmp_path)
    assert all(p.dtype == torch.float64 for p in [*loaded.parameters(), *loaded_guide.parameters()])
    for mine, theirs in zip(guide.parameters(), loaded_guide.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    model32, other = SVAE(X_DIM, LATENT + 1, (8,), "gaussian"), PowerSphericalGuide(X_DIM, LATENT + 1, (8,))
    with pytest.raises(ValueError, match="holds a VMFGuide as the guide, and a PowerSphericalGuide was given"):
        load_pair(tmp_path, model=model32, guide=other)
    with pytest.warns(UserWarning, match="loaded with a cast \\(torch.float64 into torch.float32\\)"):
        load_pair(tmp_path, model=model32, guide=VMFGuide(X_DIM, LATENT + 1, (8,)))
    class MySVAE(SVAE):  # a subclass of the saved class loads its weights
        pass

    load_pair(tmp_path, model=MySVAE(X_DIM, LATENT + 1, (8,), "gaussian").double(),
              guide=VMFGuide(X_DIM, LATENT + 1, (8,)).double())
    half = make_pair("vae", X_DIM, LATENT, (8,), "gaussian")
    save_pair(tmp_path / "mixed", half[0].double(), half[1])  # a float64 model beside a float32 guide
    mixed_model, mixed_guide, _ = load_pair(tmp_path / "mixed")
    assert [next(m.parameters()).dtype for m in (mixed_model, mixed_guide)] == [torch.float64, torch.float32]
    with pytest.raises(TypeError, match="takes the folder first"):
        save_pair(model, guide, tmp_path)
    with pytest.warns(UserWarning, match="architecture is not recorded"):
        save_pair(tmp_path / "by_class", model32, VMFGuide(X_DIM, LATENT + 1, (8,)))


def test_a_gmvae_whose_classifier_has_a_hidden_layer_reloads_and_one_saved_before_it_stays_linear(tmp_path):
    model, guide = make_pair("gmvae", X_DIM, LATENT, (8,), "nb", num_components=3, classifier_hidden=5, dropout=0.2)
    assert [type(m).__name__ for m in guide.y_head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert guide.y_head[0].out_features == 5
    _perturb(model, guide)
    save_pair(tmp_path / "deep", model, guide)
    _, loaded = load_pair(tmp_path / "deep")[:2]
    x = _data()[0]
    assert torch.equal(loaded.classify(x), guide.classify(x))
    linear = make_pair("gmvae", X_DIM, LATENT, (8,), "nb", num_components=3)
    assert isinstance(linear[1].y_head, torch.nn.Linear) and "classifier_hidden" not in linear[1].pair_arguments
    save_pair(tmp_path / "linear", *linear)  # as a pair saved before the option: no such key in pair.json
    assert isinstance(load_pair(tmp_path / "linear")[1].y_head, torch.nn.Linear)
    with pytest.raises(ValueError, match="classifier_hidden is for 'gmvae'"):
        make_pair("vae", X_DIM, LATENT, (8,), classifier_hidden=5)

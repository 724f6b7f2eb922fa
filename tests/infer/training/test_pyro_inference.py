"""Pyro's own inference drives every pyrovae pair: SVI with each ELBO (JIT forms included), Predictive, poutine.

The central check: one step of ``pyro.infer.SVI`` (plain SGD with learning rate 1, so the update is minus the
gradient) and one evaluation of the objective that ``pyrovae.infer.train`` optimises, at the same seed, give the
same loss and the same gradient for every parameter.
"""

import copy
import warnings

import pyro
import pyro.infer as pinfer
import pytest
import torch
from pyro import poutine
from pyrovae.guides import DeltaGuide, GMVAEGuide, NormalGuide, PowerSphericalGuide, VMFGuide
from pyrovae.models import GMVAE, SVAE, VAE

from pyrovae.infer import make_objective, train
from pyrovae.likelihoods import get_likelihood
from pyrovae.nn import pyro_name

X_DIM = 12


def _binary(seed=0, n=16):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, X_DIM, generator=generator, dtype=torch.float64).round()


def _counts(seed=0, n=16):
    generator = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full((n, X_DIM), 3.0, dtype=torch.float64), generator=generator)


def _count_vae():
    likelihood = get_likelihood("nb", X_DIM, library="latent")
    likelihood.fit_library_prior(_counts(1, 64))
    model = VAE(X_DIM, 3, (8,), likelihood=likelihood)
    return model, NormalGuide(X_DIM, 3, (8,), input_transform="log1p", latent_library=True)


PAIRS = {
    "vae-normal": (lambda: (VAE(X_DIM, 3, (8,)), NormalGuide(X_DIM, 3, (8,))), _binary),
    "vae-delta": (lambda: (VAE(X_DIM, 3, (8,)), DeltaGuide(X_DIM, 3, (8,))), _binary),
    "svae-vmf": (lambda: (SVAE(X_DIM, 4, (8,)), VMFGuide(X_DIM, 4, (8,))), _binary),
    "svae-power": (lambda: (SVAE(X_DIM, 4, (8,)), PowerSphericalGuide(X_DIM, 4, (8,))), _binary),
    "gmvae": (lambda: (GMVAE(X_DIM, 3, 4, (8,)), GMVAEGuide(X_DIM, 3, (8,), num_components=4)), _binary),
    "count-nb-latent-library": (_count_vae, _counts),
}
ELBOS = {
    "Trace_ELBO": lambda: pinfer.Trace_ELBO(),
    "JitTrace_ELBO": lambda: pinfer.JitTrace_ELBO(),
    "TraceMeanField_ELBO": lambda: pinfer.TraceMeanField_ELBO(),
    "TraceEnum_ELBO": lambda: pinfer.TraceEnum_ELBO(max_plate_nesting=1),
    "JitTraceEnum_ELBO": lambda: pinfer.JitTraceEnum_ELBO(max_plate_nesting=1),
}
# (pair, ELBO) combinations that cannot work, and why: Pyro's mean-field ELBO needs reparameterised guide sites
UNSUPPORTED = {("gmvae", "TraceMeanField_ELBO"): "fully reparameterized"}
CASES = [(p, e) for p in PAIRS for e in ELBOS]


def _make(pair):
    factory, data = PAIRS[pair]
    torch.manual_seed(0)
    model, guide = factory()
    return model.double(), guide.double(), data()


def _named_grads(modules):
    return {f"{i}.{name}": p.grad.clone() for i, m in enumerate(modules) for name, p in m.named_parameters()
            if p.grad is not None}


@pytest.mark.parametrize("pair,elbo", CASES)
def test_svi_step_equals_the_train_objective(pair, elbo):
    model, guide, x = _make(pair)
    if (pair, elbo) in UNSUPPORTED:
        with pytest.raises(NotImplementedError, match=UNSUPPORTED[pair, elbo]):
            pinfer.SVI(model, guide, pyro.optim.SGD({"lr": 1.0}), ELBOS[elbo]()).step(x)
        return
    ours_model, ours_guide = copy.deepcopy(model), copy.deepcopy(guide)
    before = {f"{i}.{n}": p.detach().clone() for i, m in enumerate((model, guide)) for n, p in m.named_parameters()}
    svi = pinfer.SVI(model, guide, pyro.optim.SGD({"lr": 1.0}), ELBOS[elbo]())
    objective, _ = make_objective(ELBOS[elbo](), ours_model, ours_guide)
    scales = torch.ones(2, dtype=torch.float64)
    jit = elbo.startswith("Jit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if jit:  # both trace on their first call and draw differently while tracing: compare the traced runs
            svi.loss_and_grads(model, guide, x)
            objective(x, scales)
            for p in list(model.parameters()) + list(guide.parameters()):
                p.grad = None
        pyro.set_rng_seed(1)
        svi_loss = svi.step(x)
        pyro.set_rng_seed(1)
        our_loss = objective(x, scales)
        our_loss.backward()
    assert svi_loss == pytest.approx(our_loss.item(), rel=1e-6)
    ours = _named_grads((ours_model, ours_guide))
    after = {f"{i}.{n}": p.detach() for i, m in enumerate((model, guide)) for n, p in m.named_parameters()}
    moved = {name for name in before if not torch.equal(after[name], before[name])}
    assert moved and moved <= set(ours)  # SVI trained parameters, and only ones the objective differentiates
    for name, gradient in ours.items():
        svi_gradient = before[name] - after[name]  # SGD with lr 1: the update is minus the gradient
        torch.testing.assert_close(svi_gradient, gradient, rtol=1e-6, atol=1e-9, msg=f"{pair}, {elbo}: {name}")


@pytest.mark.parametrize("pair,elbo", [c for c in CASES if c not in UNSUPPORTED and c[1] != "TraceEnum_ELBO"])
def test_100_svi_steps_lower_the_loss(pair, elbo):
    model, guide, x = _make(pair)
    model, guide, x = model.float(), guide.float(), x.float()
    pyro.set_rng_seed(0)
    svi = pinfer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), ELBOS[elbo]())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        losses = torch.tensor([svi.step(x) for _ in range(100)])
    assert losses[-10:].mean() < losses[:10].mean() - 0.02 * losses[:10].abs().mean(), (pair, elbo, losses)


@pytest.mark.parametrize("alpha", [0.0, 0.5, -1.0])
def test_renyi_bound_per_datum_equals_pyros_renyi_elbo_for_one_datum(alpha):
    """Pyro's RenyiELBO weighs a whole batch jointly; pyrovae's weighs each datum. For one datum they agree."""
    model, guide, x = _make("vae-normal")
    x = x[:1]
    ours_model, ours_guide = copy.deepcopy(model), copy.deepcopy(guide)
    before = {f"{i}.{n}": p.detach().clone() for i, m in enumerate((model, guide)) for n, p in m.named_parameters()}
    renyi = pinfer.RenyiELBO(alpha=alpha, num_particles=7, vectorize_particles=True, max_plate_nesting=1)
    svi = pinfer.SVI(model, guide, pyro.optim.SGD({"lr": 1.0}), renyi)
    pyro.set_rng_seed(3)
    svi_loss = svi.step(x)
    objective, name = make_objective(pinfer.RenyiELBO(alpha=alpha, num_particles=7), ours_model, ours_guide)
    pyro.set_rng_seed(3)
    our_loss = objective(x, torch.ones(2, dtype=torch.float64))
    our_loss.backward()
    assert name == ("iwae" if alpha == 0 else f"renyi({alpha:g})")
    assert svi_loss == pytest.approx(our_loss.item(), rel=1e-6)
    after = {f"{i}.{n}": p.detach() for i, m in enumerate((model, guide)) for n, p in m.named_parameters()}
    for name, gradient in _named_grads((ours_model, ours_guide)).items():
        torch.testing.assert_close(before[name] - after[name], gradient, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_svi_with_renyi_elbo_trains(pair):
    model, guide, x = _make(pair)
    renyi = pinfer.RenyiELBO(alpha=0.5, num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(0)
    svi = pinfer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), renyi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        losses = torch.tensor([svi.step(x) for _ in range(100)])
    assert losses[-10:].mean() < losses[:10].mean()


def test_two_pairs_in_one_notebook_stay_independent():
    (model_a, guide_a, x), (model_b, guide_b, _) = _make("vae-normal"), _make("vae-normal")
    svi_b = pinfer.SVI(model_b, guide_b, pyro.optim.Adam({"lr": 1e-2}), pinfer.Trace_ELBO())
    svi_b.step(x)  # pair B is registered too
    frozen_b = {n: p.detach().clone() for m in (model_b, guide_b) for n, p in m.named_parameters()}
    svi_a = pinfer.SVI(model_a, guide_a, pyro.optim.Adam({"lr": 1e-2}), pinfer.Trace_ELBO())
    for _ in range(20):
        svi_a.step(x)
    for n, p in (item for m in (model_b, guide_b) for item in m.named_parameters()):
        assert torch.equal(p, frozen_b[n]), n
    train(model_a, guide_a, x, epochs=2, batch_size=8, progress=False, seed=0)
    for n, p in (item for m in (model_b, guide_b) for item in m.named_parameters()):
        assert torch.equal(p, frozen_b[n]), n
    names = {pyro_name(m) for m in (model_a, guide_a, model_b, guide_b)}
    assert len(names) == 4 and pyro_name(copy.deepcopy(model_a)) not in names  # a copy is a new instance


def test_param_store_holds_the_modules_own_parameters_and_survives_clearing():
    model, guide, x = _make("vae-normal")
    svi = pinfer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pinfer.Trace_ELBO())
    svi.step(x)
    store = pyro.get_param_store()
    own = {id(p) for m in (model, guide) for p in m.parameters()}
    ours = [name for name in store.keys() if name.split("$$$")[0] in (pyro_name(model), pyro_name(guide))]
    assert len(ours) == len(own) and all(id(store[name]) in own for name in ours)
    pyro.clear_param_store()
    weight = next(model.parameters()).detach().clone()
    for _ in range(3):
        svi.step(x)  # registers the same tensors again and keeps training them
    assert not torch.equal(weight, next(model.parameters()))
    name = pyro_name(model) + "$$$decoder.layers.0.weight"
    store[name] = torch.zeros(8, 3)  # a stale value of that name
    svi.step(x)
    assert store[name] is model.decoder.layers[0].weight


def test_frozen_side_is_not_trained_by_svi():
    model, guide, x = _make("vae-normal")
    model.requires_grad_(False)
    frozen = {n: p.clone() for n, p in model.named_parameters()}
    svi = pinfer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pinfer.Trace_ELBO())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning for the frozen parameters
        for _ in range(5):
            svi.step(x)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("pair", list(PAIRS))
def test_predictive_returns_latents_and_data_of_the_right_shapes(pair):
    model, guide, x = _make(pair)
    samples = pinfer.Predictive(model, guide=guide, num_samples=5)(x)
    latent_size = 4 if pair.startswith("svae") else 3
    assert samples["z"].shape == (5, x.shape[0], latent_size)
    assert samples["x"].shape == (5, x.shape[0], X_DIM)
    if pair.startswith("svae"):
        torch.testing.assert_close(samples["z"].norm(dim=-1), torch.ones(5, x.shape[0], dtype=x.dtype))


def test_poutine_trace_and_condition_work_as_in_any_pyro_program():
    model, guide, x = _make("vae-normal")
    trace = poutine.trace(guide).get_trace(x)
    assert trace.nodes["z"]["value"].shape == (x.shape[0], 3)
    z = torch.zeros(x.shape[0], 3, dtype=x.dtype)
    conditioned = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(x)
    assert torch.equal(conditioned.nodes["z"]["value"], z)
    expected = model.decode(z).log_prob(x).sum() + model.prior().log_prob(z).sum()
    torch.testing.assert_close(conditioned.log_prob_sum(), expected)


def test_a_loaded_param_store_restores_the_module_and_a_foreign_one_is_named(tmp_path):
    model, guide, x = _make("vae-normal")
    svi = pinfer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pinfer.Trace_ELBO())
    svi.step(x)
    store = pyro.get_param_store()
    store.save(tmp_path / "params.pt")
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    store.load(tmp_path / "params.pt")
    poutine.trace(model).get_trace(x)  # the next call takes the loaded values into the module's own tensors
    assert all(torch.equal(p, saved[n]) for n, p in model.named_parameters())
    assert all(store[pyro_name(model) + "$$$" + n] is p for n, p in model.named_parameters())
    pyro.clear_param_store()
    for _ in range(3):
        svi.step(x)  # Trace_ELBO after clearing: the same tensors, registered again, keep training
    assert not all(torch.equal(p, saved[n]) for n, p in model.named_parameters())
    store[pyro_name(model) + "$$$decoder.layers.0.weight"] = torch.zeros(5, 5)
    with pytest.raises(ValueError, match="another architecture"):
        svi.step(x)


def test_svi_trains_non_contiguous_parameters_in_place():
    from pyrovae.nn import ConvDecoder, ConvEncoder

    torch.manual_seed(0)
    model = VAE(784, 3, likelihood="bernoulli", decoder=ConvDecoder(3, channels=(8, 4)))
    guide = NormalGuide(784, 3, encoder=ConvEncoder(6, channels=(4, 8)))
    model, guide = model.to(memory_format=torch.channels_last), guide.to(memory_format=torch.channels_last)
    weights = [p for p in guide.parameters() if p.dim() == 4]
    assert weights and not all(p.is_contiguous() for p in weights)
    before = [p.detach().clone() for p in weights]
    svi = pinfer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pinfer.Trace_ELBO())
    for _ in range(3):
        svi.step(torch.rand(8, 784).round())
    assert all(not torch.equal(a, b) for a, b in zip(before, weights))
    assert len(svi.optim.optim_objs) == sum(1 for m in (model, guide) for _ in m.parameters())  # no copies


def test_trained_pairs_pickle_whole():
    """torch.save(model) after training: Pyro's weak references on the parameters are dropped before pickling."""
    import io

    from pyrovae import make_pair
    from pyrovae.infer import train

    x = torch.rand(32, 10).bernoulli()
    model, guide = make_pair("svae-vmf", 10, 2, (4,))
    train(model, guide, x, epochs=1, progress=False)
    buffer = io.BytesIO()
    torch.save({"model": model, "guide": guide}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for (name, before), after in zip(model.state_dict().items(), loaded["model"].state_dict().values(), strict=True):
        assert torch.equal(before, after), name
    train(loaded["model"], loaded["guide"], x, epochs=1, progress=False)  # and it trains on

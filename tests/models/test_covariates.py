"""Covariates beside x: every model and guide with them, every entry point, and a batch-specific dispersion."""

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, JitTrace_ELBO, Predictive, Trace_ELBO
from pyrovae.guides import GMVAEGuide, NormalGuide, PowerSphericalGuide, VMFGuide
from pyrovae.models import GMVAE, SVAE, VAE

from pyrovae.distributions.negative_binomial import NegativeBinomial
from pyrovae.infer import encode_data, evaluate, log_likelihood, make_objective, reconstruct, train
from pyrovae.likelihoods.counts import NegativeBinomialLikelihood, ZeroInflatedNegativeBinomialLikelihood
from tests.data.test_count_data_covariates import batched_counts


def test_gene_batch_dispersion_scores_each_cell_with_its_batch_theta():
    likelihood = NegativeBinomialLikelihood(dispersion="gene-batch")
    model = VAE(6, 2, (8,), likelihood, categorical=(3,))
    with torch.no_grad():
        likelihood.log_inverse_dispersion.copy_(torch.randn(3, 6))
    z, cat = torch.randn(4, 2), torch.tensor([[0], [2], [1], [2]])
    x, library = torch.tensor([[0, 1, 2, 3, 4, 5.0]] * 4), torch.full((4,), 15.0)
    got = model.decode(z, library, cat).log_prob(x)
    mean = library[:, None] * torch.softmax(model.decoder_outputs(z, cat), -1)
    theta = likelihood.log_inverse_dispersion.exp()[cat[:, 0]]
    assert torch.allclose(got, NegativeBinomial(mean, theta).log_prob(x).sum(-1), atol=1e-5)
    with pytest.raises(ValueError, match="needs a batch"):
        VAE(6, 2, (8,), NegativeBinomialLikelihood(dispersion="gene-batch"))


PAIRS = {
    "vae-nb": lambda c: (VAE(30, 3, (16,), "nb", **c), NormalGuide(30, 3, (16,), input_transform="log1p")),
    "vae-zinb-encoded": lambda c: (VAE(30, 3, (16,), ZeroInflatedNegativeBinomialLikelihood("gene-batch"), **c),
                                   NormalGuide(30, 3, (16,), input_transform="log1p", **c)),
    "svae-vmf": lambda c: (SVAE(30, 3, (16,), "poisson", **c), VMFGuide(30, 3, (16,), input_transform="log1p", **c)),
    "svae-power": lambda c: (SVAE(30, 3, (16,), "zip", **c), PowerSphericalGuide(30, 3, (16,))),
    "gmvae-nb": lambda c: (GMVAE(30, 3, 3, (16,), NegativeBinomialLikelihood("gene-batch"), **c),
                           GMVAEGuide(30, 3, (16,), num_components=3, input_transform="log1p", **c)),
}


@pytest.mark.filterwarnings("ignore:k-hat")
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_every_pair_trains_scores_and_encodes_with_covariates(name):
    pyro.set_rng_seed(0)
    data = batched_counts()
    model, guide = PAIRS[name](dict(categorical=data.categorical_sizes, continuous=data.num_continuous))
    elbo = "enum" if name.startswith("gmvae") else "jit"
    history = train(model, guide, data, epochs=2, batch_size=64, elbo=elbo, progress=False, seed=0)
    assert np.isfinite(history.records[-1]["loss"])
    scores = log_likelihood(model, guide, data, num_samples=8)
    assert scores.per_datum.shape == (240,) and torch.isfinite(scores.per_datum).all()
    assert set(evaluate(model, guide, data)) == {"elbo", "reconstruction", "kl"}
    assert encode_data(guide, data).shape[0] == 240
    x, cat, cont = data.batch(torch.arange(10))
    assert reconstruct(model, guide, x, cat=cat, cont=cont).shape == (10, 30)


def test_the_same_cell_decoded_in_another_batch_changes_only_through_the_batch():
    data = batched_counts()
    model = VAE(30, 3, (16,), "nb", categorical=data.categorical_sizes, continuous=1)
    x, cat, cont = data.batch(torch.arange(6))
    z = torch.randn(6, 3)
    moved = cat.clone()
    moved[:, 0] = (cat[:, 0] + 1) % 3
    assert not torch.allclose(model.decoder_outputs(z, cat, cont), model.decoder_outputs(z, moved, cont))
    same = cat.clone()
    assert torch.equal(model.decoder_outputs(z, same, cont), model.decoder_outputs(z, cat, cont))


def test_pyro_svi_jit_and_predictive_take_the_covariates_positionally():
    pyro.clear_param_store()
    data = batched_counts()
    model = VAE(30, 3, (16,), "nb", categorical=data.categorical_sizes, continuous=1)
    guide = NormalGuide(30, 3, (16,), input_transform="log1p", categorical=data.categorical_sizes, continuous=1)
    args = data.batch(torch.arange(64))
    for elbo in (Trace_ELBO(), JitTrace_ELBO()):
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
        assert np.isfinite(svi.step(*args)) and np.isfinite(svi.step(*args))
    draws = Predictive(model, guide=guide, num_samples=3)(*args)
    assert draws["x"].shape == (3, 64, 30)


def test_traced_objective_equals_the_untraced_one_with_covariates():
    data = batched_counts()
    model = VAE(30, 3, (16,), "nb", categorical=data.categorical_sizes, continuous=1)
    guide = NormalGuide(30, 3, (16,), categorical=data.categorical_sizes, continuous=1)
    x, cat, cont = data.batch(torch.arange(32))
    scales = torch.tensor([2.0, 1.0])
    plain, _ = make_objective("trace", model, guide)
    traced, _ = make_objective("jit", model, guide)
    for _ in range(2):  # the second call runs the cached trace
        torch.manual_seed(3)
        want = plain(x, scales, cat, cont)
        torch.manual_seed(3)
        got = traced(x, scales, cat, cont)
        assert torch.allclose(got, want, rtol=1e-5)


def test_wrong_covariates_get_errors_that_name_the_fix():
    data = batched_counts()
    with pytest.raises(ValueError, match="built without covariates.*categorical=data.categorical_sizes"):
        train(VAE(30, 3, (16,), "nb"), NormalGuide(30, 3, (16,)), data, epochs=1, progress=False)
    model = VAE(30, 3, (16,), "nb", categorical=data.categorical_sizes, continuous=1)
    with pytest.raises(ValueError, match="called without cat"):
        train(model, NormalGuide(30, 3, (16,)), data.without_covariates(), epochs=1, progress=False)
    arguments = torch.utils.data.TensorDataset(*data.batch(torch.arange(len(data))))  # items (x, cat, cont)
    with pytest.raises(ValueError, match=r"called without cat.*the tuple \(x, cat, cont\).*read as x and a label"):
        train(model, NormalGuide(30, 3, (16,)), arguments, epochs=1, progress=False)
    small = VAE(30, 3, (16,), "nb", categorical=(2, 2), continuous=1)
    with pytest.raises(ValueError, match="code 2 at row .* outside 0..1"):
        train(small, NormalGuide(30, 3, (16,)), data, epochs=1, progress=False)
    x, cat, cont = data.batch(torch.arange(4))
    with pytest.raises(ValueError, match="integer tensor"):
        model(x, cat.float(), cont)
    with pytest.raises(ValueError, match=r"expected cont of shape \(4, 1\)"):
        model(x, cat, cont[:, :0])


def test_float64_pairs_train_with_the_device_guard_and_any_integer_codes_encode():
    data = batched_counts(n=64)
    model = VAE(30, 3, (16,), "nb", categorical=data.categorical_sizes, continuous=1).double()
    guide = NormalGuide(30, 3, (16,), input_transform="log1p").double()
    with pytest.warns(UserWarning, match="converted to torch.float64"):
        history = train(model, guide, data, epochs=1, batch_size=32, progress=False)
    assert np.isfinite(history.last["loss"])
    x, cat, cont = data.batch(torch.arange(4))
    assert torch.equal(model.covariates(cat.int(), cont), model.covariates(cat, cont))


@pytest.mark.parametrize("entry", ["train", "svi"])
def test_a_guide_built_for_other_covariate_levels_is_refused(entry):
    """Codes valid for both sides (3 samples, 2 donors) must not hide that the guide was built for other levels."""
    data = batched_counts(n=64)
    model = VAE(30, 3, (16,), "nb", categorical=data.categorical_sizes, continuous=1)
    guide = NormalGuide(30, 3, (16,), input_transform="log1p", categorical=(4, 2), continuous=1)
    message = r"categorical=\(3, 2\), continuous=1 but the guide with categorical=\(4, 2\)"
    with pytest.raises(ValueError, match=message):
        if entry == "train":
            train(model, guide, data, epochs=1, progress=False)
        else:
            SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO()).step(*data.batch(torch.arange(16)))

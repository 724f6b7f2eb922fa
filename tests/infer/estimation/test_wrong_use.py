"""log_likelihood used as a Pyro user may use it: a minibatch plate or poutine.scale, an autoguide, a shuffling
DataLoader, a poor proposal other than the guide. Each is refused or said, never scored silently."""

import dataclasses
import importlib
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from torch.utils.data import DataLoader, TensorDataset

from pyrovae.infer import log_likelihood
from tests.infer.estimation.test_log_likelihood import SIGMA, Z_DIM, exact_log_marginal, make_guide, make_model, ppca


def test_a_minibatch_plate_is_refused():
    """pyro.plate("data", N, subsample=...) scales every log-density by N / B: the weights would be p(x, z)^(N/B)."""
    W, mu, x = ppca()

    def model(x):
        with pyro.plate("data", 1000, subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z_DIM, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + mu, SIGMA).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", 1000, subsample=torch.arange(len(x))):
            pyro.sample("z", dist.Normal(torch.zeros(len(x), Z_DIM, dtype=x.dtype), 1.0).to_event(1))

    for proposal in ("guide", "auto"):
        with pytest.raises(ValueError, match=r"'z' has its log-density scaled by 25 .*subsample"):
            log_likelihood(model, guide, x, num_samples=50, proposal=proposal)


def test_poutine_scale_is_refused():
    W, mu, x = ppca()
    with pytest.raises(ValueError, match="scaled by 0.5 .*poutine.scale"):
        log_likelihood(poutine.scale(make_model(W, mu), 0.5), make_guide(W, mu), x, num_samples=50)


@pytest.mark.parametrize("autoguide", [AutoNormal, AutoDiagonalNormal])
@pytest.mark.parametrize("proposal", ["guide", "refined"])
def test_an_autoguide_is_refused_with_the_fix(autoguide, proposal):
    W, mu, x = ppca()
    model = make_model(W, mu)
    guide = autoguide(model)
    guide(x)  # its parameters, as after SVI
    with pytest.raises(ValueError, match=f"{autoguide.__name__} is a Pyro autoguide.*refit_guide"):
        log_likelihood(model, guide, x, num_samples=50, proposal=proposal)
    pyro.clear_param_store()


def test_a_shuffling_loader_is_said_and_an_ordered_one_pairs_with_the_data():
    W, mu, x = ppca()
    model, guide = make_model(W, mu), make_guide(W, mu)
    with pytest.warns(UserWarning, match="DataLoader shuffles: per_datum"):
        shuffled = log_likelihood(model, guide, DataLoader(TensorDataset(x), batch_size=7, shuffle=True),
                                  num_samples=50)
    assert abs(shuffled.mean - exact_log_marginal(W, mu, x).mean().item()) < 1e-4  # the mean is unaffected
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ordered = log_likelihood(model, guide, DataLoader(TensorDataset(x), batch_size=7), num_samples=50)
    assert torch.allclose(ordered.per_datum, exact_log_marginal(W, mu, x), atol=1e-4, rtol=0)


def test_every_proposal_warns_when_its_weights_are_poor():
    """A guide shifted far off: "defensive" is as far off as "guide", and says so too."""
    W, mu, x = ppca()
    model, guide = make_model(W, mu), make_guide(W, mu, scale_factor=0.3, shift=3.0)
    with pytest.warns(UserWarning, match=r"k-hat > 0.57 for \d+ of the 40 data: the defensive proposal"):
        log_likelihood(model, guide, x, num_samples=200, proposal="defensive")


def test_the_warning_counts_more_than_a_tenth(monkeypatch):
    """2 of 20 data is a tenth, not more than a tenth (as a float32 mean, 0.1 rounds above 0.1); 3 of 20 warns."""
    module = importlib.import_module("pyrovae.infer.estimation.log_likelihood")  # the module, not the function
    W, mu, x = ppca()
    model, guide = make_model(W, mu), make_guide(W, mu)
    for poor, warns in ((2, False), (3, True)):
        khat = torch.zeros(20, dtype=torch.float32)
        khat[:poor] = 1.0
        monkeypatch.setattr(module, "psis_khat", lambda log_weights, resolution, khat=khat: khat)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            log_likelihood(model, guide, x[:20], num_samples=50)
        assert any("k-hat > 0.41 for 3 of the 20" in str(w.message) for w in caught) == warns  # S = 50


def test_the_monte_carlo_error_of_the_mean_is_honest():
    """mc_stderr_of_mean against the spread of the mean over independent scorings (a 0.9x guide)."""
    W, mu, x = ppca()
    model, guide = make_model(W, mu), make_guide(W, mu, scale_factor=0.9)
    means, errors = [], []
    for seed in range(30):
        pyro.set_rng_seed(seed)
        result = log_likelihood(model, guide, x, num_samples=200)
        means.append(result.mean)
        errors.append(result.mc_stderr_of_mean)
    spread, reported = torch.tensor(means).std().item(), torch.tensor(errors).mean().item()
    assert 0.6 < spread / reported < 1.6, (spread, reported)
    assert reported < result.stderr / 10  # the data's sampling error is another, far larger quantity
    assert result.summary()["mc_stderr_of_mean"] == result.mc_stderr_of_mean


def test_two_models_are_compared_datum_by_datum():
    """compare: the paired difference against the exact one (two PPCA models scored by their exact posteriors)."""
    W, mu, x = ppca()
    other_W = W * 1.1
    a = log_likelihood(make_model(W, mu), make_guide(W, mu), x, num_samples=50)
    b = log_likelihood(make_model(other_W, mu), make_guide(other_W, mu), x, num_samples=50)
    exact = exact_log_marginal(W, mu, x) - exact_log_marginal(other_W, mu, x)
    paired = a.compare(b)
    assert abs(paired["difference"] - exact.mean().item()) < 1e-4
    assert abs(paired["stderr"] - (exact.std() / len(x) ** 0.5).item()) < 1e-4
    assert paired["stderr"] < (a.stderr ** 2 + b.stderr ** 2) ** 0.5  # the data's spread cancels
    assert paired["num_data"] == paired["certified_both"] == 40 and paired["mc_stderr"] < 1e-3
    with pytest.raises(ValueError, match="same data"):
        a.compare(log_likelihood(make_model(W, mu), make_guide(W, mu), x[:10], num_samples=50))


def test_estimates_of_other_data_or_another_order_are_not_compared():
    """compare used to take any two estimates of as many data: other cells, or the same cells shuffled, gave a
    paired difference with no meaning. Each estimate carries a hash of its data, datum by datum, whatever the
    estimator, batch size or dtype, and kept through parts."""
    from pyrovae.infer import LogLikelihood, ais_log_likelihood

    W, mu, x = ppca()
    model, guide = make_model(W, mu), make_guide(W, mu)
    a = log_likelihood(model, guide, x[:20], num_samples=30)
    same = [log_likelihood(model, guide, x[:20], num_samples=30, batch_size=7),
            log_likelihood(model, guide, x[:20].double(), num_samples=30),
            log_likelihood(model, guide, x[:20], num_samples=30, proposal="auto"),
            ais_log_likelihood(model, guide, x[:20], num_chains=4, num_steps=2),
            LogLikelihood.concat([log_likelihood(model, guide, x[:8], num_samples=30),
                                  log_likelihood(model, guide, x[8:20], num_samples=30)])]
    for estimate in same:
        assert torch.equal(estimate.fingerprint, a.fingerprint)
        a.compare(estimate)
    with pytest.raises(ValueError, match=r"of other data \(20 of the 20 data differ, the first at index 0\)"):
        a.compare(log_likelihood(model, guide, x[20:40], num_samples=30))
    with pytest.raises(ValueError, match="of the same data in another order"):
        a.compare(log_likelihood(model, guide, x[:20].flip(0), num_samples=30))
    from pyrovae.infer.estimation.importance import fingerprint

    batch = x[:5].clone()
    batch[0, 0] = 0.0
    negative_zero = batch.clone()
    negative_zero[0, 0] = -0.0
    assert torch.equal(fingerprint((batch,)), fingerprint((negative_zero,)))
    # the covariates are not hashed: a model conditioned on the batch and one without compare on the same cells
    assert torch.equal(fingerprint((batch, torch.zeros(5, dtype=torch.long), None)), fingerprint((batch,)))
    saved_before = dataclasses.replace(a, fingerprint=None)  # a part saved by pyrovae 0.7: nothing to check by
    assert saved_before.compare(log_likelihood(model, guide, x[20:40], num_samples=30))["num_data"] == 20
    assert LogLikelihood.concat([saved_before, a]).fingerprint is None


def test_the_refinement_steps_grow_with_the_latent_size():
    from pyrovae.infer import RefinedProposal

    full = RefinedProposal(full_covariance=True)
    assert [full.steps_for(d) for d in (2, 8, 9, 20, 40)] == [100, 100, 108, 240, 480]
    assert RefinedProposal().steps_for(40) == 100  # within the family: longer refinement only narrows it
    assert RefinedProposal(steps=30, full_covariance=True).steps_for(40) == 30
    W, mu, x = ppca()
    model, guide = make_model(W, mu), make_guide(W, mu, scale_factor=0.5)
    few = log_likelihood(model, guide, x[:5], num_samples=50, proposal="refined", refine_steps=5)
    assert few.per_datum.shape == (5,)
    with pytest.raises(ValueError, match="refine_steps sets the refinement"):
        log_likelihood(model, guide, x, num_samples=50, proposal="guide", refine_steps=5)
    with pytest.raises(ValueError, match="refine_steps must be"):
        log_likelihood(model, guide, x, num_samples=50, proposal="auto", refine_steps=0)


def test_a_plate_of_another_name_and_a_file_for_a_folder_are_named(tmp_path):
    from pyrovae.infer import log_likelihood_in_parts

    W, mu, x = ppca()

    def model(x):
        with pyro.plate("batch", x.shape[-2]):
            z = pyro.sample("z", dist.Normal(torch.zeros(Z_DIM, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + mu, SIGMA).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("batch", x.shape[-2]):
            pyro.sample("z", dist.Normal(torch.zeros(len(x), Z_DIM, dtype=x.dtype), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"inside \['batch'\]: the plate must be named 'data'"):
        log_likelihood(model, guide, x, num_samples=50)
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="is a file; .*give a folder"):
        log_likelihood_in_parts(make_model(W, mu), make_guide(W, mu), x, tmp_path / "afile", num_samples=50)

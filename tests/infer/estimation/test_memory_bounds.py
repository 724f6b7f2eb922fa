"""The estimators bound their memory by what a draw costs: a guide's enumerated values (a GMVAE's K) multiply every
draw, so they shrink the samples drawn at once, and a batch too large for the refined proposals is estimated a part
at a time, with the same estimates (against the exact mixture marginal of a linear-Gaussian GMVAE)."""

import importlib

import pytest
import torch

from pyrovae import make_pair
from pyrovae.infer import log_likelihood
from pyrovae.infer.estimation import certify, importance
from pyrovae.infer.estimation.importance import (
    CHUNK_ELEMENTS,
    enumerated_values,
    rows_per_pass,
    samples_per_chunk,
    split_rows,
)
from tests.infer.estimation.test_log_likelihood import make_guide, ppca
from tests.infer.estimation.test_proposals import _gmvae_pair

# the module, which the package's function of the same name hides
log_likelihood_module = importlib.import_module("pyrovae.infer.estimation.log_likelihood")


def test_enumerated_values_count_the_guides_components():
    model, guide, x, _ = _gmvae_pair()
    assert enumerated_values(guide, x) == 2
    W, mu, x = ppca(0)
    assert enumerated_values(make_guide(W, mu), x) == 1
    _, gmvae_guide = make_pair("gmvae", 30, 3, (16,), likelihood="nb", num_components=9)
    assert enumerated_values(gmvae_guide, torch.ones(4, 30)) == 9


def test_a_batch_of_images_or_of_cells_on_two_thousand_genes_is_one_pass():
    assert rows_per_pass(torch.zeros(256, 784)) >= 256 and rows_per_pass(torch.zeros(256, 2000)) >= 256


def test_split_rows_keeps_every_datum_once_in_order():
    args = (torch.arange(10).unsqueeze(-1).float(), torch.arange(10))
    parts = list(split_rows(args, 4))
    assert [len(p[0]) for p in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([p[1] for p in parts]), args[1])
    assert next(split_rows(args, 10)) is args  # a batch within the bound is not copied


def test_a_nine_component_gmvae_on_two_thousand_genes_is_estimated_within_the_bound(monkeypatch):
    """The shapes estimate_batch sees (a spy; the estimator itself runs): data per pass and samples per chunk
    keep data x samples x genes x K near 2^24, where before a batch of 256 cells drew 32 samples for all 9
    components at once (13.5 GB for the guide's stage alone)."""
    model, guide = make_pair("gmvae", 2000, 4, (16,), likelihood="nb", num_components=9)
    x = torch.poisson(torch.full((64, 2000), 0.5))
    seen, real = [], log_likelihood_module.estimate_batch

    def spy(model, draw_from, args, num_samples, chunk, max_plate_nesting):
        seen.append((args[0].shape[0], chunk))
        return real(model, draw_from, args, num_samples, chunk, max_plate_nesting)

    monkeypatch.setattr(log_likelihood_module, "estimate_batch", spy)
    with pytest.warns(UserWarning, match="k-hat"):  # an untrained guide
        result = log_likelihood(model, guide, x, num_samples=32, batch_size=64)
    assert result.per_datum.shape == (64,) and torch.isfinite(result.per_datum).all()
    assert rows_per_pass(x, 9) == 29 and [rows for rows, _ in seen] == [29, 29, 6]
    assert all(rows * chunk * 2000 * 9 <= CHUNK_ELEMENTS for rows, chunk in seen)
    assert samples_per_chunk(x[:29], 9) == CHUNK_ELEMENTS // (29 * 2000 * 9) == 32


@pytest.mark.parametrize("proposal", ["refined+defensive", "auto"])
def test_estimates_made_a_part_of_the_batch_at_a_time_are_right(monkeypatch, proposal):
    """With the bound lowered so that each batch of 30 goes in passes of 3 data, the estimates of the mixture
    marginal are as right as in one pass, and "auto" counts every datum once in its costs."""
    model, guide, x, exact = _gmvae_pair()
    monkeypatch.setattr(importance, "ROW_ELEMENTS", 3 * 4 * 2)
    assert rows_per_pass(x, 2) == 3
    passes = []
    real = certify.estimate_batch if proposal == "auto" else log_likelihood_module.estimate_batch
    module = certify if proposal == "auto" else log_likelihood_module

    def spy(model, draw_from, args, *rest):
        passes.append(args[0].shape[0])
        return real(model, draw_from, args, *rest)

    monkeypatch.setattr(module, "estimate_batch", spy)
    result = log_likelihood(model, guide, x, num_samples=2000, proposal=proposal)
    assert max(passes) <= 3 and result.per_datum.shape == (30,)
    error = result.per_datum - exact  # as in one pass (test_proposals): unbiased to Monte Carlo error
    assert error.mean().abs() < 0.03 and error.abs().max() < 0.3, error
    if proposal == "auto":
        assert result.cost["guide"]["data"] == 30 and result.cost["refined+defensive"]["data"] <= 30
        certified = result.certified
        assert certified.float().mean() > 0.8
        assert ((result.per_datum - exact).abs()[certified] <= 3 * result.mc_stderr[certified] + 0.02).all()

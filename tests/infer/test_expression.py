"""Normalised and differential expression: exact against hand computations where the posterior is a point, and the
end-to-end claim (a batch covariate keeps a confounded batch effect out of the DE table) on simulated counts."""

import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from pyrovae.guides import DeltaGuide, NormalGuide
from pyrovae.models import VAE

from pyrovae.data import CountData
from pyrovae.infer import differential_expression, markers, normalized_expression, train


def small_cells(n=50, genes=12, seed=0, batches=True):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, (n, genes)) + np.eye(genes, dtype=int)[rng.integers(0, genes, n)]
    obs = pd.DataFrame({"group": np.where(np.arange(n) < 20, "A", "B"), "batch": rng.choice(["p", "q", "r"], n)},
                       index=[f"c{i}" for i in range(n)])
    return CountData(counts, obs, label_key="group", categorical_keys=["batch"] if batches else ())


def point_pair(data, seed=0):
    torch.manual_seed(seed)
    model = VAE(data.num_genes, 2, (8,), "nb", categorical=data.categorical_sizes)
    guide = DeltaGuide(data.num_genes, 2, (8,), input_transform="log1p")
    return model, guide


def rho_of(model, guide, data, batch=None):
    """The decoder's softmax at the point each cell encodes to, decoded in its own batch or in ``batch``."""
    args = data.batch(torch.arange(len(data)))
    x, cat = (args[0], args[1]) if isinstance(args, tuple) else (args, None)
    if batch is not None:
        cat = torch.full_like(cat, batch)
    with torch.no_grad():
        return torch.softmax(model.decoder_outputs(guide.encode(x).mean, cat), -1).double()


def test_normalized_expression_is_the_decoded_softmax_times_the_library_size():
    data = small_cells()
    model, guide = point_pair(data)
    frame = normalized_expression(model, guide, data, library_size=1e4)
    assert list(frame.columns) == data.gene_names and list(frame.index) == list(data.obs.index)
    assert np.allclose(frame.to_numpy(), 1e4 * rho_of(model, guide, data).numpy(), rtol=1e-5)
    assert np.allclose(frame.sum(1), 1e4, rtol=1e-5)
    # every cell as if measured in batch "q", and averaged over two batches
    as_q = normalized_expression(model, guide, data, transform_batch="q", library_size=1.0)
    assert np.allclose(as_q.to_numpy(), rho_of(model, guide, data, batch=data.code("batch", "q")).numpy(), rtol=1e-5)
    both = normalized_expression(model, guide, data, transform_batch=[0, 2], library_size=1.0)
    expected = 0.5 * (rho_of(model, guide, data, 0) + rho_of(model, guide, data, 2))
    assert np.allclose(both.to_numpy(), expected.numpy(), rtol=1e-5)
    grouped = normalized_expression(model, guide, data, groupby="group", library_size=1.0)
    assert np.allclose(grouped.loc["A"].to_numpy(), rho_of(model, guide, data)[:20].mean(0).numpy(), rtol=1e-5)


def test_normalized_expression_averages_posterior_draws():
    data = small_cells(batches=False)
    torch.manual_seed(0)
    model = VAE(data.num_genes, 2, (8,), "poisson")
    guide = NormalGuide(data.num_genes, 2, (8,), input_transform="log1p")
    one = normalized_expression(model, guide, data, num_samples=1, library_size=1.0, seed=1)
    many = normalized_expression(model, guide, data, num_samples=400, library_size=1.0, seed=2)
    with torch.no_grad():  # the posterior mean by brute force: 20,000 draws
        x = data.batch(torch.arange(len(data)))
        z = guide.encode(x).sample((20000,))
        exact = torch.softmax(model.decoder(z), -1).mean(0).numpy()
    assert np.abs(many.to_numpy() - exact).max() < np.abs(one.to_numpy() - exact).max()
    assert np.allclose(many.to_numpy(), exact, rtol=0.05)


@pytest.mark.parametrize("batch_correction", [False, True])
def test_change_mode_probabilities_match_the_average_over_all_cell_pairs(batch_correction):
    """With a point-mass guide, each draw of a pair is a uniformly random (cell of A, cell of B): proba_de is the
    share of all such pairs whose |log2 fold change| exceeds delta (in a common random batch when corrected)."""
    data = small_cells()
    model, guide = point_pair(data, seed=1)
    delta, n = 0.1, 40000
    table = differential_expression(model, guide, data, "A", groupby="group", delta=delta, num_samples=n,
                                    batch_correction=batch_correction).loc[data.gene_names]
    batches = range(3) if batch_correction else [None]
    exact_p, exact_lfc = 0.0, 0.0
    for b in batches:
        log_rho = torch.log2(rho_of(model, guide, data, b)).numpy()
        lfc = log_rho[:20, None, :] - log_rho[None, 20:, :]  # every pair (A cell, B cell)
        exact_p += (np.abs(lfc) > delta).mean((0, 1)) / len(batches)
        exact_lfc += lfc.mean((0, 1)) / len(batches)
    standard_error = np.sqrt(exact_p * (1 - exact_p) / n) + 1e-3
    assert np.all(np.abs(table["proba_de"].to_numpy() - exact_p) < 5 * standard_error)
    assert np.allclose(table["lfc_mean"].to_numpy(), exact_lfc, atol=0.02)
    counts = data.counts.toarray()
    assert np.allclose(table["non_zeros_proportion1"], (counts[:20] > 0).mean(0))
    assert np.allclose(table["raw_mean2"], counts[20:].mean(0))
    assert np.allclose(table["bayes_factor"], np.log(table["proba_de"] + 1e-8) - np.log(1 - table["proba_de"] + 1e-8))


def test_the_fdr_flag_is_the_longest_prefix_with_expected_false_share_below_target():
    data = small_cells()
    model, guide = point_pair(data, seed=2)
    table = differential_expression(model, guide, data, "A", groupby="group", delta=0.05, num_samples=500, fdr=0.1)
    assert (np.diff(table["proba_de"].to_numpy()) <= 0).all()  # sorted by evidence
    expected_false = np.cumsum(1 - table["proba_de"].to_numpy()) / np.arange(1, len(table) + 1)
    assert np.array_equal(table["is_de_fdr_0.1"].to_numpy(), expected_false <= 0.1)
    vanilla = differential_expression(model, guide, data, "A", groupby="group", mode="vanilla", num_samples=500)
    assert np.allclose(vanilla["proba_m1"] + vanilla["proba_m2"], 1.0)


def confounded_cells(n=1200, genes=100, seed=0):
    """Two cell groups whose batches are confounded with them (group B mostly in batch 1): genes 0-3 are up 8x in
    B (the biology), genes 10-13 up 8x in batch 1 (the technology). With 100 genes the shares of the others move by
    log2(1.28) = 0.36 < delta."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n)
    batch = (rng.random(n) < np.where(group == 1, 0.8, 0.2)).astype(int)
    log_rate = np.log(2.0) + rng.normal(0, 0.5, (1, genes)).repeat(n, 0)
    log_rate[:, :4] += np.log(8.0) * group[:, None]
    log_rate[:, 10:14] += np.log(8.0) * batch[:, None]
    library = rng.lognormal(0, 0.2, (n, 1))
    counts = rng.poisson(np.exp(log_rate) * library)
    obs = pd.DataFrame({"group": np.where(group == 1, "B", "A"), "batch": np.where(batch == 1, "b1", "b0")},
                       index=[f"c{i}" for i in range(n)])
    return CountData(counts, obs, label_key="group", categorical_keys=["batch"])


def test_a_batch_covariate_keeps_a_confounded_batch_effect_out_of_the_de_table():
    data = confounded_cells()
    tables = {}
    for name, cells in (("batch-aware", data), ("batch-blind", data.without_covariates())):
        pyro.set_rng_seed(0)
        model = VAE(data.num_genes, 4, (32,), "nb", categorical=cells.categorical_sizes)
        guide = NormalGuide(data.num_genes, 4, (32,), input_transform="log1p")
        train(model, guide, cells, epochs=30, batch_size=64, lr=3e-3, progress=False, seed=0)
        tables[name] = differential_expression(model, guide, cells, "B", groupby="group", delta=0.5,
                                               num_samples=4000)
    biology, technology = [f"gene_{j}" for j in range(4)], [f"gene_{j}" for j in range(10, 14)]
    aware, blind = tables["batch-aware"], tables["batch-blind"]
    assert set(aware.index[:4]) == set(biology)
    assert (aware.loc[biology, "lfc_mean"] > 1.0).all()  # log2(8) - 0.36 = 2.6, shrunk by a 30-epoch fit
    assert (aware.loc[technology, "proba_de"] < 0.2).all()
    assert (blind.loc[technology, "proba_de"] > 0.8).all()  # without the covariate the batch passes for biology
    assert (blind.loc[technology, "lfc_mean"] > 1.0).all()
    assert (aware.loc[biology, "proba_de"] > 0.75).all()
    assert set(markers(aware, min_bayes_factor=1.0, top=4).index) == set(biology)


def test_expression_refuses_what_it_cannot_answer():
    data = small_cells()
    model, guide = point_pair(data)
    with pytest.raises(ValueError, match="no cells with group in"):
        differential_expression(model, guide, data, "Z", groupby="group")
    with pytest.raises(ValueError, match="outside 0..49"):
        differential_expression(model, guide, data, [-1, 3])
    by_names = differential_expression(model, guide, data, ["A"], num_samples=50)  # labels of data.label_key
    assert by_names.attrs["group1"] == 20
    with pytest.raises(ValueError, match="disjoint"):
        differential_expression(model, guide, data, np.arange(10), np.arange(5, 15))
    with pytest.raises(ValueError, match="delta"):
        differential_expression(model, guide, data, "A", groupby="group", delta=0)
    with pytest.raises(TypeError, match="CountData"):
        normalized_expression(model, guide, torch.ones(3, 12))
    gaussian = VAE(12, 2, (8,), "gaussian")
    with pytest.raises(ValueError, match="count likelihood"):
        normalized_expression(gaussian, guide, data)
    with pytest.raises(ValueError, match="no level 'zz'"):
        normalized_expression(model, guide, data, transform_batch="zz")


def test_results_go_back_into_anndata(tmp_path):
    anndata = pytest.importorskip("anndata")
    from pyrovae.data import add_results

    data = small_cells()
    model, guide = point_pair(data)
    adata = data.to_anndata()
    frame = normalized_expression(model, guide, data)
    table = differential_expression(model, guide, data, "A", groupby="group", num_samples=100)
    add_results(adata, normalized=frame, de={"A": table}, key="vae")
    assert np.allclose(adata.layers["vae_normalized"], frame.to_numpy())
    add_results(adata, normalized=frame.iloc[:, :5], key="panel")  # a subset of genes: a DataFrame in obsm
    assert list(adata.obsm["panel_normalized"].columns) == data.gene_names[:5]
    adata.write_h5ad(tmp_path / "cells.h5ad")
    back = anndata.read_h5ad(tmp_path / "cells.h5ad")
    assert list(back.uns["vae_de"]["A"].index[:3]) == list(table.index[:3])

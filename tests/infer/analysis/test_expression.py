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
        # a KL warm-up: without it the latent collapsed onto the prior in 2 of 8 seeds (the batch then explains
        # all it can), with it in none
        train(model, guide, cells, epochs=30, batch_size=64, lr=3e-3, kl_warmup_epochs=10, progress=False, seed=0)
        tables[name] = differential_expression(model, guide, cells, "B", groupby="group", delta=0.5,
                                               num_samples=4000)
    biology, technology = [f"gene_{j}" for j in range(4)], [f"gene_{j}" for j in range(10, 14)]
    aware, blind = tables["batch-aware"], tables["batch-blind"]
    assert set(aware.index[:4]) == set(biology)
    assert (aware.loc[biology, "lfc_mean"] > 1.0).all()  # log2(8) - 0.36 = 2.6, shrunk by a 30-epoch fit
    assert (aware.loc[technology, "proba_de"] < 0.2).all()
    assert (blind.loc[technology, "proba_de"] > 0.7).all()  # without the covariate the batch passes for biology
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


@pytest.mark.parametrize("num_samples", [2, 7, 50, 51])
def test_lfc_median_and_std_are_numpy_s_median_and_the_ddof_0_deviation(num_samples):
    """The draws are reproduced by hand (a point-mass guide: each draw is the lfc between two seeded random cells),
    and the table's median and standard deviation are numpy's (scVI's), at even and odd numbers of draws."""
    data = small_cells()
    model, guide = point_pair(data, seed=3)
    table = differential_expression(model, guide, data, "A", groupby="group", num_samples=num_samples,
                                    batch_correction=False, seed=5).loc[data.gene_names]
    rng = np.random.default_rng(5)
    group = data.obs["group"].to_numpy() == "A"
    cells1 = rng.choice(np.flatnonzero(group), num_samples)
    cells2 = rng.choice(np.flatnonzero(~group), num_samples)
    log_rho = np.log2(rho_of(model, guide, data).numpy())
    lfc = log_rho[cells1] - log_rho[cells2]  # (num_samples, genes)
    np.testing.assert_allclose(table["lfc_median"], np.median(lfc, 0), rtol=1e-5, atol=1e-6)  # float32 decoding
    np.testing.assert_allclose(table["lfc_std"], np.std(lfc, 0, ddof=0), rtol=1e-5, atol=1e-6)  # float32 decoding
    np.testing.assert_allclose(table["lfc_mean"], lfc.mean(0), rtol=1e-5, atol=1e-6)  # float32 decoding
    if num_samples % 2 == 0:  # torch's median (the lower middle value) would differ here
        lower = torch.from_numpy(lfc).median(0).values.numpy()
        assert not np.allclose(lower, np.median(lfc, 0))


@pytest.mark.parametrize("option, value, message", [
    ("fdr", 2, r"fdr must be a finite number in \(0, 1\), got 2"),
    ("fdr", 0.0, r"fdr must be a finite number in \(0, 1\), got 0.0"),
    ("num_samples", 2.5, "num_samples must be an integer >= 2"),
    ("pseudocount", -1.0, "pseudocount must be a finite number in"),
    ("groupby", "gruop", r"groupby='gruop' is not a column of the cell table of counts \(columns: \['group', "
                         r"'batch'\]\)"),
])
def test_differential_expression_names_its_bad_settings(option, value, message):
    data = small_cells()
    model, guide = point_pair(data)
    settings = {"groupby": "group", "num_samples": 10, option: value}
    with pytest.raises(ValueError, match=message):
        differential_expression(model, guide, data, "A", **settings)


@pytest.mark.parametrize("library_size", [0, -1, float("nan"), float("inf")])
def test_normalized_expression_refuses_a_library_size_that_is_not_positive(library_size):
    data = small_cells()
    model, guide = point_pair(data)
    with pytest.raises(ValueError, match=r"library_size must be a finite number in \(0, inf\)"):
        normalized_expression(model, guide, data, library_size=library_size)


def test_a_misspelled_groupby_is_named_with_the_columns_there_are():
    data = small_cells()
    model, guide = point_pair(data)
    with pytest.raises(ValueError, match=r"groupby='Group' is not a column .*\['group', 'batch'\]"):
        normalized_expression(model, guide, data, groupby="Group")
    means = normalized_expression(model, guide, data, groupby="group", library_size=100.0)
    rho = rho_of(model, guide, data).numpy() * 100.0
    np.testing.assert_allclose(means.loc["A"], rho[:20].mean(0), rtol=1e-5)
    np.testing.assert_allclose(means.loc["B"], rho[20:].mean(0), rtol=1e-5)


def test_groups_given_as_zero_one_integers_or_a_swapped_pair_are_refused():
    data = small_cells()
    model, guide = point_pair(data)
    zero_one = (np.arange(50) < 20).astype(int)
    with pytest.raises(ValueError, match="group1 is an integer array of 50 zeros and ones.*boolean mask"):
        differential_expression(model, guide, data, zero_one, num_samples=10)
    by_mask = differential_expression(model, guide, data, zero_one.astype(bool), num_samples=10)
    by_name = differential_expression(model, guide, data, "A", groupby="group", num_samples=10)
    pd.testing.assert_frame_equal(by_mask, by_name)
    with pytest.raises(TypeError, match="swapped order"):
        normalized_expression(guide, model, data)


def test_markers_names_the_columns_a_de_table_lacks():
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['lfc_mean', 'bayes_factor', "
                                         r"'non_zeros_proportion1'\].*differential_expression returns"):
        markers(pd.DataFrame({"logfoldchanges": [1.0], "pvals": [0.01]}))
    with pytest.raises(TypeError, match="markers takes the DataFrame"):
        markers(np.ones((3, 3)))
    table = pd.DataFrame({"lfc_mean": [2.0, -1.0, 0.5, 3.0], "bayes_factor": [4.0, 5.0, 1.0, 3.5],
                          "non_zeros_proportion1": [0.5, 0.9, 0.9, 0.05]}, index=["a", "b", "c", "d"])
    assert list(markers(table).index) == ["a"]  # up, Bayes factor >= 3, detected in >= 10%
    assert list(markers(table, min_detection=0.0).index) == ["d", "a"]

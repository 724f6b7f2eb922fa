"""The data that carry covariates: CountData's codes, from_anndata's keys, concatenate."""

import numpy as np
import pandas as pd
import pytest
import torch

from pyrovae.data import CountData, from_anndata


def batched_counts(n=240, genes=30, seed=0):
    """Counts from three batches (batch 2 doubles genes 0-4) with a continuous covariate."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 3, n)
    log_rate = rng.normal(0.5, 1.0, (1, genes)) + np.where((batch[:, None] == 2) & (np.arange(genes) < 5), 1.0, 0.0)
    counts = rng.poisson(np.exp(log_rate), (n, genes))
    counts[:, 0] += 1  # no empty cell
    obs = pd.DataFrame({"sample": [f"s{b}" for b in batch], "mito": rng.random(n), "donor": rng.choice(["a", "b"], n)},
                       index=[f"cell{i}" for i in range(n)])
    return CountData(counts, obs, categorical_keys=["sample", "donor"], continuous_keys=["mito"])


def test_count_data_carries_codes_that_subsets_and_splits_keep():
    data = batched_counts()
    assert data.categorical_sizes == (3, 2) and data.num_continuous == 1
    x, cat, cont = data.batch(torch.arange(5))
    assert x.shape == (5, 30) and cat.dtype == torch.long and cat.shape == (5, 2) and cont.shape == (5, 1)
    assert data.code("sample", "s2") == 2
    train_part, test_part = data.split(0.5, seed=1)
    only_s2 = test_part.subset(np.flatnonzero(test_part.obs["sample"].to_numpy() == "s2"))
    assert only_s2.categorical_sizes == (3, 2)  # the parent's levels, though one level is left
    assert (only_s2.cat[:, 0] == 2).all()
    assert not data.without_covariates().has_covariates
    with pytest.raises(ValueError, match="no column 'plate'"):
        CountData(data.counts, data.obs, categorical_keys=["plate"])


def test_from_anndata_reads_scvi_keys_batch_first():
    anndata = pytest.importorskip("anndata")
    data = batched_counts()
    adata = anndata.AnnData(X=np.zeros(data.counts.shape, np.float32), obs=data.obs.copy())
    adata.layers["counts"] = data.counts.copy()
    cells = from_anndata(adata, layer="counts", batch_key="sample", categorical_covariate_keys=["donor"],
                         continuous_covariate_keys=["mito"], labels_key="donor")
    assert cells.categorical_keys == ("sample", "donor") and cells.continuous_keys == ("mito",)
    assert cells.label_key == "donor"
    assert torch.equal(cells.cat, data.cat)


def test_concatenate_makes_the_part_the_batch_and_keeps_shared_genes():
    a, b = batched_counts(40, 10, seed=1).without_covariates(), batched_counts(30, 10, seed=2).without_covariates()
    b = b.subset(genes=np.arange(2, 10))
    with pytest.warns(UserWarning, match="keeps 8 of its 10 genes"):
        both = CountData.concatenate({"celseq": a, "dropseq": b}, batch_key="technology")
    assert len(both) == 70 and both.num_genes == 8 and both.categorical_sizes == (2,)
    assert (both.cat[:40, 0] == 0).all() and (both.cat[40:, 0] == 1).all()
    assert both.obs.index.is_unique


"""setup_anndata: raw counts checked (an error naming layer=), codes of batches and labels fixed and recorded in
the AnnData, sizes taken from the data, and sparse, dense and backed AnnData read alike."""

import json

import anndata
import numpy as np
import pytest
import scipy.sparse as sp

import pyrovae.sc as sc
from pyrovae.data.anndata_io import _check_raw_counts
from tests.sc.conftest import NUM_GENES, TYPES, make_adata


def test_registration_is_recorded_and_sizes_come_from_the_data(adata):
    adata.obs["partial"] = adata.obs["cell_type"].where(np.arange(adata.n_obs) % 2 == 0, "Unknown")
    registration = sc.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="partial",
                                    continuous_covariate_keys="percent_mt")
    assert registration.levels == {"batch": ["b1", "b2"]} and registration.label_names == list(TYPES)
    assert sc.DataRegistration.from_dict(json.loads(adata.uns["pyrovae_registration"])) == registration
    model = sc.LabelTransferGMVAE(adata, latent_dim=2, hidden=(8,))
    assert model.model.x_dim == NUM_GENES and model.model.num_components == len(TYPES)
    assert model.model.pair_arguments["dropout"] == 0.3 and model.guide.classification_weight == NUM_GENES / 2
    assert model.model.covariates.categorical == (2,) and model.model.covariates.continuous == 1
    data = model._training_data(model._data())
    known = adata.obs["partial"].to_numpy() != "Unknown"
    codes = np.searchsorted(np.asarray(TYPES), adata.obs["cell_type"].to_numpy())
    assert np.array_equal(data.y.numpy(), np.where(known, codes, -1))  # the unlabelled category is unknown
    assert np.array_equal(data.cat.numpy()[:, 0], (adata.obs["batch"] == "b2").to_numpy().astype(int))


def test_the_entry_named_is_the_bad_one_in_a_csr_with_unsorted_genes(adata):
    """adata[:, genes].copy() leaves a CSR's column indices unsorted: the error names the entry that is bad, not
    the one at its place in sorted order."""
    subset = adata[:, adata.var_names[::-1]].copy()
    counts = subset.layers["counts"]
    row = 7
    start, stop = counts.indptr[row], counts.indptr[row + 1]
    assert not np.all(np.diff(counts.indices[start:stop]) > 0)  # unsorted in this row
    position = start + 1
    counts.data[position] = 0.5
    gene = int(counts.indices[position])
    with pytest.raises(ValueError, match=rf"non-integer count \(0.5 at cell {row}, gene {gene};"):
        sc.setup_anndata(subset, layer="counts")
    for other in (counts.tocsc(), counts.toarray()):
        subset.layers["counts"] = other
        with pytest.raises(ValueError, match=rf"non-integer count \(0.5 at cell {row}, gene {gene};"):
            sc.setup_anndata(subset, layer="counts")
    for other in (counts.tocoo(), sp.lil_matrix(counts)):  # formats anndata does not store, read by hand
        with pytest.raises(ValueError, match=rf"non-integer count \(0.5 at cell {row}, gene {gene};"):
            _check_raw_counts(other, "counts", {})


def test_counts_that_are_not_raw_are_refused_naming_layer(adata):
    with pytest.raises(ValueError, match=r"X of the AnnData holds a non-integer count .* Pass layer= .*'counts'"):
        sc.setup_anndata(adata)  # X holds log1p values
    adata.layers["counts"] = adata.layers["counts"].copy()
    adata.layers["counts"][3, 5] = -2
    with pytest.raises(ValueError, match=r"layer .counts. of the AnnData holds a negative count \(-2 at cell 3, gene"):
        sc.setup_anndata(adata, layer="counts")
    with pytest.raises(ValueError, match="not set up for pyrovae: call pyrovae.sc.setup_anndata"):
        sc.SingleCellVAE(make_adata())
    with pytest.raises(ValueError, match="no obs column 'kind' for labels_key"):
        sc.setup_anndata(make_adata(), layer="counts", labels_key="kind")


def test_a_batch_the_registration_does_not_know_is_named(adata):
    sc.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="cell_type")
    model = sc.SingleCellVAE(adata, latent_dim=2, hidden=(8,))
    query = make_adata(seed=1)
    query.obs.loc["cell0", "batch"] = "b3"
    with pytest.raises(ValueError, match=r"covariate 'batch' has levels \['b3'\]"):
        model.get_latent_representation(query)


def test_sparse_dense_and_backed_anndata_read_alike(tmp_path):
    sparse, dense = make_adata(sparse=True), make_adata(sparse=False)
    sparse.write_h5ad(tmp_path / "cells.h5ad")
    backed = anndata.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    assert backed.isbacked
    read = []
    for adata in (sparse, dense, backed):
        registration = sc.setup_anndata(adata, layer="counts", batch_key="batch")
        read.append(registration.count_data(adata))
    for data in read[1:]:
        assert (data.counts != read[0].counts).nnz == 0 and np.array_equal(data.cat, read[0].cat)
    assert sp.issparse(read[2].counts)
    with pytest.raises(ValueError, match="X of the AnnData holds a non-integer count.*Pass layer="):
        sc.setup_anndata(backed)  # the backed X holds log1p values, read block by block and checked

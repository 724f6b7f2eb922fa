"""The single-cell layer as a scanpy user drives it: what the user changes in the AnnData between calls is seen
(a clustering added to ``obs``, a layer replaced; a registered label renamed is named, with a warning), and what would
give quiet nonsense is named (an untrained model, no labelled cell, an empty cell, a covariate on the scale of
counts)."""

import warnings

import anndata
import numpy as np
import pandas as pd
import pytest

import pyrovae.sc as sc
from tests.sc.conftest import NUM_CELLS, make_adata

SMALL = dict(latent_dim=3, hidden=(16,))
QUICK = dict(epochs=2, batch_size=30, progress=False, seed=0)


def _trained(adata, cls=sc.SingleCellVAE, **options):
    model = cls(adata, **SMALL, **options)
    model.train(**QUICK)
    return model


def test_a_column_added_to_obs_after_training_is_seen(adata):
    """Cluster, then DE by cluster: the scanpy workflow, with the clusters added after the model was built."""
    sc.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="cell_type")
    model = _trained(adata)
    adata.obs["leiden"] = pd.Categorical(np.where(np.arange(NUM_CELLS) % 3 == 0, "0", "1"))
    table = model.differential_expression("0", groupby="leiden", num_samples=2)
    assert len(table) == adata.n_vars
    adata.obs["cell_type"] = adata.obs["cell_type"].replace({"B": "B cell"})  # unknown to the registration
    with pytest.warns(UserWarning, match=r"labels the model was not set up with \(\['B cell'\]"):
        model.get_latent_representation()  # the registered column is read by every call
    with pytest.warns(UserWarning, match="not set up with"):
        table = model.differential_expression("B cell", num_samples=2)  # groups: the column as it is now
    assert "B cell vs rest" in adata.uns["pyrovae_de"] and len(table) == adata.n_vars


def test_a_replaced_layer_is_read_again(adata):
    sc.setup_anndata(adata, layer="counts", batch_key="batch")
    model = _trained(adata)
    before = model.get_latent_representation()
    adata.layers["counts"] = adata.layers["counts"] * 3
    after = model.get_latent_representation()
    assert not np.allclose(before, after)
    assert np.array_equal(after, model.get_latent_representation(adata))


def test_a_backed_anndata_is_read_from_its_file_once(tmp_path, monkeypatch):
    import pyrovae.sc.model as model_module

    make_adata().write_h5ad(tmp_path / "cells.h5ad")
    backed = anndata.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    sc.setup_anndata(backed, layer="counts", batch_key="batch")
    reads = []
    real = model_module.raw_counts
    monkeypatch.setattr(model_module, "raw_counts", lambda *a: reads.append(1) or real(*a))
    model = _trained(backed)
    first = model.get_latent_representation()
    assert np.array_equal(first, model.get_latent_representation()) and len(reads) == 1


def test_the_gmvae_starts_from_pseudo_labels_whatever_labels_are_registered(adata):
    """The pseudo-label start is the unsupervised GMVAE's: a registered labels_key (three types here) with another
    number of components is not label transfer, and must not be checked as if it were."""
    sc.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="cell_type")  # three types
    for components in (2, 5):
        model = sc.SingleCellGMVAE(adata, **SMALL, num_components=components)
        model.train(start_epochs=1, **QUICK)
        assert set(model.get_cluster_assignments()) <= set(range(components))


def test_codes_beyond_the_components_are_refused(adata):
    from pyrovae.data import from_anndata

    data = from_anndata(adata, "counts").with_labels(codes=np.arange(NUM_CELLS) % 4)
    assert data.label_key is None
    with pytest.raises(ValueError, match="codes up to 3 but the GMVAE has 3 components"):
        data.check_components(3)
    data.check_components(4)


def test_a_label_column_without_a_labelled_cell_is_refused(adata):
    adata.obs["nothing"] = pd.Categorical([np.nan] * NUM_CELLS, categories=["A", "B"])
    with pytest.raises(ValueError, match=r"obs\['nothing'\] has no label"):
        sc.setup_anndata(adata, layer="counts", labels_key="nothing")


def test_results_of_an_untrained_model_warn(tmp_path, adata):
    sc.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="cell_type")
    model = sc.LabelTransferGMVAE(adata, **SMALL)
    for result in (model.get_latent_representation, model.predict, model.get_cluster_assignments,
                   lambda: model.differential_expression("B", num_samples=2),
                   lambda: model.get_normalized_expression()):
        with pytest.warns(UserWarning, match="has not been trained"):
            result()
    model.is_trained = True  # trained by hand (pyro.infer.SVI): the user says so
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.get_latent_representation()
    trained = _trained(adata)
    trained.save(tmp_path / "trained")
    loaded = sc.SingleCellVAE.load(tmp_path / "trained", adata)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trained.get_latent_representation(), loaded.get_latent_representation()
    sc.SingleCellVAE(adata, **SMALL).save(tmp_path / "untrained")
    with pytest.warns(UserWarning, match="has not been trained"):
        sc.SingleCellVAE.load(tmp_path / "untrained", adata).get_latent_representation()


def test_an_empty_cell_is_named_before_training(adata):
    adata.layers["counts"][5] = 0
    sc.setup_anndata(adata, layer="counts", batch_key="batch")
    model = sc.SingleCellVAE(adata, **SMALL)  # the NB likelihood scales by the observed library size
    with pytest.raises(ValueError, match=r"1 cell\(s\) of the AnnData have no counts \(first: \['cell5'\]\).*"
                                         r"scanpy.pp.filter_cells\(adata, min_counts=1\)"):
        model.train(**QUICK)


def test_a_covariate_on_the_scale_of_counts_warns_naming_it(adata):
    adata.obs["total"] = np.asarray(adata.layers["counts"].sum(1)).ravel()
    with pytest.warns(UserWarning, match=r"continuous covariate 'total' is far from unit scale.*Standardise"):
        sc.setup_anndata(adata, layer="counts", continuous_covariate_keys=["total"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sc.setup_anndata(adata, layer="counts", continuous_covariate_keys=["percent_mt"])


def test_a_missing_column_names_the_argument(adata):
    for argument in ("batch_key", "labels_key"):
        with pytest.raises(ValueError, match=f"no obs column 'nope' for {argument}"):
            sc.setup_anndata(adata, layer="counts", **{argument: "nope"})
    with pytest.raises(ValueError, match="no obs column 'nope' for continuous_covariate_keys"):
        sc.setup_anndata(adata, layer="counts", continuous_covariate_keys=["nope"])


def test_each_comparison_of_cell_masks_is_kept(adata):
    sc.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="cell_type")  # masks are not labels
    model = _trained(adata)
    first, second = np.arange(NUM_CELLS) < 30, np.arange(NUM_CELLS) >= 60
    model.differential_expression(first, num_samples=2)
    model.differential_expression(second, num_samples=2)
    model.differential_expression(np.flatnonzero(first), num_samples=2)  # indices
    assert sorted(adata.uns["pyrovae_de"]) == ["selected cells vs rest", "selected cells vs rest (2)",
                                               "selected cells vs rest (3)"]


def test_genes_in_another_order_point_to_the_models_genes(adata):
    sc.setup_anndata(adata, layer="counts", batch_key="batch")
    model = _trained(adata)
    shuffled = adata[:, adata.var_names[::-1]].copy()
    with pytest.raises(ValueError, match=r"another order.*adata\[:, model.gene_names\]"):
        model.get_latent_representation(shuffled)


def test_new_labels_in_a_query_are_read_as_unknown_with_a_warning(tmp_path, adata):
    """A query's cell types the model was not set up with do not block its latent, its predictions or loading it
    (the labels column is not read, with a warning); training the label-transfer model on such labels is refused."""
    sc.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="cell_type")
    model = _trained(adata, sc.LabelTransferGMVAE)
    model.save(tmp_path / "model")
    query = make_adata(seed=1)
    query.obs.loc["cell0", "cell_type"] = "Platelet"
    without = query.copy()
    del without.obs["cell_type"]
    for method in ("get_latent_representation", "predict"):
        with pytest.warns(UserWarning, match=r"labels the model was not set up with \(\['Platelet'\]"):
            got = getattr(model, method)(query)
        expected = getattr(model, method)(without)
        assert np.array_equal(np.asarray(got), np.asarray(expected))
    with pytest.warns(UserWarning, match="not set up with"):
        loaded = sc.LabelTransferGMVAE.load(tmp_path / "model", query)
    with pytest.raises(ValueError, match=r"labels \['Platelet'\] that are not among the labels \['B', 'NK', 'T'\]"):
        loaded.train(**QUICK)
    query.obs.loc["cell0", "cell_type"] = "Unknown"  # the unlabelled category: read with the known labels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(query)


def test_a_failed_load_leaves_the_anndata_as_it_was(tmp_path, adata):
    sc.setup_anndata(adata, layer="counts", batch_key="batch")
    _trained(adata).save(tmp_path / "model")
    query = make_adata(seed=1)
    query.obs["batch"] = query.obs["batch"].replace("b2", "b3")
    before = sc.setup_anndata(query, layer="counts", batch_key="batch")
    with pytest.raises(ValueError, match=r"covariate 'batch' has levels \['b3'\]"):
        sc.SingleCellVAE.load(tmp_path / "model", query)
    assert sc.registration_of(query) == before


def test_a_batch_of_non_integer_numbers_warns(adata):
    with pytest.warns(UserWarning, match=rf"'percent_mt' holds non-integer numbers, read as {NUM_CELLS} levels"):
        sc.setup_anndata(adata, layer="counts", batch_key="percent_mt")
    adata.obs["plate"] = (np.arange(NUM_CELLS) % 3).astype(float)  # 0.0, 1.0, 2.0: plate numbers
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sc.setup_anndata(adata, layer="counts", batch_key="batch", categorical_covariate_keys=["plate"])


def test_a_likelihood_that_is_not_for_counts_is_refused_when_built(adata):
    sc.setup_anndata(adata, layer="counts")
    with pytest.raises(ValueError, match="models UMI counts, so its likelihood is a count likelihood.*'gaussian'"):
        sc.SingleCellVAE(adata, **SMALL, likelihood="gaussian")


def test_the_gmvae_starts_from_pseudo_labels_by_default_before_its_first_training(adata, monkeypatch):
    import pyrovae.sc.kinds as kinds

    sc.setup_anndata(adata, layer="counts", batch_key="batch")
    starts = []
    monkeypatch.setattr(kinds, "pseudo_label_start", lambda *args, epochs, **options: starts.append(epochs))
    model = sc.SingleCellGMVAE(adata, **SMALL, num_components=3)
    model.train(**QUICK)  # two epochs: a start of two
    model.train(**QUICK)  # trained further: no start
    model.train(**QUICK, start_epochs=1)
    sc.SingleCellGMVAE(adata, **SMALL, num_components=3).train(**{**QUICK, "epochs": 100})
    assert starts == [2, 1, 30]


def test_de_tables_are_named_by_the_groups_values_and_zero_epochs_train_nothing(adata):
    adata.obs["cluster"] = np.arange(NUM_CELLS) % 3
    sc.setup_anndata(adata, layer="counts", batch_key="batch")
    model = sc.SingleCellVAE(adata, **SMALL)
    model.train(**{**QUICK, "epochs": 0})
    assert not model.is_trained
    model = _trained(adata)
    model.differential_expression(1, 2, groupby="cluster", num_samples=2)
    model.differential_expression([0, 1], groupby="cluster", num_samples=2)
    adata.obs["other"] = adata.obs["cluster"].to_numpy()[::-1]
    model.differential_expression(1, 2, groupby="other", num_samples=2)  # another clustering's "1 vs 2": kept apart
    assert sorted(adata.uns["pyrovae_de"]) == ["cluster: 0+1 vs rest", "cluster: 1 vs 2", "other: 1 vs 2"]
    with pytest.raises(ValueError, match=r"one number.*'1'.*\[1\]"):  # a label or one cell? never guessed
        model.differential_expression(1, num_samples=2)


@pytest.mark.filterwarnings("ignore::anndata.ImplicitModificationWarning")  # anndata's own, beside ours
def test_results_written_into_a_view_warn(adata):
    sc.setup_anndata(adata, layer="counts", batch_key="batch")
    model = _trained(adata)
    view = adata[:30]
    with pytest.warns(UserWarning, match=r"the AnnData is a view \(adata\[mask\]\).*gets none"):
        model.get_latent_representation(view)
    with pytest.warns(UserWarning, match=r"the AnnData is a view"):
        model.get_marginal_ll(adata[:20], num_samples=30)


def test_a_validation_split_of_a_few_cells_warns(adata):
    sc.setup_anndata(adata, layer="counts", batch_key="batch")
    model = sc.SingleCellVAE(adata, **SMALL)
    with pytest.warns(UserWarning, match=r"train_size=0.99 leaves 1 of the 90 cells to validate on"):
        model.train(**QUICK, train_size=0.99)


def test_batches_numbered_in_the_anndata_are_named_by_their_numbers(adata):
    """obs["sample"] = 1, 2 registers levels "1" and "2": transform_batch=1 is the level "1", not the position 1."""
    adata.obs["sample"] = np.where(np.arange(NUM_CELLS) % 2 == 0, 1, 2)
    sc.setup_anndata(adata, layer="counts", batch_key="sample")
    model = _trained(adata)
    by_number = model.get_normalized_expression(transform_batch=2)
    by_name = model.get_normalized_expression(transform_batch="2")
    other = model.get_normalized_expression(transform_batch="1")
    assert np.array_equal(by_number.to_numpy(), by_name.to_numpy())
    assert not np.allclose(by_number.to_numpy(), other.to_numpy())
    averaged = model.get_normalized_expression(transform_batch=[1, 2])
    assert np.array_equal(averaged.to_numpy(), model.get_normalized_expression(transform_batch=["1", "2"]).to_numpy())
    with pytest.raises(ValueError, match="3"):
        model.get_normalized_expression(transform_batch=3)


def test_a_second_training_counts_its_best_epoch_after_the_first(adata):
    sc.setup_anndata(adata, layer="counts", batch_key="batch")
    model = sc.SingleCellVAE(adata, **SMALL)
    model.train(**{**QUICK, "epochs": 3}, early_stopping=True, patience=5)
    second = model.train(**{**QUICK, "epochs": 3}, early_stopping=True, patience=5)
    assert len(model.history) == 6
    assert model.history.best_epoch == 3 + second.best_epoch
    best = model.history.records[model.history.best_epoch - 1]
    assert best["train_elbo"] == max(r["train_elbo"] for r in model.history.records[3:])

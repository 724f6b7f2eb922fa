"""The model objects of every kind: results returned and written into the AnnData, equal to the functional API's
on the same pair, and checked against what they must satisfy (unit latents on the sphere, expression summing to
the library size, groups in the DE table, labels transferred on well-separated types)."""

import anndata
import numpy as np
import pandas as pd
import pytest
import torch

import pyrovae.sc as sc
from pyrovae.data import from_anndata
from pyrovae.infer import differential_expression, encode_data, normalized_expression
from tests.sc.conftest import TYPES

KINDS = {
    "vae": (sc.SingleCellVAE, {}),
    "svae-vmf": (sc.SingleCellSVAE, {"distribution": "vmf"}),
    "svae-power": (sc.SingleCellSVAE, {"distribution": "power"}),
    "gmvae": (sc.SingleCellGMVAE, {"num_components": 3}),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_results_are_returned_written_and_equal_to_the_functional_api(tmp_path, adata, kind):
    sc.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="cell_type")
    cls, options = KINDS[kind]
    model = cls(adata, latent_dim=3, hidden=(16,), likelihood="zinb", **options)
    assert model.model.pair_arguments["kind"] == kind
    history = model.train(epochs=2, batch_size=32, progress=False, seed=0)
    assert len(history) == 2 and len(model.history) == 2
    data = from_anndata(adata, "counts", batch_key="batch", labels_key="cell_type")  # the functional path

    latent = model.get_latent_representation()
    assert np.array_equal(adata.obsm["X_pyrovae"], latent)
    assert torch.equal(torch.from_numpy(latent), encode_data(model.guide, data))
    if kind.startswith("svae"):
        np.testing.assert_allclose(np.linalg.norm(latent, axis=1), 1.0, rtol=1e-5)  # S^3 in R^4
        assert latent.shape == (adata.n_obs, 4)

    expression = model.get_normalized_expression(library_size=1e4)
    assert np.array_equal(adata.layers["pyrovae_normalized"], expression.to_numpy())
    np.testing.assert_allclose(expression.sum(1), 1e4, rtol=1e-4)  # softmax shares x the library size
    pd.testing.assert_frame_equal(expression, normalized_expression(model.model, model.guide, data, seed=0))

    table = model.differential_expression("B", "NK", num_samples=64, seed=3)
    pd.testing.assert_frame_equal(table, differential_expression(model.model, model.guide, data, "B", "NK",
                                                                 num_samples=64, seed=3))
    assert adata.uns["pyrovae_de"]["B vs NK"] is table and table.attrs["group1"] == 30
    model.differential_expression("T", groupby="cell_type", num_samples=8)
    assert set(adata.uns["pyrovae_de"]) == {"B vs NK", "T vs rest"}  # earlier comparisons kept
    if kind == "gmvae":
        clusters = model.get_cluster_assignments()
        assert np.array_equal(adata.obs["pyrovae_cluster"].astype(int), clusters) and clusters.max() < 3
    adata.write_h5ad(tmp_path / "results.h5ad")  # every result is in a form scverse tools write and read
    back = anndata.read_h5ad(tmp_path / "results.h5ad")
    assert np.array_equal(back.obsm["X_pyrovae"], latent)
    assert np.allclose(back.uns["pyrovae_de"]["B vs NK"]["lfc_mean"], table["lfc_mean"])


def test_likelihoods_by_name_with_options(adata):
    sc.setup_anndata(adata, layer="counts", batch_key="batch")
    for name in ("nb", "zinb", "poisson", "zip"):
        assert sc.SingleCellVAE(adata, 2, (8,), name).model.pair_arguments["likelihood"] == name
    model = sc.SingleCellVAE(adata, 2, (8,), "nb", likelihood_options={"dispersion": "gene-batch"})
    assert model.model.likelihood.log_inverse_dispersion.shape == (2, adata.n_vars)  # batches read from the data
    latent_library = sc.SingleCellVAE(adata, 2, (8,), "nb", likelihood_options={"library": "latent"})
    log_totals = np.log(np.asarray(adata.layers["counts"].sum(1)).ravel())
    assert latent_library.model.likelihood.library_loc.item() == pytest.approx(log_totals.mean(), rel=1e-6)
    with pytest.raises(TypeError, match="likelihood by name"):
        sc.SingleCellVAE(adata, 2, (8,), model.model.likelihood)
    with pytest.raises(ValueError, match="distribution must be one of"):
        sc.SingleCellSVAE(adata, 2, (8,), distribution="normal")


def test_label_transfer_predicts_the_hidden_half(adata):
    hidden = np.arange(adata.n_obs) % 2 == 1
    adata.obs["partial"] = adata.obs["cell_type"].where(~hidden, "Unknown")
    sc.setup_anndata(adata, layer="counts", labels_key="partial")
    model = sc.LabelTransferGMVAE(adata, latent_dim=2, hidden=(16,), likelihood="poisson", dropout=0.0)
    model.train(epochs=10, batch_size=90, lr=1e-2, progress=False, seed=0)
    predicted = model.predict()
    assert predicted.cat.categories.tolist() == list(TYPES)
    assert np.array_equal(adata.obs["pyrovae_label"].astype(str), predicted.astype(str))
    truth = adata.obs["cell_type"].to_numpy()
    assert (predicted.to_numpy()[hidden] == truth[hidden]).mean() >= 0.9  # four strong markers per type
    soft = model.predict(soft=True)
    np.testing.assert_allclose(soft[list(TYPES)].sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(soft["probability"], soft[list(TYPES)].max(1))
    query = adata[hidden].copy()
    del query.obs["partial"]  # a query without the labels column still gets the labels' names
    assert model.predict(query).cat.categories.tolist() == list(TYPES)
    with pytest.raises(ValueError, match="needs labels"):
        sc.setup_anndata(adata, layer="counts")
        sc.LabelTransferGMVAE(adata)


def test_training_with_validation_and_early_stopping(adata):
    sc.setup_anndata(adata, layer="counts")
    model = sc.SingleCellVAE(adata, 2, (8,))
    history = model.train(epochs=3, train_size=0.8, early_stopping=True, patience=1, progress=False)
    assert "val_elbo" in history.last and len(history) <= 3
    assert sc.model.default_epochs(2000) == 400 and sc.model.default_epochs(100_000) == 80


@pytest.mark.filterwarnings("ignore:k-hat > ")  # three epochs: the guide is a poor proposal, as it says
@pytest.mark.parametrize("kind", ["vae", "gmvae"])
def test_held_out_log_likelihood_through_the_anndata(adata, kind):
    """get_marginal_ll: the functional estimate on the registered counts of held-out cells (same draws), written per
    cell into their AnnData; the label-transfer model scores log p(x), not log p(x, y)."""
    import pyro

    from pyrovae.infer import log_likelihood

    sc.setup_anndata(adata, layer="counts", batch_key="batch")
    train_part, test_part = adata[:60].copy(), adata[60:].copy()
    cls, options = KINDS[kind]
    model = cls(train_part, latent_dim=2, hidden=(8,), likelihood="nb", **options)
    model.train(epochs=3, batch_size=30, progress=False, seed=0)
    pyro.set_rng_seed(5)
    result = model.get_marginal_ll(test_part, num_samples=30, proposal="guide")
    pyro.set_rng_seed(5)
    data = from_anndata(test_part, "counts", batch_key="batch")
    expected = log_likelihood(model.model, model.guide, data, num_samples=30)
    assert torch.equal(result.per_datum, expected.per_datum) and len(result.per_datum) == 30
    np.testing.assert_array_equal(test_part.obs["pyrovae_log_likelihood"], result.per_datum.numpy())
    np.testing.assert_array_equal(test_part.obs["pyrovae_certified"], result.certified.numpy())
    assert "pyrovae_log_likelihood" not in train_part.obs
    with pytest.raises(ValueError, match="gene"):
        model.get_marginal_ll(test_part[:, ::-1].copy(), num_samples=5)


@pytest.mark.filterwarnings("ignore:k-hat > ")
def test_the_label_transfer_model_scores_the_counts_alone(adata):
    import pyro

    from pyrovae.infer import log_likelihood

    hidden = np.arange(adata.n_obs) % 2 == 1
    adata.obs["partial"] = adata.obs["cell_type"].where(~hidden, "Unknown")
    sc.setup_anndata(adata, layer="counts", labels_key="partial")
    model = sc.LabelTransferGMVAE(adata, latent_dim=2, hidden=(8,), likelihood="poisson")
    model.train(epochs=2, batch_size=45, progress=False, seed=0)
    pyro.set_rng_seed(1)
    result = model.get_marginal_ll(num_samples=30, proposal="guide")
    pyro.set_rng_seed(1)
    unlabelled = from_anndata(adata, "counts")  # no labels: y is summed out for every cell
    assert torch.equal(result.per_datum, log_likelihood(model.model, model.guide, unlabelled, num_samples=30).per_datum)


def test_an_encoder_blind_to_the_batch_is_built_saved_and_loaded(tmp_path, adata):
    """encode_covariates=False (scVI's default): the decoder alone sees the batch; the choice is saved with the
    model, and a model saved before the option existed loads as it was built (the encoder sees the batch)."""
    import json

    sc.setup_anndata(adata, layer="counts", batch_key="batch")
    blind = sc.SingleCellVAE(adata, 2, (8,), encode_covariates=False)
    seeing = sc.SingleCellVAE(adata, 2, (8,))
    assert blind.guide.covariates is None or not blind.guide.covariates.categorical
    assert seeing.guide.covariates is not None and list(seeing.guide.covariates.categorical) == [2]
    assert blind.model.covariates is not None and list(blind.model.covariates.categorical) == [2]
    blind.train(epochs=2, batch_size=45, progress=False, seed=0)
    latent = blind.get_latent_representation()
    folder = blind.save(tmp_path / "blind")
    back = sc.SingleCellVAE.load(folder, adata)
    assert back.model.pair_arguments["encode_covariates"] is False
    np.testing.assert_array_equal(back.get_latent_representation(), latent)
    with pytest.raises(TypeError, match="encode_covariates must be True or False"):
        sc.SingleCellVAE(adata, 2, (8,), encode_covariates="no")

    seeing.train(epochs=1, batch_size=45, progress=False, seed=0)
    folder = seeing.save(tmp_path / "old")
    config = json.loads((folder / "pair.json").read_text())
    del config["pair"]["encode_covariates"]  # as written before the option existed
    (folder / "pair.json").write_text(json.dumps(config))
    old = sc.SingleCellVAE.load(folder, adata)
    np.testing.assert_array_equal(old.get_latent_representation(), seeing.get_latent_representation())


def test_the_gmvae_starts_from_pseudo_labels_on_its_training_cells_only(adata, monkeypatch):
    """train(start_epochs=) runs pseudo_label_start first, on the training split (the validation cells are not
    trained on), and its components then follow the three types; the label-transfer GMVAE, whose labels are its
    start, refuses it."""
    from sklearn.metrics import adjusted_rand_score

    import pyrovae.sc.kinds as kinds

    sc.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="cell_type")
    model = sc.SingleCellGMVAE(adata, latent_dim=3, hidden=(16,), likelihood="nb", num_components=3)
    seen = []
    original = kinds.pseudo_label_start
    monkeypatch.setattr(kinds, "pseudo_label_start", lambda m, g, data, **kw: seen.append(len(data)) or original(
        m, g, data, **kw))
    model.train(epochs=1, start_epochs=40, train_size=0.8, batch_size=16, progress=False, seed=0)
    assert seen == [72]  # 80% of the 90 cells
    types = adata.obs["cell_type"].to_numpy()
    assert adjusted_rand_score(types, model.get_cluster_assignments()) > 0.9
    for bad in (-1, 2.5):
        with pytest.raises(Exception, match="start_epochs"):
            model.train(epochs=1, start_epochs=bad, progress=False)
    labelled = sc.LabelTransferGMVAE(adata, latent_dim=3, hidden=(16,))
    with pytest.raises(ValueError, match="needs no pseudo-label start"):
        labelled.train(epochs=1, start_epochs=5, progress=False)

"""Reference mapping: the reference is left bit for bit as it was, only the new batches' columns are fitted, the
query is registered with the new batches after the reference's, the reference's cells keep their latent, and the
mapped model saves, loads and transfers labels."""

import numpy as np
import pytest
import torch

import pyrovae.sc as sc
from pyrovae import make_pair
from tests.sc.conftest import make_adata


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, NaN equal to NaN (an observed library keeps NaN library-prior buffers)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {f"{role}.{name}": value.detach().clone() for role, module in (("model", model.model),
                                                                           ("guide", model.guide))
            for name, value in module.state_dict().items()}


def make_query(seed: int = 1, batches=("b1", "b3")):
    """Cells of the reference's types, from batch b1 (known to the reference) and b3 (new), with a batch effect."""
    query = make_adata(seed)
    query.obs["batch"] = np.where(query.obs["batch"] == "b1", *batches)
    return query


def reference_model(cls=sc.SingleCellVAE, epochs: int = 2, **options):
    adata = make_adata(0)
    sc.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="cell_type")
    model = cls(adata, latent_dim=3, hidden=(16,), likelihood="nb", **options)
    model.train(epochs=epochs, batch_size=32, progress=False, seed=0)
    return model


@pytest.mark.parametrize("cls", [sc.SingleCellVAE, sc.LabelTransferGMVAE])
def test_the_reference_is_untouched_and_only_the_new_batch_columns_train(cls):
    reference = reference_model(cls, likelihood_options={"dispersion": "gene-batch"})
    before = snapshot(reference)
    query = make_query()
    mapped = reference.map_query(query, epochs=3, batch_size=32, progress=False)
    assert all(same(value, snapshot(reference)[name]) for name, value in before.items())
    assert len(mapped.history) == 3 and type(mapped) is cls and mapped.adata is query

    widened = set()
    for name, value in snapshot(mapped).items():
        old = before[name]
        if value.shape == old.shape:
            assert same(value, old), name  # every other weight and batch-norm statistic is the reference's
            continue
        widened.add(name)
        axis = 0 if name.endswith("log_inverse_dispersion") else 1
        assert value.shape[axis] == old.shape[axis] + 1
        assert same(value.narrow(axis, 0, 2), old)  # the reference's batches: copied, unchanged
        initial = old.mean(axis, keepdim=True)  # the new batch starts at the reference batches' mean ...
        assert not torch.allclose(value.narrow(axis, 2, 1), initial)  # ... and was fitted to the query
    expected = {"model.likelihood.log_inverse_dispersion", "model.decoder.side.0.weight",
                "model.decoder.side.1.weight", "guide.encoder.side.0.weight"}
    if cls is sc.SingleCellVAE:
        expected.add("guide.encoder.side.1.weight")  # the GMVAE's guide has heads without covariates
    assert widened == expected

    # afterwards an ordinary model: everything trainable, no gradient mask or batch-norm hook left behind
    for module in (mapped.model, mapped.guide):
        assert all(p.requires_grad and not p._backward_hooks for p in module.parameters())
        assert not any(m._forward_pre_hooks for m in module.modules())


def test_the_query_is_registered_with_its_new_batches_after_the_reference_s():
    reference = reference_model()
    query = make_query(batches=("b3", "b0"))  # "b0" sorts before the reference's, still comes after them
    mapped = sc.map_query(reference, query, epochs=2, batch_size=32, progress=False, train_size=0.8,
                          early_stopping=True, patience=5)
    assert mapped.history.records[-1]["val_elbo"] is not None  # validated on the held-out fifth, as train does
    assert mapped.registration.levels["batch"] == ["b1", "b2", "b0", "b3"]
    assert sc.registration_of(query) == mapped.registration
    assert reference.registration.levels["batch"] == ["b1", "b2"]
    data = mapped.registration.count_data(query)
    assert np.array_equal(data.cat[:, 0].numpy(), np.where(query.obs["batch"] == "b0", 2, 3))
    assert mapped.model.pair_arguments["categorical"] == [4]


def test_a_query_of_known_batches_is_mapped_onto_their_columns_without_training():
    reference = reference_model()
    query = make_adata(1)  # batches b1 and b2, both known
    mapped = reference.map_query(query, epochs=5, progress=False)
    assert len(mapped.history) == 0 and mapped.model.pair_arguments["categorical"] == [2]
    assert all(same(value, snapshot(reference)[name]) for name, value in snapshot(mapped).items())
    np.testing.assert_array_equal(mapped.get_latent_representation(), reference.get_latent_representation(query))


@pytest.mark.parametrize("init", ["mean", "zero"])
def test_new_batch_columns_start_at_the_mean_of_the_reference_s_or_at_zero(init):
    reference = reference_model(likelihood_options={"dispersion": "gene-batch"})
    mapped = reference.map_query(make_query(), new_batch_init=init, epochs=0, progress=False)
    old = reference.guide.encoder.side[0].weight
    new = mapped.guide.encoder.side[0].weight
    expected = old.mean(1) if init == "mean" else torch.zeros(old.shape[0])
    assert torch.equal(new[:, 2], expected) and torch.equal(new[:, :2], old)
    rows = mapped.model.likelihood.log_inverse_dispersion
    old_rows = reference.model.likelihood.log_inverse_dispersion
    assert torch.equal(rows[2], old_rows.mean(0) if init == "mean" else torch.zeros_like(old_rows[0]))


@pytest.mark.parametrize("continuous", [False, True])
def test_reference_cells_have_the_same_latent_under_the_mapped_model(continuous):
    adata = make_adata(0)
    sc.setup_anndata(adata, layer="counts", batch_key="batch", continuous_covariate_keys=(
        ["percent_mt"] if continuous else []))
    reference = sc.SingleCellSVAE(adata, latent_dim=3, hidden=(16,), likelihood="nb")
    reference.train(epochs=2, batch_size=32, progress=False)
    mapped = reference.map_query(make_query(), epochs=2, batch_size=32, progress=False)
    expected = reference.get_latent_representation()
    latent = mapped.get_latent_representation(adata)  # the reference's cells, their batches known
    assert np.array_equal(latent, expected)
    as_known = make_query()
    as_known.obs["batch"] = "b1"
    new_batch = mapped.get_latent_representation()  # the query's cells of batch b3 encode otherwise than as b1
    assert not np.array_equal(new_batch, reference.get_latent_representation(as_known))


def test_gene_mismatches_are_refused_naming_the_difference():
    reference = reference_model(epochs=1)
    query = make_query()
    with pytest.raises(ValueError, match="another order.*position 0: 'gene1' here, 'gene0'"):
        reference.map_query(query[:, [1, 0, *range(2, query.n_vars)]].copy())
    with pytest.raises(ValueError, match="lacks 1 of the model's 24 genes"):
        reference.map_query(query[:, 1:].copy())
    assert "pyrovae_registration" not in query.uns  # refused before anything was written


def test_query_batch_norm_statistics_are_the_query_s_own_and_the_rest_stays_frozen():
    """AdaBN: with batch_norm="query" the mapped model's batch-norm running means and variances are averaged over the
    query's batches from a fresh start (so they differ from the reference's), its scale and shift and every other
    reference weight are kept, the reference itself is untouched, and each layer's momentum is restored."""
    reference = reference_model()
    before = snapshot(reference)
    mapped = reference.map_query(make_query(), batch_norm="query", epochs=2, batch_size=32, progress=False)
    assert all(same(value, snapshot(reference)[name]) for name, value in before.items())
    statistics = 0
    for name, value in snapshot(mapped).items():
        if value.shape != before[name].shape:
            continue  # a widened batch input
        if name.endswith(("running_mean", "running_var")):
            assert not torch.allclose(value, before[name]), name
            statistics += 1
        elif not name.endswith("num_batches_tracked"):
            assert same(value, before[name]), name
    assert statistics >= 2
    layers = [m for module in (mapped.model, mapped.guide) for m in module.modules()
              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert layers and all(m.momentum == 0.1 for m in layers)


def test_what_map_query_cannot_do_is_refused_with_the_fix():
    adata = make_adata(0)
    sc.setup_anndata(adata, layer="counts")
    unbatched = sc.SingleCellVAE(adata, latent_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="without a batch_key"):
        unbatched.map_query(make_query())
    reference = reference_model(epochs=1)
    with pytest.raises(TypeError, match="does not take \\['optim'\\]"):
        reference.map_query(make_query(), optim=torch.optim.SGD)
    with pytest.raises(ValueError, match="new_batch_init must be one of"):
        reference.map_query(make_query(), new_batch_init="random")
    with pytest.raises(ValueError, match="batch_norm must be one of"):
        reference.map_query(make_query(), batch_norm="batch")
    with pytest.raises(ValueError, match="train_size is the share of cells"):
        reference.map_query(make_query(), train_size=0.0)
    query = make_query()
    del query.obs["batch"]
    with pytest.raises(ValueError, match="lacks the obs columns \\['batch'\\]"):
        reference.map_query(query)

    adata = make_adata(0)
    adata.obs["donor"] = np.where(np.arange(adata.n_obs) % 2, "d1", "d2")
    sc.setup_anndata(adata, layer="counts", batch_key="batch", categorical_covariate_keys=["donor"])
    two_covariates = sc.SingleCellVAE(adata, latent_dim=2, hidden=(8,))
    query = make_query()
    query.obs["donor"] = "d3"
    with pytest.raises(ValueError, match="'donor'.*levels \\['d3'\\] the reference does not know"):
        two_covariates.map_query(query)


def test_a_mapped_model_saves_and_loads_with_the_query(tmp_path):
    reference = reference_model(likelihood_options={"dispersion": "gene-batch"})
    query = make_query()
    mapped = reference.map_query(query, epochs=2, batch_size=32, progress=False)
    latent = mapped.get_latent_representation()
    mapped.save(tmp_path / "mapped")
    loaded = sc.SingleCellModel.load(tmp_path / "mapped", make_query())
    assert type(loaded) is sc.SingleCellVAE and loaded.registration == mapped.registration
    assert np.array_equal(loaded.get_latent_representation(), latent)
    assert all(same(value, snapshot(mapped)[name]) for name, value in snapshot(loaded).items())
    assert len(loaded.history) == 2


@pytest.mark.parametrize("cls", [sc.SingleCellVAE, sc.LabelTransferGMVAE])
def test_labels_are_transferred_by_the_classifier_or_by_nearest_neighbours(cls):
    query = make_query()
    truth = query.obs["cell_type"].astype(str).to_numpy()
    del query.obs["cell_type"]  # the query's types are unknown
    reference = reference_model(cls, epochs=30)  # 15 epochs left the classifier at 78-100% over seeds
    mapped = reference.map_query(query, epochs=5, batch_size=32, progress=False)
    labels = sc.transfer_labels(reference, mapped)
    assert list(labels.index) == list(query.obs_names)
    assert np.array_equal(query.obs["pyrovae_label"].astype(str), labels.astype(str))
    # well-separated types (an untrained VAE's latent gives 81% by kNN, an untrained classifier 40%)
    assert np.mean(labels.astype(str).to_numpy() == truth) > 0.93
    assert query.obs["pyrovae_label_probability"].between(0, 1).all()
    if cls is sc.SingleCellVAE:  # the vote's share among the 15 nearest reference cells
        assert np.all(np.isin(np.round(query.obs["pyrovae_label_probability"] * 15, 6), np.arange(1, 16)))


def test_the_nearest_neighbour_vote_needs_the_reference_s_labels():
    adata = make_adata(0)
    sc.setup_anndata(adata, layer="counts", batch_key="batch")
    unlabelled = sc.SingleCellVAE(adata, latent_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="needs the reference's labels"):
        sc.transfer_labels(unlabelled, unlabelled.map_query(make_query(), epochs=0))


def test_the_nearest_neighbour_vote_counts_the_k_nearest_reference_cells():
    reference = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    frame = sc.nearest_neighbor_labels(reference, ["a", "a", "a", "b", "b"], np.array([[0.4], [10.4]]),
                                       num_neighbors=3, label_names=["a", "b", "c"])
    assert list(frame["label"]) == ["a", "b"] and list(frame.columns) == ["label", "probability", "a", "b", "c"]
    np.testing.assert_allclose(frame[["a", "b", "c"]].to_numpy(), [[1, 0, 0], [1 / 3, 2 / 3, 0]])
    np.testing.assert_allclose(frame["probability"], [1, 2 / 3])
    with pytest.raises(ValueError, match="not in label_names"):
        sc.nearest_neighbor_labels(reference, ["a"] * 4 + ["d"], reference, label_names=["a", "b"])


def test_feature_batch_norm_lets_the_query_statistics_reach_the_label_transfer_classifier(tmp_path):
    """LabelTransferGMVAE(feature_batch_norm=True): the guide's features are batch-normalised, so mapping with
    batch_norm="query" re-estimates the statistics q(y | x) reads; the option is saved and loaded with the model,
    refused where it means nothing, and off by default."""
    assert isinstance(reference_model(sc.LabelTransferGMVAE, epochs=1).guide.feature_norm, torch.nn.Identity)
    reference = reference_model(sc.LabelTransferGMVAE, feature_batch_norm=True)
    norm = reference.guide.feature_norm
    assert isinstance(norm, torch.nn.BatchNorm1d) and norm.num_features == 16
    labels = reference.predict()
    back = sc.LabelTransferGMVAE.load(reference.save(tmp_path / "reference"), reference.adata)
    assert back.model.pair_arguments["feature_batch_norm"] is True
    np.testing.assert_array_equal(np.asarray(back.predict()), np.asarray(labels))
    mapped = reference.map_query(make_query(), batch_norm="query", epochs=2, batch_size=32, progress=False)
    assert not torch.allclose(mapped.guide.feature_norm.running_mean, norm.running_mean)
    assert torch.equal(mapped.guide.feature_norm.weight, norm.weight)
    with pytest.raises(TypeError, match=r"unexpected arguments \['feature_batch_norm'\]"):
        sc.SingleCellVAE(reference.adata, 3, (16,), feature_batch_norm=True)
    with pytest.raises(TypeError, match="feature_batch_norm must be True or False, got 'no'"):
        make_pair("gmvae", 24, 3, (16,), num_components=2, feature_batch_norm="no")
    with pytest.raises(ValueError, match="feature_batch_norm is for 'gmvae', not 'vae'"):
        make_pair("vae", 24, 3, (16,), feature_batch_norm=True)

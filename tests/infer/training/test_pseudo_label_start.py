"""pseudo_label_start: k-means pseudo-labels on principal components of the log-normalised counts start a GMVAE
whose components then follow the cell types. (Whether they keep to them when training goes on without labels is the
data's and the ELBO's to say, not the start's: on these simulated cells two of the three merge again within 15
epochs, at the same ELBO; on CellBench CEL-seq2 they stayed for 300.)"""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from pyrovae import make_pair
from pyrovae.data import CountData, TensorData
from pyrovae.infer import encode_data, pseudo_label_start, train
from pyrovae.infer.training.start import log_pca_features


def typed_cells(n=400, genes=40, types=3, seed=0, labelled=False):
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, types, n)
    profile = 1.2 * rng.normal(0, 1, (types, genes))
    depth = rng.lognormal(0.0, 0.3, (n, 1))  # library sizes vary, as in real cells
    counts = rng.poisson(depth * np.exp(1.0 + profile[kind]))
    counts[:, 0] += 1
    obs = pd.DataFrame({"cell_type": [f"type{k}" for k in kind]}, index=[f"c{i}" for i in range(n)])
    return CountData(counts, obs, label_key="cell_type" if labelled else None), kind


@pytest.mark.parametrize("shape, num_pcs", [((30, 12), 5), ((50, 80), 10), ((20, 7), 50)])
def test_the_features_are_the_principal_components_of_the_log_normalised_counts(shape, num_pcs):
    """Against numpy's SVD: the same singular values, and each component the same up to its sign."""
    rng = np.random.default_rng(1)
    counts = rng.poisson(rng.gamma(2.0, 2.0, shape)) + 1
    features = log_pca_features(torch.as_tensor(counts), num_pcs)
    logs = np.log1p(1e4 * counts / counts.sum(1, keepdims=True))
    u, s, _ = np.linalg.svd(logs - logs.mean(0), full_matrices=False)
    rank = min(num_pcs, shape[0] - 1, shape[1])
    expected = (u * s)[:, :rank]
    assert features.shape == expected.shape
    signs = np.sign((features * expected).sum(0))
    np.testing.assert_allclose(features * signs, expected, rtol=1e-6, atol=1e-8)


def test_a_gmvae_started_from_pseudo_labels_follows_the_cell_types():
    cells, kind = typed_cells()
    model, guide = make_pair("gmvae", cells.num_genes, 3, (32,), "nb", num_components=3, input_transform="log1p")
    codes = pseudo_label_start(model, guide, cells, epochs=15, batch_size=64, progress=False)
    assert codes.shape == (len(cells),) and codes.dtype == np.int64
    assert adjusted_rand_score(kind, codes) > 0.95  # k-means on the log-PCA finds the types
    started = encode_data(guide, cells, guide.assign).numpy()
    assert adjusted_rand_score(kind, started) > 0.9  # q(y | x) has learned them
    train(model, guide, cells, epochs=2, batch_size=64, seed=1, progress=False)  # and training goes on without labels


def test_with_labels_takes_codes_in_place_of_a_label_column():
    cells, kind = typed_cells(n=12)
    batch = cells.with_labels(codes=kind).batch(torch.arange(12))
    assert torch.equal(batch[3], torch.as_tensor(kind))
    with pytest.raises(ValueError, match="no label column"):
        cells.with_labels()
    for bad in (kind[:5], kind.astype(float), np.full(12, -2)):
        with pytest.raises(ValueError, match="codes must be 12 integers"):
            cells.with_labels(codes=bad)


def test_pseudo_label_start_refuses_what_it_cannot_start():
    cells, _ = typed_cells(n=20)
    model, guide = make_pair("vae", cells.num_genes, 3, (16,), "nb", input_transform="log1p")
    with pytest.raises(TypeError, match="starts a GMVAE pair"):
        pseudo_label_start(model, guide, cells)
    model, guide = make_pair("gmvae", 40, 3, (16,), "nb", num_components=3, input_transform="log1p")
    with pytest.raises(TypeError, match="on CountData"):
        pseudo_label_start(model, guide, TensorData(torch.ones(20, 40)))
    with pytest.raises(ValueError, match="2 cells cannot fill 3 components"):
        pseudo_label_start(model, guide, cells.subset(cells=[0, 1]))
    empty = CountData(np.vstack([np.zeros((1, 40)), np.ones((5, 40))]))
    with pytest.raises(ValueError, match="1 cells have no counts"):
        pseudo_label_start(model, guide, empty)

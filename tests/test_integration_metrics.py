"""Batch-mixing scores (scIB's batch ASW and iLISI) against direct computations of their definitions."""

import numpy as np
import pytest
from scipy.optimize import brentq
from sklearn.metrics import silhouette_samples
from sklearn.neighbors import NearestNeighbors

from pyrovae.metrics import batch_asw, ilisi, lisi


def reference_lisi(latent, labels, k, perplexity):
    """LISI from its definition: the kernel precision solved by Brent's method to machine precision."""
    distances, indices = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(latent)
    distances, indices = distances[:, 1:], indices[:, 1:]
    values = []
    for d, neighbours in zip(distances, indices):
        def entropy_gap(log_beta, d=d):
            w = np.exp(-(d - d.min()) * np.exp(log_beta))
            p = w / w.sum()
            return -(p * np.log(np.where(p > 0, p, 1))).sum() - np.log(perplexity)
        beta = np.exp(brentq(entropy_gap, -30, 30, xtol=1e-12))
        p = np.exp(-(d - d.min()) * beta)
        p /= p.sum()
        shares = np.array([p[labels[neighbours] == c].sum() for c in np.unique(labels)])
        values.append(1.0 / (shares**2).sum())
    return np.array(values)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lisi_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(150, 3))
    labels = rng.integers(0, 3, 150)
    got = lisi(latent, labels, num_neighbors=30)
    assert np.allclose(got, reference_lisi(latent, labels, 30, 10), rtol=2e-3)


def test_ilisi_and_batch_asw_at_the_extremes():
    rng = np.random.default_rng(0)
    cells = rng.normal(size=(400, 2))
    kind = (cells[:, 0] > 0).astype(int)
    mixed = rng.integers(0, 2, 400)
    separated = np.concatenate([cells, cells + 50.0])
    batch_separated = np.repeat([0, 1], 400)
    assert ilisi(cells, mixed) > 0.85
    assert ilisi(separated, batch_separated) < 0.01
    assert batch_asw(cells, mixed, kind) > 0.9
    assert batch_asw(separated, batch_separated, np.tile(kind, 2)) < 0.05


def test_batch_asw_is_the_mean_over_labels_of_one_minus_absolute_silhouettes():
    rng = np.random.default_rng(3)
    latent = rng.normal(size=(120, 4))
    batch = rng.integers(0, 3, 120)
    labels = rng.integers(0, 2, 120)
    expected = np.mean([np.mean(1 - np.abs(silhouette_samples(latent[labels == c], batch[labels == c])))
                        for c in (0, 1)])
    assert batch_asw(latent, batch, labels) == pytest.approx(expected, rel=1e-12)
    labels_with_a_single_batch_type = np.where(batch == 0, 2, labels)  # type 2 lives in batch 0 only: left out
    rows = labels_with_a_single_batch_type < 2
    kept = [rows & (labels == c) for c in (0, 1)]
    expected = np.mean([np.mean(1 - np.abs(silhouette_samples(latent[r], batch[r]))) for r in kept])
    assert batch_asw(latent, batch, labels_with_a_single_batch_type) == pytest.approx(expected, rel=1e-12)

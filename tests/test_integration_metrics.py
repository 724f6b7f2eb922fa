"""Batch-mixing scores (scIB's batch ASW and iLISI) against direct computations of their definitions."""

import numpy as np
import pytest
from scipy.optimize import brentq
from sklearn.metrics import silhouette_samples
from sklearn.neighbors import NearestNeighbors

from pyrovae.metrics import batch_asw, ilisi, lisi


def exact_simpson(d, c, num_codes, perplexity):
    """Simpson's index of one cell's neighbours (distances ``d``, label codes ``c``) from the definition: the
    kernel's precision solved by Brent's method to machine precision."""
    def entropy_gap(log_beta):
        w = np.exp(-(d - d.min()) * np.exp(log_beta))
        p = w / w.sum()
        return -(p * np.log(np.where(p > 0, p, 1))).sum() - np.log(perplexity)

    beta = np.exp(brentq(entropy_gap, -30, 30, xtol=1e-12))
    p = np.exp(-(d - d.min()) * beta)
    p /= p.sum()
    return sum(p[c == code].sum() ** 2 for code in range(num_codes))


def reference_lisi(latent, labels, k, perplexity):
    """LISI from its definition, cell by cell."""
    distances, indices = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(latent)
    names, codes = np.unique(labels, return_inverse=True)
    return np.array([1.0 / exact_simpson(d, codes[neighbours], len(names), perplexity)
                     for d, neighbours in zip(distances[:, 1:], indices[:, 1:])])


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


def per_cell_simpson(distances, codes, num_codes, perplexity, tol=1e-5, max_iter=50):
    """The LISI bisection one cell at a time, as Korsunsky et al.'s code runs it: the reference that the vectorised
    bisection must reproduce step for step."""
    out = []
    for d, c in zip(distances, codes):
        precision, bracket = 1.0, [None, None]  # (too small, too large) precisions seen so far
        for _ in range(max_iter):
            kernel = np.exp(-precision * d)
            if kernel.sum() == 0:
                entropy, weights = 0.0, np.zeros(len(d))
            else:
                entropy = np.log(kernel.sum()) + precision * (d * kernel).sum() / kernel.sum()
                weights = kernel / kernel.sum()
            if abs(entropy - np.log(perplexity)) < tol:
                break
            if entropy > np.log(perplexity):  # too flat: a larger precision
                bracket[0] = precision
                precision = 2 * precision if bracket[1] is None else (precision + bracket[1]) / 2
            else:
                bracket[1] = precision
                precision = precision / 2 if bracket[0] is None else (precision + bracket[0]) / 2
        out.append(sum(weights[c == code].sum() ** 2 for code in range(num_codes)))
    return np.array(out)


@pytest.mark.parametrize("perplexity", [2.0, 5.0, 30.0])
@pytest.mark.parametrize("neighbours, num_codes", [(6, 2), (30, 5), (90, 10)])
def test_vectorised_bisection_equals_one_cell_at_a_time(neighbours, num_codes, perplexity):
    from pyrovae.metrics import _simpson_index

    rng = np.random.default_rng(neighbours + num_codes)
    distances = np.sort(rng.gamma(2.0, 1.0, (60, neighbours)), axis=1)
    distances[:10] = np.round(distances[:10])  # tied distances
    distances[10:15] = 0.0  # every neighbour at the cell itself
    distances[15:20] += 800.0  # every kernel weight underflows at the first precision
    distances[20:25] *= 1e-3
    codes = rng.integers(0, num_codes, (60, neighbours))
    codes[25:30] = 0  # a single label around these cells
    got = _simpson_index(distances, codes, num_codes, perplexity)
    # the kernel is taken from the nearest neighbour (the same weights, shifted), so that it never underflows
    shifted = distances - distances.min(1, keepdims=True)
    np.testing.assert_allclose(got, per_cell_simpson(shifted, codes, num_codes, perplexity), rtol=1e-12, atol=0)
    # as Korsunsky et al.'s code where some weight stays above zero; where every weight underflowed at the first
    # precision, that code read the entropy as 0 and its steps went astray (up to 3x off the definition here)
    korsunsky = per_cell_simpson(distances, codes, num_codes, perplexity)
    underflowed = np.zeros(len(distances), bool)
    underflowed[15:20] = True
    np.testing.assert_allclose(got[~underflowed], korsunsky[~underflowed], rtol=1e-12, atol=0)
    if perplexity < neighbours:  # (at perplexity = neighbours only the uniform weights reach the target)
        exact = [exact_simpson(d, c, num_codes, perplexity) for d, c in zip(distances[15:20], codes[15:20])]
        np.testing.assert_allclose(got[underflowed], exact, rtol=1e-4, atol=0)


def test_lisi_is_one_where_every_weight_goes_to_the_nearest_neighbour():
    """Perplexity 1 (num_neighbors 3 to 5) puts all the weight on the nearest neighbour; the kernel underflowed for
    every neighbour and gave 1/0 (16 of 200 cells inf, and 1 of 6 cells at the default num_neighbors)."""
    rng = np.random.default_rng(1)
    latent, batch = rng.normal(size=(200, 4)), rng.choice(["a", "b"], 200)
    for k in (3, 5):
        np.testing.assert_allclose(lisi(latent, batch, num_neighbors=k), 1.0, rtol=1e-4)  # entropy within 1e-5
    np.testing.assert_allclose(lisi(latent[:6], batch[:6]), 1.0, rtol=1e-4)
    assert np.isfinite(lisi(latent, batch, num_neighbors=6)).all()


@pytest.mark.parametrize("k, num_batches, dtype", [(6, 2, np.float64), (30, 3, np.float64), (90, 7, np.float32)])
def test_lisi_equals_the_previous_implementation(k, num_batches, dtype):
    rng = np.random.default_rng(k)
    latent = (rng.normal(size=(400, 4)) + 4.0 * rng.integers(0, 2, (400, 1))).astype(dtype)
    batch = rng.integers(0, num_batches, 400)
    batch[latent[:, 0] > 5.0] = 0  # a region of one batch only
    distances, indices = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(latent)
    codes = np.unique(batch, return_inverse=True)[1]
    previous = 1.0 / per_cell_simpson(distances[:, 1:], codes[indices[:, 1:]], num_batches, max(k // 3, 1))
    np.testing.assert_allclose(lisi(latent, batch, num_neighbors=k), previous, rtol=1e-8)


def test_ilisi_is_near_one_when_mixed_and_zero_when_separated():
    rng = np.random.default_rng(5)
    line = np.arange(3000.0)[:, None] * [1.0, 0.0] + 1e-3 * rng.normal(size=(3000, 2))
    assert ilisi(line, np.arange(3000) % 3) == pytest.approx(1.0, abs=0.03)  # batches alternate
    cells = rng.normal(size=(3000, 3))
    separated = np.concatenate([cells[:1000], cells[:1000] + 100.0, cells[:1000] - 100.0])
    assert ilisi(separated, np.repeat([0, 1, 2], 1000)) == 0.0


@pytest.mark.parametrize("rows, dims, clusters, dtype, tolerance", [
    (300, 2, 2, np.float64, 1e-10), (700, 5, 7, np.float64, 1e-10), (900, 20, 10, np.float32, 2e-5)])
def test_blocked_silhouettes_equal_scikit_learns(rows, dims, clusters, dtype, tolerance):
    from pyrovae._distances import silhouette_samples as blocked

    rng = np.random.default_rng(rows)
    latent = (rng.normal(size=(rows, dims)) + 2.0 * rng.integers(0, 3, (rows, 1))).astype(dtype)
    labels = rng.integers(0, clusters, rows)
    labels[0] = clusters  # a cluster of one row: silhouette 0
    latent[2] = latent[1]  # a duplicated row
    np.testing.assert_allclose(blocked(latent, labels), silhouette_samples(latent, labels), atol=tolerance, rtol=0)


def test_blocked_silhouettes_refuse_one_cluster_or_one_row_per_cluster():
    from pyrovae._distances import silhouette_samples as blocked

    with pytest.raises(ValueError, match="needs 2 to 4 clusters"):
        blocked(np.zeros((5, 2)), np.zeros(5))
    with pytest.raises(ValueError, match="got 5"):
        blocked(np.arange(10.0).reshape(5, 2), np.arange(5))


def clumps(rows: int, dims: int = 10, seed: int = 0):
    """An integrated-looking latent: 12 cell types, each a Gaussian clump, 4 batches shifted a little."""
    rng = np.random.default_rng(seed)
    types, batches = rng.integers(0, 12, rows), rng.integers(0, 4, rows)
    centres, shifts = 4.0 * rng.normal(size=(12, dims)), 0.3 * rng.normal(size=(4, dims))
    return (centres[types] + shifts[batches] + rng.normal(size=(rows, dims))).astype(np.float32), batches


def test_the_approximate_index_finds_nearly_every_neighbour_and_the_same_lisi():
    from pyrovae._distances import approximate_neighbors

    latent, batches = clumps(6000)
    _, exact = NearestNeighbors(n_neighbors=31).fit(latent).kneighbors(latent)
    found, recall = np.zeros(len(latent), bool), []
    for rows, distances, indices in approximate_neighbors(latent, 30):
        assert not (indices == rows[:, None]).any() and (np.diff(distances, axis=1) >= 0).all()
        recall.extend(len(set(a) & set(b)) / 30 for a, b in zip(indices, exact[rows, 1:]))
        found[rows] = True
    assert found.all() and np.mean(recall) > 0.97
    approximate, precise = lisi(latent, batches, 30, exact=False), lisi(latent, batches, 30, exact=True)
    assert abs(np.median(approximate) - np.median(precise)) < 0.02
    assert np.abs(approximate - precise).mean() < 0.02


def test_batch_asw_equals_scikit_learns_silhouettes():
    latent, batches = clumps(2000, seed=1)
    labels = np.repeat(np.arange(4), 500)
    expected = np.mean([np.mean(1 - np.abs(silhouette_samples(latent[labels == c], batches[labels == c])))
                        for c in range(4)])
    assert batch_asw(latent, batches, labels) == pytest.approx(expected, abs=1e-6)


def test_missing_batch_or_label_names_and_impossible_neighbourhoods_are_named():
    """A NaN batch counted as a third batch halved iLISI's scale (0.43 for 0.85); a None failed in np.unique's sort;
    perplexity 0 gave inf for every cell."""
    rng = np.random.default_rng(0)
    latent, batch = rng.normal(size=(200, 3)), np.repeat([0.0, 1.0], 100)
    holed = batch.copy()
    holed[5] = np.nan
    with pytest.raises(ValueError, match=r"batch is missing \(NaN or None\) for 1 cells \(first: cell 5\)"):
        ilisi(latent, holed)
    names = np.array(["a", "b"] * 100, dtype=object)
    names[7] = None
    with pytest.raises(ValueError, match=r"labels is missing .* \(first: cell 7\)"):
        batch_asw(latent, batch, names)
    with pytest.raises(ValueError, match="num_neighbors must be an integer >= 1"):
        lisi(latent, batch, num_neighbors=0)
    for perplexity in (0, 91):
        with pytest.raises(ValueError, match=r"perplexity must lie in \(0, 90\]"):
            lisi(latent, batch, perplexity=perplexity)


def test_labels_of_mixed_types_and_missing_clusters_are_named():
    from pyrovae.metrics import clustering_scores

    rng = np.random.default_rng(0)
    latent = rng.normal(size=(40, 2))
    mixed = np.array([1, "1"] * 20, dtype=object)
    with pytest.raises(ValueError, match=r"batch mixes values of types \['int', 'str'\] that cannot be ordered"):
        ilisi(latent, mixed)
    numbers = np.array([1, np.int64(2)] * 20, dtype=object)  # types that order with each other are groups as usual
    assert ilisi(latent, numbers) == ilisi(latent, np.array([1, 2] * 20))
    clusters = np.arange(40, dtype=float) % 3
    clusters[4] = np.nan
    with pytest.raises(ValueError, match=r"clusters is missing \(NaN or None\) for 1 cells \(first: cell 4\)"):
        clustering_scores(np.arange(40) % 2, clusters)
    assert clustering_scores(np.array(["a", "b"] * 20), np.arange(40) % 2)["ari"] == pytest.approx(1.0)

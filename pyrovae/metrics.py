"""Scores of what a model learned, in one place: clustering of latent representations against known labels (ARI,
NMI, silhouette), batch mixing of an integrated latent space (batch ASW and iLISI, as scIB defines them),
reconstruction (MSE, per-row correlation), and the circular correlation of angles (for latents on a circle)."""

from __future__ import annotations

import numpy as np
import torch

from pyrovae._distances import approximate_neighbors, silhouette_samples
from pyrovae.data.checks import check_int
from pyrovae.optional import require


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _latent(latent, name: str = "latent", min_rows: int = 1) -> np.ndarray:
    """``latent`` as a finite (rows, dims) array of at least ``min_rows`` rows, or a ValueError naming the
    problem (a NaN row, a vector where a matrix is expected)."""
    latent = _numpy(latent)
    if latent.ndim == 1:
        latent = latent[:, None]
    if latent.ndim != 2:
        raise ValueError(f"{name} must be a matrix (cells, dims), got shape {latent.shape}")
    if len(latent) < min_rows:
        raise ValueError(f"{name} has {len(latent)} rows; at least {min_rows} are needed")
    bad = ~np.isfinite(latent).all(1)
    if bad.any():
        raise ValueError(f"{name} has NaN or infinite values in {int(bad.sum())} rows (first: row "
                         f"{int(np.flatnonzero(bad)[0])}); drop those cells or find why their encoding diverged")
    return latent


try:
    from pandas import NA as _NA
except ImportError:  # pandas is an extra
    _NA = object()


def _groups(values, name: str) -> np.ndarray:
    """Batch or label names of each cell as a 1-D array, or a ValueError for a missing one (NaN, None), which
    ``np.unique`` would count as a group of its own (halving iLISI's scale) or fail to sort."""
    values = _numpy(values).ravel()
    if values.dtype.kind == "f":
        missing = np.isnan(values)
    elif values.dtype == object:  # None, NaN, and pandas' NA (whose comparisons are NA, not False)
        missing = np.fromiter((v is None or v is _NA or v != v for v in values), bool, len(values))
    else:
        missing = np.zeros(len(values), bool)
    if missing.any():
        raise ValueError(f"{name} is missing (NaN or None) for {int(missing.sum())} cells (first: cell "
                         f"{int(np.flatnonzero(missing)[0])}); drop those cells or name their group")
    if values.dtype == object:
        try:
            np.unique(values)
        except TypeError:  # 1 and "1" mixed: np.unique cannot sort them
            kinds = sorted({type(v).__name__ for v in values})
            raise ValueError(f"{name} mixes values of types {kinds} that cannot be ordered (1 and '1' name different "
                             f"groups); give every cell's {name} as one type, e.g. np.asarray({name}).astype(str)"
                             ) from None
    return values


def _same_length(what: str, **arrays) -> None:
    """Every array of ``arrays`` (name -> 1-D or 2-D array) has as many rows as the first."""
    lengths = {name: len(values) for name, values in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{what}: the inputs have different numbers of cells ({lengths}); pass one entry per cell")


def kmeans_clusters(latent, num_clusters: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """KMeans cluster of each row of ``latent`` (scikit-learn, ``n_init`` restarts, seeded)."""
    KMeans = require("sklearn.cluster").KMeans

    latent = _latent(latent)
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, (int, np.integer)) or \
            not 1 <= num_clusters <= len(latent):
        raise ValueError(f"num_clusters must be an integer in 1..{len(latent)} (the number of rows), got "
                         f"{num_clusters!r}")
    return KMeans(n_clusters=num_clusters, n_init=n_init, random_state=seed).fit_predict(_numpy(latent))


def clustering_scores(labels, clusters, latent=None, max_silhouette: int = 5000, seed: int = 0) -> dict:
    """Agreement of ``clusters`` with known ``labels`` and, given ``latent``, how well the labels separate there.

    :returns: ``{"ari", "nmi"}`` (adjusted Rand index, normalised mutual information; 1 is perfect, ARI ~0 is
        chance) and, with ``latent``, ``"silhouette"`` of the known labels in the latent space (in [-1, 1];
        computed on at most ``max_silhouette`` rows, drawn with ``seed``).
    """
    metrics = require("sklearn.metrics")

    labels, clusters = _groups(labels, "labels"), _groups(clusters, "clusters")
    if labels.shape != clusters.shape:
        raise ValueError(f"{labels.shape[0]} labels for {clusters.shape[0]} cluster assignments")
    scores = {
        "ari": float(metrics.adjusted_rand_score(labels, clusters)),
        "nmi": float(metrics.normalized_mutual_info_score(labels, clusters)),
    }
    if latent is not None:
        latent = _latent(latent)
        _same_length("clustering_scores", labels=labels, latent=latent)
        rows = np.arange(len(labels))
        if len(rows) > max_silhouette:
            rows = np.random.default_rng(seed).choice(rows, max_silhouette, replace=False)
        if len(np.unique(labels[rows])) > 1:
            scores["silhouette"] = float(metrics.silhouette_score(latent[rows], labels[rows]))
    return scores


def silhouette_sweep(latent, ks=range(2, 11), seed: int = 0, max_points: int = 5000) -> dict[int, float]:
    """Silhouette of KMeans clusterings of ``latent`` for each number of clusters in ``ks`` (on at most
    ``max_points`` rows drawn with ``seed``): a way to choose k."""
    silhouette_score = require("sklearn.metrics").silhouette_score

    latent = _latent(latent)
    if len(latent) > max_points:
        latent = latent[np.random.default_rng(seed).choice(len(latent), max_points, replace=False)]
    return {int(k): float(silhouette_score(latent, kmeans_clusters(latent, int(k), seed))) for k in ks}


def reconstruction_scores(data, reconstruction) -> dict:
    """Mean squared error over all entries, and the Pearson correlation of each row with its reconstruction.

    :returns: ``{"mse", "correlation_mean", "correlations"}``; a constant row has correlation NaN (left out of the
        mean).
    """
    data, reconstruction = _numpy(data).astype(np.float64), _numpy(reconstruction).astype(np.float64)
    if data.shape != reconstruction.shape:
        raise ValueError(f"data {data.shape} and reconstruction {reconstruction.shape} differ in shape")
    centred = data - data.mean(1, keepdims=True)
    centred_hat = reconstruction - reconstruction.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlations = (centred * centred_hat).sum(1) / np.sqrt((centred**2).sum(1) * (centred_hat**2).sum(1))
    return {"mse": float(((data - reconstruction) ** 2).mean()), "correlation_mean": float(np.nanmean(correlations)),
            "correlations": correlations}


def circular_correlation(a, b) -> float:
    """The absolute value of Jammalamadaka & SenGupta (1988)'s circular correlation of two samples of angles
    (radians): 1 when one is a rotation or reflection of the other, near 0 when they are independent.

    rho = sum sin(a - abar) sin(b - bbar) / sqrt(sum sin^2(a - abar) sum sin^2(b - bbar)), abar and bbar the
    circular means. The absolute value makes it invariant to reflection as well.
    """
    a, b = _numpy(a).astype(np.float64).ravel(), _numpy(b).astype(np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"{a.shape[0]} angles against {b.shape[0]}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("circular_correlation: the angles hold NaN or infinite values; drop those data first")
    if len(a) < 2:
        raise ValueError(f"circular_correlation needs at least two angles, got {len(a)}")
    sine_a = np.sin(a - np.arctan2(np.sin(a).mean(), np.cos(a).mean()))
    sine_b = np.sin(b - np.arctan2(np.sin(b).mean(), np.cos(b).mean()))
    return abs(float((sine_a * sine_b).sum() / np.sqrt((sine_a**2).sum() * (sine_b**2).sum())))


def batch_asw(latent, batch, labels) -> float:
    """scIB's batch ASW (Luecken et al. 2022): within each cell label, the silhouette of every cell with the
    *batches* as clusters, ``1 - |s|`` (1: the batches are mixed, 0: separated), averaged per label and then over
    labels. Labels seen in one batch only are left out, as scIB does.

    The silhouettes are exact: every distance within a label, computed in blocks in torch (scikit-learn's
    ``silhouette_samples`` to ~1e-6 in float32). The cost is the sum over labels of their squared numbers of cells:
    a million cells in 50 labels of 20,000 are 2e10 distances, two minutes on two CPU cores."""
    latent, batch, labels = _latent(latent), _groups(batch, "batch"), _groups(labels, "labels")
    _same_length("batch_asw", latent=latent, batch=batch, labels=labels)
    per_label = []
    for label in np.unique(labels):
        rows = labels == label
        batches = np.unique(batch[rows])
        if len(batches) < 2 or len(batches) == rows.sum():
            continue
        per_label.append(float(np.mean(1.0 - np.abs(silhouette_samples(latent[rows], batch[rows])))))
    if not per_label:
        raise ValueError("batch_asw needs a label observed in at least two batches")
    return float(np.mean(per_label))


def _simpson_index(distances: np.ndarray, codes: np.ndarray, num_codes: int, perplexity: float,
                   tol: float = 1e-5, max_iter: int = 50) -> np.ndarray:
    """Simpson's index of the labels ``codes`` (cells x neighbours) of each cell's neighbours, weighted by a
    Gaussian kernel on the neighbour distances whose precision is found by bisection so that the weights' entropy
    is log(perplexity) (the LISI of Korsunsky et al. 2019).

    All cells bisect at once, each with its own bracket, and a cell stops moving once its entropy is within ``tol``
    of the target: the same steps as one loop per cell, vectorised."""
    cells = len(distances)
    target = np.log(perplexity)
    beta, low, high = np.ones(cells), np.full(cells, -np.inf), np.full(cells, np.inf)
    weights = np.zeros(distances.shape)
    moving = np.arange(cells)  # the cells whose entropy is not yet within tol of the target
    # the kernel is taken from each cell's nearest neighbour (the same weights and entropy, shifted): at a high
    # precision e^(-d beta) underflows for every neighbour, which left no weight and a LISI of 1/0 where the
    # target entropy is log 1 (perplexity 1, every weight on the nearest)
    distances = distances - distances.min(1, keepdims=True)
    for _ in range(max_iter):
        d, b = distances[moving], beta[moving]
        p = np.exp(-d * b[:, None])
        total = p.sum(1)
        empty = total == 0  # every neighbour too far for this precision: no weight, zero entropy
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = np.log(total) + b * (d * p).sum(1) / total
            p = p / total[:, None]
        entropy[empty], p[empty] = 0.0, 0.0
        weights[moving] = p
        gap = entropy - target
        still = ~(np.abs(gap) < tol)
        moving, gap, b = moving[still], gap[still], b[still]
        if not len(moving):
            break
        up, lo, hi = gap > 0, low[moving], high[moving]
        low[moving], high[moving] = np.where(up, b, lo), np.where(up, hi, b)
        beta[moving] = np.where(up, np.where(hi == np.inf, b * 2, (b + hi) / 2),
                                np.where(lo == -np.inf, b / 2, (b + lo) / 2))
    cell_codes = np.arange(cells)[:, None] * num_codes + codes  # (cells, neighbours) a bin per cell and label
    shares = np.bincount(cell_codes.ravel(), weights=weights.ravel(), minlength=cells * num_codes)
    return (shares.reshape(cells, num_codes) ** 2).sum(1)


EXACT_NEIGHBOURS_UP_TO = 100_000  # cells; beyond, lisi's neighbours come from an approximate index by default


def _exact_neighbors(latent: np.ndarray, k: int, block: int = 50_000):
    """Blocks ``(rows, distances, indices)`` of the exact ``k`` nearest neighbours of every row but itself
    (scikit-learn's ``NearestNeighbors``)."""
    index = require("sklearn.neighbors").NearestNeighbors(n_neighbors=k + 1).fit(latent)
    for start in range(0, len(latent), block):
        rows = np.arange(start, min(len(latent), start + block))
        distances, indices = index.kneighbors(latent[rows])
        yield rows, distances[:, 1:], indices[:, 1:]  # without the cell itself


def lisi(latent, labels, num_neighbors: int = 90, perplexity: float | None = None,
         exact: bool | None = None) -> np.ndarray:
    """The local inverse Simpson's index of ``labels`` around every cell (Korsunsky et al. 2019): the effective
    number of labels among its ``num_neighbors`` nearest neighbours (Euclidean), weighted by a Gaussian kernel
    of perplexity ``num_neighbors // 3`` (scib-metrics' defaults).

    :param exact: exact neighbours (scikit-learn) or, ``False``, those of an inverted-file index (k-means lists,
        each searched with its nearest lists; scib-metrics too uses an approximate index): minutes instead of hours
        for a million cells, at a recall of the true neighbours measured in the tests and benchmark. Default: exact
        up to :data:`EXACT_NEIGHBOURS_UP_TO` cells.
    """
    latent, labels = _latent(latent, min_rows=2), _groups(labels, "labels")
    _same_length("lisi", latent=latent, labels=labels)
    names, codes = np.unique(labels, return_inverse=True)
    k = min(check_int("num_neighbors", num_neighbors, 1), len(latent) - 1)
    perplexity = perplexity if perplexity is not None else max(k // 3, 1)
    if not 0 < perplexity <= k:
        raise ValueError(f"perplexity must lie in (0, {k}], the neighbours each cell weighs (num_neighbors, at most "
                         f"the other {len(latent) - 1} cells); got {perplexity}")
    if exact is None:
        exact = len(latent) <= EXACT_NEIGHBOURS_UP_TO
    blocks = _exact_neighbors(latent, k) if exact else approximate_neighbors(latent, k)
    simpson = np.empty(len(latent))
    for rows, distances, indices in blocks:
        simpson[rows] = _simpson_index(distances, codes[indices], len(names), perplexity)
    return 1.0 / simpson


def ilisi(latent, batch, num_neighbors: int = 90, exact: bool | None = None) -> float:
    """scIB's iLISI: the median LISI of the batches, scaled to [0, 1] by ``(median - 1) / (batches - 1)`` (1: every
    neighbourhood holds all batches in proportion). ``exact``: as for :func:`lisi`."""
    batch = _groups(batch, "batch")
    num_batches = len(np.unique(batch))
    if num_batches < 2:
        raise ValueError("ilisi needs at least two batches")
    return float((np.nanmedian(lisi(latent, batch, num_neighbors, exact=exact)) - 1) / (num_batches - 1))


__all__ = ["batch_asw", "circular_correlation", "clustering_scores", "ilisi", "kmeans_clusters", "lisi",
           "reconstruction_scores", "silhouette_sweep"]

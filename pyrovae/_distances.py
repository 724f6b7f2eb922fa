"""Distances behind the integration scores at atlas scale: silhouettes in blocks of pairwise distances, and the
nearest neighbours of every cell (exact, or from an inverted-file index for a million cells).

Both run in torch (the CPU's BLAS, or CUDA when the latent is given there) on blocks of rows, so memory stays
flat in the number of cells.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

_BLOCK = 2**22  # entries of one block of pairwise distances (16 MiB in float32)


def _tensor(latent: np.ndarray) -> torch.Tensor:
    """``latent`` as a centred torch tensor (float64 for float64 input, else float32): centred, the norms are
    smaller and |a|^2 + |b|^2 - 2ab cancels less."""
    dtype = np.float64 if latent.dtype == np.float64 else np.float32
    x = torch.from_numpy(np.ascontiguousarray(latent, dtype=dtype))
    return x - x.mean(0)


def _squared_distances(queries: torch.Tensor, points: torch.Tensor, query_squares: torch.Tensor,
                       point_squares: torch.Tensor) -> torch.Tensor:
    """(queries, points) squared Euclidean distances as |q|^2 + |p|^2 - 2 q.p (one matrix product), clamped at 0."""
    block = torch.addmm(point_squares[None, :], queries, points.T, alpha=-2)
    return block.add_(query_squares[:, None]).clamp_(min=0)


def silhouette_samples(latent: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """The silhouette of every row of ``latent`` with ``clusters`` as its clustering: ``(b - a) / max(a, b)``, ``a``
    the mean distance to the other rows of its cluster, ``b`` the smallest mean distance to another cluster's rows,
    0 for a row alone in its cluster (scikit-learn's ``silhouette_samples``, to ~1e-6 in float32, ~1e-12 in
    float64). Every pairwise distance is computed, a block of rows at a time, and summed per cluster by one
    matrix product with the clusters' indicator."""
    names, codes = np.unique(clusters, return_inverse=True)
    rows, num_clusters = len(codes), len(names)
    if not 2 <= num_clusters <= rows - 1:
        raise ValueError(f"a silhouette needs 2 to {rows - 1} clusters (one fewer than the rows), got {num_clusters}")
    x = _tensor(latent)
    squares = (x * x).sum(1)
    members = torch.zeros(rows, num_clusters, dtype=x.dtype)
    members[torch.arange(rows), torch.from_numpy(codes)] = 1
    sums = np.empty((rows, num_clusters))
    step = max(1, _BLOCK // rows)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        distances = _squared_distances(x[start:stop], x, squares[start:stop], squares).sqrt_()
        own = torch.arange(stop - start)
        distances[own, own + start] = 0  # a row's distance to itself, exactly
        sums[start:stop] = (distances @ members).double().numpy()
    sizes = np.bincount(codes, minlength=num_clusters)
    inside = sums[np.arange(rows), codes]
    sums[np.arange(rows), codes] = np.inf
    nearest = (sums / sizes).min(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = inside / (sizes[codes] - 1)
        silhouettes = (nearest - inside) / np.maximum(inside, nearest)
    return np.nan_to_num(silhouettes)  # a cluster of one row (or all rows at one point): 0 by convention


def _kmeans(x: torch.Tensor, num_centres: int, seed: int, iterations: int = 10) -> torch.Tensor:
    """Centres from Lloyd's iterations on a seeded sample of ``x`` (a centre left empty stays where it was)."""
    generator = torch.Generator().manual_seed(seed)
    sample = x[torch.randperm(len(x), generator=generator)[: 40 * num_centres]]
    centres = sample[:num_centres].clone()
    for _ in range(iterations):
        nearest = _nearest_centres(sample, centres)
        sizes = torch.bincount(nearest, minlength=num_centres)
        totals = torch.zeros_like(centres).index_add_(0, nearest, sample)
        filled = sizes > 0
        centres[filled] = totals[filled] / sizes[filled, None].to(x.dtype)
    return centres


def _nearest_centres(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    squares = (centres * centres).sum(1)
    step = max(1, _BLOCK // len(centres))
    return torch.cat([torch.addmm(squares[None, :], x[i:i + step], centres.T, alpha=-2).argmin(1)
                      for i in range(0, len(x), step)])


def approximate_neighbors(latent: np.ndarray, k: int, num_probes: int = 12, seed: int = 0, list_size: int | None = None,
                          ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The ``k`` nearest neighbours of every row of ``latent`` other than itself, from an inverted-file index:
    yields blocks ``(rows, distances, indices)``, ``distances`` (r, k) increasing.

    The rows are split into about sqrt(n) lists by k-means; the rows of one list search the ``num_probes`` lists
    whose centres are nearest their list's centre (more where those hold fewer than 2k rows), exactly within them.
    A neighbour in a list not probed is missed; the recall is measured in the tests and the benchmark. This is
    what an approximate index (scib-metrics uses pynndescent) trades for a million cells in a minute."""
    x = _tensor(latent).float()
    rows = len(x)
    num_lists = max(1, min(rows // max(4 * k, 1), round(math.sqrt(rows)) if list_size is None else rows // list_size))
    centres = _kmeans(x, num_lists, seed)
    lists = _nearest_centres(x, centres)
    order = torch.argsort(lists, stable=True)
    sizes = torch.bincount(lists, minlength=num_lists)
    starts = (torch.cumsum(sizes, 0) - sizes).tolist()
    sizes = sizes.tolist()
    nearest_lists = torch.cdist(centres, centres).argsort(1)
    squares = (x * x).sum(1)
    for home in range(num_lists):
        if not sizes[home]:
            continue
        probed, count = [], 0
        for other in nearest_lists[home].tolist():
            if sizes[other]:
                probed.append(other)
                count += sizes[other]
            if len(probed) >= num_probes and count >= 2 * k + 1:
                break
        candidates = torch.cat([order[starts[p]:starts[p] + sizes[p]] for p in probed])
        queries = order[starts[home]:starts[home] + sizes[home]]
        step = max(1, _BLOCK // len(candidates))
        for i in range(0, len(queries), step):
            query = queries[i:i + step]
            distances = _squared_distances(x[query], x[candidates], squares[query], squares[candidates])
            distances[candidates[None, :] == query[:, None]] = math.inf  # not the row itself
            best, at = torch.topk(distances, min(k, len(candidates) - 1), dim=1, largest=False)
            yield query.numpy(), best.sqrt_().double().numpy(), candidates[at].numpy()

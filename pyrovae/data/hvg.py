"""Highly variable genes, Seurat's way (Satija et al. 2015, ``FindVariableFeatures`` "mean.var.plot"; scanpy's
``flavor="seurat"``), for in-memory counts and for streams alike.

Counts are scaled to 10,000 per cell; each gene's mean and variance are taken on that scale (not on its log:
Seurat and scanpy undo the log before these moments); genes are binned by log1p(mean) and ranked by their
dispersion log(variance / mean) z-scored within the bin. :class:`ScaledMoments` accumulates the moments block by
block with Chan et al. (1982)'s pairwise update, so a streamed sample and an in-memory matrix give the same genes.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pyrovae.optional import lazy_import

pd = lazy_import("pandas")

TARGET_SUM = 1e4


class ScaledMoments:
    """Per-gene count, mean and sum of squared deviations of counts scaled to :data:`TARGET_SUM` per cell."""

    def __init__(self, num_genes: int) -> None:
        self.count, self.mean, self.m2 = 0, np.zeros(num_genes), np.zeros(num_genes)

    def add(self, counts, library=None) -> ScaledMoments:
        """Add a block of cells (a sparse or dense cells x genes matrix; ``library``: their total counts, default
        the row sums)."""
        counts = sp.csr_matrix(counts, dtype=np.float64)
        library = np.asarray(counts.sum(1)).ravel() if library is None else np.asarray(library, dtype=np.float64)
        scaled = sp.diags(TARGET_SUM / np.maximum(library, 1)) @ counts
        n = scaled.shape[0]
        if n == 0:
            return self
        block_mean = np.asarray(scaled.mean(axis=0)).ravel()
        block_m2 = np.asarray(scaled.multiply(scaled).sum(axis=0)).ravel() - n * block_mean**2
        delta, total = block_mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + block_m2 + delta**2 * self.count * n / total
        self.count = total
        return self

    @property
    def variance(self) -> np.ndarray:
        """The unbiased variance (ddof 1)."""
        return self.m2 / max(self.count - 1, 1)

    def highly_variable(self, num_genes: int, num_bins: int = 20) -> np.ndarray:
        return rank_by_binned_dispersion(self.mean, self.variance, num_genes, num_bins)


def rank_by_binned_dispersion(mean: np.ndarray, variance: np.ndarray, num_genes: int, num_bins: int = 20) -> np.ndarray:
    """Sorted indices of the ``num_genes`` genes of highest dispersion log(variance / mean), z-scored within
    ``num_bins`` equal-width bins of log1p(mean) (Satija et al. 2015); genes without expression come last."""
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = np.log(variance / mean)
        log_mean = np.log1p(mean)
    dispersion[~np.isfinite(dispersion)] = -np.inf
    bins = pd.cut(log_mean, num_bins)
    frame = pd.DataFrame({"dispersion": dispersion, "bin": bins})
    finite = frame["dispersion"].replace(-np.inf, np.nan)
    grouped = finite.groupby(frame["bin"], observed=False)
    z = (finite - grouped.transform("mean")) / grouped.transform("std")
    alone = grouped.transform("count") == 1
    z = z.mask(alone, 1.0)  # a gene alone in its bin: 1, as Seurat and scanpy set it
    z = z.fillna(0.0).where(np.isfinite(dispersion), -np.inf).to_numpy()
    return np.sort(np.argsort(-z, kind="stable")[:num_genes])


__all__ = ["TARGET_SUM", "ScaledMoments", "rank_by_binned_dispersion"]

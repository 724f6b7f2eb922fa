"""Single-cell counts: a sparse cells x genes matrix with cell and gene annotations, batched dense on the device.

:class:`CountData` keeps the raw UMI counts sparse on the host (CSR, float32) and turns one mini-batch at a
time into a dense tensor on the training device, so a data set never has to fit densely in memory. It is a
map-style Dataset and a source for :func:`~pyrovae.infer.train` and :func:`~pyrovae.infer.log_likelihood`.
Every step that removes cells or genes says how many and which, never silently.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset

from pyrovae.data.hvg import ScaledMoments


class CountData(Dataset):
    """Raw counts ``(cells, genes)`` with per-cell annotations ``obs`` and per-gene annotations ``var``.

    :param counts: a scipy sparse matrix or dense array, cells x genes, of non-negative integer counts.
    :param pandas.DataFrame obs: one row per cell (index: cell ids); may hold the labels.
    :param pandas.DataFrame var: one row per gene (index: gene names or ids).
    :param str label_key: the ``obs`` column holding cell types (for clustering scores and plots).
    :param str name: a name for messages.
    :raises ValueError: for NaN, infinite, negative or non-integer counts, naming the first cell and gene.
    """

    def __init__(self, counts, obs=None, var=None, label_key: str | None = None, name: str = "counts") -> None:
        matrix = sp.csr_matrix(counts, dtype=np.float32)
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
        num_cells, num_genes = matrix.shape
        obs = pd.DataFrame(index=[f"cell_{i}" for i in range(num_cells)]) if obs is None else obs
        var = pd.DataFrame(index=[f"gene_{j}" for j in range(num_genes)]) if var is None else var
        if len(obs) != num_cells:
            raise ValueError(f"{name}: the matrix has {num_cells} cells (rows) but the cell table has {len(obs)} rows")
        if len(var) != num_genes:
            raise ValueError(
                f"{name}: the matrix has {num_genes} genes (columns) but the gene table has {len(var)} rows; "
                "check the orientation (10x and CSV tables are genes x cells) and the gene list"
            )
        if label_key is not None and label_key not in obs.columns:
            raise ValueError(f"{name}: no column {label_key!r} in the cell table (columns: {list(obs.columns)})")
        self.counts, self.obs, self.var = matrix, obs, var
        self.label_key, self.name = label_key, name
        self._check_values()

    # -- validation ---------------------------------------------------------------------------------------
    def _where(self, position: int) -> str:
        row = int(np.searchsorted(self.counts.indptr, position, side="right") - 1)
        column = int(self.counts.indices[position])
        return f"cell {row} ({self.obs.index[row]}), gene {column} ({self.var.index[column]})"

    def _check_values(self) -> None:
        values = self.counts.data
        checks = (
            (~np.isfinite(values), "a non-finite value", "remove or impute it"),
            (values < 0, "a negative count", "pass raw UMI counts"),
            (values != np.round(values), "a non-integer count", "pass raw UMI counts, not normalised values"),
        )
        for bad, what, fix in checks:
            if bad.any():
                position = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"{self.name}: {what} ({values[position]}) at {self._where(position)}, "
                    f"{int(bad.sum())} such entries in all; count likelihoods need non-negative integer counts: {fix}"
                )

    def require_nonempty(self) -> CountData:
        """Raise a ValueError naming the cells (or genes) without any count; return ``self`` otherwise."""
        for axis, kind, fix in ((1, "cell", "filter_cells(min_counts=1)"), (0, "gene", "filter_genes(min_cells=1)")):
            totals = np.asarray(self.counts.sum(axis=axis)).ravel()
            empty = np.flatnonzero(totals == 0)
            if empty.size:
                names = (self.obs if kind == "cell" else self.var).index[empty[:5]].tolist()
                raise ValueError(
                    f"{self.name}: {empty.size} {kind}(s) have no counts (first: {names}); drop them with "
                    f"data.{fix}, which reports what it removes"
                )
        return self

    # -- sizes and labels ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.counts.shape[0]

    @property
    def num_features(self) -> int:
        return self.counts.shape[1]

    @property
    def num_genes(self) -> int:
        return self.counts.shape[1]

    @property
    def gene_names(self) -> list[str]:
        return self.var.index.astype(str).tolist()

    @property
    def library_sizes(self) -> np.ndarray:
        """Total counts per cell."""
        return np.asarray(self.counts.sum(axis=1)).ravel()

    @property
    def label_names(self) -> list[str]:
        """The distinct labels, in the order of their integer codes."""
        if self.label_key is None:
            return []
        return pd.Categorical(self.obs[self.label_key]).categories.astype(str).tolist()

    @property
    def labels(self) -> torch.Tensor | None:
        """Integer codes of the labels (index into :attr:`label_names`), or None without a label column."""
        if self.label_key is None:
            return None
        return torch.as_tensor(pd.Categorical(self.obs[self.label_key]).codes.astype(np.int64))

    # -- batching -----------------------------------------------------------------------------------------
    def batch(self, indices, device: torch.device | str | None = None) -> torch.Tensor:
        """Rows ``indices`` as a dense float32 tensor on ``device`` (the rest stays sparse on the host)."""
        rows = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
        dense = torch.from_numpy(self.counts[rows].toarray())
        if device is not None and torch.device(device).type != "cpu":
            dense = dense.pin_memory().to(device, non_blocking=True)
        return dense

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self.batch([index])[0]
        return self.batch(index)

    def dense(self) -> torch.Tensor:
        """All counts as one dense tensor (small data sets only)."""
        return torch.from_numpy(self.counts.toarray())

    # -- selection ----------------------------------------------------------------------------------------
    def subset(self, cells=None, genes=None) -> CountData:
        """The cells (and genes) selected by integer indices or boolean masks."""
        cells = np.arange(len(self)) if cells is None else np.asarray(cells.cpu() if hasattr(cells, "cpu") else cells)
        genes = np.arange(self.num_genes) if genes is None else np.asarray(genes)
        counts = self.counts[cells][:, genes]
        return CountData(counts, self.obs.iloc[cells], self.var.iloc[genes], self.label_key, self.name)

    def filter_cells(self, min_counts: int = 1, min_genes: int = 0) -> CountData:
        """Drop cells with fewer than ``min_counts`` counts or ``min_genes`` expressed genes; warns with the count."""
        keep = (self.library_sizes >= min_counts) & (np.diff(self.counts.indptr) >= min_genes)
        return self._report(keep, "cell", f"fewer than {min_counts} counts or {min_genes} genes", self.obs.index)

    def filter_genes(self, min_cells: int = 1, min_counts: int = 0) -> CountData:
        """Drop genes expressed in fewer than ``min_cells`` cells or with fewer than ``min_counts`` counts."""
        cells_per_gene = np.bincount(self.counts.indices, minlength=self.num_genes)
        totals = np.asarray(self.counts.sum(axis=0)).ravel()
        keep = (cells_per_gene >= min_cells) & (totals >= min_counts)
        return self._report(keep, "gene", f"in fewer than {min_cells} cells or {min_counts} counts", self.var.index)

    def _report(self, keep: np.ndarray, kind: str, reason: str, names) -> CountData:
        dropped = np.flatnonzero(~keep)
        if dropped.size == 0:
            return self
        shown = ", ".join(map(str, names[dropped[:5]])) + (", ..." if dropped.size > 5 else "")
        warnings.warn(f"{self.name}: dropped {dropped.size} {kind}(s) {reason}: {shown}", stacklevel=3)
        index = np.flatnonzero(keep)
        return self.subset(cells=index) if kind == "cell" else self.subset(genes=index)

    def select_genes(self, names) -> CountData:
        """Keep the genes ``names`` (in that order); every name must be present."""
        names = [str(n) for n in names]
        position = pd.Index(self.gene_names).get_indexer(names)
        missing = [n for n, p in zip(names, position) if p < 0]
        if missing:
            raise ValueError(f"{self.name}: {len(missing)} of the requested genes are not in the data: {missing[:5]}")
        return self.subset(genes=position)

    def highly_variable_genes(self, num_genes: int = 2000, num_bins: int = 20) -> np.ndarray:
        """Indices of the ``num_genes`` most variable genes, Seurat's way (:mod:`pyrovae.data.hvg`: moments of the
        counts scaled to 10,000 per cell, dispersion z-scored within bins of mean expression); the same
        computation as :meth:`TahoeAtlas.highly_variable_genes <pyrovae.data.TahoeAtlas.highly_variable_genes>`.
        """
        if not 0 < num_genes <= self.num_genes:
            raise ValueError(f"num_genes must be in 1..{self.num_genes}, got {num_genes}")
        return ScaledMoments(self.num_genes).add(self.counts, self.library_sizes).highly_variable(num_genes, num_bins)

    def prepare(self, num_genes: int = 0, max_cells: int = 0, seed: int = 0) -> CountData:
        """The usual preparation for a count VAE: drop cells and genes without counts (reported), keep a random
        subset of ``max_cells`` cells (0: all), then the ``num_genes`` most variable genes (0: all), and last the
        cells left without counts in those genes (reported: their library size would be 0)."""
        cells = self.filter_cells(min_counts=1).filter_genes(min_cells=1)
        if 0 < max_cells < len(cells):
            cells = cells.subset(np.sort(np.random.default_rng(seed).choice(len(cells), max_cells, replace=False)))
        if 0 < num_genes < cells.num_genes:
            cells = cells.subset(genes=cells.highly_variable_genes(num_genes)).filter_cells(min_counts=1)
        return cells

    def split(self, train_fraction: float = 0.81, seed: int = 0) -> tuple[CountData, CountData]:
        """A seeded random split: ``numpy.random.default_rng(seed).permutation``; the first
        ``round(train_fraction * n)`` cells train, the rest test (81/19 as in scVAE's notebook)."""
        if not 0 < train_fraction < 1:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
        order = np.random.default_rng(seed).permutation(len(self))
        cut = int(round(train_fraction * len(self)))
        return self.subset(cells=order[:cut]), self.subset(cells=order[cut:])

    # -- AnnData ------------------------------------------------------------------------------------------
    def to_anndata(self):
        """An ``anndata.AnnData`` with the raw counts in ``X`` and in the layer ``"counts"``."""
        import anndata

        adata = anndata.AnnData(X=self.counts.copy(), obs=self.obs.copy(), var=self.var.copy())
        adata.layers["counts"] = self.counts.copy()
        return adata

    def __repr__(self) -> str:
        labels = f", labels {self.label_key!r} ({len(self.label_names)})" if self.label_key else ""
        return f"CountData({self.name}: {len(self)} cells x {self.num_genes} genes{labels})"


def add_results(adata, latent=None, clusters=None, key: str = "pyrovae") -> None:
    """Write results into an AnnData for the scverse tools: latent means in ``obsm["X_<key>"]`` and cluster
    assignments in ``obs["<key>_cluster"]`` (categorical)."""
    if latent is not None:
        latent = latent.detach().cpu().numpy() if isinstance(latent, torch.Tensor) else np.asarray(latent)
        if latent.shape[0] != adata.n_obs:
            raise ValueError(f"{latent.shape[0]} latent rows for {adata.n_obs} cells")
        adata.obsm[f"X_{key}"] = latent
    if clusters is not None:
        clusters = clusters.cpu().numpy() if isinstance(clusters, torch.Tensor) else np.asarray(clusters)
        if clusters.shape[0] != adata.n_obs:
            raise ValueError(f"{clusters.shape[0]} cluster assignments for {adata.n_obs} cells")
        adata.obs[f"{key}_cluster"] = pd.Categorical(clusters.astype(str))


__all__ = ["CountData", "add_results"]

"""Single-cell counts: a sparse cells x genes matrix with cell and gene annotations, batched dense on the device.

:class:`CountData` keeps the raw UMI counts sparse on the host (CSR, float32) and turns one mini-batch at a
time into a dense tensor on the training device, so a data set never has to fit densely in memory. It is a
map-style Dataset and a source for :func:`~pyrovae.infer.train` and :func:`~pyrovae.infer.log_likelihood`.
Every step that removes cells or genes says how many and which, never silently.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset

from pyrovae.data.checks import check_int, check_real, check_unique_names, non_counts, selection_indices
from pyrovae.data.count_covariates import CountCovariates
from pyrovae.data.hvg import ScaledMoments
from pyrovae.optional import lazy_import, require

pd = lazy_import("pandas")


class CountData(CountCovariates, Dataset):
    """Raw counts ``(cells, genes)`` with per-cell annotations ``obs`` and per-gene annotations ``var``.

    :param counts: a scipy sparse matrix or dense array, cells x genes, of non-negative integer counts.
    :param pandas.DataFrame obs: one row per cell (index: cell ids); may hold the labels.
    :param pandas.DataFrame var: one row per gene (index: gene names or ids).
    :param str label_key: the ``obs`` column holding cell types (for clustering scores and plots).
    :param str name: a name for messages.
    :param categorical_keys: ``obs`` columns of categorical covariates, *the batch* first (sample, plate,
        technology, donor). Batches are then ``(x, cat, cont)`` (:mod:`pyrovae.nn.covariates`): build the model
        with ``categorical=data.categorical_sizes, continuous=data.num_continuous``.
    :param continuous_keys: ``obs`` columns of continuous covariates (percent mitochondrial, cell-cycle score).
    :param dict levels: the levels of each categorical key, in code order (default: the sorted distinct values);
        subsets and splits keep their parent's, so a code means the same batch in every part.
    :raises ValueError: for NaN, infinite, negative or non-integer counts, naming the first cell and gene; for
        cell ids or gene names that repeat (naming them), and for tables whose lengths do not fit the matrix.
    """

    def __init__(self, counts, obs=None, var=None, label_key: str | None = None, name: str = "counts", *,
                 categorical_keys=(), continuous_keys=(), levels: dict | None = None) -> None:
        if not hasattr(counts, "shape"):
            counts = np.asarray(counts)  # nested lists
        if len(counts.shape) != 2:
            raise ValueError(f"{name}: counts must be a matrix, cells x genes, got shape {tuple(counts.shape)}")
        for table, what in ((obs, "obs (the cell table)"), (var, "var (the gene table)")):
            if table is not None and not isinstance(table, pd.DataFrame):
                raise TypeError(f"{name}: {what} must be a pandas DataFrame (one row per "
                                f"{'cell' if what.startswith('obs') else 'gene'}, indexed by its id), got "
                                f"{type(table).__name__}; e.g. pandas.DataFrame(index=names)")
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
        check_unique_names(obs.index, "cell ids", name, "each cell needs its own id (AnnData: "
                           "adata.obs_names_make_unique(); CountData.concatenate prefixes colliding ids itself)")
        check_unique_names(var.index, "gene names", name, "make them unique (AnnData: adata.var_names_make_unique(), "
                           "as the 10x readers do) or sum the repeated genes into one column")
        self.counts, self.obs, self.var = matrix, obs, var
        self.label_key, self.name = label_key, name
        self._check_values()
        self._set_covariates(categorical_keys, continuous_keys, levels or {})
        self._y: np.ndarray | None = None

    @staticmethod
    def _share(parent: CountData, counts, obs, var, categorical_keys, continuous_keys, levels) -> CountData:
        data = CountData.__new__(CountData)
        data.counts, data.obs, data.var = counts, obs, var
        data.label_key, data.name = parent.label_key, parent.name
        data._set_covariates(categorical_keys, continuous_keys, {k: v for k, v in levels.items()
                                                                  if k in categorical_keys})
        data._y = None
        return data

    # -- validation ---------------------------------------------------------------------------------------
    def _where(self, position: int) -> str:
        row = int(np.searchsorted(self.counts.indptr, position, side="right") - 1)
        column = int(self.counts.indices[position])
        return f"cell {row} ({self.obs.index[row]}), gene {column} ({self.var.index[column]})"

    def _check_values(self) -> None:
        values = self.counts.data
        found = non_counts(values)
        if found is not None:
            bad, what = found
            fix = {"a non-finite value": "remove or impute it", "a negative count": "pass raw UMI counts",
                   "a non-integer count": "pass raw UMI counts, not normalised values"}[what]
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
    def batch(self, indices, device: torch.device | str | None = None):
        """Rows ``indices`` as a dense float32 tensor on ``device`` (the rest stays sparse on the host); with
        covariates, the tuple ``(x, cat, cont)`` of a model's arguments."""
        rows = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
        n = self.counts.shape[0]
        if rows.size and rows.dtype.kind in "iu" and (rows.max() >= n or rows.min() < -n):
            bad = rows[(rows >= n) | (rows < -n)][0]
            raise IndexError(f"{self.name}: cell index {bad} is out of range for {n} cells (0..{n - 1})")
        dense = torch.from_numpy(self.counts[rows].toarray())
        parts = [dense]
        if self.has_covariates or self._y is not None:
            parts += [torch.from_numpy(self._cat[rows]), torch.from_numpy(self._cont[rows])]
        if self._y is not None:
            parts.append(torch.from_numpy(self._y[rows]))
        if device is not None and torch.device(device).type != "cpu":
            parts = [p.pin_memory().to(device, non_blocking=True) for p in parts]
        return tuple(parts) if len(parts) > 1 else parts[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            batch = self.batch([index])
            return tuple(p[0] for p in batch) if isinstance(batch, tuple) else batch[0]
        return self.batch(index)

    def dense(self) -> torch.Tensor:
        """All counts as one dense tensor (small data sets only)."""
        return torch.from_numpy(self.counts.toarray())

    # -- selection ----------------------------------------------------------------------------------------
    def subset(self, cells=None, genes=None) -> CountData:
        """The cells (and genes) selected by integer indices (each at most once, order kept) or boolean masks.

        :raises ValueError: for indices out of range or repeated, a mask of another length, an integer array of
            zeros and ones (pass a boolean mask), or a selection that leaves no cell or no gene.
        """
        cells = np.arange(len(self)) if cells is None else selection_indices(cells, len(self), "cells", unique=True)
        genes = (np.arange(self.num_genes) if genes is None
                 else selection_indices(genes, self.num_genes, "genes", unique=True, kind="gene"))
        for kind, chosen in (("cells", cells), ("genes", genes)):
            if len(chosen) == 0:
                raise ValueError(f"{self.name}: the selection keeps no {kind[:-1]}; a data set needs at least one")
        counts = self.counts[cells][:, genes]
        part = CountData(counts, self.obs.iloc[cells], self.var.iloc[genes], self.label_key, self.name,
                         categorical_keys=self.categorical_keys, continuous_keys=self.continuous_keys,
                         levels=self.levels)
        part._y = None if self._y is None else self._y[cells]
        return part

    def filter_cells(self, min_counts: int = 1, min_genes: int = 0) -> CountData:
        """Drop cells with fewer than ``min_counts`` counts or ``min_genes`` expressed genes; warns with the count.
        Raises a ValueError when no cell would be left."""
        check_int("min_counts", min_counts, 0)
        check_int("min_genes", min_genes, 0)
        keep = (self.library_sizes >= min_counts) & (np.diff(self.counts.indptr) >= min_genes)
        return self._report(keep, "cell", f"fewer than {min_counts} counts or {min_genes} genes", self.obs.index)

    def filter_genes(self, min_cells: int = 1, min_counts: int = 0) -> CountData:
        """Drop genes expressed in fewer than ``min_cells`` cells or with fewer than ``min_counts`` counts. Raises a
        ValueError when no gene would be left."""
        check_int("min_cells", min_cells, 0)
        check_int("min_counts", min_counts, 0)
        cells_per_gene = np.bincount(self.counts.indices, minlength=self.num_genes)
        totals = np.asarray(self.counts.sum(axis=0)).ravel()
        keep = (cells_per_gene >= min_cells) & (totals >= min_counts)
        return self._report(keep, "gene", f"in fewer than {min_cells} cells or {min_counts} counts", self.var.index)

    def _report(self, keep: np.ndarray, kind: str, reason: str, names) -> CountData:
        dropped = np.flatnonzero(~keep)
        if dropped.size == 0:
            return self
        if dropped.size == len(keep):
            raise ValueError(f"{self.name}: the filter drops every {kind} ({dropped.size}, all {reason}); nothing "
                             "would be left: lower the threshold")
        shown = ", ".join(map(str, names[dropped[:5]])) + (", ..." if dropped.size > 5 else "")
        warnings.warn(f"{self.name}: dropped {dropped.size} {kind}(s) {reason}: {shown}", stacklevel=3)
        index = np.flatnonzero(keep)
        return self.subset(cells=index) if kind == "cell" else self.subset(genes=index)

    def select_genes(self, names) -> CountData:
        """Keep the genes ``names`` (in that order); every name must be present, once, and at least one given."""
        if isinstance(names, str):
            raise ValueError(f"select_genes takes a list of gene names, got the string {names!r}: pass [{names!r}]")
        names = [str(n) for n in names]
        if not names:
            raise ValueError(f"{self.name}: select_genes got no gene names; pass at least one")
        check_unique_names(names, "requested gene names", self.name, "list each gene once")
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
        if check_int("num_genes", num_genes, 1) > self.num_genes:
            raise ValueError(f"num_genes must be in 1..{self.num_genes}, got {num_genes}")
        check_int("num_bins", num_bins, 1)
        return ScaledMoments(self.num_genes).add(self.counts, self.library_sizes).highly_variable(num_genes, num_bins)

    def prepare(self, num_genes: int = 0, max_cells: int = 0, seed: int = 0) -> CountData:
        """The usual preparation for a count VAE: drop cells and genes without counts (reported), keep a random
        subset of ``max_cells`` cells (0: all), then the ``num_genes`` most variable genes (0: all), and last the
        cells left without counts in those genes (reported: their library size would be 0). ``num_genes`` and
        ``max_cells`` must be integers >= 0."""
        check_int("num_genes", num_genes, 0)
        check_int("max_cells", max_cells, 0)
        check_int("seed", seed, 0)
        cells = self.filter_cells(min_counts=1).filter_genes(min_cells=1)
        if 0 < max_cells < len(cells):
            cells = cells.subset(np.sort(np.random.default_rng(seed).choice(len(cells), max_cells, replace=False)))
        if 0 < num_genes < cells.num_genes:
            cells = cells.subset(genes=cells.highly_variable_genes(num_genes)).filter_cells(min_counts=1)
        elif num_genes > cells.num_genes:
            warnings.warn(f"{self.name}: num_genes={num_genes} but only {cells.num_genes} genes have counts: all of "
                          "them are kept", stacklevel=2)
        return cells

    def split(self, train_fraction: float = 0.81, seed: int = 0) -> tuple[CountData, CountData]:
        """A seeded random split: ``numpy.random.default_rng(seed).permutation``; the first
        ``round(train_fraction * n)`` cells train, the rest test (81/19 as in scVAE's notebook). A split that leaves
        either part empty is refused."""
        check_real("train_fraction", train_fraction, 0.0, 1.0, open_interval=True)
        check_int("seed", seed, 0)
        order = np.random.default_rng(seed).permutation(len(self))
        cut = int(round(train_fraction * len(self)))
        if not 0 < cut < len(self):
            raise ValueError(
                f"{self.name}: train_fraction={train_fraction} of {len(self)} cells leaves the "
                f"{'training' if cut == 0 else 'test'} part empty; use more cells or a train_fraction nearer 0.5"
            )
        return self.subset(cells=order[:cut]), self.subset(cells=order[cut:])

    # -- AnnData ------------------------------------------------------------------------------------------
    def to_anndata(self):
        """An ``anndata.AnnData`` with the raw counts in ``X`` and in the layer ``"counts"``."""
        anndata = require("anndata")

        adata = anndata.AnnData(X=self.counts.copy(), obs=_object_strings(self.obs), var=_object_strings(self.var))
        adata.layers["counts"] = self.counts.copy()
        return adata

    def __repr__(self) -> str:
        labels = f", labels {self.label_key!r} ({len(self.label_names)})" if self.label_key else ""
        covariates = "".join(f", {k!r} ({len(self.levels[k])} levels)" for k in self.categorical_keys)
        covariates += "".join(f", {k!r}" for k in self.continuous_keys)
        return f"CountData({self.name}: {len(self)} cells x {self.num_genes} genes{labels}{covariates})"

    @staticmethod
    def concatenate(parts: dict, batch_key: str = "batch", genes: str = "inner", label_key: str | None = None,
                    name: str = "concatenated") -> CountData:
        """Several data sets as one, with the part each cell came from as the categorical covariate ``batch_key``
        (``{"CEL-seq2": a, "Drop-seq": b}``: technology as the batch). ``genes="inner"`` keeps the genes all parts
        share (in the first part's order) and says how many each part loses. Cell ids get the part's name as a
        prefix where they collide. ``batch_key`` must not already be a column of a part's cell table (it would be
        overwritten)."""
        if not isinstance(parts, dict) or not parts:
            raise ValueError("concatenate needs a dict {name: CountData} of at least one data set, got "
                             f"{type(parts).__name__}")
        wrong = [k for k, p in parts.items() if not isinstance(p, CountData)]
        if wrong:
            raise TypeError(f"concatenate: the parts {wrong} are not CountData")
        clashing = [k for k, p in parts.items() if batch_key in p.obs.columns]
        if clashing:
            raise ValueError(
                f"concatenate: the parts {clashing} already have a column {batch_key!r}, which would be overwritten "
                "by the part names; pass another batch_key= (or drop or rename that column first)"
            )
        names = list(parts)
        if genes != "inner":
            raise ValueError(f"genes must be 'inner', got {genes!r}")
        shared = pd.Index(parts[names[0]].gene_names)
        for part in parts.values():
            shared = shared[shared.isin(part.gene_names)]
        if len(shared) == 0:
            raise ValueError("the data sets share no gene names; map them to one gene id space first")
        for key, part in parts.items():
            lost = part.num_genes - len(shared)
            if lost:
                warnings.warn(f"concatenate: {key!r} keeps {len(shared)} of its {part.num_genes} genes (shared by "
                              "all parts)", stacklevel=2)
        selected = {k: p.select_genes(shared) for k, p in parts.items()}
        obs = []
        for key, part in selected.items():
            frame = part.obs.copy()
            frame[batch_key] = key
            obs.append(frame)
        obs = pd.concat(obs)
        if not obs.index.is_unique:
            obs.index = pd.Index([f"{k}:{c}" for k, p in selected.items() for c in p.obs.index], name=obs.index.name)
        counts = sp.vstack([p.counts for p in selected.values()]).tocsr()
        return CountData(counts, obs, selected[names[0]].var, label_key, name, categorical_keys=(batch_key,),
                         levels={batch_key: names})


def _object_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose string columns are of object dtype: pandas 3 reads text as its nullable string
    dtype, which anndata refuses to write to .h5ad/.zarr by default (``allow_write_nullable_strings``)."""
    frame = frame.copy()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.StringDtype):
            frame[column] = frame[column].astype(object)
    if isinstance(frame.index.dtype, pd.StringDtype):
        frame.index = frame.index.astype(object)
    return frame


__all__ = ["CountData"]

"""AnnData in and out: an AnnData's raw counts and cell and gene tables as a :class:`~pyrovae.data.CountData`
(:func:`from_anndata`, :func:`read_h5ad`; in memory or backed, ``X`` or a layer, raw counts checked), and a model's
results written back (:func:`add_results`: ``obsm``, ``obs``, ``layers``, ``uns``)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from pyrovae.data.checks import non_counts
from pyrovae.data.count_data import CountData
from pyrovae.data.single_cell import CountFileError
from pyrovae.optional import lazy_import, require

pd = lazy_import("pandas")


def _read_rows(matrix, what: str, rows_per_read: int = 10_000):
    """A backed matrix (an h5py dataset or anndata's on-disk sparse dataset) read into memory as CSR, a block of
    rows at a time so that a dense one never has to fit whole; in-memory matrices are returned as they are."""
    if matrix is None:
        raise ValueError(f"the AnnData has no {what}; pass layer= (the layer holding the raw counts)")
    if sp.issparse(matrix) or isinstance(matrix, np.ndarray):
        return matrix
    if not (hasattr(matrix, "shape") and hasattr(matrix, "__getitem__")):
        raise TypeError(f"the AnnData's {what} is a {type(matrix).__name__}, not a matrix; pass raw counts")
    num_rows = int(matrix.shape[0])
    blocks = [sp.csr_matrix(matrix[start:min(start + rows_per_read, num_rows)], dtype=np.float32)
              for start in range(0, num_rows, rows_per_read)]
    return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix(tuple(matrix.shape), dtype=np.float32)


def _check_raw_counts(matrix, what: str, layers) -> None:
    """Raise a ValueError naming ``layer=`` when ``matrix`` holds anything but non-negative integer counts."""
    if sp.issparse(matrix) and matrix.format not in ("csr", "csc", "coo"):
        matrix = matrix.tocsr()  # formats whose .data is not one value per stored entry
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    found = non_counts(values)
    if found is not None:
        bad, problem = found
        position = int(np.flatnonzero(bad.ravel())[0])
        cell, gene = _stored_entry(matrix, position) if sp.issparse(matrix) else np.unravel_index(position,
                                                                                                 values.shape)
        raise ValueError(
            f"{what} of the AnnData holds {problem} ({values.ravel()[position]:g} at cell {int(cell)}, gene "
            f"{int(gene)}; {int(bad.sum())} such entries): count models need the raw, non-negative integer "
            f"counts. Pass layer= naming the layer that holds them (layers: {list(layers)}), or keep them "
            "before normalising with adata.layers['counts'] = adata.X.copy()"
        )


def _stored_entry(matrix, position: int) -> tuple[int, int]:
    """The (row, column) of the ``position``-th stored value of a CSR, CSC or COO matrix, in its own storage order
    (a CSR's column indices need not be sorted: ``adata[:, genes]`` leaves them unsorted)."""
    if matrix.format == "coo":
        return int(matrix.row[position]), int(matrix.col[position])
    major = int(np.searchsorted(matrix.indptr, position, side="right") - 1)
    minor = int(matrix.indices[position])
    return (major, minor) if matrix.format == "csr" else (minor, major)


def raw_counts(adata, layer: str | None = None):
    """The raw counts of ``adata`` (``layer``, or ``X`` when None), in memory (a backed AnnData's read a block of
    rows at a time) and checked to be non-negative integers.

    :raises ValueError: for a missing layer, or counts that are not non-negative integers (naming ``layer=``).
    """
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"no layer {layer!r} in the AnnData (layers: {list(adata.layers)}); raw counts are needed")
    what = f"layer {layer!r}" if layer else "X"
    matrix = _read_rows(adata.layers[layer] if layer is not None else adata.X, what)
    _check_raw_counts(matrix, what, adata.layers)
    return matrix


def from_anndata(adata, layer: str | None = None, label_key: str | None = None, *, batch_key: str | None = None,
                 categorical_covariate_keys=(), continuous_covariate_keys=(), labels_key: str | None = None,
                 unlabeled_category: str | None = None, label_names=None, levels: dict | None = None,
                 counts=None) -> CountData:
    """An AnnData's raw counts (``layer``, or ``X`` when None) with its ``obs`` and ``var``, as scvi-tools'
    ``setup_anndata`` reads them: ``batch_key`` is the first categorical covariate (the batch), followed by
    ``categorical_covariate_keys``; ``continuous_covariate_keys`` are continuous covariates; ``labels_key`` (or
    ``label_key``) holds cell types.

    An AnnData opened with ``backed="r"`` works too: its counts are read into memory (sparse, a block of rows at
    a time); the cell and gene tables are copied either way.

    :param str unlabeled_category: the value of ``labels_key`` that marks a cell of unknown type (scANVI's
        ``unlabeled_category``): such cells have no label (:meth:`CountData.with_labels` leaves them unknown).
    :param label_names: the labels in code order (default: the distinct values of ``labels_key``, sorted, without
        ``unlabeled_category``); a cell with another value is an error.
    :param dict levels: the levels of each categorical covariate in code order (default: the sorted values), so
        that codes mean what they meant to a trained model.
    :param counts: the AnnData's counts already read by :func:`raw_counts` (not read or checked again).
    :raises ValueError: when the counts are not non-negative integers, naming ``layer=`` and the layers there are.
    """
    if not all(hasattr(adata, attribute) for attribute in ("X", "obs", "var", "layers")):
        raise TypeError(f"from_anndata takes an anndata.AnnData, got {type(adata).__name__}; for a cells x genes "
                        "matrix or DataFrame of counts use pyrovae.data.CountData(counts, obs, var)")
    if label_key is not None and labels_key is not None and label_key != labels_key:
        raise ValueError(f"label_key={label_key!r} and labels_key={labels_key!r} disagree; pass one")
    labels_key = label_key or labels_key
    categorical = [categorical_covariate_keys] if isinstance(categorical_covariate_keys, str) else list(
        categorical_covariate_keys)
    if batch_key is not None:
        categorical = [batch_key] + [k for k in categorical if k != batch_key]
    matrix = raw_counts(adata, layer) if counts is None else counts
    obs = adata.obs.copy()
    if labels_key is not None and labels_key in obs.columns and (unlabeled_category, label_names) != (None, None):
        obs[labels_key] = _label_column(obs[labels_key], labels_key, unlabeled_category, label_names)
    return CountData(matrix, obs, adata.var.copy(), labels_key, name=layer or "X",
                     categorical_keys=categorical, continuous_keys=continuous_covariate_keys, levels=levels)


def _label_text(values: pd.Series, unlabeled_category) -> tuple[pd.Series, pd.Series]:
    """The labels as strings, and where they are unknown (missing, or the unlabelled category)."""
    text = pd.Series([None if pd.isna(v) else str(v) for v in values], index=values.index, dtype=object)
    return text, text.isna() | (text == str(unlabeled_category))


def foreign_labels(values: pd.Series, label_names, unlabeled_category) -> list[str]:
    """The labels in ``values`` that are neither among ``label_names`` nor unknown (missing, or
    ``unlabeled_category``), sorted."""
    text, unknown = _label_text(values, unlabeled_category)
    return sorted(set(text[~unknown]) - {str(n) for n in label_names})


def _label_column(values: pd.Series, key: str, unlabeled_category, label_names) -> pd.Categorical:
    """``values`` as a categorical over ``label_names`` (default: the categories pandas gives them, less the
    unlabelled one), with the unlabelled category and missing values as unknown (NaN)."""
    text, unknown = _label_text(values, unlabeled_category)
    if label_names is None:
        label_names = [str(c) for c in pd.Categorical(values).categories if str(c) != str(unlabeled_category)]
    label_names = [str(n) for n in label_names]
    foreign = foreign_labels(values, label_names, unlabeled_category)
    if foreign:
        raise ValueError(
            f"obs[{key!r}] holds labels {foreign[:5]} that are not among the labels {label_names[:10]}: a label "
            "added or renamed since setup_anndata is unknown to the registration (and to a model trained with it; "
            "set the AnnData up again for a new model), and cells of unknown type take the unlabelled category "
            f"({unlabeled_category!r})"
        )
    return pd.Categorical(text.where(~unknown, None), categories=label_names)


def read_h5ad(path: str | os.PathLike, layer: str | None = None, label_key: str | None = None) -> CountData:
    """An ``.h5ad`` file through anndata; counts from ``layer`` or ``X``."""
    anndata = require("anndata")

    try:
        adata = anndata.read_h5ad(path)
    except (OSError, KeyError, ValueError) as error:
        raise CountFileError(f"cannot read {path} as h5ad: {error}") from error
    return from_anndata(adata, layer, label_key)


def warn_if_view(adata, stacklevel: int = 4) -> None:
    """Warn when results are about to be written into an AnnData view (``adata[mask]``): anndata makes it an AnnData
    of its own to hold them, and the AnnData it views gets none."""
    if getattr(adata, "is_view", False):
        warnings.warn("the AnnData is a view (adata[mask]): anndata makes it an AnnData of its own to hold the "
                      "results, and the AnnData it views gets none; keep them with view = adata[mask].copy() first, "
                      "or use the whole AnnData", UserWarning, stacklevel=stacklevel)


def add_results(adata, latent=None, clusters=None, key: str = "pyrovae", *, normalized=None, de=None,
                labels=None) -> None:
    """Write results into an AnnData for the scverse tools: latent means in ``obsm["X_<key>"]``, cluster
    assignments in ``obs["<key>_cluster"]`` (categorical), normalised expression
    (:func:`~pyrovae.infer.normalized_expression`, cells x genes) in ``layers["<key>_normalized"]`` when its genes
    are the AnnData's (else in ``obsm["<key>_normalized"]`` as a DataFrame), DE tables (one, or a dict of them) in
    ``uns["<key>_de"]``, and transferred labels (:func:`~pyrovae.infer.predict_labels`) in ``obs["<key>_label"]``
    and ``obs["<key>_label_probability"]``.

    :warns UserWarning: for a view (``adata[mask]``): anndata turns it into an AnnData of its own to hold the
        results, and the AnnData it views gets none."""
    warn_if_view(adata)
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
    for name, frame in (("normalized expression", normalized), ("labels", labels)):
        if frame is not None and len(frame) != adata.n_obs:
            raise ValueError(f"{len(frame)} rows of {name} for {adata.n_obs} cells")
    if normalized is not None:
        if list(map(str, normalized.columns)) == list(map(str, adata.var_names)):
            adata.layers[f"{key}_normalized"] = normalized.to_numpy()
        else:
            adata.obsm[f"{key}_normalized"] = normalized.set_axis(adata.obs_names, axis=0)
    if de is not None:
        adata.uns[f"{key}_de"] = de
    if labels is not None:
        adata.obs[f"{key}_label"] = labels["label"].to_numpy()
        adata.obs[f"{key}_label_probability"] = labels["probability"].to_numpy()

__all__ = ["add_results", "from_anndata", "raw_counts", "read_h5ad"]

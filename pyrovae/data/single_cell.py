"""Readers of single-cell count files into :class:`~pyrovae.data.CountData` (cells x genes, sparse).

10x Matrix Market folders, 10x Cell Ranger ``.h5`` (v2 and v3 layouts), scDeepCluster-style HDF5 (``X``,
``Y``) and CSV count tables (genes x cells) with a metadata table; the shared data sets by name
(:func:`load_count_dataset`). Each reader names the file and the problem when it cannot read one. AnnData in and
out is :mod:`~pyrovae.data.anndata_io`.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse as sp

from pyrovae.data.count_data import CountData
from pyrovae.data.paths import find_dataset
from pyrovae.optional import lazy_import, require

pd = lazy_import("pandas")


class CountFileError(ValueError):
    """A single-cell file that cannot be read, or whose parts do not fit together."""


_READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError)  # pandas' ParserError is a ValueError
"""What reading a damaged or foreign file raises: each becomes a :class:`CountFileError` naming the file."""


def _unreadable(path: Path, what: str, error: Exception) -> CountFileError:
    """A CountFileError naming ``path``; a compressed file that ends early or fails its checksum is called
    truncated or corrupt, which a bare ``EOFError`` never says."""
    if isinstance(error, (EOFError, zlib.error, gzip.BadGzipFile)):
        return CountFileError(f"{path} is truncated or corrupt ({type(error).__name__}: {error}); it cannot be read as "
                              f"{what}: download or copy it again")
    return CountFileError(f"cannot read {path} as {what}: {error}")


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _first_existing(folder: Path, names: list[str], what: str) -> Path:
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.exists():
                return candidate
    raise CountFileError(f"no {what} in {folder}: expected one of {names} (optionally .gz)")


def _read_lines(path: Path) -> list[list[str]]:
    try:
        with _open(path) as handle:
            return [line.decode().rstrip("\n").split("\t") for line in handle if line.strip()]
    except _READ_ERRORS as error:
        raise _unreadable(path, "a tab-separated list", error) from error


GENE_EXPRESSION = "Gene Expression"
"""The ``feature_type`` of genes in Cell Ranger v3 files (beside ``Antibody Capture``, ``Peaks``, ``CRISPR Guide
Capture``, ...)."""


def read_10x_mtx(
    folder: str | os.PathLike, metadata: str | os.PathLike | None = None, label_key: str | None = None,
    feature_types=GENE_EXPRESSION,
) -> CountData:
    """A 10x Matrix Market folder: ``matrix.mtx`` (genes x cells), ``genes.tsv``/``features.tsv`` and
    ``barcodes.tsv``, each optionally gzipped; plus a cell table (``cell_metadata.csv`` in the folder, or
    ``metadata``) joined on the barcode. ``label_key`` defaults to ``"cell_type"`` when that column exists.

    :param feature_types: the ``feature_type`` values (third column of ``features.tsv``) to keep: by default
        ``"Gene Expression"`` only, so that the antibody-capture rows of CITE-seq and the peaks of multiome files
        are not read as genes (scanpy's ``gex_only``); a list keeps several, None keeps every feature. The type is
        kept in ``var["feature_type"]``; dropped features are reported in a warning. Old ``genes.tsv`` files have
        no type: every row is a gene.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CountFileError(f"{folder} is not a folder; read_10x_mtx expects a 10x matrix folder")
    matrix_path = _first_existing(folder, ["matrix.mtx"], "matrix.mtx")
    genes_path = _first_existing(folder, ["features.tsv", "genes.tsv"], "gene list (features.tsv or genes.tsv)")
    barcodes_path = _first_existing(folder, ["barcodes.tsv"], "barcodes.tsv")
    try:
        with _open(matrix_path) as handle:
            matrix = sp.csr_matrix(scipy.io.mmread(handle).T)  # the file is genes x cells
    except _READ_ERRORS as error:
        raise _unreadable(matrix_path, "Matrix Market", error) from error
    genes = _read_lines(genes_path)
    barcodes = [row[0] for row in _read_lines(barcodes_path)]
    duplicated = pd.Index(barcodes)[pd.Index(barcodes).duplicated()].unique()
    if len(duplicated):
        raise CountFileError(f"{barcodes_path} lists {len(duplicated)} barcode(s) more than once "
                             f"({', '.join(map(str, duplicated[:5]))}); each cell needs its own barcode")
    if matrix.shape != (len(barcodes), len(genes)):
        raise CountFileError(
            f"{matrix_path} is {matrix.shape[1]} genes x {matrix.shape[0]} cells, but {genes_path.name} lists "
            f"{len(genes)} genes and {barcodes_path.name} {len(barcodes)} barcodes"
        )
    # features.tsv: id, symbol, type; old genes.tsv: id, symbol, or symbol alone
    symbols = [row[1] if len(row) > 1 else row[0] for row in genes]
    types = [row[2] for row in genes] if genes and all(len(row) > 2 for row in genes) else None
    var = pd.DataFrame({"gene_id": [row[0] for row in genes]}, index=pd.Index(symbols, name="gene"))
    if types is not None:
        var["feature_type"] = types
    keep = _kept_features(types, feature_types, genes_path)
    if keep is not None:
        matrix, var = matrix[:, keep], var.iloc[keep]
    var.index = _unique(var.index)
    obs = pd.DataFrame(index=pd.Index(barcodes, name="barcode"))
    metadata = Path(metadata) if metadata is not None else folder / "cell_metadata.csv"
    if metadata.exists():
        obs = _join_metadata(obs, metadata)
    if label_key is None and "cell_type" in obs.columns:
        label_key = "cell_type"
    return CountData(matrix, obs, var, label_key, name=folder.name)


def _kept_features(types, wanted, path: Path) -> np.ndarray | None:
    """The positions of the features whose type is among ``wanted`` (None: all kept, nothing to select); the
    others are reported in a warning that says how to keep them."""
    if types is None or wanted is None:
        return None
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    types = np.asarray(types, dtype=str)
    keep = np.isin(types, wanted)
    if not keep.any():
        raise CountFileError(f"{path} has no feature of type {wanted} (types there: {sorted(set(types))}); pass "
                             "feature_types= naming the types to read, or feature_types=None for all of them")
    if not keep.all():
        dropped = pd.Series(types[~keep]).value_counts()
        shown = ", ".join(f"{count} {kind!r}" for kind, count in dropped.items())
        warnings.warn(f"{path.name}: kept the {int(keep.sum())} features of type {wanted} and dropped {shown}; pass "
                      "feature_types=None to read every feature (or a list of the types wanted)", stacklevel=3)
    return np.flatnonzero(keep)


def _unique(index: pd.Index) -> pd.Index:
    """Make duplicate gene symbols unique as scanpy does (``name``, ``name-1``, ...)."""
    if index.is_unique:
        return index
    seen: dict[str, int] = {}
    names = []
    for name in index.astype(str):
        count = seen.get(name, 0)
        names.append(name if count == 0 else f"{name}-{count}")
        seen[name] = count + 1
    return pd.Index(names, name=index.name)


def _join_metadata(obs: pd.DataFrame, path: Path, id_column: str | None = None) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, index_col=0 if id_column is None else id_column)
    except _READ_ERRORS as error:
        raise _unreadable(path, "a cell table (CSV)", error) from error
    table.index = table.index.astype(str)
    repeated = table.index[table.index.duplicated()].unique()
    if len(repeated):
        raise CountFileError(f"{path} lists {len(repeated)} cell id(s) more than once ({repeated[:5].tolist()}); the "
                             "cell table must have one row per cell")
    missing = obs.index.difference(table.index)
    if len(missing):
        raise CountFileError(
            f"{len(missing)} cells of the matrix are not in {path} (first: {missing[:3].tolist()}); "
            "the cell table must have one row per cell, indexed by the matrix's cell ids"
        )
    return obs.join(table)


_H5_V3 = ("data", "indices", "indptr", "shape", "barcodes", "features/name", "features/id")
_H5_V2 = ("data", "indices", "indptr", "shape", "barcodes", "gene_names", "genes")


def _h5_layout(handle, path: Path, genome: str | None):
    """The group holding a Cell Ranger matrix and its layout (3 or 2), or a CountFileError naming what was
    expected and what the file holds (with the reader that fits a scDeepCluster or AnnData file)."""
    h5py = require("h5py")

    found = sorted(handle)
    if "matrix" in handle and isinstance(handle["matrix"], h5py.Group):
        group, needed, version = handle["matrix"], _H5_V3, 3
    else:
        genomes = [k for k in found if isinstance(handle[k], h5py.Group) and "gene_names" in handle[k]]
        if genome is not None and genome not in handle:
            raise CountFileError(f"{path} has no genome group {genome!r} (groups: {found})")
        chosen = genome or (genomes[0] if genomes else None)
        if chosen is None or not isinstance(handle[chosen], h5py.Group):
            hint = ""
            if "X" in handle and "obs" in handle and "var" in handle:
                hint = "; it looks like an AnnData file: use read_h5ad"
            elif "X" in handle:
                hint = "; it looks like an scDeepCluster file (X, Y): use read_scdeepcluster_h5"
            raise CountFileError(
                f"{path} is not a 10x Cell Ranger matrix: expected a group 'matrix' (v3: {', '.join(_H5_V3)}) or "
                f"one group per genome (v2: {', '.join(_H5_V2)}), found {found[:10]}{hint}"
            )
        group, needed, version = handle[chosen], _H5_V2, 2
    missing = [key for key in needed if key not in group]
    if missing:
        raise CountFileError(f"{path}: the 10x v{version} group {group.name!r} lacks {missing} (it holds "
                             f"{sorted(group)}); is the file complete?")
    return group, version


def read_10x_h5(path: str | os.PathLike, genome: str | None = None, feature_types=GENE_EXPRESSION) -> CountData:
    """A Cell Ranger ``.h5`` matrix: v3 (group ``matrix`` with ``features/``) or v2 (one group per genome).

    :param feature_types: for v3 files, the ``features/feature_type`` values to keep: ``"Gene Expression"`` by
        default (scanpy's ``gex_only``), so that antibody-capture and peak rows are not read as genes; a list
        keeps several, None every feature (see :func:`read_10x_mtx`). With ``genome``, v3 features of other
        genomes (``features/genome``) are dropped too.

    :raises CountFileError: for a file that is not HDF5, or not in either 10x layout (naming the groups expected
        and those found)."""
    h5py = require("h5py")

    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise CountFileError(f"cannot open {path} as HDF5: {error}") from error
    with handle:
        group, version = _h5_layout(handle, path, genome)
        types = genomes = None
        if version == 3:
            names = [n.decode() for n in group["features/name"][:]]
            ids = [n.decode() for n in group["features/id"][:]]
            if "features/feature_type" in group:
                types = [n.decode() for n in group["features/feature_type"][:]]
            if genome is not None and "features/genome" in group:
                genomes = np.asarray([n.decode() for n in group["features/genome"][:]])
        else:
            names = [n.decode() for n in group["gene_names"][:]]
            ids = [n.decode() for n in group["genes"][:]]
        num_genes, num_cells = (int(n) for n in group["shape"][:])
        # the CSC matrix of genes x cells is the CSR matrix of cells x genes
        try:
            matrix = sp.csr_matrix(
                (group["data"][:], group["indices"][:], group["indptr"][:]), shape=(num_cells, num_genes)
            )
        except ValueError as error:
            raise CountFileError(f"{path}: data, indices and indptr do not form a {num_genes} x {num_cells} "
                                 f"matrix ({error})") from error
        barcodes = [b.decode() for b in group["barcodes"][:]]
    if len(names) != num_genes or len(barcodes) != num_cells:
        raise CountFileError(
            f"{path}: shape {num_genes} x {num_cells} but {len(names)} genes, {len(barcodes)} barcodes"
        )
    var = pd.DataFrame({"gene_id": ids}, index=pd.Index(names, name="gene"))
    if types is not None:
        if len(types) != num_genes:
            raise CountFileError(f"{path}: {len(types)} feature types for {num_genes} features")
        var["feature_type"] = types
    if genomes is not None and genome not in set(genomes):
        raise CountFileError(f"{path} has no features of genome {genome!r} (genomes: {sorted(set(genomes))})")
    keep = _kept_features(types, feature_types, path)
    if genomes is not None:
        of_genome = genomes == genome
        keep = np.flatnonzero(of_genome) if keep is None else keep[of_genome[keep]]
    if keep is not None:
        matrix, var = matrix[:, keep], var.iloc[keep]
    var.index = _unique(var.index)
    return CountData(matrix, pd.DataFrame(index=pd.Index(barcodes, name="barcode")), var, name=path.stem)


def read_scdeepcluster_h5(path: str | os.PathLike) -> CountData:
    """An scDeepCluster-style HDF5 file: ``X`` (cells x genes counts) and ``Y`` (integer cell types, maybe as
    floats), labels in ``obs["cell_type"]``."""
    h5py = require("h5py")

    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            if "X" not in handle:
                raise CountFileError(f"{path} has no dataset 'X' (found {list(handle)})")
            counts = handle["X"][:]
            labels = handle["Y"][:] if "Y" in handle else None
    except OSError as error:
        raise CountFileError(f"cannot open {path} as HDF5: {error}") from error
    obs = pd.DataFrame(index=pd.Index([f"cell_{i}" for i in range(counts.shape[0])], name="cell"))
    if labels is not None:
        if len(labels) != counts.shape[0]:
            raise CountFileError(f"{path}: {len(labels)} labels in Y for {counts.shape[0]} cells in X")
        if not np.all(labels == np.round(labels)):
            raise CountFileError(f"{path}: Y holds non-integer labels")
        obs["cell_type"] = pd.Categorical(labels.astype(np.int64))
    return CountData(counts, obs, None, "cell_type" if labels is not None else None, name=path.stem)


def read_count_csv(
    counts: str | os.PathLike,
    metadata: str | os.PathLike | None = None,
    label_key: str | None = None,
    drop_spike_ins: bool = True,
) -> CountData:
    """A CSV count table, genes x cells (first column: gene ids), optionally gzipped, with an optional cell
    table (one row per cell, first column the cell id). ERCC spike-in rows are dropped (and reported) unless
    ``drop_spike_ins=False``."""
    counts = Path(counts)
    try:
        table = pd.read_csv(counts, index_col=0)
    except _READ_ERRORS as error:
        raise _unreadable(counts, "a count table (CSV)", error) from error
    table.index = table.index.astype(str)
    if table.shape[1] == 0:
        raise CountFileError(
            f"{counts} reads as {table.shape[0]} rows and no cell columns: is it comma-separated? (a ';' or tab "
            "separated table reads as one column; convert it to CSV, genes x cells with gene ids first)"
        )
    if drop_spike_ins:
        spike = table.index.str.startswith("ERCC-")
        if spike.any():
            warnings.warn(f"{counts.name}: dropped {int(spike.sum())} ERCC spike-in rows", stacklevel=2)
            table = table.loc[~spike]
    non_numeric = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise CountFileError(f"{counts}: non-numeric values in the columns of cells {non_numeric[:3]}")
    obs = pd.DataFrame(index=pd.Index(table.columns.astype(str), name="cell"))
    if metadata is not None:
        obs = _join_metadata(obs, Path(metadata))
    var = pd.DataFrame(index=pd.Index(table.index, name="gene"))
    name = counts.name.split(".")[0]
    return CountData(sp.csr_matrix(table.to_numpy(dtype=np.float64).T), obs, var, label_key, name=name)


SHARED_SETS = {
    "pbmc3k": "10x PBMC 3k (2,638 cells x 13,714 genes, 9 cell types; 10x mtx folder)",
    "mouse_bladder": "scDeepCluster mouse bladder (2,100 cells x 20,670 genes, 16 types)",
    "worm_neuron": "scDeepCluster worm neuron (4,186 cells x 13,488 genes, 10 types)",
    "cellbench_celseq2": "CellBench CEL-seq2, 3 cell lines",
    "cellbench_dropseq": "CellBench Drop-seq, 3 cell lines",
    "cellbench_5cl_p1": "CellBench CEL-seq2, 5 cell lines, plate 1",
    "cellbench_5cl_p2": "CellBench CEL-seq2, 5 cell lines, plate 2",
    "cellbench_5cl_p3": "CellBench CEL-seq2, 5 cell lines, plate 3",
}


def load_count_dataset(name: str, data_dir: str | os.PathLike | None = None) -> CountData:
    """One of the shared real data sets by name (:data:`SHARED_SETS`), from ``data_dir`` (only there when given;
    it must exist), else ``$PYROVAE_DATA`` or ``../shared/data``."""
    layout = {
        "pbmc3k": ("pbmc3k", lambda folder: read_10x_mtx(folder)),
        "mouse_bladder": ("scdeepcluster", lambda f: read_scdeepcluster_h5(f / "mouse_bladder_cell_select_2100.h5")),
        "worm_neuron": ("scdeepcluster", lambda f: read_scdeepcluster_h5(f / "worm_neuron_cell.h5")),
        "cellbench_celseq2": ("cellbench", lambda f: _cellbench(f, "sc_celseq2")),
        "cellbench_dropseq": ("cellbench", lambda f: _cellbench(f, "sc_dropseq")),
        **{f"cellbench_5cl_p{p}": ("cellbench", lambda f, p=p: _cellbench(f, f"sc_celseq2_5cl_p{p}"))
           for p in (1, 2, 3)},
    }
    if name not in layout:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(layout)}")
    folder_name, reader = layout[name]
    folder = find_dataset(folder_name, data_dir)
    if folder is None:
        where = (f"in data_dir={str(data_dir)!r} (no {folder_name}/ folder there)" if data_dir is not None
                 else "in $PYROVAE_DATA, ../shared/data or the cache")
        raise FileNotFoundError(
            f"data set {name!r} not found {where}: put the {folder_name}/ folder of ../shared/data under --data-dir "
            "or $PYROVAE_DATA (see ../shared/data/README.md for its layout)"
        )
    return reader(folder)


def _cellbench(folder: Path, stem: str) -> CountData:
    return read_count_csv(
        folder / f"{stem}.count.csv.gz", folder / f"{stem}.metadata.csv.gz", label_key="cell_line_demuxlet"
    )


__all__ = [
    "CountFileError",
    "SHARED_SETS",
    "load_count_dataset",
    "read_10x_h5",
    "read_10x_mtx",
    "read_count_csv",
    "read_scdeepcluster_h5",
]

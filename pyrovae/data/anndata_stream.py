"""Streaming cells from a CSR AnnData on disk (``.h5ad`` or ``.zarr``), the way annbatch reads one.

Each epoch the matrix's chunks of ``chunk_size`` contiguous rows are put in an order drawn from (seed, epoch) and
dealt to the distributed ranks, then to the DataLoader workers of each rank. A reader takes ``preload_chunks`` of
its chunks at a time (each one contiguous read of the CSR arrays), shuffles their cells together with the cells
left over from the previous group, and cuts them into batches. Memory is bounded by one group of chunks, never by
the size of the file: the layout to pick for many epochs on one gene panel (a copy of the panel's counts is several
times faster to read than decoding parquet rows that carry every detected gene; ``benchmarks/tahoe_stream.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from pyrovae.data.cell_batch import CellBatch
from pyrovae.data.batch_stream import BatchStream
from pyrovae.data.checks import check_int, non_counts
from pyrovae.data.tahoe import CellBlock
from pyrovae.optional import require


def _open(path: Path):
    """The file's root group: h5py for ``.h5ad``, zarr for a ``.zarr`` folder; anything else is named."""
    try:
        if path.suffix == ".zarr" or path.is_dir():
            return require("zarr").open(str(path), mode="r")
        return require("h5py").File(path, "r")
    except Exception as error:  # zarr's GroupNotFoundError, h5py's OSError, ...: not an AnnData
        found = ("a folder of parquet shards: read it with CellStream(TahoeAtlas(path), panel)"
                 if path.is_dir() and any(path.rglob("*.parquet")) else type(error).__name__)
        raise ValueError(f"AnnDataStream: {path} is not an AnnData (an .h5ad file or a .zarr folder) but {found}") \
            from None


class AnnDataStream(BatchStream):
    """Mini-batches of :class:`~pyrovae.data.CellBatch` read from a CSR AnnData file without loading it.

    ``train``, ``log_likelihood``, ``evaluate`` and ``encode_data`` take it as they take a
    :class:`~pyrovae.data.CellStream`: the same batches (sparse counts, assembled dense where the batch lives),
    the same ``inputs``, covariates and ``torchrun`` behaviour (each rank reads its own chunks; every rank yields
    the same number of batches, :meth:`__len__`). Deterministic given ``seed`` and the epoch, for any number of
    workers.

    :param path: an ``.h5ad`` file or a ``.zarr`` folder written by AnnData, its counts (``X`` or ``layer``) a CSR
        matrix of raw counts (cells x genes); a dense or CSC matrix is refused (write it as CSR:
        ``adata.X = scipy.sparse.csr_matrix(adata.X)``).
    :param labels: ``obs`` columns carried by every batch as integer codes (``batch.labels[name]``); categorical or
        not (a column's sorted unique values are its categories). ``covariates`` are added to them.
    :param covariates: ``obs`` columns that batches carry as a model's categorical covariates (the first is the
        batch): :meth:`inputs` is then ``(x, cat, cont)``; build the model with
        ``categorical=stream.categorical_sizes``.
    :param library_key: an ``obs`` column of library sizes (finite, >= 0) carried by every batch as
        ``batch.library``; by default each cell's total over the file's genes. A model sees only
        :meth:`inputs`: an observed library size is the total over the genes it is given (the panel).
    :param int chunk_size: contiguous rows per read (>= 1).
    :param int preload_chunks: chunks read and shuffled together (>= 1); memory is about this many chunks.
    :param transform: what a model sees instead of the counts (:meth:`inputs`), e.g. a fitted
        :class:`~pyrovae.data.LogPCA`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        batch_size: int = 256,
        *,
        layer: str | None = None,
        labels=(),
        covariates=(),
        library_key: str | None = None,
        chunk_size: int = 512,
        preload_chunks: int = 32,
        shuffle: bool = True,
        drop_last: bool | None = None,
        seed: int = 0,
        num_workers: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        transform: torch.nn.Module | None = None,
    ) -> None:
        super().__init__()
        ad = require("anndata")
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"AnnDataStream reads its file by itself, chunk by chunk: pass the path of the .h5ad file "
                            f"or .zarr folder (for an AnnData opened with backed='r': its .filename), got "
                            f"{type(path).__name__}; an AnnData held in memory goes to from_anndata")
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"AnnDataStream: {self.path} does not exist (an .h5ad file or a .zarr folder)")
        self._set_reading(batch_size, shuffle, drop_last, seed, num_workers, rank, world_size)
        self.chunk_size = check_int("chunk_size", chunk_size, 1)
        self.preload_chunks = check_int("preload_chunks", preload_chunks, 1)
        self.layer, self.transform = layer, transform
        self.covariates = (covariates,) if isinstance(covariates, str) else tuple(covariates)
        names = (labels,) if isinstance(labels, str) else tuple(labels)
        names = tuple(dict.fromkeys(names + self.covariates))

        root = _open(self.path)
        try:
            key = "X" if layer is None else f"layers/{layer}"
            if key not in root:
                have = list(root["layers"]) if "layers" in root else []
                raise ValueError(f"AnnDataStream: {self.path} has no {key!r} (layers: {have})")
            element = root[key]
            encoding = element.attrs.get("encoding-type")
            if encoding != "csr_matrix":
                raise ValueError(
                    f"AnnDataStream reads a CSR matrix; {self.path}'s {key} is {encoding or 'not sparse'}: write it as "
                    "CSR (adata.X = scipy.sparse.csr_matrix(adata.X); adata.write_h5ad(...)) to read it in row chunks")
            self.num_cells, self.num_genes = (int(n) for n in element.attrs["shape"])
            obs = ad.io.read_elem(root["obs"])
            var = ad.io.read_elem(root["var"])
            first = ad.io.sparse_dataset(element)[: min(self.chunk_size, self.num_cells)]
        finally:
            if hasattr(root, "close"):
                root.close()
        if self.num_cells == 0:
            raise ValueError(f"AnnDataStream: {self.path} holds no cells")
        self._key = key
        self._refuse_non_counts(first, np.arange(first.shape[0]))
        missing = [name for name in names + ((library_key,) if library_key else ()) if name not in obs]
        if missing:
            raise ValueError(f"AnnDataStream: {missing} are not obs columns of {self.path} (obs: {list(obs.columns)})")
        self.gene_names = np.asarray(var.index, dtype=object)
        self.categories: dict[str, list[str]] = {}
        self._codes: dict[str, np.ndarray] = {}
        for name in names:
            column = obs[name]
            present = column.dropna()  # a missing value is named below, as such
            if name in self.covariates and column.dtype.kind == "f" and not np.all(present == np.round(present)):
                raise ValueError(f"AnnDataStream: obs[{name!r}] holds continuous values ({present.nunique()} "
                                 "distinct), and a covariate here is categorical (a level each): bin it first, or "
                                 "leave it out")
            if not hasattr(column, "cat"):
                column = column.astype("category")
            self.categories[name] = [str(c) for c in column.cat.categories]
            self._codes[name] = column.cat.codes.to_numpy().astype(np.int32)
            if (self._codes[name] < 0).any():
                raise ValueError(f"AnnDataStream: obs[{name!r}] has missing values; fill them or drop those cells")
        self._library = obs[library_key].to_numpy(np.float32) if library_key else None
        if self._library is not None and not (np.isfinite(self._library) & (self._library >= 0)).all():
            raise ValueError(f"AnnDataStream: obs[{library_key!r}] (library_key) holds NaN, infinite or negative "
                             "library sizes; fix those cells' values or drop the cells")
        self._starts = np.arange(0, self.num_cells, self.chunk_size, dtype=np.int64)
        self._matrix, self._root, self._pid = None, None, None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_matrix"] = state["_root"] = state["_pid"] = None  # each process opens the file itself
        return state

    def _backed(self):
        """The counts on disk, opened once in each process (a worker forked with the parent's handle opens its own)."""
        if self._pid != os.getpid():
            self._root = _open(self.path)
            self._matrix = require("anndata").io.sparse_dataset(
                self._root["X" if self.layer is None else f"layers/{self.layer}"])
            self._pid = os.getpid()
        return self._matrix

    @property
    def categorical_sizes(self) -> tuple[int, ...]:
        """The number of levels of each covariate (a model's ``categorical``)."""
        return tuple(len(self.categories[name]) for name in self.covariates)

    def _parts(self) -> list[list[np.ndarray]]:
        """Chunk starts of every (rank, worker) this epoch."""
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(len(self._starts)) if self.shuffle
                 else np.arange(len(self._starts)))
        workers = max(1, self.num_workers)
        return [[self._starts[order[rank::self.world_size]][worker::workers] for worker in range(workers)]
                for rank in range(self.world_size)]

    def _cells(self, starts: np.ndarray) -> int:
        return int(np.minimum(starts + self.chunk_size, self.num_cells).sum() - starts.sum())

    def _batch_counts(self) -> list[list[int]]:
        def batches(cells: int) -> int:
            return cells // self.batch_size if self.drop_last else -(-cells // self.batch_size)

        return [[batches(self._cells(starts)) for starts in workers] for workers in self._parts()]

    def _refuse_non_counts(self, counts: sp.csr_matrix, ids: np.ndarray) -> None:
        """Raise a ValueError naming the first cell of ``ids`` whose row holds a value that is not a count
        (:func:`~pyrovae.data.checks.non_counts`): every chunk is checked as it is read (a matrix normalised from
        some row on would otherwise train silently)."""
        found = non_counts(counts.data)
        if found is not None:
            bad, problem = found
            position = int(np.argmax(bad))
            row = int(np.searchsorted(counts.indptr, position, side="right")) - 1
            raise ValueError(
                f"AnnDataStream: {self.path}'s {self._key} is not raw counts: cell {int(ids[row])} holds "
                f"{counts.data[position]:g} ({problem}; {int(bad.sum())} such values in its chunk); pass the layer "
                "of raw UMI counts with layer=")

    def _cell_block(self, counts: sp.csr_matrix, ids: np.ndarray) -> CellBlock:
        """The cells ``ids`` (their ``counts`` read already, and checked here) with their library sizes and label
        codes."""
        self._refuse_non_counts(counts, ids)
        counts = sp.csr_matrix(counts, dtype=np.float32)
        library = self._library[ids] if self._library is not None else np.asarray(counts.sum(1)).ravel()
        return CellBlock(counts, library.astype(np.float32), {k: v[ids] for k, v in self._codes.items()}, ids)

    def _block(self, starts: np.ndarray) -> CellBlock:
        """The cells of the chunks at ``starts``, read chunk by chunk."""
        stops = np.minimum(starts + self.chunk_size, self.num_cells)
        counts = sp.vstack([self._backed()[int(a):int(b)] for a, b in zip(starts, stops)], format="csr")
        return self._cell_block(counts, np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)]))

    def _worker_batches(self, worker: int) -> Iterator[CellBatch]:
        starts = self._parts()[self.rank][worker]
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        left = None  # cells of the last group short of a batch, shuffled in with the next group
        for first in range(0, len(starts), self.preload_chunks):
            block = self._block(starts[first:first + self.preload_chunks])
            block = block if left is None else CellBlock.concat([left, block])
            if self.shuffle:
                block = block.take(rng.permutation(len(block)))
            whole = len(block) // self.batch_size * self.batch_size
            for start in range(0, whole, self.batch_size):
                yield CellBatch.from_block(block.rows(start, start + self.batch_size))
            left = block.rows(whole, len(block)) if whole < len(block) else None
        if left is not None and not self.drop_last:
            yield CellBatch.from_block(left)

    def take(self, num_cells: int, seed: int = 0) -> CellBatch:
        """``num_cells`` cells drawn at random (all ranks see the same ones): a held-out sample for figures and
        log-likelihoods, in memory."""
        check_int("num_cells", num_cells, 1)
        if num_cells > self.num_cells:
            raise ValueError(f"take({num_cells}) asks for more cells than {self.path} holds ({self.num_cells:,}); "
                             f"take at most {self.num_cells}")
        ids = np.sort(np.random.default_rng(seed).choice(self.num_cells, num_cells, replace=False))
        return CellBatch.from_block(self._cell_block(self._backed()[ids], ids))

    def __repr__(self) -> str:
        return (f"AnnDataStream({self.path.name}: {self.num_cells:,} cells x {self.num_genes:,} genes, batch "
                f"{self.batch_size}, chunks of {self.chunk_size}, rank {self.rank}/{self.world_size}, "
                f"{self.num_workers} workers)")


__all__ = ["AnnDataStream"]

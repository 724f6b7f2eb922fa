"""Tahoe-100M parquet shards: the expression schema, the gene vocabulary, and blocks of cells read from a shard.

Tahoe-100M (``tahoebio/Tahoe-100M`` on the Hugging Face hub, CC0; Zhang et al. 2025) stores one cell per row:
``genes`` (a list of int64 token ids) and ``expressions`` (the counts of those genes, same length), plus
labels (``drug``, ``sample``, ``cell_line_id``, ``plate``, ``BARCODE_SUB_LIB_ID``, ``moa-fine``, ...). The first
element of both lists is a marker (a special token with ``expressions[0] < 0``) and is dropped. Token ids map to
genes through the ``gene_metadata`` table (``token_id``, ``ensembl_id``, ``gene_symbol``). The hub layout is
``data/train-*.parquet`` (3,388 shards, about 96M cells x 62,710 genes, shards grouped by plate) and
``metadata/gene_metadata.parquet``; a local copy or the output of
:func:`~pyrovae.data.tahoe_synthetic.write_tahoe_shards` has the same layout.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from pyrovae.optional import lazy_import

pa = lazy_import("pyarrow")
pq = lazy_import("pyarrow.parquet")

TAHOE_HUB = "tahoebio/Tahoe-100M"
LABEL_COLUMNS = {"drug": "drug", "cell_line": "cell_line_id", "plate": "plate"}
"""Integer-coded labels of every streamed batch: name in the batch -> column of the shards."""


class TahoeFormatError(ValueError):
    """A shard or table does not follow the Tahoe expression schema; the message names the file and row."""


@dataclass(frozen=True)
class Shard:
    """One parquet file of cells: where it is, how many rows it holds, and the filesystem to open it with."""

    path: str
    num_rows: int
    filesystem: object = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def open(self) -> pq.ParquetFile:
        try:
            if self.filesystem is None:
                return pq.ParquetFile(self.path)
            return pq.ParquetFile(self.filesystem.open(self.path, "rb"))
        except (OSError, pa.ArrowInvalid) as error:
            raise TahoeFormatError(f"shard {self.path} cannot be read as parquet ({error})") from error


@dataclass(frozen=True)
class GeneVocabulary:
    """The ``gene_metadata`` table: token id -> Ensembl id and gene symbol."""

    token_ids: np.ndarray  # (num_genes,) int64
    ensembl_ids: np.ndarray  # (num_genes,) str
    symbols: np.ndarray  # (num_genes,) str

    def __post_init__(self) -> None:
        if len(np.unique(self.token_ids)) != len(self.token_ids):
            raise TahoeFormatError("gene_metadata: token_id values repeat; each token must name one gene")
        if len(self.token_ids) and self.token_ids.min() < 0:
            raise TahoeFormatError("gene_metadata: token_id values must be non-negative")

    @classmethod
    def read(cls, path, filesystem=None) -> GeneVocabulary:
        if filesystem is None and not os.path.isfile(path):
            raise FileNotFoundError(f"no gene_metadata table at {path}: pass genes= the path of a parquet table with "
                                    "token_id, ensembl_id and gene_symbol")
        source = filesystem.open(path, "rb") if filesystem is not None else path
        try:
            table = pq.read_table(source)
        except (OSError, pa.ArrowInvalid) as error:
            raise TahoeFormatError(f"gene_metadata {path} cannot be read as parquet ({error})") from error
        missing = {"token_id", "ensembl_id", "gene_symbol"} - set(table.column_names)
        if missing:
            raise TahoeFormatError(f"{path}: gene_metadata lacks the columns {sorted(missing)}")
        return cls(
            table.column("token_id").to_numpy().astype(np.int64),
            np.asarray(table.column("ensembl_id").to_pylist(), dtype=object),
            np.asarray(table.column("gene_symbol").to_pylist(), dtype=object),
        )

    def __len__(self) -> int:
        return len(self.token_ids)

    def lookup(self, positions: np.ndarray | None = None) -> np.ndarray:
        """An array indexed by token id: the position of the token among ``positions`` (vocabulary positions of a
        panel, default all genes), -1 for tokens outside it.

        :raises ValueError: for an empty panel, positions that are not integers of the vocabulary, and a gene
            listed more than once (named)."""
        positions = np.arange(len(self)) if positions is None else np.asarray(positions)
        if positions.ndim != 1:
            raise ValueError(f"a gene panel is a 1-D list of vocabulary positions, got shape {positions.shape}")
        if len(positions) == 0:
            raise ValueError("the gene panel is empty; pass at least one gene (None: the whole vocabulary)")
        outside = positions.dtype.kind in "iu" and (positions.min() < 0 or positions.max() >= len(self))
        if positions.dtype.kind not in "iu" or outside:
            found = (f"values from {positions.min()} to {positions.max()}" if positions.dtype.kind in "iuf"
                     else f"values (first: {positions[:3].tolist()})")
            raise ValueError(
                f"panel positions must be integers in 0..{len(self) - 1} (vocabulary positions, as panel_positions "
                f"returns them), got {positions.dtype} {found}"
            )
        if len(np.unique(positions)) != len(positions):
            values, counts = np.unique(positions, return_counts=True)
            repeated = [str(self.symbols[p]) for p in values[counts > 1][:5]]
            raise ValueError(f"the panel lists {int((counts > 1).sum())} gene(s) more than once ({repeated}); each "
                             "gene may appear once: drop the repeats (e.g. list(dict.fromkeys(genes)))")
        table = np.full(int(self.token_ids.max()) + 1 if len(self) else 1, -1, dtype=np.int64)
        table[self.token_ids[positions]] = np.arange(len(positions))
        return table

    def positions(self, genes) -> np.ndarray:
        """Vocabulary positions of ``genes`` given as token ids (integers), Ensembl ids or gene symbols; an empty
        list or a gene named twice is refused."""
        if isinstance(genes, str):
            raise ValueError(f"a gene panel is a list of genes, got the string {genes!r}: pass [{genes!r}]")
        genes = list(genes)
        if not genes:
            raise ValueError("the gene panel is empty; pass at least one gene (None: the whole vocabulary)")
        kinds = {"token ids" if isinstance(g, (int, np.integer)) else "names" if isinstance(g, str) else
                 type(g).__name__ for g in genes}
        if len(kinds) > 1:
            raise ValueError(f"the gene panel mixes {sorted(kinds)}; give all genes as token ids, all as Ensembl "
                             "ids or all as symbols")
        repeated = [g for g, n in Counter(genes).items() if n > 1]
        if repeated:
            raise ValueError(f"the gene panel names {len(repeated)} gene(s) more than once ({repeated[:5]}); each "
                             "gene may appear once: drop the repeats (e.g. list(dict.fromkeys(genes)))")
        if all(isinstance(g, (int, np.integer)) for g in genes):
            index = {int(t): i for i, t in enumerate(self.token_ids)}
        elif all(isinstance(g, str) and g.startswith("ENS") for g in genes):
            index = {e: i for i, e in enumerate(self.ensembl_ids)}
        else:
            index = {}
            for i, symbol in enumerate(self.symbols):
                index.setdefault(symbol, i)  # a symbol shared by several Ensembl ids picks the first
        missing = [g for g in genes if g not in index]
        if missing:
            raise ValueError(f"{len(missing)} genes of the panel are not in the vocabulary, e.g. {missing[:5]}")
        return np.asarray([index[g] for g in genes], dtype=np.int64)


def _hub_filesystem():
    try:
        from huggingface_hub import HfFileSystem
    except ImportError as error:
        raise ImportError(
            "reading Tahoe-100M from the Hugging Face hub needs huggingface_hub: pip install 'pyrovae[hub]' "
            "(or pip install huggingface_hub), or download the parquet files and pass their folder"
        ) from error
    return HfFileSystem()


def find_shards(source, filesystem=None) -> tuple[list[Shard], str | None]:
    """The expression shards of ``source`` (sorted by path) and the gene_metadata file beside them, if any (of a
    list: the one its folders hold, where they hold one).

    :param source: a parquet file, a folder (searched recursively; files named ``*metadata*`` are tables, not
        shards), a list of files, or a hub data set: ``"hf://datasets/tahoebio/Tahoe-100M"`` or its name
        ``"tahoebio/Tahoe-100M"`` when no local path has that name (streamed with ``huggingface_hub``'s
        ``HfFileSystem``; only the parquet footers are read here).
    """
    if isinstance(source, (list, tuple)):
        found = [find_shards(item, filesystem) for item in source]
        tables = {genes for _, genes in found if genes is not None}  # a folder's gene_metadata, if the folders agree
        shards, seen, repeated = [], set(), []
        for shard in (s for item, _ in found for s in item):
            key = shard.path if shard.filesystem is not None else os.path.realpath(shard.path)
            if key in seen:  # a folder and a file in it, or a file listed twice: its cells once, not twice
                repeated.append(shard.path)
                continue
            seen.add(key)
            shards.append(shard)
        if repeated:
            warnings.warn(f"{len(repeated)} shard(s) listed more than once are read once: {repeated[:3]}"
                          f"{' ...' if len(repeated) > 3 else ''}", UserWarning, stacklevel=3)
        return sorted(shards, key=lambda s: s.path), tables.pop() if len(tables) == 1 else None
    source = str(source)
    if filesystem is None and not os.path.exists(source):
        if source.startswith("hf://") or (source.count("/") == 1 and not source.startswith(("/", ".", "~"))):
            try:
                filesystem = _hub_filesystem()
            except ImportError as error:
                if source.startswith("hf://"):
                    raise
                raise ImportError(f"no file or folder {source} exists here, so it was taken as the name of a hub data "
                                  f"set (owner/name); {error}") from None
            source = source if source.startswith("hf://") else f"hf://datasets/{source}"
        else:
            raise FileNotFoundError(f"no parquet file or folder at {source}")
    if filesystem is None:
        root = Path(source)
        files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
        files = [str(f) for f in files]
    else:
        files = [source] if filesystem.isfile(source) else sorted(filesystem.glob(f"{source.rstrip('/')}/**/*.parquet"))
    metadata = [f for f in files if "metadata" in os.path.basename(f)]
    genes = next((f for f in metadata if os.path.basename(f).startswith("gene_metadata")), None)
    paths = [f for f in files if f not in metadata]
    if not paths:
        raise FileNotFoundError(f"{source} holds no expression shards (*.parquet other than *metadata*)")
    shards = []
    for path in paths:
        try:
            opened = pq.ParquetFile(filesystem.open(path, "rb") if filesystem else path)
        except (OSError, pa.ArrowInvalid) as error:
            raise TahoeFormatError(f"shard {path} cannot be read as parquet ({error})") from error
        shards.append(Shard(path, opened.metadata.num_rows, filesystem))
    return shards, genes


def check_schema(schema: pa.Schema, shard: Shard, labels: list[str]) -> None:
    problems = []
    expected = {"genes": ("integers", pa.types.is_integer),
                "expressions": ("numbers", lambda t: pa.types.is_integer(t) or pa.types.is_floating(t))}
    for name, (what, accepts) in expected.items():
        if name not in schema.names:
            problems.append(f"no column {name!r}")
            continue
        kind = schema.field(name).type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not accepts(kind.value_type):
            problems.append(f"column {name!r} is {kind}, expected a list of {what}")
    problems += [f"no label column {c!r}" for c in labels if c not in schema.names]
    if problems:
        raise TahoeFormatError(
            f"shard {shard.path} does not follow the Tahoe expression schema: {'; '.join(problems)} "
            f"(columns: {schema.names})"
        )


@dataclass
class CellBlock:
    """Consecutive cells of one shard: counts on the gene panel (CSR), library sizes over all genes, integer
    label codes and global cell ids."""

    counts: sp.csr_matrix  # (cells, panel genes) float32
    library: np.ndarray  # (cells,) float32, total counts over the whole vocabulary
    labels: dict[str, np.ndarray]  # name -> (cells,) int64 codes, positions in the categories
    ids: np.ndarray  # (cells,) int64, shard offset + row

    def __len__(self) -> int:
        return self.counts.shape[0]

    def take(self, rows: np.ndarray) -> CellBlock:
        return CellBlock(self.counts[rows], self.library[rows], {k: v[rows] for k, v in self.labels.items()},
                         self.ids[rows])

    def rows(self, start: int, stop: int) -> CellBlock:
        """Cells ``start`` to ``stop`` (views of this block's arrays where they can be)."""
        csr = self.counts
        first, last = csr.indptr[start], csr.indptr[stop]
        counts = sp.csr_matrix((csr.data[first:last], csr.indices[first:last], csr.indptr[start:stop + 1] - first),
                               shape=(stop - start, csr.shape[1]))
        return CellBlock(counts, self.library[start:stop], {k: v[start:stop] for k, v in self.labels.items()},
                         self.ids[start:stop])

    @staticmethod
    def concat(blocks: list[CellBlock]) -> CellBlock:
        if len(blocks) == 1:
            return blocks[0]
        return CellBlock(
            sp.vstack([b.counts for b in blocks], format="csr"),
            np.concatenate([b.library for b in blocks]),
            {k: np.concatenate([b.labels[k] for b in blocks]) for k in blocks[0].labels},
            np.concatenate([b.ids for b in blocks]),
        )


def holdout_mask(shard: Shard, rows: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Cells held out for testing: a hash of (shard name, row, seed) below ``fraction`` (a cell-level split that
    needs no pass over the data and does not depend on how shards are assigned to ranks or workers)."""
    if fraction <= 0:
        return np.zeros(len(rows), dtype=bool)
    key = np.uint64(zlib.crc32(shard.name.encode()) ^ (seed * 0x9E3779B1 & 0xFFFFFFFF))
    with np.errstate(over="ignore"):
        z = (key << np.uint64(32)) ^ rows.astype(np.uint64)
        z = z + np.uint64(0x9E3779B97F4A7C15)  # splitmix64 (Steele et al. 2014)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


__all__ = [
    "LABEL_COLUMNS",
    "TAHOE_HUB",
    "CellBlock",
    "GeneVocabulary",
    "Shard",
    "TahoeFormatError",
    "find_shards",
    "holdout_mask",
]

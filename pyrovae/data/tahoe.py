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
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from pyrovae.optional import lazy_import

pa = lazy_import("pyarrow")
pc = lazy_import("pyarrow.compute")
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
    """The expression shards of ``source`` (sorted by path) and the gene_metadata file beside them, if any.

    :param source: a parquet file, a folder (searched recursively; files named ``*metadata*`` are tables, not
        shards), a list of files, or a hub data set: ``"hf://datasets/tahoebio/Tahoe-100M"`` or its name
        ``"tahoebio/Tahoe-100M"`` when no local path has that name (streamed with ``huggingface_hub``'s
        ``HfFileSystem``; only the parquet footers are read here).
    """
    if isinstance(source, (list, tuple)):
        shards = [s for item in source for s in find_shards(item, filesystem)[0]]
        return sorted(shards, key=lambda s: s.path), None
    source = str(source)
    if filesystem is None and not os.path.exists(source):
        if source.startswith("hf://") or source.count("/") == 1:
            filesystem = _hub_filesystem()
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


def _flat(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (starting at 0) and values of a list array, slices respected."""
    offsets = array.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0], array.flatten().to_numpy(zero_copy_only=False)


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


def decode_rows(
    batch: pa.RecordBatch,
    shard: Shard,
    first_row: int,
    vocabulary: np.ndarray,
    panel: np.ndarray,
    num_panel: int,
    categories: dict[str, list[str]],
) -> CellBlock:
    """Decode rows of a shard into a :class:`CellBlock`, validating them.

    :param vocabulary: token id -> vocabulary position (-1 outside), from :meth:`GeneVocabulary.lookup`.
    :param panel: token id -> panel position (-1 off the panel).
    :param categories: label name -> category list (codes are positions in it).
    :raises TahoeFormatError: lists of different lengths, a missing list, a row that does not start with the
        marker (its first element would otherwise be dropped as one, or a real gene read as the marker), token
        ids outside the vocabulary, negative counts other than the marker, counts that are not integers, and a
        missing label or one outside ``categories``; the message names the shard and the row.
    """
    genes, expressions = batch.column("genes"), batch.column("expressions")

    def fail(position: int, what: str):
        raise TahoeFormatError(f"shard {shard.path}, row {first_row + position}: {what}")

    for name, column in (("genes", genes), ("expressions", expressions)):
        if column.null_count:
            fail(int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0]), f"{name} is missing")
    gene_offsets, tokens = _flat(genes)
    offsets, values = _flat(expressions)
    lengths = np.diff(offsets)
    if not np.array_equal(gene_offsets, offsets):
        row = int(np.flatnonzero(np.diff(gene_offsets) != lengths)[0])
        fail(row, f"genes has {gene_offsets[row + 1] - gene_offsets[row]} entries but expressions has "
                  f"{lengths[row]}; the two lists must have the same length")
    num_cells = len(lengths)

    def row_of(position: int) -> int:
        return int(np.searchsorted(offsets, position, side="right") - 1)

    # every row starts with the marker (a negative count): a row without it would have its first gene taken for
    # the marker, so it is refused rather than guessed
    if (lengths == 0).any():
        fail(int(np.flatnonzero(lengths == 0)[0]), "genes and expressions are empty; every row starts with the "
             "marker element (a special token with a negative expression), even a cell without counts")
    starts = offsets[:-1]
    unmarked = ~(values[starts] < 0)  # NaN counts as unmarked
    if unmarked.any():
        row = int(np.flatnonzero(unmarked)[0])
        fail(row, f"the row does not start with the marker element (first token {tokens[starts[row]]}, expression "
                  f"{values[starts[row]]}; the marker has a negative expression), so its first gene cannot be told "
                  f"from the marker; {int(unmarked.sum())} rows of this read lack it. Write each row as [marker, "
                  "genes...] (tahoe_synthetic.write_tahoe_shards shows the layout)")
    markers = starts
    values = values.astype(np.float32, copy=True)
    values[markers] = 0.0
    if not values.min(initial=0.0) >= 0:  # a negative count or NaN
        at = int(np.flatnonzero(~(values >= 0))[0])
        fail(row_of(at), f"count {values[at]} for token {tokens[at]}: counts must be non-negative (only the "
                         "first element, the marker, may be negative)")
    if not pa.types.is_integer(expressions.type.value_type) and not np.isfinite(values).all():
        at = int(np.flatnonzero(~np.isfinite(values))[0])
        fail(row_of(at), f"count {values[at]} for token {tokens[at]} is not finite")
    if not pa.types.is_integer(expressions.type.value_type) and not np.array_equal(values, np.rint(values)):
        at = int(np.flatnonzero(values != np.rint(values))[0])
        fail(row_of(at), f"count {values[at]} for token {tokens[at]} is not an integer")
    tokens = tokens.astype(np.int64, copy=True)
    tokens[markers] = int(np.argmax(vocabulary >= 0))  # a valid token; its panel position is reset below
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= len(vocabulary)):
        at = int(np.flatnonzero((tokens < 0) | (tokens >= len(vocabulary)))[0])
        fail(row_of(at), f"token id {tokens[at]} is not in the gene vocabulary (gene_metadata)")
    known = vocabulary[tokens] if len(tokens) else tokens
    if len(tokens) and known.min() < 0:
        at = int(np.flatnonzero(known < 0)[0])
        fail(row_of(at), f"token id {tokens[at]} is not in the gene vocabulary (gene_metadata)")
    library = np.zeros(num_cells, dtype=np.float32)  # float32 sums of integers are exact below 2^24
    if num_cells:
        library[:] = np.add.reduceat(values, starts)
    columns = panel[tokens]  # the panel and vocabulary tables have the same length
    columns[markers] = -1
    selected = np.flatnonzero(columns >= 0)
    indptr = np.searchsorted(selected, offsets)  # selected entries before each row's start
    counts = sp.csr_matrix((values[selected], columns[selected], indptr), shape=(num_cells, num_panel))
    entries = np.diff(counts.indptr)
    counts.sum_duplicates()  # a token listed twice in a row would be summed silently: refuse it instead
    if counts.nnz != len(selected):
        row = int(np.flatnonzero(np.diff(counts.indptr) != entries)[0])
        fail(row, "a gene's token id appears more than once in the row's genes list")
    labels = {}
    for name, names in categories.items():
        column_name = LABEL_COLUMNS.get(name, name)
        column = batch.column(column_name).cast(pa.string())
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            fail(row, f"the label {column_name!r} is missing (null; {column.null_count} such rows in this read); "
                      "every cell needs its labels: fill them in, or leave the label out of TahoeAtlas(labels=...)")
        codes = pc.index_in(column, value_set=pa.array(names, pa.string()))
        if codes.null_count:
            row = int(np.flatnonzero(codes.is_null().to_numpy(zero_copy_only=False))[0])
            fail(row, f"the label {column_name!r} is {column[row].as_py()!r}, not one of its categories "
                      f"{list(names)[:10]}; pass categories= that include it (or leave it out to scan the shards)")
        labels[name] = codes.to_numpy(zero_copy_only=False).astype(np.int64)
    ids = np.arange(first_row, first_row + num_cells, dtype=np.int64)
    return CellBlock(counts, library, labels, ids)


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
    "decode_rows",
    "find_shards",
    "holdout_mask",
]

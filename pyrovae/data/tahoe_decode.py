"""Decoding rows of a Tahoe-schema shard into a block of cells on a gene panel.

A row holds ``genes`` (token ids) and ``expressions`` (their counts), each list starting with a marker. The lists
are read from pyarrow's flat buffers without a copy: the offsets of the rows and the values of all rows end to end.
One table indexed by token id gives each entry's panel position (-1 off the panel, -2 outside the vocabulary), so
the panel's sparse rows come from a handful of vectorised passes over the flat buffers, with no Python per cell.

Valid rows take that fast path, whose checks only say whether a read is clean. A read that fails one of them is
decoded again by the checked path, which finds the first bad row and names it in the error (or, for rows that are
valid but unusual, such as genes not listed in token order, decodes them): both paths give the same cells.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pyrovae.data.tahoe import LABEL_COLUMNS, CellBlock, Shard, TahoeFormatError
from pyrovae.optional import lazy_import

pa = lazy_import("pyarrow")
pc = lazy_import("pyarrow.compute")

OFF_PANEL, UNKNOWN = -1, -2


def panel_table(vocabulary: np.ndarray, panel: np.ndarray) -> np.ndarray:
    """Token id -> panel position, ``OFF_PANEL`` for a gene of the vocabulary outside the panel, ``UNKNOWN`` for a
    token outside the vocabulary; one more entry, ``UNKNOWN``, stands for every token beyond the table.

    :param vocabulary: token id -> vocabulary position (-1 outside), from
        :meth:`~pyrovae.data.tahoe.GeneVocabulary.lookup`.
    :param panel: token id -> panel position (-1 off the panel), the same length.
    """
    table = np.where(panel >= 0, panel, np.where(vocabulary >= 0, OFF_PANEL, UNKNOWN))
    return np.append(table, UNKNOWN).astype(np.int32)


def _flat_buffers(genes: pa.Array, expressions: pa.Array):
    """Row offsets (from 0) and the token and count buffers of the two list columns, zero-copy; None when they
    cannot be read that way (missing rows or elements, rows of different lengths)."""
    if genes.null_count or expressions.null_count:
        return None
    offsets = genes.offsets.to_numpy()
    if not np.array_equal(offsets, expressions.offsets.to_numpy()):
        return None
    first, last = int(offsets[0]), int(offsets[-1])
    tokens, values = genes.values.slice(first, last - first), expressions.values.slice(first, last - first)
    if tokens.null_count or values.null_count:
        return None
    return offsets.astype(np.int64) - first, tokens.to_numpy(), values.to_numpy()


def _decode_fast(genes: pa.Array, expressions: pa.Array, table: np.ndarray, num_panel: int):
    """Counts on the panel (CSR) and library sizes of clean rows; None as soon as a check fails."""
    flat = _flat_buffers(genes, expressions)
    if flat is None:
        return None
    offsets, tokens, values = flat
    num_cells, starts = len(offsets) - 1, offsets[:-1]
    if num_cells == 0 or tokens.dtype.kind != "i" or not (offsets[1:] > starts).all():
        return None  # no rows, unsigned tokens, or an empty row (no marker)
    floating = values.dtype.kind == "f"
    if values.dtype != np.float32:
        values = values.astype(np.float32)  # counts are float32, as on the checked path
    markers = values[starts]
    # every row starts with its marker (a negative count) and no other count is negative, NaN or infinite
    if not (markers < 0).all() or np.count_nonzero(values < 0) != num_cells:
        return None
    if floating and not (np.isfinite(values.max()) and np.array_equal(np.rint(values), values)):
        return None
    if tokens.min() < 0:
        return None
    columns = table.take(tokens, mode="clip")  # beyond the table: its last entry, UNKNOWN
    columns[starts] = OFF_PANEL  # the markers
    if columns.min() < OFF_PANEL:
        return None  # a token outside the vocabulary
    if len(tokens) > 1:
        # no gene twice in a row: tokens increase along each row after its marker (Tahoe writes them sorted)
        increasing = tokens[1:] > tokens[:-1]
        increasing[starts[starts < len(increasing)]] = True  # marker -> first gene
        increasing[starts[1:] - 1] = True  # last gene of a row -> the next row's marker
        sorted_rows = increasing.all()
    else:
        sorted_rows = True
    selected = np.flatnonzero(columns >= 0)
    indptr = np.searchsorted(selected, offsets)  # selected entries before each row's start
    counts = sp.csr_matrix((values[selected], columns[selected], indptr), shape=(num_cells, num_panel))
    if not sorted_rows and not _no_repeats(counts):
        return None
    library = np.add.reduceat(values, starts)  # float32 sums of integers: exact below 2^24
    library -= markers
    return counts, library


def _no_repeats(counts: sp.csr_matrix) -> bool:
    """Whether no row of ``counts`` lists a column twice (scipy sorts the rows to tell)."""
    entries = counts.copy()
    entries.sum_duplicates()
    return entries.nnz == counts.nnz


def _flat(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (starting at 0) and values of a list array, slices respected."""
    offsets = array.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0], array.flatten().to_numpy(zero_copy_only=False)


def _decode_checked(genes: pa.Array, expressions: pa.Array, shard: Shard, first_row: int, vocabulary: np.ndarray,
                    panel: np.ndarray, num_panel: int):
    """Counts on the panel (CSR) and library sizes, every check naming the first row it fails at."""

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
    return counts, library


def decode_labels(batch: pa.RecordBatch, shard: Shard, first_row: int,
                  categories: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Label name -> (cells,) int64 codes, positions in ``categories``; a missing label or one outside its
    categories raises :class:`TahoeFormatError` naming the row."""

    def fail(position: int, what: str):
        raise TahoeFormatError(f"shard {shard.path}, row {first_row + position}: {what}")

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
    return labels


def decode_rows(
    batch: pa.RecordBatch,
    shard: Shard,
    first_row: int,
    vocabulary: np.ndarray,
    panel: np.ndarray,
    num_panel: int,
    categories: dict[str, list[str]],
    table: np.ndarray | None = None,
) -> CellBlock:
    """Decode rows of a shard into a :class:`~pyrovae.data.tahoe.CellBlock`, validating them.

    :param vocabulary: token id -> vocabulary position (-1 outside), from
        :meth:`~pyrovae.data.tahoe.GeneVocabulary.lookup`.
    :param panel: token id -> panel position (-1 off the panel).
    :param categories: label name -> category list (codes are positions in it).
    :param table: :func:`panel_table` of ``vocabulary`` and ``panel``, when the caller keeps it between reads.
    :raises TahoeFormatError: lists of different lengths, a missing list, a row that does not start with the
        marker (its first element would otherwise be dropped as one, or a real gene read as the marker), token
        ids outside the vocabulary, negative counts other than the marker, counts that are not integers, a gene of
        the panel listed twice in a row (repeats of genes off the panel are not looked for: rows whose genes are
        not in increasing order would each need sorting; such a gene would count twice in the library size), and
        a missing label or one outside ``categories``; the message names the shard and the row.
    """
    genes, expressions = batch.column("genes"), batch.column("expressions")
    decoded = _decode_fast(genes, expressions, panel_table(vocabulary, panel) if table is None else table, num_panel)
    if decoded is None:
        decoded = _decode_checked(genes, expressions, shard, first_row, vocabulary, panel, num_panel)
    counts, library = decoded
    labels = decode_labels(batch, shard, first_row, categories)
    ids = np.arange(first_row, first_row + len(library), dtype=np.int64)
    return CellBlock(counts, library, labels, ids)


__all__ = ["OFF_PANEL", "UNKNOWN", "decode_labels", "decode_rows", "panel_table"]

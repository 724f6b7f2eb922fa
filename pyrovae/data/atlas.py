"""A Tahoe-schema atlas on disk or on the hub: its shards, gene vocabulary, label categories and gene panels."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from pyrovae.data.checks import check_int
from pyrovae.data.hvg import ScaledMoments
from pyrovae.data.tahoe import LABEL_COLUMNS, CellBlock, GeneVocabulary, check_schema, find_shards, holdout_mask
from pyrovae.data.tahoe_decode import decode_rows, panel_table
from pyrovae.optional import lazy_import

pa = lazy_import("pyarrow")
pc = lazy_import("pyarrow.compute")

READ_CHUNK = 512
"""Rows decoded at a time; a block of ``rows_per_read`` rows joins several such reads."""


class TahoeAtlas:
    """Cells in Tahoe-schema parquet shards, read shard by shard and never loaded whole.

    :param source: a parquet file or folder, a list of files, or the hub data set (``"tahoebio/Tahoe-100M"``);
        see :func:`~pyrovae.data.tahoe.find_shards`.
    :param genes: the vocabulary: a :class:`~pyrovae.data.tahoe.GeneVocabulary` or the path of a gene_metadata
        parquet table (default: the ``gene_metadata*.parquet`` found beside the shards).
    :param labels: label names coded as integers in every batch (``drug``, ``cell_line``, ``plate`` or any
        column of the shards).
    :param categories: the category list of each label; labels not given are scanned from the shards once
        (reading only that column), which for the full hub data set reads every shard's footer and column.
    """

    def __init__(
        self,
        source,
        genes: GeneVocabulary | str | None = None,
        labels: Sequence[str] = ("drug", "cell_line", "plate"),
        categories: dict[str, Sequence[str]] | None = None,
    ) -> None:
        self.source = source
        self.shards, metadata = find_shards(source)
        if isinstance(genes, GeneVocabulary):
            self.vocabulary = genes
        elif genes is not None or metadata is not None:
            filesystem = self.shards[0].filesystem if genes is None else None
            self.vocabulary = GeneVocabulary.read(genes or metadata, filesystem)
        else:
            raise FileNotFoundError(
                f"no gene_metadata table beside the shards of {source}: pass genes= (a gene_metadata parquet with "
                "token_id, ensembl_id and gene_symbol)"
            )
        self._vocabulary_lookup = self.vocabulary.lookup()
        self.labels = [labels] if isinstance(labels, str) else list(labels)
        self._categories = {k: list(v) for k, v in (categories or {}).items()}
        self._split_rows: dict[tuple[float, int], tuple[np.ndarray, np.ndarray]] = {}
        self.offsets = np.concatenate([[0], np.cumsum([s.num_rows for s in self.shards])]).astype(np.int64)
        schema = self.shards[0].open().schema_arrow
        check_schema(schema, self.shards[0], self.label_columns)

    @property
    def label_columns(self) -> list[str]:
        return [LABEL_COLUMNS.get(name, name) for name in self.labels]

    @property
    def num_cells(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_genes(self) -> int:
        return len(self.vocabulary)

    def __len__(self) -> int:
        return self.num_cells

    def __repr__(self) -> str:
        return f"TahoeAtlas({self.num_cells:,} cells in {len(self.shards)} shards x {self.num_genes:,} genes)"

    @property
    def categories(self) -> dict[str, list[str]]:
        """Label name -> sorted categories (a code is a position in the list); scanned once when not given."""
        missing = [name for name in self.labels if name not in self._categories]
        if missing:
            seen = {name: set() for name in missing}
            for shard in tqdm(self.shards, desc="label categories", disable=len(self.shards) < 50):
                table = shard.open().read(columns=[LABEL_COLUMNS.get(n, n) for n in missing])
                for name, column in zip(missing, table.columns):
                    seen[name].update(v for v in pc.unique(column.cast(pa.string())).to_pylist() if v is not None)
            self._categories.update({name: sorted(values) for name, values in seen.items()})
        return {name: self._categories[name] for name in self.labels}

    def panel_positions(self, genes=None) -> np.ndarray:
        """Vocabulary positions of a gene panel: token ids, Ensembl ids or symbols (None: the whole vocabulary)."""
        return np.arange(self.num_genes) if genes is None else self.vocabulary.positions(genes)

    def split_rows(self, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Per shard, the number of cells in the training and in the held-out part of the cell-level split
        (hashed once per split, then kept: the train and test streams of one split share it)."""
        if (fraction, seed) not in self._split_rows:
            held_out = np.array([holdout_mask(s, np.arange(s.num_rows), fraction, seed).sum() for s in self.shards])
            rows = np.array([s.num_rows for s in self.shards])
            self._split_rows[fraction, seed] = rows - held_out, held_out
        return self._split_rows[fraction, seed]

    def group_codes(self, held_out: dict) -> dict[str, np.ndarray]:
        """``{label: [category, ...]}`` as integer codes per label, checked against the atlas's categories."""
        categories, codes = self.categories, {}
        for name, values in held_out.items():
            if name not in categories:
                raise ValueError(f"held_out names {name!r}, which is not a label of the atlas ({list(categories)})")
            values = [values] if isinstance(values, str) else list(values)
            unknown = [v for v in values if str(v) not in categories[name]]
            if not values:
                raise ValueError(f"held_out {name!r} lists no categories; give some of {categories[name][:10]}")
            if unknown:
                raise ValueError(f"held_out {name!r}: {unknown} are not among its categories {categories[name][:10]}")
            codes[name] = np.array([categories[name].index(str(v)) for v in values])
        return codes

    @staticmethod
    def in_groups(block: CellBlock, codes: dict[str, np.ndarray]) -> np.ndarray:
        """Which cells of ``block`` belong to one of the held-out groups ``codes`` (:meth:`group_codes`)."""
        mask = np.zeros(len(block), dtype=bool)
        for name, values in codes.items():
            mask |= np.isin(block.labels[name], values)
        return mask

    def group_split_rows(self, held_out: dict) -> tuple[np.ndarray, np.ndarray]:
        """Per shard, the number of cells outside and inside the held-out groups (one scan of the label columns,
        kept)."""
        key = ("groups", tuple(sorted((k, tuple(map(str, v if not isinstance(v, str) else [v])))
                                      for k, v in held_out.items())))
        if key not in self._split_rows:
            codes, categories = self.group_codes(held_out), self.categories
            inside = []
            for shard in self.shards:
                table = shard.open().read(columns=[LABEL_COLUMNS.get(n, n) for n in codes])
                mask = np.zeros(shard.num_rows, dtype=bool)
                for name, column in zip(codes, table.columns):
                    values = np.asarray(column.cast(pa.string()).to_pylist(), dtype=object)
                    mask |= np.isin(values, [categories[name][c] for c in codes[name]])
                inside.append(int(mask.sum()))
            rows = np.array([s.num_rows for s in self.shards])
            self._split_rows[key] = rows - np.array(inside), np.array(inside)
        return self._split_rows[key]

    def read(
        self,
        shard_index: int,
        panel: np.ndarray,
        rows_per_read: int = 4096,
        split: str | None = None,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        held_out: dict | None = None,
    ) -> Iterator[CellBlock]:
        """Blocks of cells of one shard in file order, counts on ``panel`` (vocabulary positions); a block is
        decoded only when asked for, so stopping early reads no further.

        :param split: None (all cells), ``"train"`` or ``"test"`` (cells of :func:`holdout_mask`, or of the
            ``held_out`` groups).
        :param held_out: ``{label: [category, ...]}``: the test part is every cell of these groups (whole plates,
            drugs or cell lines), the training part every other cell; a training block that holds one of them
            raises (a leak is a bug, never silent).
        """
        codes = self.group_codes(held_out) if held_out else None
        if isinstance(shard_index, bool) or not isinstance(shard_index, (int, np.integer)) or \
                not 0 <= shard_index < len(self.shards):
            raise ValueError(f"shard_index must be an integer in 0..{len(self.shards) - 1} (the atlas has "
                             f"{len(self.shards)} shards), got {shard_index!r}")
        shard = self.shards[shard_index]
        panel_lookup = self.vocabulary.lookup(panel)
        table = panel_table(self._vocabulary_lookup, panel_lookup)
        categories = self.categories
        handle = shard.open()
        check_schema(handle.schema_arrow, shard, self.label_columns)
        columns = ["genes", "expressions", *dict.fromkeys(self.label_columns)]
        # a block ends every rows_per_read rows and at the end of each row group (as pyarrow's batches do); its
        # rows are decoded READ_CHUNK at a time, for pyarrow reuses the buffers of reads that size instead of
        # mapping fresh pages for each
        group_ends = np.cumsum([handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)])

        def block_end(row: int) -> int:
            group = np.searchsorted(group_ends, row, side="right")
            next_read = (row // rows_per_read + 1) * rows_per_read
            return int(min(group_ends[group], next_read)) if group < len(group_ends) else next_read

        first = position = 0
        end, pieces = block_end(0), []
        for batch in handle.iter_batches(batch_size=min(rows_per_read, READ_CHUNK), columns=columns):
            offset = 0
            while offset < batch.num_rows:
                size = min(batch.num_rows - offset, end - position)
                rows = batch if size == batch.num_rows else batch.slice(offset, size)
                pieces.append(decode_rows(rows, shard, position, self._vocabulary_lookup, panel_lookup, len(panel),
                                          categories, table))
                offset, position = offset + size, position + size
                if position == end:
                    yield from self._part(CellBlock.concat(pieces), shard_index, first, split, test_fraction,
                                          split_seed, codes)
                    first, pieces, end = position, [], block_end(position)
        if pieces:
            yield from self._part(CellBlock.concat(pieces), shard_index, first, split, test_fraction, split_seed,
                                  codes)

    def _part(self, block: CellBlock, shard_index: int, first: int, split, test_fraction, split_seed,
              codes) -> Iterator[CellBlock]:
        """``block`` (rows from ``first`` of a shard) with global ids, cut to the split's part; nothing if empty."""
        shard = self.shards[shard_index]
        block.ids += self.offsets[shard_index]
        if split is not None:
            rows = np.arange(first, first + len(block))
            test = self.in_groups(block, codes) if codes else holdout_mask(shard, rows, test_fraction, split_seed)
            block = block.take(np.flatnonzero(test if split == "test" else ~test))
            if codes and split == "train" and self.in_groups(block, codes).any():
                raise RuntimeError(f"{shard.name}: a held-out group leaked into the training part")
        if len(block):
            yield block

    def _spread(self, num_cells: int, panel: np.ndarray, seed: int, **read_args) -> Iterator[CellBlock]:
        """Blocks of ``num_cells`` cells spread over the shards (fewer if the atlas or split has fewer): the first
        cells of every shard in a random order, an equal share from each, then more from shards with cells left.
        Every plate has its share (shards are grouped by plate); only the rows needed are read."""
        order = np.random.default_rng(seed).permutation(len(self.shards))
        quota = max(1, -(-num_cells // len(self.shards)))
        taken = np.zeros(len(self.shards), dtype=np.int64)
        total = 0
        for limit in (quota, None):  # an equal share first, then the rest of each shard
            for index in order:
                if total >= num_cells:
                    return
                want = num_cells - total if limit is None else min(limit, num_cells - total)
                skip, got = taken[index], 0
                for block in self.read(int(index), panel, **read_args):
                    if skip >= len(block):  # cells taken in the first pass
                        skip -= len(block)
                        continue
                    block = block.take(np.arange(skip, min(len(block), skip + want - got)))
                    skip = 0
                    if len(block):
                        yield block
                        got += len(block)
                    if got >= want:
                        break
                taken[index] += got
                total += got

    def sample(self, num_cells: int, panel: np.ndarray, seed: int = 0, **read_args) -> CellBlock:
        """``num_cells`` cells spread over the shards, in memory (see :meth:`_spread` for which ones; fewer when the
        atlas or split holds fewer: :meth:`CellStream.take <pyrovae.data.CellStream.take>` refuses that)."""
        check_int("num_cells", num_cells, 1)
        blocks = list(self._spread(num_cells, panel, seed, **read_args))
        if not blocks:
            raise ValueError("no cells to sample: the shards (or this split of them) are empty")
        return CellBlock.concat(blocks)

    def highly_variable_genes(
        self, num_genes: int = 2000, num_cells: int = 50_000, num_bins: int = 20, seed: int = 0
    ) -> np.ndarray:
        """Vocabulary positions of the ``num_genes`` most variable genes over a streamed sample of cells.

        Seurat's way, as :meth:`CountData.highly_variable_genes <pyrovae.data.CountData.highly_variable_genes>`
        (:mod:`pyrovae.data.hvg`): the moments of counts scaled to 10,000 per cell (by the total over the whole
        vocabulary) are accumulated block by block, so memory does not grow with the sample.
        """
        if check_int("num_genes", num_genes, 1) > self.num_genes:
            raise ValueError(f"num_genes must be in 1..{self.num_genes}, got {num_genes}")
        check_int("num_cells", num_cells, 1)
        moments = ScaledMoments(self.num_genes)
        for block in self._spread(num_cells, np.arange(self.num_genes), seed):  # the sample of :meth:`sample`
            moments.add(block.counts, block.library)
        return moments.highly_variable(num_genes, num_bins)


__all__ = ["TahoeAtlas"]

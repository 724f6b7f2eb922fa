"""Streaming cells from an atlas of shards: bounded memory, shuffled across shards, split across workers and ranks.

Each epoch the shards are put in an order drawn from (seed, epoch) and dealt to the distributed ranks, then to the
DataLoader workers of each rank, greedily by size (the next shard goes to the part with the fewest cells), so no
two readers share a shard and the parts hold nearly equal numbers of cells. A reader interleaves a few shards at
a time (reading their next blocks ahead in threads) and passes their cells through a shuffle buffer: shards are
grouped by plate, so their own order is not random. Each draw from a full buffer permutes it, yields all but
half a buffer of its cells in batches, and keeps the rest for the next draw. Memory is bounded by the buffer and
the blocks being read, never by the size of the atlas.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from pyrovae.data.atlas import TahoeAtlas
from pyrovae.data.batch_stream import BatchStream
from pyrovae.data.cell_batch import CellBatch
from pyrovae.data.checks import check_int, check_real
from pyrovae.data.tahoe import CellBlock


def deal(sizes: np.ndarray, order: np.ndarray, parts: int) -> list[list[int]]:
    """Deal the items of ``order`` to ``parts`` lists, each next item to the part holding the least so far (ties:
    the lowest part), so that parts hold nearly equal totals of ``sizes``."""
    dealt, totals = [[] for _ in range(parts)], np.zeros(parts, dtype=np.int64)
    for item in order:
        part = int(np.argmin(totals))
        dealt[part].append(int(item))
        totals[part] += sizes[item]
    return dealt


_GROUP_CELLS = 1024
"""Cells a shuffle buffer gathers at once (a few batches): its arrays stay small, so that they reuse freed memory
instead of mapping (and zeroing) fresh pages, which costs more than the copy itself."""


class _ShuffleBuffer:
    """Cells waiting to be drawn into batches, kept in the blocks they were read in: a position of the buffer is a
    (block, row) pair, so that drawing cells, or keeping the undrawn ones for the next draw, moves indices, not
    counts. Blocks whose cells are all drawn are dropped; when the kept cells are spread thin over many blocks they
    are gathered into new ones, so memory stays within about twice the cells buffered."""

    def __init__(self, block_cells: int) -> None:
        self.block_cells = block_cells
        self.blocks: list[CellBlock] = []
        self.block = np.zeros(0, dtype=np.int64)  # (positions,) which block
        self.row = np.zeros(0, dtype=np.int64)  # (positions,) which row of it

    def __len__(self) -> int:
        return len(self.row)

    def add(self, block: CellBlock) -> None:
        self.block = np.concatenate([self.block, np.full(len(block), len(self.blocks))])
        self.row = np.concatenate([self.row, np.arange(len(block))])
        self.blocks.append(block)

    def take(self, positions: np.ndarray) -> CellBlock:
        """The cells at ``positions``, in that order."""
        block, row = self.block[positions], self.row[positions]
        by_block = np.argsort(block, kind="stable")
        used, starts = np.unique(block[by_block], return_index=True)
        if len(used) == 1:
            return self.blocks[used[0]].take(row)
        parts = np.split(row[by_block], starts[1:])
        grouped = CellBlock.concat([self.blocks[b].take(rows) for b, rows in zip(used, parts)])
        return grouped.take(np.argsort(by_block))  # back from block order to the order asked for

    def keep(self, positions: np.ndarray) -> None:
        """Keep the cells at ``positions``, in that order, as the first of the buffer; drop the rest."""
        self.block, self.row = self.block[positions], self.row[positions]
        used = np.unique(self.block)
        if sum(len(self.blocks[b]) for b in used) > 2 * len(positions) + self.block_cells:
            gathered = [self.take(np.arange(start, min(start + self.block_cells, len(positions))))
                        for start in range(0, len(positions), self.block_cells)]
            self.blocks = gathered
            self.block = np.repeat(np.arange(len(gathered)), [len(g) for g in gathered])
            self.row = np.concatenate([np.arange(len(g)) for g in gathered]) if gathered else self.row[:0]
        else:
            renumber = np.zeros(len(self.blocks), dtype=np.int64)
            renumber[used] = np.arange(len(used))
            self.blocks = [self.blocks[b] for b in used]
            self.block = renumber[self.block]


class CellStream(BatchStream):
    """Mini-batches of :class:`CellBatch` streamed from a :class:`~pyrovae.data.atlas.TahoeAtlas`.

    Deterministic given ``seed`` and the epoch (:meth:`set_epoch`), for any number of workers. Under
    ``torch.distributed`` each rank reads its own shards (rank and world size are taken from the process group
    unless given); every rank yields the same number of batches per epoch (:meth:`__len__`, the fewest any rank can
    fill: a rank with more cells leaves its last batches out; with ``drop_last`` the cells of a part beyond whole
    batches wait for another epoch's deal).

    :param panel: vocabulary positions of the genes to return (see :meth:`TahoeAtlas.panel_positions`,
        :meth:`TahoeAtlas.highly_variable_genes`).
    :param split: None (all cells), ``"train"`` or ``"test"``: a cell-level split by a hash of shard and row
        (``test_fraction`` of the cells, chosen by ``split_seed``).
    :param int buffer_size: cells in the shuffle buffer (>= 1; one smaller than ``batch_size`` is raised to it);
        half of it is kept between draws.
    :param int interleave: shards each reader has open at once (>= 1; their blocks alternate into the buffer).
    :param int num_workers: DataLoader worker processes (:meth:`loader`, >= 0); shards are dealt among them.
    :param int read_threads: threads of each reader (the iterating process, or each worker) that read and decode
        the interleaved shards ahead of the batches (>= 0; 0 reads in the iterating thread; default None: one per
        open shard, ``interleave``; more add nothing, for each open shard has one read in flight). Parquet
        decoding and numpy release the GIL, so reading overlaps with batching and training, and several threads keep
        decoding while one holds the GIL (on 2 cores: 1.2x the cells/s of one thread with 4); the batches are the
        same for any number.
    :param transform: what a model sees instead of the counts (:meth:`inputs`), applied on the batch's device,
        e.g. a fitted :class:`~pyrovae.data.LogPCA`.
    :param held_out: ``{label: [category, ...]}`` (e.g. ``{"plate": ["plate3"]}``): with ``split``, the test part is
        every cell of these groups and the training part all the others, instead of a random share of cells. A
        label held out cannot also be a covariate (a model has no level for a group it never trained on).
    :param covariates: atlas labels (``"plate"``, ``"sample"``, ...; the first is the batch) that batches carry as a
        model's categorical covariates: :meth:`inputs` is then ``(x, cat, cont)``; build the model with
        ``categorical=stream.categorical_sizes``.
    """

    def __init__(
        self,
        atlas: TahoeAtlas,
        panel: np.ndarray | None = None,
        batch_size: int = 256,
        *,
        split: str | None = None,
        test_fraction: float = 0.05,
        split_seed: int = 0,
        shuffle: bool = True,
        buffer_size: int = 16_384,
        interleave: int = 4,
        rows_per_read: int = 2048,
        drop_last: bool | None = None,
        seed: int = 0,
        num_workers: int = 0,
        read_threads: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        transform: torch.nn.Module | None = None,
        covariates=(),
        held_out: dict | None = None,
    ) -> None:
        super().__init__()
        self.covariates = (covariates,) if isinstance(covariates, str) else tuple(covariates)
        unknown = [name for name in self.covariates if name not in atlas.labels]
        if unknown:
            raise ValueError(f"covariates {unknown} are not labels of the atlas (labels: {list(atlas.labels)}); "
                             "add them to TahoeAtlas(labels=...)")
        self._set_reading(batch_size, shuffle, drop_last, seed, num_workers, rank, world_size)
        check_int("buffer_size", buffer_size, 1)
        check_int("interleave", interleave, 1)
        check_int("rows_per_read", rows_per_read, 1)
        if read_threads is not None:
            check_int("read_threads", read_threads, 0)
        check_int("split_seed", split_seed, 0)
        if split not in (None, "train", "test"):
            raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
        overlap = sorted(set(held_out or ()) & set(self.covariates))
        if overlap:
            raise ValueError(f"{overlap} are held out and also covariates: the held-out levels would be decoded with "
                             "weights never trained; hold out by another label, or drop it from covariates")
        if held_out and split is None:
            raise ValueError("held_out groups make a train/test split: pass split='train' or split='test'")
        check_real("test_fraction", test_fraction, 0.0, 1.0, open_interval=True)  # out of range: wrong anywhere
        self.atlas = atlas
        self.panel = atlas.panel_positions() if panel is None else np.asarray(panel)
        atlas.vocabulary.lookup(self.panel)  # positions in range, none repeated: checked now, not mid-epoch
        self.panel = self.panel.astype(np.int64)
        self.split, self.test_fraction, self.split_seed = split, test_fraction, split_seed
        self.held_out = dict(held_out) if held_out else None
        self.buffer_size = max(int(buffer_size), self.batch_size)
        self.interleave = int(interleave)
        self.rows_per_read = int(rows_per_read)
        self.read_threads = self.interleave if read_threads is None else int(read_threads)
        if split is None:
            self.shard_cells = np.array([s.num_rows for s in atlas.shards], dtype=np.int64)
        else:
            train_rows, test_rows = (atlas.group_split_rows(self.held_out) if self.held_out
                                     else atlas.split_rows(test_fraction, split_seed))
            self.shard_cells = test_rows if split == "test" else train_rows
        if self.shard_cells.sum() == 0:
            rule = f"held_out={held_out!r}" if held_out else f"test_fraction={test_fraction}"
            what = f"the {split!r} split ({rule})" if split is not None else "the atlas"
            raise ValueError(f"{what} of {atlas!r} holds no cells; change the split (a larger test_fraction, other "
                             "held-out groups) or the source")
        self.transform = transform
        atlas.categories  # noqa: B018 - scanned here once and pickled to the workers, not scanned in each

    @property
    def categorical_sizes(self) -> tuple[int, ...]:
        """The number of levels of each covariate (a model's ``categorical``)."""
        categories = self.atlas.categories
        return tuple(len(categories[name]) for name in self.covariates)

    @property
    def num_cells(self) -> int:
        """Cells of this split in the whole atlas (all ranks): the N of the ELBO's data plate."""
        return int(self.shard_cells.sum())

    @property
    def num_genes(self) -> int:
        return len(self.panel)

    def _parts(self) -> list[list[list[int]]]:
        """Shards of every (rank, worker) this epoch."""
        num_shards = len(self.shard_cells)
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(num_shards) if self.shuffle
                 else np.arange(num_shards))
        workers = max(1, self.num_workers)
        return [deal(self.shard_cells, np.asarray(shards, dtype=np.int64), workers)
                for shards in deal(self.shard_cells, order, self.world_size)]

    def _batches_of(self, cells: int) -> int:
        return cells // self.batch_size if self.drop_last else -(-cells // self.batch_size)

    def _batch_counts(self) -> list[list[int]]:
        return [[self._batches_of(int(self.shard_cells[shards].sum())) if shards else 0 for shards in workers]
                for workers in self._parts()]

    def rank_shards(self, rank: int | None = None) -> list[int]:
        """Shard indices read by ``rank`` (default: this one) this epoch."""
        return sorted(s for worker in self._parts()[self.rank if rank is None else rank] for s in worker)

    def _blocks(self, shards: list[int]) -> Iterator[CellBlock]:
        """Blocks from ``interleave`` shards at a time, alternating (one at a time, in file order, unshuffled).

        With ``read_threads``, each open shard has its next block read in the pool while the blocks before it are
        batched; the blocks come out in the same order as without threads."""
        pending = deque(shards)
        readers = deque()  # [reader, its next block (a future with threads)]
        interleave = self.interleave if self.shuffle else 1
        pool = ThreadPoolExecutor(self.read_threads, "cell-stream-reader") if self.read_threads else None
        try:
            while pending or readers:
                while pending and len(readers) < interleave:
                    reader = self.atlas.read(pending.popleft(), self.panel, self.rows_per_read, self.split,
                                             self.test_fraction, self.split_seed, self.held_out)
                    readers.append([reader, pool.submit(next, reader, None) if pool else None])
                entry = readers.popleft()
                block = entry[1].result() if pool else next(entry[0], None)
                if block is not None:
                    if pool:
                        entry[1] = pool.submit(next, entry[0], None)
                    readers.append(entry)
                    yield block
        finally:
            if pool:  # stopped early or failed: let the reads in flight end, start no more
                pool.shutdown(wait=True, cancel_futures=True)

    def _worker_batches(self, worker: int) -> Iterator[CellBatch]:
        shards = self._parts()[self.rank][worker]
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        buffer = _ShuffleBuffer(self.rows_per_read)
        keep = self.buffer_size // 2 if self.shuffle else 0
        threshold = self.buffer_size if self.shuffle else self.batch_size
        for block in self._blocks(shards):
            buffer.add(block)
            if len(buffer) >= threshold:
                emit = (len(buffer) - keep) // self.batch_size * self.batch_size
                order = rng.permutation(len(buffer)) if self.shuffle else np.arange(len(buffer))
                yield from self._batches(buffer, order[:emit])
                buffer.keep(order[emit:])
        if len(buffer):
            order = rng.permutation(len(buffer)) if self.shuffle else np.arange(len(buffer))
            if self.drop_last:
                order = order[: len(order) // self.batch_size * self.batch_size]
            yield from self._batches(buffer, order)

    def _batches(self, buffer: _ShuffleBuffer, order: np.ndarray) -> Iterator[CellBatch]:
        """Batches of the cells at positions ``order`` of the buffer, in that order (the last may be short)."""
        group = max(1, _GROUP_CELLS // self.batch_size) * self.batch_size  # cells gathered at once
        for first in range(0, len(order), group):
            cells = buffer.take(order[first : first + group])
            for start in range(0, len(cells), self.batch_size):
                yield CellBatch.from_block(cells.rows(start, min(start + self.batch_size, len(cells))))

    def take(self, num_cells: int, seed: int = 0) -> CellBatch:
        """``num_cells`` cells of this split, spread over the shards (all ranks see the same ones): a held-out sample
        for figures and log-likelihoods, in memory. Asking for more cells than the split holds is an error that
        says how many there are."""
        check_int("num_cells", num_cells, 1)
        if num_cells > self.num_cells:
            split = f"the {self.split!r} split" if self.split else "the stream"
            raise ValueError(f"take({num_cells}) asks for more cells than {split} holds ({self.num_cells:,}); "
                             f"take at most {self.num_cells}")
        block = self.atlas.sample(num_cells, self.panel, seed=seed, split=self.split,
                                  test_fraction=self.test_fraction, split_seed=self.split_seed,
                                  held_out=self.held_out)
        return CellBatch.from_block(block)

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split else ""
        return (f"CellStream({self.num_cells:,} cells x {self.num_genes:,} genes{split}, batch {self.batch_size}, "
                f"rank {self.rank}/{self.world_size}, {self.num_workers} workers)")


__all__ = ["BatchStream", "CellBatch", "CellStream", "deal"]

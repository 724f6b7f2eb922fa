"""What every stream of cells shares (:class:`BatchStream`): its epoch, its DataLoader, the batches each rank and
worker yields, and what a model is fed from a batch."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pyrovae.data.cell_batch import CellBatch
from pyrovae.data.checks import check_int
from pyrovae.process_group import rank as process_rank
from pyrovae.process_group import world_size as process_world_size


class BatchStream(IterableDataset):
    """What every stream of :class:`CellBatch`es shares (:class:`CellStream`, :class:`~pyrovae.data.AnnDataStream`):
    its epoch (in shared memory, so that workers kept between epochs see it), its DataLoader, and what a model is
    fed from a batch. A subclass sets ``batch_size``, ``num_workers``, ``covariates``, ``transform`` and
    ``num_cells``, and yields the batches of the current epoch."""

    def __init__(self) -> None:
        super().__init__()
        # the epoch in shared memory: workers that persist between epochs (loader(persistent_workers=True)) read
        # each new epoch from here
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def _set_reading(self, batch_size, shuffle, drop_last, seed, num_workers, rank, world_size) -> None:
        """Check and set what every stream reads by: batch size, shuffling, the last short batch, seed, workers,
        and this process's rank among ``world_size`` (from the process group unless given)."""
        for flag, value in (("shuffle", shuffle), ("drop_last", drop_last)):
            if not isinstance(value, (bool, np.bool_)) and not (flag == "drop_last" and value is None):
                raise ValueError(f"{flag} must be True or False, got {value!r}")
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.rank = process_rank() if rank is None else check_int("rank", rank, 0)
        self.world_size = process_world_size() if world_size is None else check_int("world_size", world_size, 1)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside 0..{self.world_size - 1}")
        self.shuffle = bool(shuffle)
        self.drop_last = self.shuffle if drop_last is None else bool(drop_last)

    @property
    def epoch(self) -> int:
        """The epoch whose order, deal and shuffles the next iteration reproduces (:meth:`set_epoch`)."""
        return int(self._epoch)

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order, deal and shuffles the next iteration reproduces (also in workers that
        persist from one epoch to the next)."""
        self.epoch = epoch

    def inputs(self, batch: CellBatch):
        """What the model is trained on: the dense counts, or their ``transform``; with covariates, the tuple
        ``(x, cat, cont)`` (``cont`` empty)."""
        if self.transform is None:
            x = batch.counts
        else:
            self.transform.to(batch.values.device)
            x = self.transform(batch.counts)
        if not self.covariates:
            return x
        cat = torch.stack([batch.labels[name] for name in self.covariates], -1)
        return x, cat, x.new_zeros(len(x), 0)

    def _batch_counts(self) -> list[list[int]]:
        """The batches of every (rank, worker) this epoch, all of each part's cells read."""
        raise NotImplementedError

    def _worker_batches(self, worker: int) -> Iterator[CellBatch]:
        """Every batch of this rank's ``worker`` this epoch."""
        raise NotImplementedError

    def __len__(self) -> int:
        """Batches every rank yields this epoch: the fewest that any rank can fill."""
        return min(sum(counts) for counts in self._batch_counts())

    def __iter__(self) -> Iterator[CellBatch]:
        """This worker's batches of this rank: together, the rank's workers yield ``len(self)``; a rank with more
        cells than the fewest leaves its workers' last batches out, the fullest worker's first (ranks stay in step:
        a rank that yielded more would wait for the others' gradients that never come)."""
        worker = self._worker()
        counts = self._batch_counts()
        total = min(sum(rank_counts) for rank_counts in counts)
        quota = list(counts[self.rank])
        for _ in range(sum(quota) - total):
            fullest = max(range(len(quota)), key=lambda w: (quota[w], w))
            quota[fullest] -= 1
        if total == 0 and worker == 0:
            warnings.warn(f"{self!r} yields no batch this epoch: a rank's cells fill no batch of {self.batch_size}"
                          f"{' (drop_last drops the short one)' if self.drop_last else ''}; use a smaller batch_size",
                          UserWarning, stacklevel=2)
        batches = self._worker_batches(worker)
        try:
            for _ in range(quota[worker]):
                batch = next(batches, None)
                if batch is None:
                    return
                yield batch
        finally:
            batches.close()  # its reads in flight end now, not when it is collected

    def _worker(self) -> int:
        """This process's worker index, checked against the stream's ``num_workers``."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != max(1, self.num_workers):
            raise RuntimeError(
                f"this stream was built for {self.num_workers} workers but runs in {workers}: iterate "
                "stream.loader(), or build the stream with num_workers matching the DataLoader"
            )
        return worker

    def loader(self, pin_memory: bool = False, prefetch_factor: int = 4,
               persistent_workers: bool = False) -> DataLoader:
        """A DataLoader over this stream with its ``num_workers`` (batches are formed in the workers).

        With ``persistent_workers`` the workers are started once and read every epoch of this loader (each
        ``iter()`` reads the epoch last given to :meth:`set_epoch`), instead of being started afresh each epoch,
        which costs 0.6-1.3 s per epoch with 4-14 workers on 16 cores (``benchmarks/gpu_stream.py``); they end
        when the loader is released. :func:`~pyrovae.infer.train` keeps them for the whole run."""
        return DataLoader(
            self,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if self.num_workers else None,
            persistent_workers=persistent_workers and self.num_workers > 0,
            # the workers' seed from a generator of the loader's own, not from torch's global one: a resumed run's
            # random draws (taken from its checkpoint's state) are then those of the run it continues
            generator=torch.Generator().manual_seed(self.seed),
        )


__all__ = ["BatchStream"]

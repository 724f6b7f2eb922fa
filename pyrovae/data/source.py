"""One protocol for every kind of training data: what ``train``, ``log_likelihood`` and ``evaluate`` iterate.

:func:`as_source` turns what a user passes (a tensor or array, a tuple ``(x, cat, cont)`` of tensors,
:class:`~pyrovae.data.TensorData`, :class:`~pyrovae.data.CountData`, a map-style ``Dataset``, a ``DataLoader`` or a
:class:`~pyrovae.data.CellStream`) into a :class:`DataSource`, and is the only place that tells them apart:

* :class:`IndexedSource`: in-memory data batched by index (``batch(indices, device)``), the fast path;
* :class:`LoaderSource`: a ``Dataset`` (through a ``DataLoader`` built here) or a user's ``DataLoader``;
* :class:`StreamSource`: a stream that batches and shuffles by itself, epoch by epoch (``CellStream``).

``batch_size`` is honoured by the first two and refused, with the fix, where it cannot be: a ``DataLoader``
or a stream already has one, and a different value is an error rather than silently ignored.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from pyrovae.data.tensor_data import TensorData, check_finite, check_matrix


class DataSource:
    """Mini-batches of one data set on a device, reproducible from a generator and an epoch.

    :ivar num_data: the number of data (the N of the ``"data"`` plate), or None when unknown.
    :ivar batch_size: data per batch.
    """

    num_data: int | None
    batch_size: int
    name: str

    def num_batches(self, epoch: int, drop_last: bool) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def batches(self, epoch: int, generator: torch.Generator, shuffle: bool, drop_last: bool,
                device: torch.device) -> Iterator[torch.Tensor]:  # pragma: no cover - abstract
        """The batches of ``epoch``, as float tensors on ``device``."""
        raise NotImplementedError

    def head(self, size: int, batch_size: int) -> DataSource | None:
        """A source over a fixed subset of at most ``size`` data (for end-of-epoch metrics), or None."""
        return None

    ranks = (0, 1)  # (rank, world size): this source reads that rank's share of every epoch (rank_share)

    def for_ranks(self, rank: int, world_size: int) -> DataSource:
        """This source as rank ``rank`` of ``world_size`` reads it in data-parallel training: a copy that reads its
        share of every epoch (:func:`rank_share`); ``num_data`` stays the whole set's."""
        shared = copy.copy(self)
        shared.ranks = (rank, world_size)
        return shared

    @property
    def device(self) -> torch.device | None:
        """Where the data live, for tensor data (None otherwise)."""
        return None

    @property
    def tensor(self) -> torch.Tensor | None:
        """All the data as one tensor when they are one already (checked in full, once), else None."""
        return None

    checks_each_batch = False  # whether the values are only known batch by batch


def rank_share(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s share of an epoch's ``order`` of the data under data-parallel training: every
    ``world_size``-th datum from its rank on, of the first ``world_size * (n // world_size)``. Every rank reads as
    many data, so the ranks stay in step, and the ranks' t-th batches together are the t-th block of
    ``world_size * batch_size`` consecutive data of the order: the batch one process would read with the global
    batch size. The last ``n % world_size`` data of an epoch's order are left out (other data each epoch)."""
    if world_size == 1:
        return order
    return order[: len(order) // world_size * world_size][rank::world_size]


def loader_sampler(loader: DataLoader):
    """The sampler that orders a DataLoader's data: its own, or its batch sampler's (``batch_sampler=``)."""
    return getattr(loader.batch_sampler, "sampler", None) or loader.sampler


def _empty(name: str) -> ValueError:
    return ValueError(f"{name} is empty: it holds no datum to train on or score (an empty selection or split gives "
                      "none)")


class IndexedSource(DataSource):
    """In-memory data batched by index: :class:`TensorData`, :class:`CountData` or anything with ``__len__``,
    ``batch(indices, device)`` and ``subset(indices)``."""

    def __init__(self, data, batch_size: int, name: str) -> None:
        if len(data) == 0:
            raise _empty(name)
        if isinstance(data, TensorData):
            check_finite(data.x, name)
        self.data, self.batch_size, self.name, self.num_data = data, batch_size, name, len(data)

    def num_batches(self, epoch: int, drop_last: bool) -> int:
        full, rest = divmod(self.num_data // self.ranks[1], self.batch_size)
        return full + (1 if rest and not (drop_last and full > 0) else 0)

    def batches(self, epoch, generator, shuffle, drop_last, device):
        order = torch.randperm(self.num_data, generator=generator) if shuffle else torch.arange(self.num_data)
        order = rank_share(order, *self.ranks)
        for start in range(0, len(order), self.batch_size):
            indices = order[start : start + self.batch_size]
            if drop_last and len(indices) < self.batch_size and start > 0:
                break
            yield self.data.batch(indices, device)

    def head(self, size, batch_size):
        if size <= 0:
            return None
        return IndexedSource(self.data.subset(torch.arange(min(size, self.num_data))), batch_size, self.name)

    @property
    def device(self):
        return self.data.x.device if isinstance(self.data, TensorData) else None

    @property
    def tensor(self):
        if isinstance(self.data, TensorData) and self.data.transform is None:
            return self.data.x
        return None


class LoaderSource(DataSource):
    """A ``DataLoader`` used as it is (its sampler decides the order), or one built here over a ``Dataset``.
    Items are ``x`` or ``(x, ...)``; values are checked batch by batch."""

    checks_each_batch = True

    def __init__(self, data, batch_size: int | None, name: str, default_batch_size: int = 128,
                 argument: str = "batch_size") -> None:
        self.name, self.dataset = name, data.dataset if isinstance(data, DataLoader) else data
        if isinstance(self.dataset, IterableDataset) or not hasattr(self.dataset, "__len__"):
            raise TypeError(
                f"{name} is a DataLoader over an IterableDataset, which has no length; pyrovae needs the number of "
                "data N (the ELBO's data scale): use a map-style Dataset, a tensor, CountData or a CellStream"
            )
        if isinstance(data, DataLoader):
            if batch_size is not None and data.batch_size is not None and batch_size != data.batch_size:
                raise ValueError(
                    f"{name} is a DataLoader with batch_size={data.batch_size}, but {argument}={batch_size} was "
                    f"asked for; set the batch size on the DataLoader or leave {argument} unset"
                )
            self.loader, self.batch_size = data, data.batch_size
        else:
            self.loader, self.batch_size = None, batch_size or default_batch_size
        self.num_data = len(self.dataset)
        if self.num_data == 0:
            raise _empty(name)

    def for_ranks(self, rank: int, world_size: int) -> LoaderSource:
        """A Dataset batched here: its share of every epoch; a DataLoader as it is (its sampler decides: a
        ``DistributedSampler`` splits it)."""
        return self if self.loader is not None else super().for_ranks(rank, world_size)

    def num_batches(self, epoch, drop_last):
        if self.loader is not None:
            return len(self.loader)
        full, rest = divmod(self.num_data // self.ranks[1], self.batch_size)
        return full + (1 if rest and not drop_last else 0)

    def batches(self, epoch, generator, shuffle, drop_last, device):
        loader = self.loader
        if loader is not None and callable(getattr(loader_sampler(loader), "set_epoch", None)):
            loader_sampler(loader).set_epoch(epoch)  # a DistributedSampler's shuffle of this epoch, as it asks
        elif loader is None:  # the order drawn as for data in memory, and this rank's share of it
            order = torch.randperm(self.num_data, generator=generator) if shuffle else torch.arange(self.num_data)
            # a generator of its own for the loader's base seed, which it would otherwise draw from torch's
            share = rank_share(order, *self.ranks).tolist()
            loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=share, drop_last=drop_last,
                                generator=torch.Generator())
        for item in loader:
            x = torch.as_tensor(item[0] if isinstance(item, (tuple, list)) else item)
            if not torch.is_floating_point(x):
                x = x.float()
            x = x.to(device, non_blocking=True)
            check_finite(x, f"a batch of {self.name}")
            yield x

    def head(self, size, batch_size):
        if size <= 0 or self.loader is not None or self.num_data is None:
            return None
        return LoaderSource(torch.utils.data.Subset(self.dataset, range(min(size, self.num_data))), batch_size,
                            self.name)


class StreamSource(DataSource):
    """A stream that batches by itself and knows its epoch (``set_epoch``, ``loader``, ``inputs``, ``take``), such
    as :class:`~pyrovae.data.CellStream`. Every rank yields ``len(stream)`` batches, so ranks stay in step."""

    def __init__(self, stream, batch_size: int | None, name: str, argument: str = "batch_size") -> None:
        if batch_size is not None and batch_size != stream.batch_size:
            raise ValueError(
                f"{name} is a {type(stream).__name__} that batches by itself (batch_size={stream.batch_size}), but "
                f"{argument}={batch_size} was asked for; set batch_size on the stream or leave {argument} unset"
            )
        self.stream, self.batch_size, self.name, self.num_data = stream, stream.batch_size, name, stream.num_cells
        if self.num_data == 0:
            raise _empty(name)
        self._loaders = {}  # one loader per pinning, its workers kept from epoch to epoch while this source lives

    def for_ranks(self, rank: int, world_size: int) -> StreamSource:
        """The stream deals its cells to the ranks by itself: the same source."""
        return self

    def ordered(self, in_process: bool = True) -> StreamSource:
        """This source over the stream in file order with every cell (no shuffle, no batch dropped): what scoring,
        encoding and validation read (a copy of the stream sharing its atlas; the stream itself where it reads that
        way already). A stream's own ``shuffle`` and ``drop_last`` are for training, and so are its ``num_workers``
        where the order of the results matters (``in_process``): a DataLoader takes its workers' batches in turn,
        out of file order, and the results of encoding or scoring are matched to the cells by their order. Sums
        over the cells (validation, :func:`~pyrovae.infer.evaluate`) keep the workers."""
        flags = ("shuffle", "drop_last", "num_workers") if in_process else ("shuffle", "drop_last")
        if not any(getattr(self.stream, flag, False) for flag in flags):
            return self
        stream = copy.copy(self.stream)
        stream.shuffle = stream.drop_last = False
        if in_process and hasattr(stream, "num_workers"):
            stream.num_workers = 0
        return StreamSource(stream, None, self.name)

    def num_batches(self, epoch, drop_last):
        self.stream.set_epoch(epoch)
        return len(self.stream)

    def batches(self, epoch, generator, shuffle, drop_last, device):
        self.stream.set_epoch(epoch)
        steps = len(self.stream)  # every rank stops after the same number of batches
        pin = device.type == "cuda"
        if pin not in self._loaders:
            self._loaders[pin] = self._loader(pin)
        for step, batch in enumerate(self._loaders[pin]):
            if step >= steps:
                break
            yield self.stream.inputs(batch.to(device, non_blocking=True))

    def _loader(self, pin: bool):
        """The stream's loader, its workers kept between epochs where its ``loader`` can (CellStream's does)."""
        if "persistent_workers" in inspect.signature(self.stream.loader).parameters:
            return self.stream.loader(pin_memory=pin, persistent_workers=True)
        return self.stream.loader(pin_memory=pin)

    def head(self, size, batch_size):
        if size <= 0:
            return None  # the same cells on every rank
        taken = self.stream.inputs(self.stream.take(min(size, self.num_data)))
        data = _Arguments(taken) if isinstance(taken, tuple) else TensorData(taken, name=self.name)
        return IndexedSource(data, batch_size, self.name)


class _Arguments:
    """In-memory batches of a model's arguments ``(x, cat, cont)``, batched by index."""

    def __init__(self, tensors: tuple) -> None:
        self.tensors = tuple(tensors)

    def __len__(self) -> int:
        return len(self.tensors[0])

    def batch(self, indices, device):
        return tuple(t[indices].to(device) for t in self.tensors)

    def subset(self, indices):
        return _Arguments(tuple(t[indices] for t in self.tensors))


def _arguments(tensors: tuple, name: str) -> _Arguments:
    """A model's arguments ``(x, cat, cont)`` given as a tuple of tensors, checked: one row per datum in each."""
    x = tensors[0]
    check_matrix(x, name, "x, the first of (x, cat, cont), must be a matrix")
    lengths = [len(t) if t.dim() else None for t in tensors]
    if any(n != len(x) for n in lengths):
        raise ValueError(f"{name}: (x, cat, cont) must have one row per datum each, got lengths {lengths}")
    if len(x) == 0:
        raise _empty(name)
    return _Arguments(tensors)


def _is_stream(data) -> bool:
    return isinstance(data, IterableDataset) and all(
        callable(getattr(data, method, None)) for method in ("set_epoch", "loader", "inputs", "take")
    )


def as_source(data, batch_size: int | None = None, name: str = "data", *, default_batch_size: int = 128,
              argument: str = "batch_size") -> DataSource:
    """The :class:`DataSource` of ``data`` with ``batch_size`` data per batch (None: the DataLoader's or stream's
    own, else ``default_batch_size``).

    :param argument: the caller's name for ``batch_size``, for the error messages.
    :raises ValueError: for empty data, and for a ``batch_size`` that a DataLoader or a stream would ignore.
    :raises TypeError: for anything else, naming what is accepted.
    """
    if isinstance(data, DataSource):
        return data
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"{argument} must be a positive integer, got {batch_size!r}")
    if isinstance(data, (torch.Tensor, np.ndarray)):
        data = TensorData(data, name=name)
    if isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data):
        return IndexedSource(_arguments(data, name), batch_size or default_batch_size, name)
    if _is_stream(data):
        return StreamSource(data, batch_size, name, argument)
    if isinstance(data, DataLoader):
        return LoaderSource(data, batch_size, name, default_batch_size, argument)
    if isinstance(data, TensorData) or (callable(getattr(data, "batch", None)) and hasattr(data, "__len__")
                                        and callable(getattr(data, "subset", None))):
        return IndexedSource(data, batch_size or default_batch_size, name)
    if isinstance(data, IterableDataset):
        raise TypeError(
            f"{name} is an IterableDataset without the stream methods (set_epoch, loader, inputs, take); pyrovae "
            "needs the number of data N: use a map-style Dataset, a tensor, CountData or a CellStream"
        )
    if isinstance(data, Dataset):
        return LoaderSource(data, batch_size, name, default_batch_size, argument)
    raise TypeError(
        f"{name} must be a tensor, numpy array, a tuple (x, cat, cont) of tensors, pyrovae.data.TensorData or "
        f"CountData, a Dataset, a DataLoader or a CellStream, got {type(data).__name__}"
    )


__all__ = ["DataSource", "IndexedSource", "LoaderSource", "StreamSource", "as_source", "loader_sampler", "rank_share"]

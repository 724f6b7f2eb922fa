"""Epochs of mini-batches for training and evaluation, over any :class:`~pyrovae.data.source.DataSource`.

What kind of data a user passed is decided once, by :func:`pyrovae.data.as_source`; a :class:`BatchSource` adds
the state a training run needs to resume exactly (the batch order's generator and the epoch) and, optionally,
a check of the values (a model's ``check_data``) on the first batch, or on every batch where the values are only
known batch by batch.
"""

from __future__ import annotations

import hashlib
import itertools
import warnings
from collections.abc import Callable

import torch
from torch.utils.data import DistributedSampler

from pyrovae.data.source import DataSource, IndexedSource, LoaderSource, StreamSource, as_source, loader_sampler
from pyrovae.process_group import rank, world_size


def as_args(batch) -> tuple[torch.Tensor, ...]:
    """A batch as the positional arguments of a model and guide: ``(x,)``, or ``(x, cat, cont)`` for data with
    covariates (:mod:`pyrovae.nn.covariates`). Accepts a tensor or a tuple/list whose first item is ``x``."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return tuple(batch)
    raise TypeError(f"a batch is a tensor x or a tuple (x, ...) of tensors, got {type(batch).__name__}")


def module_device(*modules) -> torch.device:
    """The device of the first parameter or buffer found in ``modules`` (CPU if none has any)."""
    for module in modules:
        if isinstance(module, torch.nn.Module):
            for tensor in itertools.chain(module.parameters(), module.buffers()):
                return tensor.device
    return torch.device("cpu")


class BatchSource:
    """One epoch of mini-batches per iteration, reproducible from its generator state. Each batch is the tuple of
    a model's arguments, ``(x,)`` or ``(x, cat, cont)`` (:func:`as_args`).

    :param data: anything :func:`~pyrovae.data.as_source` accepts, or a :class:`DataSource`.
    :param batch_size: data per batch (None: a DataLoader's or stream's own, else ``default_batch_size``; a
        DataLoader or stream refuses another value, naming ``argument`` in the error).
    :param check: a function that raises on invalid values (e.g. ``model.check_data``).
    :param dtype: the model's floating dtype: batches of another floating dtype are converted, with a warning.
    :param per_datum: unshuffled, whether the results are per datum, matched to the data by their order (a
        stream's DataLoader workers interleave their batches, so a stream is then read in this process); sums over
        the data (validation scores) keep its workers.
    """

    def __init__(
        self,
        data,
        batch_size: int | None,
        shuffle: bool,
        device: torch.device,
        drop_last: bool = False,
        seed: int | None = None,
        check: Callable[[torch.Tensor], None] | None = None,
        name: str = "data",
        *,
        default_batch_size: int = 128,
        argument: str = "batch_size",
        dtype: torch.dtype | None = None,
        per_datum: bool = True,
    ) -> None:
        self.source: DataSource = as_source(data, batch_size, name, default_batch_size=default_batch_size,
                                            argument=argument)
        if not shuffle and isinstance(self.source, StreamSource):  # scoring, encoding, validating: every cell
            self.source = self.source.ordered(in_process=per_datum)  # in file order where results are per datum
        self.shuffle, self.device, self.drop_last = shuffle, device, drop_last
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
        self.epoch = 0
        self.dtype, self.name = dtype, name
        self._warned_dtype = [False]
        self._check = check
        self._checked = False
        if check is not None and self.source.tensor is not None:
            check(self.source.tensor)  # all the values at once, when they are one tensor
            self._checked = True

    @property
    def num_data(self) -> int | None:
        return self.source.num_data

    @property
    def streaming(self) -> bool:
        return isinstance(self.source, StreamSource)

    def set_epoch(self, epoch: int) -> None:
        """The epoch a stream reproduces on the next iteration (shard order, deal, shuffles)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.source.num_batches(self.epoch, self.drop_last)

    def head(self, size: int, batch_size: int) -> BatchSource | None:
        """Unshuffled batches of a fixed subset of at most ``size`` data (None where the source has none)."""
        subset = self.source.head(size, batch_size)
        if subset is None:
            return None
        head = BatchSource(subset, batch_size, shuffle=False, device=self.device, seed=0, check=self._check,
                           name=self.name, dtype=self.dtype)
        head._warned_dtype = self._warned_dtype
        return head

    def __iter__(self):
        for batch in self.source.batches(self.epoch, self.generator, self.shuffle, self.drop_last, self.device):
            x, *inputs = as_args(batch)
            if self.dtype is not None and x.dtype != self.dtype and x.is_floating_point():
                if not self._warned_dtype[0]:
                    _warn_dtype(self.name, x.dtype, self.dtype)
                    self._warned_dtype[0] = True  # shared with the heads taken from this source: once per run
                x = x.to(self.dtype)
            if not self._checked and self._check is not None:
                self._check(x)
                self._checked = not self.source.checks_each_batch
            yield (x, *inputs)

    def fingerprint(self, size: int | None = 64) -> str | None:
        """A digest of ``size`` data spread evenly over the set, or of every datum (``size=None``, read 4,096 at a
        time), their values and covariates, to tell one data set from another of the same size; None for a stream,
        which is not read for it. Data that keep their values apart from a transform (:class:`~pyrovae.data.TensorData`:
        dynamic binarisation draws new pixels at every read) are digested as stored, with the transform's name;
        every global random state (torch, numpy, Python's) is left as it was."""
        from pyrovae.infer.training.checkpoint import rng_state, set_rng_state

        n = self.num_data
        if not n or isinstance(self.source, StreamSource):
            return None
        indices = torch.arange(n) if size is None else torch.linspace(0, n - 1, min(size, n)).round().long().unique()
        state = rng_state()
        try:
            digest = hashlib.sha1()
            for chunk in indices.split(4096):
                if not self._digest(chunk, digest):
                    return None
            return digest.hexdigest()[:16]
        finally:
            set_rng_state(state)

    def _digest(self, indices: torch.Tensor, digest) -> bool:
        """Add the data at ``indices`` to ``digest``; False where they cannot be digested."""
        data = self.source.data if isinstance(self.source, IndexedSource) else getattr(self.source, "dataset", None)
        stored = getattr(data, "stored", None)  # the values before a transform (TensorData)
        if stored is not None:
            items = as_args(stored(indices))
        elif isinstance(self.source, IndexedSource):
            items = as_args(data.batch(indices, torch.device("cpu")))
        elif isinstance(self.source, LoaderSource):
            rows = [self.source.dataset[int(i)] for i in indices]
            rows = [row if isinstance(row, (tuple, list)) else (row,) for row in rows]
            try:
                items = [torch.stack([torch.as_tensor(row[k]) for row in rows]) for k in range(len(rows[0]))]
            except (TypeError, ValueError, RuntimeError):  # items that are not arrays: no digest, the size only
                return False
        else:
            return False
        transform = getattr(data, "transform", None) if stored is not None else None
        if transform is not None:  # the stored values with another transform are other data
            digest.update(getattr(transform, "__qualname__", type(transform).__qualname__).encode())
        for item in items:
            if isinstance(item, torch.Tensor):
                item = item.to_dense() if item.is_sparse else item
                item = item.detach().to("cpu", torch.float64 if item.is_floating_point() else torch.int64)
                digest.update(str(tuple(item.shape)).encode())
                digest.update(item.contiguous().numpy().tobytes())
        return True

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch = state.get("epoch", 0)


def _warn_dtype(name: str, found: torch.dtype, model: torch.dtype) -> None:
    """Warn that ``name``'s batches are converted to the model's dtype, and how to compute in theirs."""
    to = str(found).replace("torch.", "")
    fix = (f"to compute in {found}, convert the model and guide too: model.to(torch.{to}), guide.to(torch.{to})"
           if found.is_floating_point and torch.finfo(found).bits >= 32 else
           f"{found} is converted up because the models compute in float32 or float64; pass float32 data to "
           "silence this")
    warnings.warn(f"{name} is {found} but the model is {model}: batches are converted to {model} ({fix})",
                  stacklevel=3)


def check_training_source(batches: BatchSource, chosen_drop_last: bool | None, distributed: bool) -> None:
    """Refuse training on a stream that keeps (or drops) its incomplete last batch where ``drop_last`` was asked for
    otherwise: a stream batches by itself, and would do as it was built in silence (left unset, the stream's own
    is followed; a traced objective then traces its last short batch once more). Refuse a DataLoader whose
    DistributedSampler reads for other ranks than this process's. Under torchrun, warn of a DataLoader that every
    rank would read whole, and when a stream's ranks would leave many cells untrained."""
    stream = getattr(batches.source, "stream", None)
    loader = getattr(batches.source, "loader", None)
    sampler = loader_sampler(loader) if loader is not None else None
    if isinstance(sampler, DistributedSampler) and (sampler.rank, sampler.num_replicas) != (rank(), world_size()):
        raise ValueError(
            f"{batches.name} is a DataLoader whose DistributedSampler reads as rank {sampler.rank} of "
            f"{sampler.num_replicas}, but this process is rank {rank()} of {world_size()}: it would train on another "
            "rank's data or leave some unread. Build it with DistributedSampler(dataset, num_replicas=world_size(), "
            "rank=rank()) (from pyrovae.process_group), or pass the Dataset itself, which train splits between the "
            "ranks"
        )
    if distributed and loader is not None and not isinstance(sampler, DistributedSampler):
        warnings.warn(f"{batches.name} is a DataLoader without a DistributedSampler, and under torchrun every rank "
                      "reads all of it each epoch: the data are not split between the ranks, so the global batch is "
                      "not N times one rank's and the work is repeated. Pass the Dataset itself, which train splits "
                      "between the ranks, or give the DataLoader sampler=DistributedSampler(dataset, "
                      "num_replicas=world_size(), rank=rank()) (from pyrovae.process_group: torchrun's, before the "
                      "process group is joined)", UserWarning, stacklevel=3)
    if distributed and stream is not None and getattr(stream, "world_size", 1) > 1:
        stream.set_epoch(0)
        trained = len(stream) * stream.batch_size * stream.world_size
        if trained < 0.9 * stream.num_cells:
            warnings.warn(f"{batches.name}: the {stream.world_size} ranks train about {trained:,} of its "
                          f"{stream.num_cells:,} cells each epoch: the stream deals whole shards (or chunks) to the "
                          "ranks, and the ranks stop together after the fewest batches any of them can fill. Give "
                          "it more, smaller shards than ranks (or fewer ranks)", UserWarning, stacklevel=3)
    if stream is not None and chosen_drop_last is not None and stream.drop_last != chosen_drop_last:
        raise ValueError(f"{batches.name} is a stream built with drop_last={stream.drop_last}, which batches by "
                         f"itself, but train was asked for drop_last={chosen_drop_last}: build the stream with "
                         f"drop_last={chosen_drop_last} (or leave train's unset)")


def no_batch(batches: BatchSource) -> ValueError:
    """The error for training data that make no batch this epoch, naming why."""
    stream, size = getattr(batches.source, "stream", None), batches.source.batch_size
    if stream is not None and getattr(stream, "world_size", 1) > 1:
        return ValueError(f"{batches.name}: a rank of the {stream.world_size} reads no whole batch of {size} this "
                          f"epoch (the stream deals its {stream.num_cells} cells to the ranks in whole shards, or "
                          "chunks); give it more, smaller shards (an AnnDataStream: a smaller chunk_size) than ranks, "
                          "or lower the batch size")
    if stream is not None:
        return ValueError(f"{batches.name}: the stream's {stream.num_cells} cells make no whole batch of {size} "
                          "(it was built with drop_last=True); lower its batch_size, or build it with drop_last=False")
    ranks = batches.source.ranks[1]
    if ranks > 1 and batches.num_data < ranks:
        return ValueError(f"{batches.name} holds {batches.num_data} data, fewer than the {ranks} ranks that would "
                          "share them: use fewer ranks, or more data")
    if ranks > 1:
        return ValueError(f"{batches.name}: each of the {ranks} ranks reads {batches.num_data // ranks} of its "
                          f"{batches.num_data} data an epoch, too few for a batch of {size} with drop_last=True (the "
                          "traced objective's default); lower batch_size, pass drop_last=False, or use fewer ranks")
    return ValueError(f"no full batch of {size} in {batches.num_data} data: the traced objective (and "
                      "drop_last=True) drops incomplete batches; lower batch_size, or use elbo='trace'")


def model_check(model) -> Callable[[torch.Tensor], None] | None:
    """``model.check_data`` where the model has one (pyrovae models do; plain Pyro functions do not)."""
    check = getattr(model, "check_data", None)
    return check if callable(check) else None


def as_batches(data, batch_size: int | None, shuffle: bool, device: torch.device, check=None, name: str = "data",
               default_batch_size: int = 128, dtype: torch.dtype | None = None, per_datum: bool = True):
    """A :class:`BatchSource` over ``data`` for one pass (``check``: a function of a batch, such as
    :func:`model_check` of a model; ``dtype``: the model's, to convert batches to; ``per_datum``: as for
    :class:`BatchSource`)."""
    if isinstance(data, BatchSource):
        return data
    return BatchSource(data, batch_size, shuffle, device, check=check, name=name, seed=0,
                       default_batch_size=default_batch_size, dtype=dtype, per_datum=per_datum)


def check_stream_ranks(stream) -> None:
    """Training data streamed (:class:`~pyrovae.data.CellStream`, :class:`~pyrovae.data.AnnDataStream`) as another
    rank, or for another number of ranks, than this process is in the process group would train on other ranks'
    cells or leave some unread: refused."""
    if not callable(getattr(stream, "_set_reading", None)):
        return
    if (stream.rank, stream.world_size) != (rank(), world_size()):
        raise ValueError(
            f"the data stream reads as rank {stream.rank} of {stream.world_size}, but this process is rank {rank()} "
            f"of {world_size()}: build the stream without rank= and world_size= (it takes them from torchrun), or "
            "give it this process's"
        )


def check_batch_norm_batches(batches: BatchSource, trained: list, chosen_drop_last: bool | None) -> bool:
    """The ``drop_last`` training goes on with, where a module of ``trained`` normalises batches: one datum in all
    is refused, and so is a last batch of one datum with ``drop_last=False`` asked for; unasked, that batch is
    dropped (with a warning)."""
    normalises = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for module in trained
                     for m in module.modules())
    ranks = batches.source.ranks[1]
    num_data, batch_size = batches.num_data, getattr(batches.source, "batch_size", None)
    share = num_data // ranks if num_data is not None else None  # what each rank reads of an epoch
    if share == 1 and normalises:
        got = "one datum" if ranks == 1 else f"{num_data} data for {ranks} ranks, one datum each"
        raise ValueError(f"train got {got}, and batch normalisation cannot train on a batch of one: train on more "
                         "data, or build the pair without batch normalisation (batch_norm=False)")
    if (batches.drop_last or not normalises or share is None or batch_size is None or batches.streaming
            or share % batch_size != 1):
        return batches.drop_last
    size = (f"{num_data} data" if ranks == 1 else f"{share} data on each of the {ranks} ranks") + (
        f" in batches of {batch_size} leave a last batch of one datum, which batch normalisation")
    if chosen_drop_last is not None:
        raise ValueError(f"{size} cannot train on; pass drop_last=True (or leave it unset: train then drops that "
                         "batch) or another batch_size")
    warnings.warn(f"{size} cannot train on: train drops it (drop_last=True; a different datum each epoch, as the "
                  "data are shuffled)", stacklevel=3)
    batches.drop_last = True
    return True

"""Mini-batches from tensors, :class:`~pyrovae.data.TensorData`, Datasets or DataLoaders, on the right device."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from pyrovae.data.tensor_data import TensorData, check_finite


def module_device(*modules) -> torch.device:
    """The device of the first parameter or buffer found in ``modules`` (CPU if none has any)."""
    for module in modules:
        if isinstance(module, torch.nn.Module):
            for tensor in itertools.chain(module.parameters(), module.buffers()):
                return tensor.device
    return torch.device("cpu")


def data_device(data) -> torch.device | None:
    """The device that tensor data live on, or None for Datasets and DataLoaders."""
    if isinstance(data, torch.Tensor):
        return data.device
    if isinstance(data, TensorData):
        return data.x.device
    return None


def _index_batched(data) -> bool:
    """In-memory sources batched by index: TensorData, and sparse sources such as CountData (``batch(indices,
    device)`` returns the dense rows on the device)."""
    return isinstance(data, TensorData) or (callable(getattr(data, "batch", None)) and hasattr(data, "__len__"))


def _streaming(data) -> bool:
    """Streams that batch by themselves and know their epoch, such as :class:`~pyrovae.data.CellStream`."""
    return isinstance(data, IterableDataset) and callable(getattr(data, "set_epoch", None)) and hasattr(data, "loader")


def _first(item):
    return item[0] if isinstance(item, (tuple, list)) else item


class BatchSource:
    """One epoch of mini-batches per iteration, reproducible from its generator state.

    :param data: tensor or array (N, D), :class:`TensorData`, a map-style Dataset (items ``x`` or ``(x, ...)``),
        a DataLoader (used as it is; its own sampler decides the order), or a stream of batches such as
        :class:`~pyrovae.data.CellStream` (its ``counts``; the epoch set by :meth:`set_epoch` chooses the order).
    :param check: an optional model whose ``check_data`` validates the data (support, shape).
    """

    def __init__(
        self,
        data,
        batch_size: int,
        shuffle: bool,
        device: torch.device,
        drop_last: bool = False,
        seed: int | None = None,
        check=None,
        name: str = "data",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if isinstance(data, np.ndarray) or isinstance(data, torch.Tensor):
            data = TensorData(data, name=name)
        self.data = data
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.device = device
        self.drop_last = drop_last
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
        self._check = check
        self._checked = False
        self._stream = None
        self.epoch = 0
        if _streaming(data):
            self._stream = data
            self._loader = None
            self.num_data = data.num_cells
            if self.num_data == 0:
                raise ValueError(f"{name} is empty")
        elif isinstance(data, TensorData):
            if len(data) == 0:
                raise ValueError(f"{name} is empty")
            check_finite(data.x, name)
            if data.transform is None and check is not None and hasattr(check, "check_data"):
                check.check_data(data.x)
                self._checked = True
            self.num_data = len(data)
            self._loader = None
        elif _index_batched(data):
            if len(data) == 0:
                raise ValueError(f"{name} is empty")
            self.num_data = len(data)
            self._loader = None  # values were validated by the source; the model checks the first batch
        elif isinstance(data, DataLoader):
            self._loader = data
            self.num_data = len(data.dataset) if hasattr(data.dataset, "__len__") else None
        elif isinstance(data, Dataset):
            self._loader = DataLoader(
                data, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=self.generator
            )
            self.num_data = len(data)
        else:
            raise TypeError(
                f"{name} must be a tensor, numpy array, pyrovae.data.TensorData or CountData, Dataset or DataLoader, "
                f"got {type(data).__name__}"
            )

    def set_epoch(self, epoch: int) -> None:
        """The epoch a stream reproduces on the next iteration (shard order, deal, shuffles)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self._stream is not None:
            self._stream.set_epoch(self.epoch)
            return len(self._stream)
        if self._loader is not None:
            return len(self._loader)
        full, rest = divmod(self.num_data, self.batch_size)
        return full + (1 if rest and not (self.drop_last and full > 0) else 0)

    def _validate(self, x: torch.Tensor) -> torch.Tensor:
        if self._loader is not None:
            x = torch.as_tensor(x)
            if not torch.is_floating_point(x):
                x = x.float()
            x = x.to(self.device, non_blocking=True)
            check_finite(x, "a batch of the data")
        if not self._checked and self._check is not None and hasattr(self._check, "check_data"):
            self._check.check_data(x)
            self._checked = self._loader is None  # Dataset batches are checked one by one
        return x

    def __iter__(self):
        if self._stream is not None:
            self._stream.set_epoch(self.epoch)
            steps = len(self._stream)  # every rank stops after the same number of batches
            loader = self._stream.loader(pin_memory=self.device.type == "cuda")
            for step, batch in enumerate(loader):
                if step >= steps:
                    break
                yield self._validate(self._stream.inputs(batch.to(self.device, non_blocking=True)))
            return
        if self._loader is not None:
            for item in self._loader:
                yield self._validate(_first(item))
            return
        n = self.num_data
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            indices = order[start : start + self.batch_size]
            if self.drop_last and len(indices) < self.batch_size and start > 0:
                break
            yield self._validate(self.data.batch(indices, self.device))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch = state.get("epoch", 0)


def as_batches(data, batch_size: int, shuffle: bool, device: torch.device, check=None, name: str = "data"):
    """A :class:`BatchSource` over ``data`` (a convenience for one pass)."""
    return BatchSource(data, batch_size, shuffle, device, check=check, name=name, seed=0)

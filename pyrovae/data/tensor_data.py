"""An in-memory data set of feature vectors with optional labels and a per-batch transform."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset


def check_finite(x: torch.Tensor, name: str = "data") -> None:
    """Raise a ValueError naming the first row and column holding NaN or infinity."""
    bad = ~torch.isfinite(x)
    if bad.any():
        row, *col = (int(i) for i in bad.nonzero()[0])
        where = f"row {row}" + (f", column {col[0]}" if col else "")
        raise ValueError(
            f"{name} contain {x[(row, *col)].item()} at {where} ({int(bad.sum())} non-finite values in all); "
            "remove or impute them before training or scoring"
        )


def check_matrix(x: torch.Tensor, name: str = "data", what: str = "expected a matrix") -> None:
    """Refuse data that are not a real matrix ``(num_data, num_features)``, with the usual fix for the shape."""
    if x.is_complex():
        raise TypeError(f"{name}: complex data ({x.dtype}); the models take real values: pass x.real, x.abs() or "
                        "torch.view_as_real(x).flatten(1), whichever the data mean")
    if x.dim() != 2:
        fix = {0: "", 1: " (one datum: x.unsqueeze(0); one feature per datum: x.unsqueeze(1))"}.get(
            x.dim(), " (images or other arrays per datum: x.flatten(1))")
        raise ValueError(f"{name}: {what} (num_data, num_features), got shape {tuple(x.shape)}{fix}")


class TensorData(Dataset):
    """Feature vectors ``x`` (N, D) with optional ``labels`` (N,) and a ``transform`` applied per batch.

    The transform runs on the device, after a batch is gathered; dynamic binarisation of MNIST
    (a fresh Bernoulli draw of every pixel each time it is seen) is ``transform=torch.bernoulli``.
    It behaves as a tensor-like source for :func:`~pyrovae.infer.train` (fast index-based batching)
    and as an ordinary :class:`~torch.utils.data.Dataset` for a DataLoader.
    """

    def __init__(
        self,
        x: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        name: str = "data",
    ) -> None:
        x = torch.as_tensor(x)
        check_matrix(x, name)
        if not torch.is_floating_point(x):
            x = x.float()
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.shape[0] != x.shape[0]:
                raise ValueError(f"{name}: {labels.shape[0]} labels for {x.shape[0]} data")
        self.x = x
        self.labels = labels
        self.transform = transform
        self.name = name

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_features(self) -> int:
        return self.x.shape[1]

    def batch(self, indices: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """The transformed rows ``indices`` on ``device``."""
        x = self.x[indices.to(self.x.device)]
        if device is not None:
            x = x.to(device, non_blocking=True)
        return self.transform(x) if self.transform is not None else x

    def stored(self, indices: torch.Tensor) -> torch.Tensor:
        """The rows ``indices`` as stored, before the transform: what identifies the data set when the transform
        draws (dynamic binarisation gives other pixels at every call)."""
        return self.x[indices.to(self.x.device)]

    def __getitem__(self, index):
        x = self.x[index]
        return self.transform(x) if self.transform is not None else x

    def to(self, device) -> TensorData:
        """A copy of the data on ``device`` (labels stay where they are)."""
        return TensorData(self.x.to(device), self.labels, self.transform, self.name)

    def subset(self, indices) -> TensorData:
        indices = torch.as_tensor(indices)
        labels = self.labels[indices] if self.labels is not None else None
        return TensorData(self.x[indices], labels, self.transform, self.name)

    def __repr__(self) -> str:
        extra = ", labelled" if self.labels is not None else ""
        extra += f", transform={getattr(self.transform, '__name__', self.transform)}" if self.transform else ""
        return f"TensorData({self.name}: {len(self)} x {self.num_features}{extra})"

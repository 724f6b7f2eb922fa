"""The amortised guide: an encoder network that maps each datum to q(z | x)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class AmortizedGuide(nn.Module):
    """Base class of guides ``q(z | x) = encode(x)``, one latent per datum inside ``pyro.plate("data")``.

    Subclasses implement :meth:`encode`. Calling the module is the Pyro guide.
    """

    x_dim: int
    z_dim: int

    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        """q(z | x) for data ``(batch, x_dim)``, with batch shape ``(batch,)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.x_dim:
            raise ValueError(
                f"{type(self).__name__} expected data of shape (batch, {self.x_dim}), got {tuple(x.shape)}"
            )
        with pyro.plate("data", x.shape[-2]):
            pyro.sample("z", self.encode(x))


def _check_encoder(encoder: nn.Module | None, name: str) -> None:
    if encoder is not None and not isinstance(encoder, nn.Module):
        raise TypeError(f"{name} encoder must be an nn.Module, got {type(encoder).__name__}")

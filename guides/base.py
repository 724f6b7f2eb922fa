"""The amortised guide: an encoder network that maps each datum to q(z | x)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.nn import MLP


class AmortizedGuide(nn.Module):
    """Base class of guides ``q(z | x) = encode(x)``, one latent per datum inside ``pyro.plate("data")``.

    Subclasses implement :meth:`encode`. Calling the module is the Pyro guide.
    """

    x_dim: int
    z_dim: int

    def _set_encoder(self, x_dim: int, z_dim: int, out_features: int, hidden, activation, encoder) -> None:
        """Store the sizes and the encoder: ``encoder`` if given, else ``MLP(x_dim, hidden, out_features)``."""
        if encoder is not None and not isinstance(encoder, nn.Module):
            raise TypeError(f"{type(self).__name__} encoder must be an nn.Module, got {type(encoder).__name__}")
        self.x_dim, self.z_dim = int(x_dim), int(z_dim)
        self.encoder = encoder or MLP(self.x_dim, hidden, out_features, activation)

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

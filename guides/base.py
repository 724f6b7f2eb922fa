"""The amortised guide: an encoder network that maps each datum to q(z | x)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.nn import MLP, forget_pyro_attributes, register_module
from pyrovae.nn.covariates import ConditionalMLP, Covariates


class AmortizedGuide(nn.Module):
    """Base class of guides ``q(z | x) = encode(x)``, one latent per datum inside ``pyro.plate("data")``.

    Subclasses implement :meth:`encode`. Calling the module is the Pyro guide; it registers the guide's
    parameters with Pyro first (:func:`~pyrovae.nn.register_module`), so ``pyro.infer.SVI`` trains them.

    Every guide takes the same construction arguments: ``x_dim``, ``z_dim``, ``hidden`` (widths from the data
    side, as models list them), ``activation``, ``encoder`` (a custom network instead of the MLP), and the keywords
    ``input_transform`` (``"log1p"`` for counts), ``latent_library``, ``batch_norm``, ``dropout``, and
    ``categorical``/``continuous`` (covariates the encoder sees in every layer, as scVI's ``encode_covariates``;
    by default a guide sees only ``x`` and ignores the covariates a model is given).
    """

    x_dim: int
    z_dim: int

    def _set_encoder(
        self,
        x_dim: int,
        z_dim: int,
        out_features: int,
        hidden,
        activation,
        encoder,
        input_transform: str | None = None,
        latent_library: bool = False,
        batch_norm: bool = False,
        dropout: float = 0.0,
        categorical=(),
        continuous: int = 0,
    ) -> None:
        """Store the sizes and the encoder: ``encoder`` if given, else ``MLP(x_dim, hidden, out_features)``,
        after ``input_transform`` (``"log1p"`` for counts); with ``latent_library``, also an encoder of q(library | x).
        With covariates the default encoder is a :class:`~pyrovae.nn.covariates.ConditionalMLP`, and a custom one
        maps ``(..., x_dim + covariate features)``.
        """
        if encoder is not None and not isinstance(encoder, nn.Module):
            raise TypeError(f"{type(self).__name__} encoder must be an nn.Module, got {type(encoder).__name__}")
        self.x_dim, self.z_dim = int(x_dim), int(z_dim)
        self.covariates = Covariates(categorical, continuous)
        transform = _input_transform(input_transform)
        if self.covariates:
            self.input_transform = transform or nn.Identity()
            self.encoder = encoder or ConditionalMLP(self.x_dim, self.covariates.size, hidden, out_features,
                                                     activation, batch_norm, dropout)
        else:
            encoder = encoder or MLP(self.x_dim, hidden, out_features, activation, batch_norm, dropout)
            self.encoder = nn.Sequential(transform, encoder) if transform is not None else encoder
        self.library_encoder = None
        if latent_library:
            library_hidden = ([hidden] if isinstance(hidden, int) else list(hidden))[:1] or [128]
            library_encoder = MLP(self.x_dim, library_hidden, 2, activation)
            self.library_encoder = nn.Sequential(transform, library_encoder) if transform else library_encoder

    def encoded(self, x: torch.Tensor, cat: torch.Tensor | None = None, cont: torch.Tensor | None = None):
        """The encoder's output for ``x`` (and, for a guide built with covariates, ``cat`` and ``cont``)."""
        covariates = getattr(self, "covariates", None)
        if not covariates:
            return self.encoder(x)
        if not torch.jit.is_tracing():
            covariates.check(cat, cont, x.shape[-2], type(self).__name__)
        side = covariates(cat, cont)
        h = self.input_transform(x)
        if isinstance(self.encoder, ConditionalMLP):
            return self.encoder(h, side)
        return self.encoder(torch.cat([h, side], -1))

    def encode_library(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(library | x) = LogNormal(loc(x), scale(x)), for models with a latent library size."""
        loc, raw_scale = self.library_encoder(x).unbind(-1)
        return dist.LogNormal(loc, nn.functional.softplus(raw_scale) + 1e-4)

    def encode(self, x: torch.Tensor, cat: torch.Tensor | None = None,
               cont: torch.Tensor | None = None) -> dist.TorchDistribution:  # pragma: no cover - abstract
        """q(z | x) for data ``(batch, x_dim)``, with batch shape ``(batch,)`` (``cat``, ``cont``: the covariates,
        used where the guide was built with them)."""
        raise NotImplementedError

    def __getstate__(self) -> dict:
        forget_pyro_attributes(self)  # Pyro's weak references cannot be pickled: torch.save(model) works
        return super().__getstate__()

    def forward(self, x: torch.Tensor, cat: torch.Tensor | None = None, cont: torch.Tensor | None = None) -> None:
        register_module(self)
        if not torch.jit.is_tracing() and x.shape[-1] != self.x_dim:
            raise ValueError(
                f"{type(self).__name__} expected data of shape (batch, {self.x_dim}), got {tuple(x.shape)}"
            )
        with pyro.plate("data", x.shape[-2]):
            pyro.sample("z", self.encode(x, cat, cont) if getattr(self, "covariates", None) else self.encode(x))
            if getattr(self, "library_encoder", None) is not None:
                pyro.sample("library", self.encode_library(x))


class Log1p(nn.Module):
    """x -> log(1 + x): the usual input transform of encoders of count data (scVI, scVAE)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(x)


def _input_transform(name: str | None) -> nn.Module | None:
    if name is None:
        return None
    if name == "log1p":
        return Log1p()
    raise ValueError(f"input_transform must be None or 'log1p', got {name!r}")

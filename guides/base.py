"""The amortised guide: an encoder network that maps each datum to q(z | x)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.nn import MLP, forget_pyro_attributes, name_module, register_module, take_loaded
from pyrovae.nn.checks import (
    check_batch,
    check_dropout,
    check_finite,
    check_int,
    check_name,
    check_values,
    check_widths,
)
from pyrovae.nn.covariates import ConditionalMLP, Covariates


class AmortizedGuide(nn.Module):
    """Base class of guides ``q(z | x) = encode(x)``, one latent per datum inside ``pyro.plate("data")``.

    Subclasses implement :meth:`encode`. Calling the module is the Pyro guide; it registers the guide's
    parameters with Pyro first (:func:`~pyrovae.nn.register_module`), so ``pyro.infer.SVI`` trains them.

    Every guide takes the same construction arguments: ``x_dim``, ``z_dim``, ``hidden`` (widths from the data
    side, as models list them), ``activation``, ``encoder`` (a custom network instead of the MLP), and the keywords
    ``input_transform`` (``"log1p"`` for counts), ``latent_library``, ``batch_norm``, ``dropout``, and
    ``categorical``/``continuous`` (covariates the encoder sees in every layer, as scVI's ``encode_covariates``;
    by default a guide sees only ``x`` and ignores the covariates a model is given), and ``name``, the guide's name
    in Pyro's param store (default: the class name, with a suffix ``_1``, ... while another live guide holds it; see
    :mod:`pyrovae.nn.registration`). Every size and scale is checked when the guide is built.

    A call checks its data as a model does (:meth:`check_call`), and accepts only data: the guide encodes ``x``.
    """

    x_dim: int
    z_dim: int

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)
        name_module(self, check_name(type(self).__name__, name))

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
        who = type(self).__name__
        if encoder is not None and not isinstance(encoder, nn.Module):
            raise TypeError(f"{who} encoder must be an nn.Module, got {type(encoder).__name__}")
        self.x_dim, self.z_dim = check_int(who, "x_dim", x_dim), check_int(who, "z_dim", z_dim)
        hidden = check_widths(who, hidden)
        dropout = check_dropout(who, dropout)
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
            library_hidden = list(hidden)[:1] or [128]
            library_encoder = MLP(self.x_dim, library_hidden, 2, activation)
            self.library_encoder = nn.Sequential(transform, library_encoder) if transform else library_encoder

    def encoded(self, x: torch.Tensor, cat: torch.Tensor | None = None, cont: torch.Tensor | None = None):
        """The encoder's output for ``x`` (and, for a guide built with covariates, ``cat`` and ``cont``)."""
        take_loaded(self)  # a param store loaded since the last call
        if x.shape[-1] != self.x_dim and not torch.jit.is_tracing():
            raise ValueError(f"{type(self).__name__} encodes data of {self.x_dim} features, got x of shape "
                             f"{tuple(x.shape)}; flatten images to vectors and check x_dim")
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
        take_loaded(self)
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

    def check_call(self, x: torch.Tensor) -> None:
        """Check the data of a call: always (unless traced) a ``(batch, x_dim)`` tensor of the guide's dtype and
        device, and while Pyro's validation is on no NaN or infinity (once per data tensor), each refusal naming the
        fix, as :meth:`VAE.check_call <pyrovae.models.VAE.check_call>` does."""
        who = type(self).__name__
        if x is None:
            raise ValueError(f"{who} encodes data and was called without x; a prior predictive needs no guide: "
                             "Predictive(model, num_samples=4)(num_data=10)")
        if not torch.jit.is_tracing():
            check_batch(x, self.x_dim, self._anchor(), who)
        check_values(self, x, lambda values: check_finite(values, who))

    def _anchor(self) -> torch.Tensor | None:
        """A tensor of the guide's dtype and device (None for a guide without any)."""
        anchor = self._buffers.get("_device_anchor")
        if anchor is None:
            anchor = next((p for p in self.parameters() if p.is_floating_point()), None)
        return anchor

    def forward(self, x: torch.Tensor, cat: torch.Tensor | None = None, cont: torch.Tensor | None = None,
                *labels) -> None:
        if labels:
            raise TypeError(f"{type(self).__name__} was given labels y beside (x, cat, cont): data with labels "
                            "(CountData.with_labels) are for label transfer with a GMVAE and a GMVAEGuide; train "
                            "this pair on the data without labels (the CountData before with_labels)")
        register_module(self)
        self.check_call(x)
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

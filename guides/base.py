"""The amortised guide: an encoder network that maps each datum to q(z | x).

:class:`AmortizedGuide` defines the construction options every guide shares, once: a guide forwards
them with ``*args, **options`` and adds keyword options of its own, so a new guide is a few lines::

    class LaplaceGuide(AmortizedGuide):
        def __init__(self, x_dim: int, z_dim: int, *args, **options) -> None:
            super().__init__(x_dim, z_dim, *args, **options)
            self.build_encoder(2 * self.z_dim)  # location, then raw scale

        def encode(self, x, cat=None, cont=None):
            loc, raw_scale = self.encoded(x, cat, cont).split(self.z_dim, dim=-1)
            return dist.Laplace(loc, nn.functional.softplus(raw_scale) + 1e-5).to_event(1)
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.nn import MLP, name_module, register_module, take_loaded
from pyrovae.nn.checks import (
    check_batch,
    check_batch_norm_batch,
    check_dropout,
    check_finite,
    check_int,
    check_name,
    check_values,
    check_widths,
)
from pyrovae.nn.covariates import ConditionalMLP, Covariates
from pyrovae.nn.registration import InParamStore


@dataclass(frozen=True)
class EncoderOptions:
    """The checked construction options of a guide's encoder, as :class:`AmortizedGuide` documents
    them (``guide.encoder_options``)."""

    hidden: tuple[int, ...]
    activation: str | nn.Module
    encoder: nn.Module | None
    input_transform: str | None
    latent_library: bool
    batch_norm: bool
    dropout: float


class AmortizedGuide(InParamStore, nn.Module):
    """Base class of guides ``q(z | x) = encode(x)``, one latent per datum inside
    ``pyro.plate("data")``.

    Subclasses implement :meth:`encode`. Calling the module is the Pyro guide; it registers the
    guide's parameters with Pyro first (:func:`~pyrovae.nn.register_module`), so ``pyro.infer.SVI``
    trains them.

    Every guide takes these construction arguments, in this order, and adds keyword options of its
    own (``min_scale``, ``num_components``, ...). Every size and scale is checked when the guide is
    built.

    :param int x_dim: observed features.
    :param int z_dim: latent dimension (for the guides on the sphere, its ambient dimension).
    :param hidden: hidden widths of the default MLP encoder, from the data side, as models list
        them.
    :param activation: hidden activation of the default encoder (a name such as ``"relu"``, or an
        ``nn.Module``).
    :param encoder: a custom ``nn.Module`` instead of the MLP, mapping ``(..., x_dim)`` to the
        outputs the guide documents (with covariates, ``(..., x_dim + covariate features)``), e.g.
        :class:`~pyrovae.nn.ConvEncoder`.
    :param input_transform: ``"log1p"`` to encode log(1 + counts), as count models do; None for the
        data as given.
    :param bool latent_library: also sample ``"library"`` (for count likelihoods with
        ``library="latent"``).
    :param bool batch_norm: batch-normalise the encoder's hidden layers.
    :param float dropout: dropout after each hidden layer of the encoder.
    :param categorical: the number of levels of each categorical covariate (the batch first), and
    :param int continuous: the number of continuous covariates, that the encoder sees in every layer
        (as scVI's ``encode_covariates``); by default a guide sees only ``x`` and ignores the
        covariates a model is given.
    :param str name: the guide's name in Pyro's param store (default: the class name, with a suffix
        ``_1``, ... while another live guide holds it; see :mod:`pyrovae.nn.registration`).

    A guide that builds a network of its own may call ``super().__init__()`` (or with ``name=``)
    and set ``x_dim`` and ``z_dim`` itself; one that uses the shared encoder calls
    :meth:`build_encoder` with its number of outputs.

    A call checks its data as a model does (:meth:`check_call`), and accepts only data: the guide
    encodes ``x``.
    """

    x_dim: int
    z_dim: int
    #: the name under which ``z_dim`` is checked, and its least value
    z_dim_rule: tuple[str, int] = ("z_dim", 1)

    def __init__(
        self,
        x_dim: int | None = None,
        z_dim: int | None = None,
        hidden: Sequence[int] = (400,),
        activation: str | nn.Module = "relu",
        encoder: nn.Module | None = None,
        *,
        input_transform: str | None = None,
        latent_library: bool = False,
        batch_norm: bool = False,
        dropout: float = 0.0,
        categorical: Sequence[int] = (),
        continuous: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        who = type(self).__name__
        if isinstance(x_dim, str) and z_dim is None:
            raise TypeError(f"{who}: the first argument of AmortizedGuide is x_dim, got {x_dim!r}; "
                            f"pass a name by keyword: super().__init__(name={x_dim!r})")
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)
        name_module(self, check_name(who, name))
        if encoder is not None and not isinstance(encoder, nn.Module):
            raise TypeError(f"{who} encoder must be an nn.Module, got {type(encoder).__name__}")
        if x_dim is not None:
            self.x_dim = check_int(who, "x_dim", x_dim)
        if z_dim is not None:
            label, minimum = self.z_dim_rule
            self.z_dim = check_int(who, label, z_dim, minimum)
        _input_transform(input_transform)  # refuse an unknown name now
        self.encoder_options = EncoderOptions(
            check_widths(who, hidden), activation, encoder, input_transform, bool(latent_library),
            bool(batch_norm), check_dropout(who, dropout),
        )
        if x_dim is not None:  # a guide with a network of its own keeps the modules it had
            self.covariates = Covariates(categorical, continuous)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:  # help(), IDEs and the API reference list what *args, **options take
            init.__signature__ = _forwarded_signature(init, super(cls, cls).__init__)

    def build_encoder(self, out_features: int, hidden: Sequence[int] | None = None) -> None:
        """Build the encoder from the shared options: the custom ``encoder`` if given, else
        ``MLP(x_dim, hidden, out_features)`` (``hidden`` here replaces the option's widths, as a trunk
        that stops short of the last layer does), after ``input_transform``; with covariates a
        :class:`~pyrovae.nn.covariates.ConditionalMLP`; with ``latent_library``, also an encoder of
        q(library | x)."""
        options = self.encoder_options
        self._encoder_width = out_features  # what encoded() must return per datum (a custom encoder is checked)
        hidden = options.hidden if hidden is None else check_widths(type(self).__name__, hidden)
        activation, batch_norm, dropout = options.activation, options.batch_norm, options.dropout
        transform = _input_transform(options.input_transform)
        if self.covariates:
            self.input_transform = transform or nn.Identity()
            self.encoder = options.encoder or ConditionalMLP(
                self.x_dim, self.covariates.size, hidden, out_features, activation, batch_norm, dropout)
        else:
            encoder = options.encoder or MLP(self.x_dim, hidden, out_features, activation, batch_norm,
                                             dropout)
            self.encoder = nn.Sequential(transform, encoder) if transform is not None else encoder
        self.library_encoder = None
        if options.latent_library:
            library_hidden = list(hidden)[:1] or [128]
            library_encoder = MLP(self.x_dim, library_hidden, 2, activation)
            self.library_encoder = nn.Sequential(transform, library_encoder) if transform \
                else library_encoder

    def encoded(self, x: torch.Tensor, cat: torch.Tensor | None = None, cont: torch.Tensor | None = None):
        """The encoder's output for ``x`` (and, for a guide built with covariates, ``cat`` and ``cont``)."""
        take_loaded(self)  # a param store loaded since the last call
        if not torch.jit.is_tracing():  # called by itself (guide.encode(x)) as in the guide: the same checks
            leading = x.dim() > 2 and x.shape[-1] == self.x_dim  # (..., x_dim): encoded as a batch, as before
            self.check_call(x.reshape(-1, self.x_dim) if leading else x)
        covariates = getattr(self, "covariates", None)
        if not covariates:
            out = self.encoder(x)
        else:
            if not torch.jit.is_tracing():
                covariates.check(cat, cont, x.shape[-2], type(self).__name__)
            side = covariates(cat, cont)
            h = self.input_transform(x)
            out = self.encoder(h, side) if isinstance(self.encoder, ConditionalMLP) else \
                self.encoder(torch.cat([h, side], -1))
        width = getattr(self, "_encoder_width", None)
        if width is not None and not torch.jit.is_tracing() and out.shape[-1] != width:
            raise ValueError(
                f"{type(self).__name__}: the encoder returns {out.shape[-1]} features per datum, and this guide reads "
                f"{width} from it: build the custom encoder with {width} outputs"
            )
        return out

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

    def check_call(self, x: torch.Tensor) -> None:
        """Check the data of a call: always (unless traced) a ``(batch, x_dim)`` tensor of the guide's dtype and
        device, and while Pyro's validation is on no NaN or infinity and, with ``input_transform="log1p"``, no
        negative value (once per data tensor), each refusal naming the fix, as :meth:`VAE.check_call
        <pyrovae.models.VAE.check_call>` does."""
        who = type(self).__name__
        if x is None:
            raise ValueError(f"{who} encodes data and was called without x; a prior predictive needs no guide: "
                             "Predictive(model, num_samples=4)(num_data=10)")
        if not torch.jit.is_tracing():
            check_batch(x, self.x_dim, self._anchor(), who)
            check_batch_norm_batch(self, x.shape[0], who)
        check_values(self, x, self._check_data)

    def _check_data(self, x: torch.Tensor) -> None:
        """No NaN or infinity, and counts (no negative value) for an encoder that takes log(1 + x)."""
        who = type(self).__name__
        check_finite(x, who)
        if self.encoder_options.input_transform == "log1p":
            negative = x < 0
            if bool(negative.any()):
                row, column = (int(i) for i in negative.nonzero()[0])
                raise ValueError(f"{who} encodes log(1 + x) (input_transform='log1p'), which needs counts, and the "
                                 f"data x hold {x[row, column].item()} at row {row}, column {column}: pass the raw "
                                 "counts (not centred or scaled values), or build the guide without input_transform")

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


def _forwarded_signature(init, parent_init) -> inspect.Signature:
    """The arguments ``init`` accepts when it passes ``*args`` and ``**options`` on to
    ``parent_init``: its own, with the parent's positional ones in place of ``*args`` and the
    parent's others (keyword-only) in place of ``**options``."""
    own = inspect.signature(init)
    kinds = {p.kind for p in own.parameters.values()}
    if not kinds & {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}:
        return own
    positional_kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in own.parameters.values() if p.kind in positional_kinds]
    keyword = [p for p in own.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    inherited = [p for name, p in inspect.signature(parent_init).parameters.items()
                 if name not in own.parameters and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        positional += [p for p in inherited if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    if inspect.Parameter.VAR_KEYWORD in kinds:
        keyword += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in inherited
                    if p not in positional and p.kind is not inspect.Parameter.VAR_KEYWORD]
        keyword += [p for p in inherited if p.kind is inspect.Parameter.VAR_KEYWORD]
    return own.replace(parameters=positional + keyword)

"""The Gaussian VAE model: p(z) = N(0, I), p(x | z) from a decoder and a likelihood (Kingma & Welling 2014)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.runtime import _PYRO_STACK
from torch import nn

from pyrovae.likelihoods import Likelihood, get_likelihood
from pyrovae.nn import MLP, register_module, take_loaded
from pyrovae.nn.checks import (
    check_batch,
    check_batch_norm_batch,
    check_dropout,
    check_finite,
    check_int,
    check_name,
    check_shape,
    check_values,
    check_widths,
)
from pyrovae.nn.covariates import ConditionalMLP, Covariates
from pyrovae.nn.registration import InParamStore, name_module


class VAE(InParamStore, nn.Module):
    """The generative side of a VAE: ``z ~ p(z)``, ``x ~ likelihood(decoder(z))``, one pair per datum.

    Calling the module is the Pyro model: every per-datum site lives in ``pyro.plate("data")``, the
    latent is the site ``"z"`` and the observation the site ``"x"``, so any guide that samples a ``"z"``
    on the prior's support can be paired with it. Subclasses change the prior by overriding :meth:`prior`.
    The call registers the module's parameters with Pyro (:func:`~pyrovae.nn.register_module`), so
    ``pyro.infer.SVI``, its JIT forms, ``Predictive`` and ``poutine`` work on it as on any Pyro model.

    :param int x_dim: number of observed features (images are flattened, e.g. 784).
    :param int z_dim: latent dimension.
    :param hidden: hidden widths **listed from the data side**, as every guide lists them: the default MLP decoder
        runs ``z -> hidden[-1] -> ... -> hidden[0] -> x_dim * outputs``, so a model and a guide given the same
        ``hidden`` are mirror images (``hidden=(400, 200)``: encoder 784-400-200, decoder 200-400-784).
    :param likelihood: a registered likelihood name (``"bernoulli"``, ``"gaussian"``, ...) or a
        :class:`~pyrovae.likelihoods.Likelihood` instance such as ``Gaussian(inverse_variance=500)``.
    :param activation: hidden activation of the default decoder.
    :param bool batch_norm: batch-normalise the default decoder's hidden layers (as scVI does).
    :param float dropout: dropout after each hidden layer of the default decoder (regularises count models).
    :param decoder: a custom ``nn.Module`` mapping ``(..., latent size) -> (..., x_dim * likelihood.num_outputs)``
        used instead of the MLP (e.g. :class:`~pyrovae.nn.ConvDecoder`); with covariates it maps
        ``(..., latent size + covariate features)``.
    :param categorical: levels of each categorical covariate (batch, plate, donor, ...; the first is *the batch*,
        which ``dispersion="gene-batch"`` is indexed by). The model is then called as ``model(x, cat, cont)`` (see
        :mod:`pyrovae.nn.covariates`) and the decoder sees the covariates in every layer, as scVI's does.
    :param int continuous: the number of continuous covariates (``cont``).
    :param str inject_covariates: ``"all"`` (every decoder layer) or ``"first"``.
    :param str name: the model's name in Pyro's param store (default: the class name, with a suffix ``_1``, ...
        while another live model holds it); a saved store loads into the model of that name
        (:mod:`pyrovae.nn.registration`).

    Every size is checked when the model is built (a ValueError names it: ``x_dim=784.5``, a zero width, ...).
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (400,),
        likelihood: str | Likelihood = "bernoulli",
        activation: str | nn.Module = "relu",
        decoder: nn.Module | None = None,
        *,
        batch_norm: bool = False,
        dropout: float = 0.0,
        categorical: Sequence[int] = (),
        continuous: int = 0,
        inject_covariates: str = "all",
        name: str | None = None,
    ) -> None:
        super().__init__()
        who = type(self).__name__
        self.x_dim = check_int(who, "x_dim", x_dim)
        self.z_dim = check_int(who, "z_dim", z_dim)
        widths = check_widths(who, hidden)
        dropout = check_dropout(who, dropout)
        name = check_name(who, name)
        if decoder is not None and not isinstance(decoder, nn.Module):
            raise TypeError(f"{who}: decoder must be an nn.Module, got {type(decoder).__name__}")
        self.covariates = Covariates(categorical, continuous)
        self.likelihood = get_likelihood(likelihood, self.x_dim)
        if getattr(self.likelihood, "needs_batch", False):
            if not self.covariates.categorical:
                raise ValueError(
                    "dispersion='gene-batch' needs a batch: build the model with categorical=(number of batches, ...)"
                )
            self.likelihood.setup_batches(self.covariates.num_batches)
        out_features = self.x_dim * self.likelihood.num_outputs
        if decoder is not None:
            self.decoder = decoder
        elif self.covariates:
            self.decoder = ConditionalMLP(self.latent_size, self.covariates.size, widths[::-1], out_features,
                                          activation, batch_norm, dropout, inject_covariates)
        else:
            self.decoder = MLP(self.latent_size, widths[::-1], out_features, activation, batch_norm, dropout)
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)
        name_module(self, name)

    @property
    def latent_size(self) -> int:
        """Length of a latent vector (``z_dim`` here; the ambient dimension for spherical latents)."""
        return self.z_dim

    def prior(self) -> dist.TorchDistribution:
        """p(z) for one datum: a standard normal with event shape ``(z_dim,)``."""
        take_loaded(self)
        zeros = self._device_anchor.new_zeros(self.latent_size)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def decode(
        self,
        z: torch.Tensor,
        library: torch.Tensor | None = None,
        cat: torch.Tensor | None = None,
        cont: torch.Tensor | None = None,
    ) -> dist.TorchDistribution:
        """p(x | z) for latents ``(..., latent_size)``; take ``.mean`` for reconstructions.

        :param library: the cells' library sizes ``(...)``, for count likelihoods that scale by one.
        :param cat: for a model with covariates, the categorical codes ``(batch, n)`` the data are decoded as
            coming from: another batch's codes decode a cell as if it had been measured in that batch
            (counterfactual, batch-corrected expression).
        :param cont: the continuous covariates ``(batch, n)``.
        """
        outputs = self.decoder_outputs(z, cat, cont)
        options = {"batch_index": cat[..., 0]} if getattr(self.likelihood, "needs_batch", False) else {}
        if self.likelihood.needs_library:
            return self.likelihood(outputs, library, **options)
        return self.likelihood(outputs, **options)

    def decoder_outputs(self, z: torch.Tensor, cat: torch.Tensor | None = None,
                        cont: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's raw output ``(..., x_dim * likelihood.num_outputs)`` at ``z`` (and the covariates)."""
        take_loaded(self)  # a param store loaded since the last call
        if not torch.jit.is_tracing():
            if z.shape[-1] != self.latent_size:
                raise ValueError(f"{type(self).__name__} decodes latents of {self.latent_size} coordinates, got z of "
                                 f"shape {tuple(z.shape)}")
            # the rows the decoder's batch norm sees: one datum with several particles or components is several
            check_batch_norm_batch(self, z.numel() // max(z.shape[-1], 1), type(self).__name__)
        if not self.covariates:
            return self.decoder(z)
        side = self.covariates(cat, cont)
        if isinstance(self.decoder, ConditionalMLP):
            return self.decoder(z, side)
        return self.decoder(torch.cat([z, side.expand(*z.shape[:-1], side.shape[-1])], -1))

    def _decode_with(self, z: torch.Tensor, library: torch.Tensor | None, cat=None, cont=None):
        # subclasses that override decode(z) without a library or covariates keep working where they need none
        if self.covariates:
            return self.decode(z, library, cat, cont)
        return self.decode(z) if library is None else self.decode(z, library)

    def check_call(self, x: torch.Tensor | None, cat: torch.Tensor | None = None, cont: torch.Tensor | None = None,
                   num_data: int | None = None) -> int:
        """Check a call's inputs and return the number of data (the size of the ``"data"`` plate).

        Always, unless traced: ``x`` is a ``(batch, x_dim)`` tensor of the model's dtype and device (a TypeError or
        ValueError says the fix: ``x.float()``, ``x.unsqueeze(0)``, ...), and the covariates match the model's.
        While Pyro's validation is on (the default; ``train`` switches it off inside its steps, having checked its
        data before), also the values: no NaN or infinity, and inside the likelihood's support, once per data
        tensor (:func:`~pyrovae.nn.checks.check_values`). Under Pyro's handlers the latents the model receives, a
        guide's (``SVI``, every ELBO) or conditioned values (``Predictive``), are checked against its prior
        (:func:`~pyrovae.infer.contract.check_received_latents`), once per kind of guide.

        Without data (``x=None``, the prior predictive) the number of data is ``num_data``, else that of ``cat`` or
        ``cont``; with neither, a ValueError names the fix.
        """
        who = type(self).__name__
        tracing = torch.jit.is_tracing()
        if x is None:
            num_data = self._num_data_without_x(cat, cont, num_data)
        else:
            if not tracing:
                check_batch(x, self.x_dim, self._device_anchor, who)
                if num_data is not None and num_data != x.shape[-2]:
                    raise ValueError(f"{who} was given {x.shape[-2]} data x but num_data={num_data!r}; give one")
            check_values(self, x, self._check_values)
            num_data = x.shape[-2]
        if not tracing:
            self.covariates.check(cat, cont, num_data, who)
        if _PYRO_STACK:  # under Pyro's handlers: a guide's latents (replayed) or conditioned values reach the model
            from pyrovae.infer.contract import check_received_latents  # pyrovae.infer is heavy: imported when used

            check_received_latents(self)
        return num_data

    def _num_data_without_x(self, cat, cont, num_data) -> int:
        who = type(self).__name__
        if num_data is None:
            given = [t for t in (cat, cont) if isinstance(t, torch.Tensor) and t.dim() >= 1]
            if given:
                return given[0].shape[0]
            raise ValueError(
                f"{who} was called without data x and without num_data, so it cannot tell how many data to draw: "
                "give the number for the prior predictive, e.g. Predictive(model, num_samples=4)(num_data=10) or "
                "model(None, num_data=10), or generate with model.sample(10)"
            )
        return check_int(who, "num_data", num_data)

    def _check_values(self, x: torch.Tensor) -> None:
        check_finite(x, type(self).__name__)
        self.likelihood.check_data(x)

    def latent_sites(self) -> dict[str, dist.TorchDistribution]:
        """The prior of each latent site of one datum, by site name: what a guide's sites must match."""
        sites = {"z": self.prior()}
        if self.likelihood.library == "latent":
            sites["library"] = self.likelihood.library_prior()
        return sites

    def library(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """The library size of each datum, inside the ``"data"`` plate: the observed total count, a draw of the
        latent ``"library"`` site, or None when the likelihood uses none."""
        mode = self.likelihood.library
        if mode == "observed":
            if x is None:
                raise ValueError(
                    f"{type(self).__name__}'s likelihood scales by the observed library size of x, which a call "
                    "without data lacks; generate with model.sample(n, library=...) instead"
                )
            return x.sum(-1)
        if mode == "latent":
            return pyro.sample("library", self.likelihood.library_prior())
        return None

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a ValueError when ``x`` has the wrong shape or lies outside the likelihood's support."""
        check_shape(x, self.x_dim, type(self).__name__)  # each wrong shape named with its own fix
        self.likelihood.check_data(x)

    def forward(self, x: torch.Tensor | None = None, cat: torch.Tensor | None = None,
                cont: torch.Tensor | None = None, *, num_data: int | None = None) -> None:
        """The Pyro model. ``x=None`` draws the data as well (the prior predictive): give ``num_data`` then, as in
        ``Predictive(model, num_samples=4)(num_data=10)``. Inputs are checked by :meth:`check_call`."""
        register_module(self)
        num_data = self.check_call(x, cat, cont, num_data)
        with pyro.plate("data", num_data):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self._decode_with(z, self.library(x), cat, cont), obs=x)

    def _generation_covariates(self, num_samples: int, cat, cont):
        if not self.covariates:
            return None, None
        anchor = self._device_anchor
        if cat is not None:
            cat = torch.as_tensor(cat, dtype=torch.long, device=anchor.device)
            cat = cat.expand(num_samples, -1) if cat.dim() == 1 else cat
        if cont is not None:
            cont = torch.as_tensor(cont, dtype=anchor.dtype, device=anchor.device)
            cont = cont.expand(num_samples, -1) if cont.dim() == 1 else cont
        self.covariates.check(cat, cont, num_samples, f"{type(self).__name__}.sample")
        return cat, cont

    def _generation_library(self, num_samples: int, library) -> torch.Tensor | None:
        mode = self.likelihood.library
        if mode == "latent" and library is None:
            return self.likelihood.library_prior().sample((num_samples,))
        if mode == "none":
            return None
        if library is None:
            raise ValueError(
                "this model's likelihood scales by the observed library size; pass library= (a total count, or "
                "one per sample) to sample()"
            )
        library = torch.as_tensor(library, dtype=self._device_anchor.dtype, device=self._device_anchor.device)
        if library.dim() == 2 and library.shape[-1] == 1:  # a column of library sizes, as a (cells, 1) total
            library = library.squeeze(-1)
        if library.dim() > 1 or library.numel() not in (1, num_samples):
            raise ValueError(f"library= is the total count of the generated data: a number or one per sample "
                             f"({num_samples},), got a tensor of shape {tuple(library.shape)}")
        return library.expand(num_samples)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = False, return_latents: bool = False, library=None,
               cat=None, cont=None):
        """Generate ``num_samples`` data from the prior: ``z ~ p(z)``, ``x ~ p(x | z)``.

        :param bool mean: return the decoder's mean E[x | z] instead of a draw (what one usually plots).
        :param bool return_latents: also return the latents ``z``.
        :param library: for count likelihoods with an observed library size, the total count of the
            generated cells (a number or one per sample); a latent library is drawn from its prior.
        :param cat: for a model with covariates, the codes of the generated data: one row ``(n,)`` for all of
            them, or one per sample; ``cont`` likewise.
        """
        num_samples = check_int(f"{type(self).__name__}.sample", "num_samples", num_samples, 0)
        z = self.prior().sample((num_samples,))
        cat, cont = self._generation_covariates(num_samples, cat, cont)
        likelihood = self._decode_with(z, self._generation_library(num_samples, library), cat, cont)
        x = likelihood.mean if mean else likelihood.sample()
        return (x, z) if return_latents else x

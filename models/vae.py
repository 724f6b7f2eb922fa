"""The Gaussian VAE model: p(z) = N(0, I), p(x | z) from a decoder and a likelihood (Kingma & Welling 2014)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.likelihoods import Likelihood, get_likelihood
from pyrovae.nn import MLP, forget_pyro_attributes, register_module
from pyrovae.nn.covariates import ConditionalMLP, Covariates


class VAE(nn.Module):
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
    ) -> None:
        super().__init__()
        if x_dim <= 0 or z_dim <= 0:
            raise ValueError(f"x_dim and z_dim must be positive, got x_dim={x_dim}, z_dim={z_dim}")
        self.x_dim = int(x_dim)
        self.z_dim = int(z_dim)
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
            self.decoder = ConditionalMLP(self.latent_size, self.covariates.size, _widths(hidden)[::-1], out_features,
                                          activation, batch_norm, dropout, inject_covariates)
        else:
            self.decoder = MLP(self.latent_size, _widths(hidden)[::-1], out_features, activation, batch_norm, dropout)
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)

    @property
    def latent_size(self) -> int:
        """Length of a latent vector (``z_dim`` here; the ambient dimension for spherical latents)."""
        return self.z_dim

    def prior(self) -> dist.TorchDistribution:
        """p(z) for one datum: a standard normal with event shape ``(z_dim,)``."""
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

    def check_inputs(self, x: torch.Tensor, cat: torch.Tensor | None, cont: torch.Tensor | None) -> None:
        """Raise a ValueError when the covariates beside ``x`` do not match the model's."""
        if not torch.jit.is_tracing():
            self.covariates.check(cat, cont, x.shape[-2], type(self).__name__)

    def library(self, x: torch.Tensor) -> torch.Tensor | None:
        """The library size of each datum, inside the ``"data"`` plate: the observed total count, a draw of the
        latent ``"library"`` site, or None when the likelihood uses none."""
        mode = self.likelihood.library
        if mode == "observed":
            return x.sum(-1)
        if mode == "latent":
            return pyro.sample("library", self.likelihood.library_prior())
        return None

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a ValueError when ``x`` has the wrong shape or lies outside the likelihood's support."""
        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise ValueError(
                f"{type(self).__name__} expected data of shape (batch, {self.x_dim}), got {tuple(x.shape)}; "
                "flatten images to vectors (load_mnist does) and check x_dim"
            )
        self.likelihood.check_data(x)

    def __getstate__(self) -> dict:
        forget_pyro_attributes(self)  # Pyro's weak references cannot be pickled: torch.save(model) works
        return super().__getstate__()

    def forward(self, x: torch.Tensor, cat: torch.Tensor | None = None, cont: torch.Tensor | None = None) -> None:
        register_module(self)
        if not torch.jit.is_tracing() and x.shape[-1] != self.x_dim:
            raise ValueError(
                f"{type(self).__name__} expected data of shape (batch, {self.x_dim}), got {tuple(x.shape)}"
            )
        self.check_inputs(x, cat, cont)
        with pyro.plate("data", x.shape[-2]):
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
        return torch.as_tensor(library, dtype=self._device_anchor.dtype, device=self._device_anchor.device).expand(
            num_samples
        )

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
        z = self.prior().sample((num_samples,))
        cat, cont = self._generation_covariates(num_samples, cat, cont)
        likelihood = self._decode_with(z, self._generation_library(num_samples, library), cat, cont)
        x = likelihood.mean if mean else likelihood.sample()
        return (x, z) if return_latents else x


def _widths(hidden) -> tuple[int, ...]:
    """Hidden widths as a tuple (a single int is one layer)."""
    return (int(hidden),) if isinstance(hidden, int) else tuple(hidden)

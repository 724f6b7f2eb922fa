"""Likelihoods for UMI counts: Poisson, constrained Poisson, negative binomial and their zero-inflated forms.

Each is parameterised, as in scVAE (Gronbech et al. 2020) and scVI (Lopez et al. 2018), by a mean per gene
and cell, an inverse dispersion theta (NB, ZINB) and gate logits (ZIP, ZINB). The mean is

* ``library * softmax(h)`` over genes when a library size is used: the observed total count of the cell
  (``library="observed"``, the default: a size factor, so log p(x | library) is modelled) or a latent
  log-normal library sampled in the model (``library="latent"``, whose guide then samples ``"library"``);
* ``exp(h)`` with ``library="none"``: scVAE's unconstrained parameterisation.

``constrained_poisson`` is scVAE's name for the Poisson whose rates are the softmax over genes times the
cell's total count; it is ``poisson`` with the observed library, and refuses any other choice.

The inverse dispersion is one learned value per gene (``dispersion="gene"``, the default), one per gene and
batch (``dispersion="gene-batch"``: the model needs a categorical covariate, whose first column is the batch),
or a decoder output per gene and cell (``dispersion="gene-cell"``).
"""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from pyrovae.distributions.negative_binomial import NegativeBinomial, ZeroInflatedNegativeBinomial
from pyrovae.distributions.poisson import Poisson as PoissonDistribution
from pyrovae.distributions.poisson import ZeroInflatedPoisson as ZeroInflatedPoissonDistribution
from pyrovae.likelihoods.base import Likelihood, first_bad_index, register_likelihood

LIBRARY_MODES = ("observed", "latent", "none")
DISPERSION_MODES = ("gene", "gene-batch", "gene-cell")


class CountLikelihood(Likelihood):
    """Base class of the count likelihoods: the mean, the library size and the checks on count data.

    :param str library: ``"observed"`` (size factor), ``"latent"`` (log-normal latent) or ``"none"``.
    :param library_prior: ``(loc, scale)`` of log library under the latent library's log-normal prior;
        set it from the training counts with :meth:`fit_library_prior` when not given.
    :param float min_mean: floor of the mean, which keeps ``log(mean)`` finite when a softmax underflows.
    """

    support = constraints.nonnegative_integer
    has_dispersion = False
    has_gate = False

    def __init__(self, library: str = "observed", library_prior: tuple[float, float] | None = None) -> None:
        super().__init__()
        if library not in LIBRARY_MODES:
            raise ValueError(f"library must be one of {LIBRARY_MODES}, got {library!r}")
        self.library = library
        loc, scale = library_prior if library_prior is not None else (math.nan, math.nan)
        self.register_buffer("library_loc", torch.tensor(float(loc)))
        self.register_buffer("library_scale", torch.tensor(float(scale)))

    @property
    def needs_library(self) -> bool:
        return self.library != "none"

    def fit_library_prior(self, counts) -> CountLikelihood:
        """Set the latent library's prior to the mean and standard deviation of log total counts of ``counts``
        (a :class:`~pyrovae.data.CountData`, tensor, array or sparse matrix, cells x genes)."""
        totals = torch.as_tensor(_row_sums(counts), dtype=torch.float64)
        if (totals <= 0).any():
            raise ValueError("fit_library_prior: some cells have no counts; filter empty cells first")
        log_totals = totals.log()
        self.library_loc.fill_(float(log_totals.mean()))
        self.library_scale.fill_(max(float(log_totals.std()), 1e-3))
        return self

    def library_prior(self) -> dist.TorchDistribution:
        """p(library) = LogNormal(loc, scale) for ``library="latent"``."""
        if not torch.isfinite(self.library_loc):
            raise ValueError(
                "the latent library's prior is not set: call model.likelihood.fit_library_prior(train_counts) "
                "or pass library_prior=(mean, std of log total counts)"
            )
        return dist.LogNormal(self.library_loc, self.library_scale)

    def mean(self, h: torch.Tensor, library: torch.Tensor | None) -> torch.Tensor:
        """The mean counts ``(..., x_dim)`` from decoder outputs ``h`` and the library ``(...)``."""
        if self.library == "none":
            return h.clamp(max=80.0).exp()
        if library is None:
            raise ValueError(
                f"this {type(self).__name__} likelihood scales its mean by the cell's library size; pass library= "
                "(the observed total counts, shape (batch,)) to decode()"
            )
        return library.unsqueeze(-1) * torch.softmax(h, dim=-1)

    def proportions(self, outputs: torch.Tensor) -> torch.Tensor:
        """The library-free expression ``softmax(h)`` over genes ``(..., x_dim)`` from the decoder's output: each
        gene's share of a cell's expected counts (scVI's ``px_scale``), before any zero inflation."""
        return torch.softmax(self.split(outputs)[0], dim=-1)

    def check_data(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        bad = (x < 0) | (x != x.round())
        if bad.any():
            index = first_bad_index(bad)
            raise ValueError(
                f"the {name} likelihood needs non-negative integer counts, found {x[index].item()} at "
                f"(cell, gene) {index}; pass raw UMI counts, not normalised or log-transformed values"
            )
        if self.library != "none":
            empty = x.sum(-1) == 0
            if empty.any():
                raise ValueError(
                    f"a cell (row {int(empty.nonzero()[0])} of the {len(x)} checked) has no counts on the model's "
                    "genes, so its library size is 0; remove empty cells (pyrovae.data.CountData.filter_cells("
                    "min_counts=1); an AnnData: scanpy.pp.filter_cells(adata, min_counts=1); a stream: a gene "
                    "panel on which every cell has counts, or shards without such cells)"
                )

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}, library={self.library}"


class _Dispersion(CountLikelihood):
    """Adds the inverse dispersion theta: a per-gene parameter or one decoder output per gene and cell."""

    has_dispersion = True

    def __init__(self, dispersion: str = "gene", library: str = "observed", library_prior=None) -> None:
        super().__init__(library, library_prior)
        if dispersion not in DISPERSION_MODES:
            raise ValueError(f"dispersion must be one of {DISPERSION_MODES}, got {dispersion!r}")
        self.dispersion = dispersion
        self.num_outputs = 1 + (dispersion == "gene-cell") + self.has_gate

    @property
    def needs_batch(self) -> bool:
        """Whether the likelihood is indexed by the batch (``dispersion="gene-batch"``)."""
        return self.dispersion == "gene-batch"

    def setup(self, x_dim: int) -> None:
        super().setup(x_dim)
        if self.dispersion == "gene":
            self.log_inverse_dispersion = nn.Parameter(torch.zeros(x_dim))

    def setup_batches(self, num_batches: int) -> None:
        """One inverse dispersion per gene and batch (called by a model built with a batch covariate)."""
        self.log_inverse_dispersion = nn.Parameter(torch.zeros(int(num_batches), self.x_dim))

    def inverse_dispersion(self, raw: torch.Tensor | None, batch_index: torch.Tensor | None = None) -> torch.Tensor:
        if raw is not None:
            log_theta = raw
        elif self.needs_batch:
            if batch_index is None:
                raise ValueError("dispersion='gene-batch' needs the batch of each cell (the model's cat[:, 0])")
            log_theta = self.log_inverse_dispersion[batch_index]
        else:
            log_theta = self.log_inverse_dispersion
        return log_theta.clamp(-20.0, 25.0).exp()  # theta in [2e-9, 7e10]: NB between very wide and Poisson

    def parts(self, outputs: torch.Tensor):
        """(mean logits, raw log theta or None, gate logits or None) from the decoder output."""
        chunks = list(self.split(outputs))
        h = chunks.pop(0)
        raw_theta = chunks.pop(0) if self.dispersion == "gene-cell" else None
        gate = chunks.pop(0) if self.has_gate else None
        return h, raw_theta, gate

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dispersion={self.dispersion}"


@register_likelihood("poisson")
class Poisson(CountLikelihood):
    """x ~ Poisson(mean)."""

    def forward(self, outputs: torch.Tensor, library: torch.Tensor | None = None) -> dist.TorchDistribution:
        (h,) = self.split(outputs)
        return PoissonDistribution(self.mean(h, library)).to_event(1)


@register_likelihood("constrained_poisson")
class ConstrainedPoisson(Poisson):
    """scVAE's constrained Poisson: rates ``softmax(h) * N``, N the cell's observed total count, so the rates
    of a cell sum to its count."""

    def __init__(self, library: str = "observed") -> None:
        if library != "observed":
            raise ValueError("constrained_poisson scales by the observed total count; use poisson for other libraries")
        super().__init__("observed")


@register_likelihood("zip")
class ZeroInflatedPoisson(CountLikelihood):
    """x ~ gate * delta_0 + (1 - gate) * Poisson(mean), with the gate logits a decoder output per gene and cell."""

    has_gate = True
    num_outputs = 2

    def forward(self, outputs: torch.Tensor, library: torch.Tensor | None = None) -> dist.TorchDistribution:
        h, gate_logits = self.split(outputs)
        return ZeroInflatedPoissonDistribution(self.mean(h, library), gate_logits).to_event(1)


@register_likelihood("nb")
class NegativeBinomialLikelihood(_Dispersion):
    """x ~ NB(mean, inverse dispersion theta): variance mean + mean^2 / theta."""

    def forward(self, outputs: torch.Tensor, library: torch.Tensor | None = None,
                batch_index: torch.Tensor | None = None) -> dist.TorchDistribution:
        h, raw_theta, _ = self.parts(outputs)
        mean = self.mean(h, library)
        return NegativeBinomial(mean, self.inverse_dispersion(raw_theta, batch_index)).to_event(1)


@register_likelihood("zinb")
class ZeroInflatedNegativeBinomialLikelihood(_Dispersion):
    """x ~ gate * delta_0 + (1 - gate) * NB(mean, theta), gate logits a decoder output per gene and cell."""

    has_gate = True

    def forward(self, outputs: torch.Tensor, library: torch.Tensor | None = None,
                batch_index: torch.Tensor | None = None) -> dist.TorchDistribution:
        h, raw_theta, gate_logits = self.parts(outputs)
        mean = self.mean(h, library)
        theta = self.inverse_dispersion(raw_theta, batch_index)
        return ZeroInflatedNegativeBinomial(mean, theta, gate_logits).to_event(1)


def _row_sums(counts) -> torch.Tensor:
    """Total counts per cell of a CountData, tensor, array or scipy sparse matrix (cells x genes)."""
    if hasattr(counts, "library_sizes"):
        return torch.from_numpy(counts.library_sizes)
    if hasattr(counts, "tocsr"):
        return torch.from_numpy(np.asarray(counts.sum(axis=1)).ravel())
    return torch.as_tensor(counts).sum(-1)


__all__ = [
    "CountLikelihood",
    "ConstrainedPoisson",
    "NegativeBinomialLikelihood",
    "Poisson",
    "ZeroInflatedNegativeBinomialLikelihood",
    "ZeroInflatedPoisson",
    "LIBRARY_MODES",
    "DISPERSION_MODES",
]

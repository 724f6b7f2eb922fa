"""The Gaussian-mixture VAE: a categorical component y, p(z | y) Gaussian, p(x | z) any likelihood.

As in scVAE (Gronbech et al., Bioinformatics 2020) and Dilokthanakul et al. (2016)::

    y ~ Categorical(pi)              (uniform, or learned weights)
    z | y ~ N(mu_y, diag sigma_y^2)  (learned per component)
    x | z ~ likelihood(decoder(z))

Paired with :class:`~pyrovae.guides.GMVAEGuide`, whose q(y | x) is enumerated in parallel, so that
``TraceEnum_ELBO`` (``train(..., elbo="enum")``) sums the component out exactly instead of sampling it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyrovae.models.vae import VAE
from torch import nn

from pyrovae.likelihoods import Likelihood
from pyrovae.nn import register_module, take_loaded
from pyrovae.nn.checks import check_enumeration_room, check_int, check_real


class GMVAE(VAE):
    """A :class:`VAE` whose prior is a mixture of ``num_components`` learned diagonal Gaussians.

    Sites, all in ``pyro.plate("data")``: ``"y"`` (the component), ``"z"`` and ``"x"`` (and ``"library"``
    for a latent library size). :meth:`prior` is the marginal mixture p(z), used by :meth:`sample`.

    :param int num_components: K, the number of mixture components (clusters).
    :param bool learn_weights: learn the mixture weights pi (default: uniform and fixed).
    :param float init_spread: standard deviation of the random initial component means (> 0: equal means would
        never separate).
    :param str name: the model's name in Pyro's param store (see :class:`VAE`).
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        num_components: int,
        hidden: Sequence[int] = (400,),
        likelihood: str | Likelihood = "bernoulli",
        activation: str | nn.Module = "relu",
        decoder: nn.Module | None = None,
        learn_weights: bool = False,
        init_spread: float = 1.0,
        *,
        batch_norm: bool = False,
        dropout: float = 0.0,
        categorical: Sequence[int] = (),
        continuous: int = 0,
        inject_covariates: str = "all",
        name: str | None = None,
    ) -> None:
        num_components = check_int(type(self).__name__, "num_components", num_components)
        if num_components == 1:
            warnings.warn(f"{type(self).__name__} with num_components=1 has a single Gaussian component: it is a VAE "
                          "with a learned Gaussian prior and clusters nothing; pass num_components >= 2 to cluster",
                          UserWarning, stacklevel=2)
        init_spread = check_real(type(self).__name__, "init_spread", init_spread)
        super().__init__(x_dim, z_dim, hidden, likelihood, activation, decoder, batch_norm=batch_norm, dropout=dropout,
                         categorical=categorical, continuous=continuous, inject_covariates=inject_covariates,
                         name=name)
        self.num_components = num_components
        self.component_locs = nn.Parameter(init_spread * torch.randn(self.num_components, self.z_dim))
        # softplus(raw) = 1 at initialisation
        self.component_raw_scales = nn.Parameter(torch.full((self.num_components, self.z_dim), math.log(math.e - 1)))
        logits = torch.zeros(self.num_components)
        if learn_weights:
            self.component_logits = nn.Parameter(logits)
        else:
            self.register_buffer("component_logits", logits)

    @property
    def component_scales(self) -> torch.Tensor:
        """sigma_y, (num_components, z_dim)."""
        return nn.functional.softplus(self.component_raw_scales) + 1e-4

    def component_prior(self) -> dist.Categorical:
        """p(y)."""
        take_loaded(self)
        return dist.Categorical(logits=self.component_logits)

    def component(self, y: torch.Tensor) -> dist.TorchDistribution:
        """p(z | y) for component indices ``y`` of any shape (enumerated ones included)."""
        take_loaded(self)
        return dist.Normal(self.component_locs[y], self.component_scales[y]).to_event(1)

    def prior(self) -> dist.TorchDistribution:
        """The marginal p(z) = sum_y p(y) N(z | mu_y, sigma_y^2), a mixture with event shape ``(z_dim,)``."""
        take_loaded(self)
        components = dist.Normal(self.component_locs, self.component_scales).to_event(1)
        return dist.MixtureSameFamily(self.component_prior(), components)

    def latent_sites(self) -> dict[str, dist.TorchDistribution]:
        """p(y) at ``"y"`` and the marginal p(z) at ``"z"`` (the support and event shape a guide must match)."""
        return {"y": self.component_prior(), **super().latent_sites()}

    def forward(self, x: torch.Tensor | None = None, cat: torch.Tensor | None = None,
                cont: torch.Tensor | None = None, y: torch.Tensor | None = None, *,
                num_data: int | None = None) -> None:
        """The Pyro model (``x=None`` with ``num_data``: the prior predictive, as for :class:`VAE`)."""
        # known labels y (label transfer) enter through the guide: GMVAEGuide's q(y | x) is the point mass on them
        register_module(self)
        num_data = self.check_call(x, cat, cont, num_data)
        check_enumeration_room(type(self).__name__)
        with pyro.plate("data", num_data):
            y = pyro.sample("y", self.component_prior())
            z = pyro.sample("z", self.component(y))
            pyro.sample("x", self._decode_with(z, self.library(x), cat, cont), obs=x)

"""Likelihoods for binary and real-valued data: Bernoulli, continuous Bernoulli and Gaussian."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from pyrovae.likelihoods.base import Likelihood, first_bad_index, register_likelihood


@register_likelihood("bernoulli")
class Bernoulli(Likelihood):
    """Independent Bernoulli pixels/features with the decoder output as logits. Data must be 0 or 1."""

    support = constraints.boolean

    def forward(self, outputs: torch.Tensor) -> dist.TorchDistribution:
        (logits,) = self.split(outputs)
        return dist.Bernoulli(logits=logits).to_event(1)

    def check_data(self, x: torch.Tensor) -> None:
        bad = (x != 0) & (x != 1)
        if bad.any():
            index = first_bad_index(bad)
            raise ValueError(
                f"the bernoulli likelihood needs 0/1 data, found {x[index].item()} at index {index}; "
                "binarise the data (e.g. load_mnist(binarize='dynamic')) or use likelihood='continuous_bernoulli'"
            )


@register_likelihood("continuous_bernoulli")
class ContinuousBernoulli(Likelihood):
    """The continuous Bernoulli of Loaiza-Ganem & Cunningham (2019), the normalised form of
    "binary cross-entropy on grey levels": a proper density on [0, 1]."""

    support = constraints.unit_interval

    def forward(self, outputs: torch.Tensor) -> dist.TorchDistribution:
        (logits,) = self.split(outputs)
        return dist.ContinuousBernoulli(logits=logits).to_event(1)

    def check_data(self, x: torch.Tensor) -> None:
        bad = (x < 0) | (x > 1)
        if bad.any():
            index = first_bad_index(bad)
            raise ValueError(
                f"the continuous_bernoulli likelihood needs data in [0, 1], found {x[index].item()} at index {index}; "
                "rescale the data or use likelihood='gaussian'"
            )


@register_likelihood("gaussian")
class Gaussian(Likelihood):
    """Independent Gaussian features with the decoder output as mean.

    The standard deviation is fixed (``scale=`` or, as in the 1-D lab, ``inverse_variance=`` = 1/scale^2)
    or, when neither is given, a learned per-feature parameter.

    :param float scale: fixed standard deviation.
    :param float inverse_variance: fixed precision 1 / scale^2 (an alternative to ``scale``).
    :param float init_scale: initial value of the learned scale.
    :param float min_scale: floor of the learned scale, which keeps the likelihood bounded.
    :param str link: ``"identity"`` (the decoder output is the mean) or ``"sigmoid"`` (the mean is the
        sigmoid of the output, in (0, 1), as for grey-level images decoded through a final sigmoid).
    """

    LINKS = ("identity", "sigmoid")

    def __init__(
        self,
        *,  # Gaussian(784) read as scale 784 where get_likelihood("gaussian", 784) takes the width: named only
        scale: float | None = None,
        inverse_variance: float | None = None,
        init_scale: float = 1.0,
        min_scale: float = 1e-3,
        link: str = "identity",
    ) -> None:
        super().__init__()
        if link not in self.LINKS:
            raise ValueError(f"link must be one of {self.LINKS}, got {link!r}")
        self.link = link
        if scale is not None and inverse_variance is not None:
            raise ValueError("give either scale or inverse_variance, not both")
        if inverse_variance is not None:
            if inverse_variance <= 0:
                raise ValueError(f"inverse_variance must be positive, got {inverse_variance}")
            scale = 1.0 / math.sqrt(inverse_variance)
        if scale is not None and scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        if init_scale <= min_scale:
            raise ValueError(f"init_scale ({init_scale}) must exceed min_scale ({min_scale})")
        self.fixed_scale = scale
        self.init_scale = float(init_scale)
        self.min_scale = float(min_scale)

    def setup(self, x_dim: int) -> None:
        super().setup(x_dim)
        if self.fixed_scale is None:
            # softplus(raw) + min_scale = init_scale at initialisation
            raw = math.log(math.expm1(self.init_scale - self.min_scale))
            self.raw_scale = nn.Parameter(torch.full((x_dim,), raw))

    @property
    def scale(self) -> torch.Tensor | float:
        """The standard deviation: a float when fixed, a ``(x_dim,)`` tensor when learned."""
        if self.fixed_scale is not None:
            return self.fixed_scale
        return nn.functional.softplus(self.raw_scale) + self.min_scale

    def forward(self, outputs: torch.Tensor) -> dist.TorchDistribution:
        (loc,) = self.split(outputs)
        if self.link == "sigmoid":
            loc = torch.sigmoid(loc)
        scale = self.scale
        if not isinstance(scale, torch.Tensor):
            scale = torch.full_like(loc, scale)
        return dist.Normal(loc, scale.expand_as(loc)).to_event(1)

    def extra_repr(self) -> str:
        kind = f"scale={self.fixed_scale:g}" if self.fixed_scale is not None else "scale=learned per feature"
        return f"x_dim={self.x_dim}, {kind}" + (f", link={self.link}" if self.link != "identity" else "")

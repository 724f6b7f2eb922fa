"""Amortised normalising-flow guide: q(z | x) = the Normal guide's output pushed through conditional flows."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyrovae.guides.base import AmortizedGuide
from torch import nn

from pyrovae.nn.checks import check_int, check_real, check_widths

FLOW_KINDS = ("affine", "spline")


class FlowGuide(AmortizedGuide):
    """q(z | x) = (f_K o ... o f_1)_# N(mu(x), diag sigma(x)^2): a diagonal Gaussian made flexible by flows.

    The encoder outputs the Gaussian's mean and scale and a context vector h(x); each f_k is a conditional
    autoregressive flow of Pyro (:class:`~pyro.distributions.transforms.ConditionalAffineAutoregressive`, the
    inverse autoregressive flow of Kingma et al. 2016, or the rational-quadratic
    :class:`~pyro.distributions.transforms.ConditionalSplineAutoregressive` of Durkan et al. 2019) conditioned on
    h(x), with the coordinates reversed between flows. Sampling is one pass per flow, and a draw's density comes
    from the flows' cache, so training costs little more than the Normal guide's. It reduces the approximation
    gap of the Gaussian family (Cremer, Li & Duvenaud 2018); refit it to a trained model's frozen decoder with
    :func:`~pyrovae.infer.refit_guide` to measure that gap.

    Takes the construction arguments of every guide (:class:`~pyrovae.guides.AmortizedGuide`); a
    custom ``encoder`` maps ``(..., x_dim) -> (..., 2 z_dim + context_dim)`` (mean, raw scale,
    context). And:

    :param str flow: ``"affine"`` (IAF) or ``"spline"``.
    :param int num_flows: K, the number of flows.
    :param flow_hidden: hidden widths of each flow's autoregressive network (default ``[4 z_dim]``).
    :param int context_dim: length of h(x) (default ``2 z_dim``).
    :param float min_scale: floor added to the base Gaussian's standard deviation (> 0).
    """

    def __init__(self, x_dim: int, z_dim: int, *args, min_scale: float = 1e-5, flow: str = "affine",
                 num_flows: int = 2, flow_hidden: Sequence[int] | None = None,
                 context_dim: int | None = None, **options) -> None:
        super().__init__(x_dim, z_dim, *args, **options)
        who = type(self).__name__
        if flow not in FLOW_KINDS:
            raise ValueError(f"flow must be one of {FLOW_KINDS}, got {flow!r}")
        num_flows = check_int(who, "num_flows", num_flows)
        if self.z_dim < 2 and flow == "affine":
            raise ValueError("an autoregressive flow needs z_dim >= 2; use flow='spline' for a 1-D latent")
        self.context_dim = 2 * self.z_dim if context_dim is None else \
            check_int(who, "context_dim", context_dim)
        self.min_scale, self.flow_kind = check_real(who, "min_scale", min_scale), flow
        flow_hidden = list(check_widths(who, flow_hidden, "flow_hidden", allow_empty=False)) \
            if flow_hidden is not None else [4 * self.z_dim]
        self.build_encoder(2 * self.z_dim + self.context_dim)
        make = T.conditional_affine_autoregressive if flow == "affine" else T.conditional_spline_autoregressive
        self.flows = nn.ModuleList(make(self.z_dim, self.context_dim, hidden_dims=flow_hidden)
                                   for _ in range(num_flows))
        self.register_buffer("_reverse", torch.arange(self.z_dim - 1, -1, -1), persistent=False)

    def encode(self, x: torch.Tensor, cat: torch.Tensor | None = None,
               cont: torch.Tensor | None = None) -> dist.TorchDistribution:
        outputs = self.encoded(x, cat, cont)
        loc, raw_scale, context = outputs.split([self.z_dim, self.z_dim, self.context_dim], dim=-1)
        base = dist.Normal(loc, nn.functional.softplus(raw_scale) + self.min_scale).to_event(1)
        transforms = []
        for k, flow in enumerate(self.flows):
            if k > 0:
                transforms.append(T.Permute(self._reverse))
            transforms.append(flow.condition(context))
        return dist.TransformedDistribution(base, transforms)

"""Importance distributions for the held-out log p(x): the guide, a defensive mixture, a per-datum refined guide.

A proposal turns a guide into another guide *for one batch* of data: :func:`~pyrovae.infer.log_likelihood` draws
its importance samples from it and scores them against its own density, so every proposal gives an estimate that
is a lower bound in expectation and exact for the exact posterior. The sites it changes are the guide's continuous
latents; observed and enumerated sites (the GMVAE's y) are left alone, so the stratified sum over y still holds.

- :class:`GuideProposal`: the amortised guide q(z | x) itself.
- :class:`DefensiveProposal`: ``(1 - a) q + a widen(q)`` (Hesterberg 1995): a wider copy keeps the importance
  weights bounded where q is too narrow or too light-tailed.
- :class:`~pyrovae.infer.estimation.refined.RefinedProposal` (in :mod:`~pyrovae.infer.estimation.refined`): q's
  parameters optimised for each datum against the frozen model (semi-amortised inference, Kim et al. 2018; the
  "optimal" q* of Cremer, Li & Duvenaud 2018), from several starts (the encoder's output and the best of many prior
  draws), the distinct optima mixed (:mod:`pyrovae.infer.estimation.modes`).

What every proposal guarantees, and what none can: each has a density and is scored by it, so exp(estimate) is
unbiased for p(x_i) wherever the proposal covers the posterior's mass, and k-hat says when its weights are too
heavy-tailed to trust. Mass that a proposal never draws (a posterior mode far from the guide, for the guide and
defensive proposals; far from every start, for the refined ones) is missing from the estimate and invisible to
k-hat. The refined proposals search for such modes and report how many they found
(:attr:`~pyrovae.infer.LogLikelihood.num_modes`). Every proposal refuses a point-mass guide (``DeltaGuide``),
which has no density to score draws by.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyrovae.distributions import DefensiveMixture, widen
from pyrovae.infer.arguments import check_number
from pyrovae.infer.contract import DATA_PLATE
from pyrovae.infer.estimation.modes import ComponentMixture


def _data_index(msg: dict, fn) -> int | None:
    """The position of the ``"data"`` plate in ``fn`` 's batch shape (counted from the left), or None."""
    for frame in msg["cond_indep_stack"]:
        if frame.name == DATA_PLATE and frame.dim is not None:
            index = len(fn.batch_shape) + frame.dim
            return index if index >= 0 else None
    return None


class _ReplaceLatents(Messenger):
    """Replace the distribution of every continuous latent sample site with ``replace(name, fn, data_index)``, where
    ``data_index`` is the position of the data plate in ``fn`` 's batch shape."""

    def __init__(self, replace: Callable) -> None:
        super().__init__()
        self.replace = replace

    def _pyro_sample(self, msg: dict) -> None:
        fn = msg["fn"]
        if site_is_subsample(msg) or msg["is_observed"] or msg["infer"].get("enumerate"):
            return
        if getattr(fn.support, "is_discrete", False):
            return
        msg["fn"] = self.replace(msg["name"], fn, _data_index(msg, fn))


def with_latents_replaced(guide: Callable, replace: Callable) -> Callable:
    def proposal(*args, **kwargs):
        with _ReplaceLatents(replace):
            return guide(*args, **kwargs)

    return proposal


class Proposal:
    """An importance distribution built from a guide for one batch; subclasses implement :meth:`for_batch`."""

    name = "proposal"

    def for_batch(self, model: Callable, guide: Callable, x: torch.Tensor, max_plate_nesting: int) -> Callable:
        """A guide for the batch ``x``, from whose sites the importance samples are drawn and scored."""
        raise NotImplementedError  # pragma: no cover - abstract

    def __repr__(self) -> str:
        return self.name


class GuideProposal(Proposal):
    """The guide itself: the amortised q(z | x)."""

    name = "guide"

    def for_batch(self, model, guide, x, max_plate_nesting):
        return guide


class DefensiveProposal(Proposal):
    """``(1 - weight) q + weight widen(q)`` for every continuous latent of ``base`` 's proposal.

    :param float weight: the wide component's share of the draws.
    :param float scale: how much wider: Gaussian scales times ``scale``, spherical concentrations over ``scale**2``
        (see :func:`~pyrovae.distributions.widen`).
    :param df: Student-t degrees of freedom for a heavy-tailed wide component (Gaussian latents), or None.
    :param Proposal base: the proposal that is widened (default the guide; a :class:`RefinedProposal` gives the
        most reliable estimates).
    """

    def __init__(self, weight: float = 0.2, scale: float = 2.0, df: float | None = None,
                 base: Proposal | None = None) -> None:
        check_number("weight", weight, 0.0, strict=True)
        if weight >= 1.0:
            raise ValueError(f"weight is the wide component's share, in (0, 1); got {weight}")
        check_number("scale", scale, 1.0)
        if df is not None:
            check_number("df", df, 0.0, strict=True)
        self.weight, self.scale, self.df = float(weight), float(scale), df
        self.base = base or GuideProposal()
        self.name = "defensive" if isinstance(self.base, GuideProposal) else f"{self.base.name}+defensive"

    def for_batch(self, model, guide, x, max_plate_nesting):
        base = self.base.for_batch(model, guide, x, max_plate_nesting)

        def mixture(name, fn, index):
            return DefensiveMixture(fn, widened(fn, self.scale, self.df), self.weight)

        proposal = with_latents_replaced(base, mixture)
        proposal.num_modes = getattr(base, "num_modes", None)
        return proposal


def widened(fn, scale: float, df: float | None):
    """:func:`~pyrovae.distributions.widen`, component by component for a mixture of refined optima."""
    if isinstance(fn, ComponentMixture):
        return ComponentMixture([widen(c, scale, df) for c in fn.components], fn.log_weights)
    return widen(fn, scale, df)


__all__ = ["DefensiveProposal", "GuideProposal", "Proposal", "with_latents_replaced"]

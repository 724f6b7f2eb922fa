"""Importance distributions for the held-out log p(x): the guide, a defensive mixture, a per-datum refined guide.

A proposal turns a guide into another guide *for one batch* of data: :func:`~pyrovae.infer.log_likelihood` draws
its importance samples from it and scores them against its own density, so every proposal gives an estimate that
is a lower bound in expectation and exact for the exact posterior. The sites it changes are the guide's continuous
latents; observed and enumerated sites (the GMVAE's y) are left alone, so the stratified sum over y still holds.

- :class:`GuideProposal`: the amortised guide q(z | x) itself.
- :class:`DefensiveProposal`: ``(1 - a) q + a widen(q)`` (Hesterberg 1995): a wider copy keeps the importance
  weights bounded where q is too narrow or too light-tailed.
- :class:`RefinedProposal`: q's parameters optimised for each datum, starting from the encoder's output, against
  the frozen model (semi-amortised inference, Kim et al. 2018; the "optimal" q* of Cremer, Li & Duvenaud 2018).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import distributions as td

from pyrovae.distributions import DefensiveMixture, PowerSpherical, VonMisesFisher, widen
from pyrovae.infer.data import as_args
from pyrovae.infer.importance import log_importance_weights
from pyrovae.infer.settings import check_integer, check_number


class _ReplaceLatents(Messenger):
    """Replace the distribution of every continuous latent sample site with ``replace(name, fn)``."""

    def __init__(self, replace: Callable) -> None:
        super().__init__()
        self.replace = replace

    def _pyro_sample(self, msg: dict) -> None:
        fn = msg["fn"]
        if site_is_subsample(msg) or msg["is_observed"] or msg["infer"].get("enumerate"):
            return
        if getattr(fn.support, "is_discrete", False):
            return
        msg["fn"] = self.replace(msg["name"], fn)


def _with_latents_replaced(guide: Callable, replace: Callable) -> Callable:
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

        def mixture(name, fn):
            return DefensiveMixture(fn, widen(fn, self.scale, self.df), self.weight)

        return _with_latents_replaced(base, mixture)


# ---- per-datum refinement: each family's parameters in unconstrained form, and back -------------------------------

def _unconstrained(fn) -> dict[str, torch.Tensor]:
    """The parameters of ``fn`` as unconstrained tensors (their detached values), for optimisation."""
    if isinstance(fn, td.Independent):
        return _unconstrained(fn.base_dist)
    if isinstance(fn, td.LogNormal) or isinstance(fn, td.Normal):
        return {"loc": fn.loc, "log_scale": fn.scale.log()}
    if isinstance(fn, td.TransformedDistribution):
        return _unconstrained(fn.base_dist)
    if isinstance(fn, td.MultivariateNormal):
        tril = fn.scale_tril
        return {"loc": fn.loc, "tril": tril.tril(-1),
                "log_diagonal": tril.diagonal(dim1=-2, dim2=-1).log()}
    if isinstance(fn, (VonMisesFisher, PowerSpherical)):
        return {"direction": fn.loc, "log_concentration": fn.concentration.log()}
    if isinstance(fn, dist.Delta):
        raise ValueError("a point mass (DeltaGuide) has no spread to refine; refit a NormalGuide first")
    raise NotImplementedError(
        f"RefinedProposal does not know {type(fn).__name__}; supported: Normal, LogNormal, MultivariateNormal, "
        "VonMisesFisher, PowerSpherical, and Independent or TransformedDistribution of those"
    )


def _rebuilt(fn, params: dict[str, torch.Tensor]):
    """``fn`` 's family with the parameters ``params`` (from :func:`_unconstrained`)."""
    if isinstance(fn, td.Independent):
        return type(fn)(_rebuilt(fn.base_dist, params), fn.reinterpreted_batch_ndims)
    if isinstance(fn, td.LogNormal):
        return type(fn)(params["loc"], params["log_scale"].exp())
    if isinstance(fn, td.TransformedDistribution):
        return type(fn)(_rebuilt(fn.base_dist, params), fn.transforms)
    if isinstance(fn, td.Normal):
        return type(fn)(params["loc"], params["log_scale"].exp())
    if isinstance(fn, td.MultivariateNormal):
        tril = params["tril"].tril(-1) + torch.diag_embed(params["log_diagonal"].exp())
        return type(fn)(params["loc"], scale_tril=tril)
    direction = params["direction"]
    loc = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True).clamp(min=1e-12)
    return type(fn)(loc, params["log_concentration"].exp())


def _full_covariance(fn):
    """A diagonal Gaussian ``Normal(loc, scale).to_event(1)`` as the MultivariateNormal it is; others unchanged."""
    if isinstance(fn, td.Independent) and isinstance(fn.base_dist, td.Normal) and fn.reinterpreted_batch_ndims == 1 \
            and not isinstance(fn.base_dist, td.LogNormal):
        return dist.MultivariateNormal(fn.base_dist.loc, scale_tril=torch.diag_embed(fn.base_dist.scale))
    return fn


class RefinedProposal(Proposal):
    """The guide's q(z | x) with its parameters optimised for each datum of the batch against the frozen model.

    Starting from the encoder's output, ``steps`` Adam steps of rate ``lr`` (decayed linearly to ``lr / 10``)
    ascend, per datum, the ELBO (the
    Cremer et al. 2018 "optimal q in the family", whose ELBO measures the amortisation gap; with an enumerated y,
    the sum over y of the ELBOs of each q(z | x, y) against p(z | x, y)) or, with
    ``objective="iwae"``, the importance-weighted bound with ``num_particles`` samples, which favours a wider,
    mass-covering proposal. Data are optimised independently (per-element Adam on a sum of per-datum terms); a
    parameter entry that turns non-finite keeps the encoder's value. Works for every latent family
    :func:`~pyrovae.distributions.widen` knows, flows included (their base is refined), and with an enumerated y
    (each component's q(z | x, y) is refined). The model's and guide's own parameters are not changed.

    :param int steps: optimisation steps per batch.
    :param float lr: Adam's learning rate on the unconstrained parameters (location, log scale).
    :param int num_particles: reparameterised draws per datum and step.
    :param str objective: ``"elbo"`` or ``"iwae"``.
    :param bool full_covariance: refine a diagonal Gaussian q as a full-covariance one (a richer family: a Cholesky
        factor per datum); other families (spherical, flows, LogNormal) are refined as they are.
    :param bool memoize: keep each batch's refined parameters (keyed by the model, the guide and the batch's
        values) and reuse them when the same batch comes again, so several estimators share one q*.
    """

    def __init__(self, steps: int = 100, lr: float = 0.05, num_particles: int = 8, objective: str = "elbo",
                 full_covariance: bool = False, memoize: bool = False) -> None:
        check_integer("steps", steps, 0)
        check_number("lr", lr, 0.0, strict=True)
        check_integer("num_particles", num_particles, 1)
        if objective not in ("elbo", "iwae"):
            raise ValueError(f"objective must be 'elbo' or 'iwae', got {objective!r}")
        self.steps, self.lr, self.num_particles, self.objective = steps, float(lr), num_particles, objective
        self.full_covariance = bool(full_covariance)
        self._memory: dict | None = {} if memoize else None
        self.name = ("refined" if objective == "elbo" else "refined-iwae") + ("-full" if full_covariance else "")

    def for_batch(self, model, guide, x, max_plate_nesting):
        if self._memory is None:
            return self.refine(model, guide, x, max_plate_nesting)[0]
        args = as_args(x)
        digest = hashlib.sha1()
        for tensor in args:
            digest.update(str((tuple(tensor.shape), tensor.dtype, tensor.device)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        key = (id(model), id(guide), digest.hexdigest())
        if key not in self._memory:
            self._memory[key] = self.refine(model, guide, x, max_plate_nesting)[0]
        return self._memory[key]

    def refine(self, model, guide, x, max_plate_nesting) -> tuple[Callable, torch.Tensor]:
        """The refined guide for ``x`` and each datum's objective at the last step, ``(B,)`` (with an enumerated
        site, the objective summed over its values)."""
        leaves: dict[str, dict[str, torch.Tensor]] = {}

        def parameterised(name, fn):
            if self.full_covariance:
                fn = _full_covariance(fn)
            if name not in leaves:
                leaves[name] = {k: v.detach().clone().requires_grad_() for k, v in _unconstrained(fn).items()}
            params = leaves[name]
            current = _unconstrained(fn)
            for key, value in params.items():
                if value.shape != current[key].shape:
                    raise ValueError(
                        f"site {name!r}'s {key} changed shape from {tuple(value.shape)} to {tuple(current[key].shape)}"
                        " between calls: a refined proposal needs per-datum parameters that do not depend on other"
                        " sampled latents"
                    )
            return _rebuilt(fn, params)

        refined = _with_latents_replaced(guide, parameterised)
        with torch.enable_grad():
            objective = self._objective(model, refined, x, max_plate_nesting)  # creates the leaves
            if not leaves:
                raise ValueError("the guide has no continuous latent site to refine")
            start = {n: {k: v.detach().clone() for k, v in p.items()} for n, p in leaves.items()}
            flat = [v for p in leaves.values() for v in p.values()]
            optimizer = torch.optim.Adam(flat, lr=self.lr)
            for step in range(self.steps):
                for group in optimizer.param_groups:  # decay to a tenth: the last steps settle instead of jitter
                    group["lr"] = self.lr * (1.0 - 0.9 * step / max(self.steps - 1, 1))
                loss = -torch.nan_to_num(objective, nan=0.0, posinf=0.0, neginf=0.0).sum()
                grads = torch.autograd.grad(loss, flat, allow_unused=True)
                for leaf, grad in zip(flat, grads, strict=True):
                    leaf.grad = None if grad is None else torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                optimizer.step()
                objective = self._objective(model, refined, x, max_plate_nesting)
        with torch.no_grad():
            for name, params in leaves.items():
                for key, value in params.items():
                    value.copy_(torch.where(torch.isfinite(value), value, start[name][key]))
                    value.requires_grad_(False)
        return refined, objective.detach()

    def _objective(self, model, guide, x, max_plate_nesting) -> torch.Tensor:
        # (*enumerated, S, B): with an enumerated y, each q(z | x, y) is fitted to its own p(z | x, y), whatever the
        # weight of y (in the stratified sum the rare components would get almost no gradient)
        log_weights = log_importance_weights(model, guide, x, self.num_particles, max_plate_nesting,
                                             sum_enumerated=False)
        if self.objective == "elbo":
            per_value = log_weights.mean(-2)
        else:
            per_value = log_weights.logsumexp(-2) - math.log(self.num_particles)
        return per_value.reshape(-1, per_value.shape[-1]).sum(0)


_NAMED = {
    "guide": GuideProposal,
    "defensive": DefensiveProposal,
    "refined": RefinedProposal,
    "refined+defensive": lambda: DefensiveProposal(base=RefinedProposal()),
    "refined-iwae": lambda: RefinedProposal(objective="iwae"),
    "refined-full": lambda: RefinedProposal(full_covariance=True),
}


def as_proposal(proposal: str | Proposal) -> Proposal:
    """A :class:`Proposal` from itself or its name: ``"guide"``, ``"defensive"``, ``"refined"`` or
    ``"refined+defensive"`` (the most reliable: the refined guide mixed with a wider copy of itself)."""
    if isinstance(proposal, Proposal):
        return proposal
    if isinstance(proposal, str) and proposal in _NAMED:
        return _NAMED[proposal]()
    raise ValueError(f"proposal must be one of {sorted(_NAMED)} or a Proposal, got {proposal!r}")


__all__ = ["DefensiveProposal", "GuideProposal", "Proposal", "RefinedProposal", "as_proposal"]

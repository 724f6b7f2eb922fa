"""Bidirectional Monte Carlo (Grosse et al. 2015; Wu et al. 2017): how far an AIS schedule is from exact.

On data simulated from the model, (z, x) ~ p(z) p(x | z), the z that made each x is an exact draw from its
posterior p(z | x). AIS run forwards (from the start r to the posterior) gives a stochastic *lower* bound on
log p(x); run in reverse from that exact draw (from the posterior back to r), its weights estimate 1 / p(x) without
bias, which gives a stochastic *upper* bound. Both bounds meet as the schedule grows; the gap between them bounds
the error of the forward estimate on such data, so it says whether a schedule (steps, leapfrog steps, start) is long
enough for a model: the check of AIS that no diagnostic of its weights can make.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine

from pyrovae.infer.arguments import check_integer, floating_dtype
from pyrovae.infer.batches import as_args
from pyrovae.infer.estimation.ais import AnnealingPath, batch_ais, sigmoid_schedule
from pyrovae.infer.estimation.allocation import freed_memory_kept
from pyrovae.infer.estimation.log_likelihood import as_proposal
from pyrovae.infer.evaluation import evaluation_mode


@dataclass
class BDMC:
    """The two bounds on log p(x) of each simulated datum.

    :ivar lower: (N,) forward AIS estimates: stochastic lower bounds.
    :ivar upper: (N,) reverse AIS estimates from the exact posterior draw: stochastic upper bounds.
    :ivar x: the simulated data.
    :ivar num_steps: the schedule's steps.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    x: torch.Tensor
    num_steps: int

    @property
    def gap(self) -> torch.Tensor:
        """(N,) upper - lower: at least the forward estimate's error on these data (in expectation)."""
        return self.upper - self.lower

    @property
    def mean_gap(self) -> float:
        return float(self.gap.mean())


def simulate(model: Callable, num_data: int, latent_names, cat: torch.Tensor | None = None,
             cont: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``num_data`` draws (x, z) from the model's prior predictive, ``model(None, cat, cont, num_data=num_data)``
    (pyrovae's models; ``cat``, ``cont``: the covariates of the data to simulate, one row each), with the latents
    named ``latent_names``."""
    with poutine.trace() as capture, torch.no_grad():
        if cat is None and cont is None:
            model(None, num_data=num_data)
        else:
            model(None, cat, cont, num_data=num_data)
    trace = capture.trace
    missing = [name for name in latent_names if name not in trace.nodes]
    if missing or "x" not in trace.nodes:
        raise ValueError(f"the model's prior predictive has no site {missing or ['x']}; pass x and latents to bdmc")
    return trace.nodes["x"]["value"], {name: trace.nodes[name]["value"] for name in latent_names}


@torch.no_grad()
@freed_memory_kept()
def bdmc(model: Callable, guide: Callable, num_data: int = 16, num_chains: int = 16, num_steps: int = 500,
         leapfrog_steps: int = 5, step_size: float = 0.5, start="guide", target_accept: float = 0.65,
         x: torch.Tensor | None = None, latents: dict[str, torch.Tensor] | None = None,
         cat: torch.Tensor | None = None, cont: torch.Tensor | None = None) -> BDMC:
    """Forward and reverse AIS, with the schedule of :func:`~pyrovae.infer.ais_log_likelihood` (the same
    arguments), on ``num_data`` data simulated from ``model`` (or on ``x`` with the ``latents`` that generated it,
    for a model without a prior predictive). ``result.gap`` is how far that schedule is from exact there.

    A model built with covariates simulates data of the covariates ``cat`` (categorical codes) and ``cont``
    (continuous values), one row per datum (their number is ``num_data`` then): those of real data, e.g. a batch's."""
    rows = [len(c) for c in (cat, cont) if c is not None]
    if x is None and not rows and getattr(model, "covariates", None):
        raise ValueError(f"{type(model).__name__} was built with covariates: pass bdmc the covariates of the data to "
                         "simulate, cat= (codes) and cont= (values), one row per datum (e.g. those of a batch)")
    if rows:
        if len(set(rows)) > 1:
            raise ValueError(f"cat and cont must have one row per datum each, got {rows[0]} and {rows[1]} rows")
        num_data = rows[0]
        device = (cat if cat is not None else cont).device
        cat = torch.zeros(num_data, 0, dtype=torch.long, device=device) if cat is None else cat  # as data give none
        cont = torch.zeros(num_data, 0, dtype=floating_dtype(model, guide), device=device) if cont is None else cont
    check_integer("num_data", num_data, 1)
    check_integer("num_chains", num_chains, 1)
    check_integer("num_steps", num_steps, 1)
    num_tuning = min(max(8, num_chains // 8), 64)
    betas = sigmoid_schedule(num_steps)
    with evaluation_mode(model, guide, frozen=True), pyro.validation_enabled(False):
        if x is None:
            if not hasattr(model, "latent_sites"):
                raise ValueError("bdmc simulates data from pyrovae's models; for another model pass x and the "
                                 "latents that generated it")
            x, latents = simulate(model, num_data, list(model.latent_sites()), cat, cont)
        elif latents is None:
            raise ValueError("bdmc needs the latents that generated x (an exact posterior draw for each datum)")
        args = as_args(x) if cat is None and cont is None else (x, cat, cont)
        path = AnnealingPath(model, as_proposal(start).for_batch(model, guide, args, 1), args,
                             num_chains + num_tuning)
        # both directions whiten by the spread of the start's tuning draws (the reverse chains all start at one point)
        spread = {n: v[num_chains:].std(0, keepdim=True).clamp(min=1e-6) for n, v in path.start.items()}
        with torch.enable_grad():
            lower, _ = batch_ais(path, betas, leapfrog_steps, step_size, target_accept, False, num_tuning, spread)
            for name, site in path.sites.items():  # every chain starts again at the exact posterior draw
                exact = latents[name].to(path.start[name].dtype).expand_as(path.start[name])
                path.start[name] = site["transform"].inv(exact).clone()  # (a lifted sphere: a radius per chain)
            log_inverse, _ = batch_ais(path, betas.flip(0), leapfrog_steps, step_size, target_accept, False,
                                       num_tuning, spread)
    log_chains = math.log(num_chains)
    return BDMC((lower.logsumexp(0) - log_chains).cpu(), (log_chains - log_inverse.logsumexp(0)).cpu(), x.cpu(),
                num_steps)


__all__ = ["BDMC", "bdmc", "simulate"]

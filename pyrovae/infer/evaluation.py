"""ELBO, reconstruction log-likelihood and KL per datum, for training histories and reports."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyrovae.infer.data import BatchSource
from pyrovae.infer.distributed import all_reduce_sum


def elbo_terms(model: Callable, guide: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-sample estimates, summed over the batch, of E_q[log p(x | z)] and KL(q(z | x) || p(z)).

    Guide sites marked ``infer={"enumerate": "parallel"}`` (the GMVAE's y) are summed over exactly: every
    term is weighted by the guide's probability of the enumerated values, and their own KL term counts.
    """
    with poutine.enum(first_available_dim=-2):  # pyrovae models use one plate
        guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    log_weight = x.new_zeros(())  # log q(enumerated values | x), broadcast over the enumerated dimensions
    for site in guide_trace.nodes.values():
        if site["type"] == "sample" and site["infer"].get("_enumerate_dim") is not None:
            log_weight = log_weight + site["fn"].log_prob(site["value"])
    weight = log_weight.exp()

    def expected(term: torch.Tensor) -> torch.Tensor:
        return (weight * term).sum() if weight.dim() else term.sum()

    reconstruction = x.new_zeros(())
    kl = x.new_zeros(())
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["is_observed"]:
            reconstruction = reconstruction + expected(site["fn"].log_prob(site["value"]))
        else:
            guide_site = guide_trace.nodes[name]
            kl = kl + expected(guide_site["fn"].log_prob(guide_site["value"]) - site["fn"].log_prob(site["value"]))
    return reconstruction, kl


@torch.no_grad()
def evaluate(
    model: Callable, guide: Callable, batches: BatchSource, max_data: int | None = None, across_ranks: bool = False
) -> dict:
    """Mean per-datum ELBO, reconstruction log-likelihood and KL over ``batches`` (up to ``max_data`` data).

    :param bool across_ranks: every rank evaluated its own part of the data: average over all of them.
    """
    modules = [m for m in (model, guide) if isinstance(m, torch.nn.Module)]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    total_reconstruction, total_kl, count = 0.0, 0.0, 0
    try:
        with pyro.validation_enabled(False):
            for x in batches:
                reconstruction, kl = elbo_terms(model, guide, x)
                total_reconstruction += float(reconstruction)
                total_kl += float(kl)
                count += x.shape[0]
                if max_data is not None and count >= max_data:
                    break
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    if across_ranks:
        totals = all_reduce_sum(torch.tensor([total_reconstruction, total_kl, count], dtype=torch.float64))
        total_reconstruction, total_kl, count = totals.tolist()
    reconstruction, kl = total_reconstruction / count, total_kl / count
    return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}

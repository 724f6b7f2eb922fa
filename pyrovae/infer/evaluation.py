"""ELBO, reconstruction log-likelihood and KL per datum, for training histories and reports."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyrovae.infer.data import BatchSource


def elbo_terms(model: Callable, guide: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-sample estimates, summed over the batch, of E_q[log p(x | z)] and KL(q(z | x) || p(z))."""
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    reconstruction = x.new_zeros(())
    kl = x.new_zeros(())
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["is_observed"]:
            reconstruction = reconstruction + site["fn"].log_prob(site["value"]).sum()
        else:
            kl = kl - site["fn"].log_prob(site["value"]).sum()
            guide_site = guide_trace.nodes[name]
            kl = kl + guide_site["fn"].log_prob(guide_site["value"]).sum()
    return reconstruction, kl


@torch.no_grad()
def evaluate(model: Callable, guide: Callable, batches: BatchSource, max_data: int | None = None) -> dict:
    """Mean per-datum ELBO, reconstruction log-likelihood and KL over ``batches`` (up to ``max_data`` data)."""
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
    reconstruction, kl = total_reconstruction / count, total_kl / count
    return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}

"""ELBO, reconstruction log-likelihood and KL per datum, for training histories and reports."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyrovae.infer.arguments import check_integer, check_seed, floating_dtype
from pyrovae.infer.batches import as_args, as_batches, model_check, module_device
from pyrovae.infer.contract import check_model_guide
from pyrovae.infer.distributed import all_reduce_sum
from pyrovae.infer.seeding import seeded


def elbo_terms(model: Callable, guide: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-sample estimates, summed over the batch, of E_q[log p(x | z)] and KL(q(z | x) || p(z)).

    Guide sites marked ``infer={"enumerate": "parallel"}`` (the GMVAE's y) are summed over exactly: every
    term is weighted by the guide's probability of the enumerated values, and their own KL term counts.
    """
    args = as_args(x)
    x = args[0]
    with poutine.enum(first_available_dim=-2):  # pyrovae models use one plate
        guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
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


@contextlib.contextmanager
def evaluation_mode(*modules, frozen: bool = False):
    """The ``nn.Module`` s among ``modules`` in evaluation mode inside the block (no dropout; batch norm uses and
    keeps its running statistics), each back in its own mode after it. ``frozen``: their parameters without
    ``requires_grad`` inside the block too, for the estimators, which differentiate with respect to the latents or
    a proposal's own parameters only: a derivative written out by hand (a custom autograd function: the negative
    binomial's in its dispersion) is then not computed for nothing at every step, as autograd's own are not."""
    modes = [(m, m.training) for m in modules if isinstance(m, torch.nn.Module)]
    trained = [p for m, _ in modes for p in m.parameters() if p.requires_grad] if frozen else []
    for m, _ in modes:
        m.eval()
    for p in trained:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trained:
            p.requires_grad_(True)
        for m, mode in modes:
            m.train(mode)


@torch.no_grad()
def evaluate(
    model: Callable, guide: Callable, data, max_data: int | None = None, across_ranks: bool = False,
    batch_size: int | None = None, check_pairing: bool = True, num_particles: int = 1, seed: int | None = None,
) -> dict:
    """Mean per-datum ELBO, reconstruction log-likelihood and KL over ``data`` (up to ``max_data`` data), with the
    model and guide in evaluation mode.

    :param data: anything :func:`~pyrovae.data.as_source` accepts (on the model's device), or a :class:`BatchSource`.
    :param int max_data: evaluate the first batches up to at least this many data (>= 1; None: all of them).
    :param bool across_ranks: every rank evaluated its own part of the data: average over all of them.
    :param bool check_pairing: check the model and guide against each other on the first batch first;
        :func:`~pyrovae.infer.train` checks before its first step and with its first epoch's scores, not at every
        epoch's end.
    :param int num_particles: draws of the latents per datum, averaged (each estimate's noise falls as one over
        their square root; one draw, the default, is what ``train`` scores every epoch with).
    :param int seed: draw from torch's generator seeded with this (the same scores on every call), leaving the
        caller's generator as it was.
    """
    check_integer("max_data", max_data, 1, allow_none=True)
    check_integer("num_particles", num_particles, 1)
    check_seed(seed)
    if seed is not None:
        with seeded(seed):
            return evaluate(model, guide, data, max_data, across_ranks, batch_size, check_pairing, num_particles)
    batches = as_batches(data, batch_size, False, module_device(model, guide), check=model_check(model),
                         default_batch_size=1024, dtype=floating_dtype(model, guide), per_datum=False)
    total_reconstruction, total_kl, count = 0.0, 0.0, 0
    with evaluation_mode(model, guide):
        for args in batches:
            if count == 0 and check_pairing:
                check_model_guide(model, guide, args)  # the pairing, as train checks it
            for _ in range(num_particles):
                with pyro.validation_enabled(False):
                    reconstruction, kl = elbo_terms(model, guide, args)
                total_reconstruction += float(reconstruction) / num_particles
                total_kl += float(kl) / num_particles
            count += args[0].shape[0]
            if max_data is not None and count >= max_data:
                break
    if across_ranks:
        totals = all_reduce_sum(torch.tensor([total_reconstruction, total_kl, count], dtype=torch.float64))
        total_reconstruction, total_kl, count = totals.tolist()
    reconstruction, kl = total_reconstruction / count, total_kl / count
    return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}

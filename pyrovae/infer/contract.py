"""Checks of the model/guide contract, run once before training or evaluation."""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints

from pyrovae.infer.data import as_args


def _support_key(constraint: constraints.Constraint) -> tuple:
    event_dim = constraint.event_dim
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    bounds = tuple(  # the number of categories of a discrete site, the interval of a bounded one
        float(b) if isinstance(b, (int, float)) else None
        for b in (getattr(constraint, "lower_bound", None), getattr(constraint, "upper_bound", None))
    )
    return type(constraint), event_dim, bounds


def _support_name(constraint: constraints.Constraint) -> str:
    return repr(constraint).replace("IndependentConstraint", "independent")


def _latent_sites(trace) -> dict:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


def check_model_guide(model: Callable, guide: Callable, x: torch.Tensor) -> None:
    """Raise a ValueError when ``guide`` cannot be paired with ``model``.

    The guide must sample every latent site of the model, with the same event shape and the support the
    model's prior lives on (a Normal guide for a prior on the sphere fails here, naming both supports).
    """
    args = as_args(x)
    x = args[0]
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.no_grad(), poutine.block(), torch.random.fork_rng(devices=devices):  # no draws taken from the stream
        guide_trace = poutine.trace(guide).get_trace(*args)
        model_trace = poutine.trace(model).get_trace(*args)  # latents from the prior: shapes are the model's own
    guide_observed = [name for name, site in guide_trace.nodes.items() if site["type"] == "sample"
                      and site["is_observed"] and not site_is_subsample(site)
                      and not isinstance(site["fn"], dist.Unit)]  # a pyro.factor of the guide is no observation
    model_observes = any(site["type"] == "sample" and site["is_observed"] for site in model_trace.nodes.values())
    if guide_observed or not model_observes:
        raise ValueError(
            "the model observes no data" + (f" and the guide observes {guide_observed}" if guide_observed else "")
            + ": were the model and the guide passed in swapped order? The model comes first (it scores x, "
            "e.g. VAE), the guide second (it samples the latents, e.g. NormalGuide)"
        )
    guide_sites, model_sites = _latent_sites(guide_trace), _latent_sites(model_trace)
    for name, model_site in model_sites.items():
        guide_site = guide_sites.get(name)
        if guide_site is None:
            raise ValueError(
                f"the model's latent site {name!r} has no counterpart in the guide "
                f"(guide sites: {sorted(guide_sites) or 'none'}); the guide must sample every latent of the model"
            )
        model_fn, guide_fn = model_site["fn"], guide_site["fn"]
        if _support_key(model_fn.support) != _support_key(guide_fn.support):
            raise ValueError(
                f"site {name!r}: the guide's distribution {type(guide_fn).__name__} has support "
                f"{_support_name(guide_fn.support)}, but the model's prior {type(model_fn).__name__} lives on "
                f"{_support_name(model_fn.support)}; pair the model with a guide on the prior's support"
            )
        if model_fn.event_shape != guide_fn.event_shape:
            raise ValueError(
                f"site {name!r}: the guide samples events of shape {tuple(guide_fn.event_shape)} but the model's "
                f"prior has event shape {tuple(model_fn.event_shape)}; check the latent sizes of model and guide"
            )
    extra = sorted(set(guide_sites) - set(model_sites))
    if extra:
        raise ValueError(f"the guide samples site(s) {extra} that the model does not have")

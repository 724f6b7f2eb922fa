"""Checks of the model/guide contract: before training or evaluation, and inside Pyro's own inference.

:func:`check_model_guide` runs a model and a guide once and compares them (``train``, ``log_likelihood`` and
``evaluate`` call it first). :func:`check_received_latents` makes the same comparison from inside a pyrovae
model's call, so that Pyro's own ``SVI`` (every ELBO, JIT forms included) and ``Predictive`` refuse a mismatched
pair too: Pyro's ELBOs run the model under ``poutine.replay`` of the guide's trace, whose sites say what the guide
sampled; ``Predictive`` and ``poutine.condition`` hand the model values, which are checked against its prior.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from pyro.poutine.condition_messenger import ConditionMessenger
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.infer_config_messenger import InferConfigMessenger
from pyro.poutine.replay_messenger import ReplayMessenger
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints

from pyrovae.infer.batches import as_args
from pyrovae.nn import module_named

DATA_PLATE = "data"  # every per-datum site of a model and a guide lies inside pyro.plate(DATA_PLATE)
_DIVIDER = "$$$"


def _support_key(constraint: constraints.Constraint) -> tuple:
    event_dim = constraint.event_dim
    while hasattr(constraint, "base_constraint"):  # independent, a mixture's support: the set of the base
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
        and not site["infer"].get("is_auxiliary")  # an autoguide's joint latent, which its Delta sites unpack
    }


def check_sites(model_sites: dict, guide_sites: dict, enumerated=frozenset(), enumeration_hint: bool = False) -> None:
    """Raise a ValueError when the guide's latent distributions (by site name) cannot stand for the model's: every
    model latent needs a guide site of the same support and event shape, and the guide samples nothing else. The
    model's sites named in ``enumerated`` (summed out by ``TraceEnum_ELBO`` in the model) may be left out;
    ``enumeration_hint``: a discrete site left out is named with that way (under Pyro's SVI, which takes it)."""
    for name, model_fn in model_sites.items():
        guide_fn = guide_sites.get(name)
        if guide_fn is None and name in enumerated:
            continue
        if guide_fn is None:
            raise ValueError(
                f"the model's latent site {name!r} has no counterpart in the guide "
                f"(guide sites: {sorted(guide_sites) or 'none'}); the guide must sample every latent of the model"
                + ("; the likelihood's library size is latent: build the guide with latent_library=True"
                   if name == "library" else "")
                + ("; or sum it out in the model: config_enumerate(model) and TraceEnum_ELBO"
                   if enumeration_hint and model_fn.has_enumerate_support else "")
            )
        model_key, guide_key = _support_key(model_fn.support), _support_key(guide_fn.support)
        if model_key != guide_key:
            message = (
                f"site {name!r}: the guide's distribution {type(guide_fn).__name__} has support "
                f"{_support_name(guide_fn.support)}, but the model's prior {type(model_fn).__name__} lives on "
                f"{_support_name(model_fn.support)}; pair the model with a guide on the prior's support"
            )
            if model_key[0] is guide_key[0] and None not in model_key[2] + guide_key[2]:
                (low, high), (guide_low, guide_high) = model_key[2], guide_key[2]
                message += (f" (the guide takes values {guide_low:g}..{guide_high:g} and the model "
                            f"{low:g}..{high:g}: build both with the same number of categories, e.g. num_components)")
            if len(guide_fn.event_shape) > len(model_fn.event_shape) and (
                    guide_fn.event_shape[-len(model_fn.event_shape) or len(guide_fn.event_shape):]
                    == model_fn.event_shape):
                message += (f" (the guide's events {tuple(guide_fn.event_shape)} hold the prior's "
                            f"{tuple(model_fn.event_shape)} once per datum: sample inside `with pyro.plate(\"data\", "
                            "len(x))` and reinterpret only the latent's own dimensions, e.g. .to_event(1))")
            raise ValueError(message)
        if model_fn.event_shape != guide_fn.event_shape:
            on_sphere = ("sphere" in repr(getattr(model_fn, "support", "")).lower()
                         and len(model_fn.event_shape) == len(guide_fn.event_shape) == 1
                         and abs(model_fn.event_shape[0] - guide_fn.event_shape[0]) == 1)
            raise ValueError(
                f"site {name!r}: the guide samples events of shape {tuple(guide_fn.event_shape)} but the model's "
                f"prior has event shape {tuple(model_fn.event_shape)}; check the latent sizes of model and guide"
                + (" (SVAE and the spherical guides take the ambient dimension m = d + 1 of S^d; make_pair takes d)"
                   if on_sphere else "")
            )
    extra = sorted(set(guide_sites) - set(model_sites))
    if extra:
        raise ValueError(f"the guide samples site(s) {extra} that the model does not have")


def check_companions(model, guide) -> None:
    """Raise a ValueError when a pyrovae model and guide were built for other data: other covariates (both encode
    them, with other levels) or another number of mixture components."""
    model_covariates, guide_covariates = getattr(model, "covariates", None), getattr(guide, "covariates", None)
    if model_covariates and guide_covariates:
        model_spec = (model_covariates.categorical, model_covariates.continuous)
        guide_spec = (guide_covariates.categorical, guide_covariates.continuous)
        if model_spec != guide_spec:
            raise ValueError(
                f"the model was built with categorical={model_spec[0]}, continuous={model_spec[1]} but the guide "
                f"with categorical={guide_spec[0]}, continuous={guide_spec[1]}: build both from the same data "
                "(categorical=data.categorical_sizes, continuous=data.num_continuous)"
            )
    model_k, guide_k = getattr(model, "num_components", None), getattr(guide, "num_components", None)
    if model_k is not None and guide_k is not None and model_k != guide_k:
        raise ValueError(f"the model has {model_k} mixture components but the guide {guide_k}: build both with the "
                         "same num_components")


def check_finite_parameters(model: Callable, guide: Callable) -> None:
    """Raise a ValueError naming the first parameter of ``model`` or ``guide`` (torch modules) that holds a NaN or
    an infinity: a pair left so by an earlier divergence, which would otherwise fail deep inside a distribution."""
    named = [(role, name, parameter) for role, module in (("model", model), ("guide", guide))
             if isinstance(module, torch.nn.Module) for name, parameter in module.named_parameters()]
    if not named:
        return
    flags = [(~torch.isfinite(parameter.detach())).any() for _, _, parameter in named]
    if not bool(torch.stack([flag.to(flags[0].device) for flag in flags]).any()):  # one device sync
        return
    for role, name, parameter in named:
        bad = ~torch.isfinite(parameter.detach())
        if bool(bad.any()):
            raise ValueError(
                f"the {role}'s parameter {name!r} holds {int(bad.sum())} non-finite values (of "
                f"{parameter.numel()}): the pair diverged before (NaN data, or too high a learning rate, under "
                "a loop without train's guard). Load the last good weights (a checkpoint, load_pair) or build "
                "the pair again"
            )


def check_model_guide(model: Callable, guide: Callable, x: torch.Tensor) -> None:
    """Raise a ValueError when ``guide`` cannot be paired with ``model``.

    The guide must sample every latent site of the model, with the same event shape and the support the
    model's prior lives on (a Normal guide for a prior on the sphere fails here, naming both supports), and
    nothing else; pyrovae models and guides must also agree on their covariates and number of components.
    """
    check_finite_parameters(model, guide)
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
    model_latents, guide_latents = _latent_sites(model_trace), _latent_sites(guide_trace)
    summed = sorted(name for name, site in model_latents.items()
                    if site["infer"].get("enumerate") and name not in guide_latents)
    if summed:
        raise ValueError(
            f"the model sums {summed} out (config_enumerate) and the guide does not sample it: Pyro's SVI with "
            "TraceEnum_ELBO trains such a pair, but pyrovae's train, evaluate and log_likelihood score the ELBO and "
            "the importance weights by the guide's latents; give the guide that site (GMVAEGuide enumerates y in "
            "the guide, exactly) or train with pyro.infer.SVI"
        )
    check_sites({name: site["fn"] for name, site in model_latents.items()},
                {name: site["fn"] for name, site in guide_latents.items()})
    check_companions(model, guide)


def _is_latent(site: dict) -> bool:
    return (site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
            and not site["infer"].get("is_auxiliary"))


def _latent_source(names):
    """The innermost handler that hands the model values for its latent sites ``names``: a ``ReplayMessenger``
    (Pyro's ELBOs replay the guide's trace) or a ``ConditionMessenger`` (``Predictive``, ``poutine.condition``).
    A guide trace without any of those names is not judged: a guide of ``poutine.reparam`` (``z_decentered``) or
    of ``pyro.contrib.autoname.scope`` (``vae/z``) names the latents otherwise, rightly."""
    for frame in reversed(_PYRO_STACK):
        if isinstance(frame, ReplayMessenger):
            if frame.trace is not None and any(name in frame.trace.nodes for name in names):
                return frame
        elif isinstance(frame, ConditionMessenger) and any(name in frame.data for name in names):
            return frame
    return None


def _summed_out(sites: dict) -> frozenset:
    """The names of ``sites`` (name -> the model's distribution) that the model's enumeration sums out here: marked
    for it by a ``config_enumerate`` (an ``InferConfigMessenger``) around the model, under ``TraceEnum_ELBO``'s
    ``EnumMessenger``. A site's own ``infer`` is set only as it is sampled, after this check, so each config is
    asked about a message of the site as Pyro would build it; one that cannot answer it is taken to enumerate (Pyro's
    own check then warns of a site that was not)."""
    if not any(isinstance(frame, EnumMessenger) for frame in _PYRO_STACK):
        return frozenset()
    configs = [frame.config_fn for frame in _PYRO_STACK if isinstance(frame, InferConfigMessenger)]
    plate = CondIndepStackFrame(DATA_PLATE, -1, None, 0)

    def enumerated(name: str, fn) -> bool:
        message = {"type": "sample", "name": name, "fn": fn, "is_observed": False, "args": (), "kwargs": {},
                   "value": None, "infer": {}, "scale": 1.0, "mask": None, "cond_indep_stack": (plate,),
                   "done": False, "stop": False, "continuation": None}
        for config in configs:
            try:
                if config(message).get("enumerate"):
                    return True
            except Exception:  # noqa: BLE001 - a config written for other messages: Pyro's check has the last word
                return True
        return False

    return frozenset(name for name, fn in sites.items() if enumerated(name, fn))


def check_received_latents(model) -> None:
    """Inside a pyrovae model's call under Pyro's handlers: raise a ValueError when the latents handed to the model
    cannot be its own, with the messages of :func:`check_model_guide`.

    * Replayed from a guide's trace (every ELBO of ``SVI``, JIT forms included, and pyrovae's own scoring): the
      guide's site distributions are compared with the model's :meth:`latent_sites` (supports, event shapes, site
      names), and the guide modules found in the trace (by their parameters' names) with the model
      (:func:`check_companions`). This runs once per model and kind of guide (the guide trace's latent
      distributions and modules), cached on the model, and reads no tensor. It is skipped while JIT traces: Pyro's
      ``JitTrace_ELBO`` runs the model untraced once before tracing it, and ``train`` checks the pair first.
    * Conditioned values (``Predictive``, ``poutine.condition``): each value's event shape and support, against the
      model's prior; a host round trip, so only while Pyro's validation is on and nothing is traced. Values alone
      cannot show every mismatch: a Normal guide's draws for a prior on the sphere, or a GMVAE guide's components
      beyond the model's, are refused, but a vMF guide's unit vectors are valid draws of a Normal prior's space.
    """
    if torch.jit.is_tracing():  # sizes are traced values: the untraced call that precedes every trace has checked
        return
    frame = _latent_source(("y", "z", "library"))
    if frame is None:
        return
    if isinstance(frame, ReplayMessenger):
        guide_sites, owners = {}, set()
        for name, site in frame.trace.nodes.items():
            if site["type"] == "param":
                if _DIVIDER in name:
                    owners.add(name.split(_DIVIDER, 1)[0])
            elif _is_latent(site):
                guide_sites[name] = site["fn"]
        names = model.__dict__.get("_latent_names")
        sites = model.latent_sites() if names is None else None
        if names is None:
            names = model.__dict__["_latent_names"] = frozenset(sites)
        summed = frozenset()
        if not names <= guide_sites.keys():  # a latent the guide lacks: summed out in the model?
            sites = sites or model.latent_sites()
            summed = _summed_out(sites)
        key = (tuple((name, type(fn), tuple(fn.event_shape), _support_key(fn.support))
                     for name, fn in guide_sites.items()), frozenset(owners), summed)
        checked = model.__dict__.setdefault("_paired_guides", set())
        if key in checked:
            return
        check_sites(sites or model.latent_sites(), guide_sites, summed, enumeration_hint=True)
        for owner in owners:
            guide = module_named(owner)
            if guide is not None and guide is not model:
                check_companions(model, guide)
        checked.add(key)
        return
    if not is_validation_enabled():
        return
    data = frame.data
    for name, fn in model.latent_sites().items():
        if name not in data:
            continue
        value = data.nodes[name]["value"] if isinstance(data, Trace) else data[name]
        _check_value(name, value, fn)


def _check_value(name: str, value, fn) -> None:
    event = tuple(fn.event_shape)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"the value given for site {name!r} must be a tensor, got {type(value).__name__}")
    if event and tuple(value.shape[value.dim() - len(event):]) != event:
        raise ValueError(
            f"site {name!r}: the value given has shape {tuple(value.shape)}, but the model's prior "
            f"{type(fn).__name__} has event shape {event}; check the latent sizes of model and guide"
        )
    inside = fn.support.check(value)
    if not bool(inside.all()):
        index = tuple(int(i) for i in (~inside).nonzero()[0])
        raise ValueError(
            f"site {name!r}: the value given at index {index} lies outside the support "
            f"{_support_name(fn.support)} of the model's prior {type(fn).__name__}; the values come from another "
            "model's guide or samples (a guide on the prior's support draws valid ones)"
        )


__all__ = ["DATA_PLATE", "check_companions", "check_model_guide", "check_received_latents", "check_sites"]

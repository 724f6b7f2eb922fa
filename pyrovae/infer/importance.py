"""Per-datum log importance weights log p(x_i, z) - log q(z | x_i), vectorised over samples.

Shared by :func:`~pyrovae.infer.log_likelihood` (the held-out estimate) and the IWAE objective.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

DATA_PLATE = "data"
_SAMPLES_PLATE = "_importance_samples"


def _data_frame(site: dict):
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE:
            return frame
    return None


def guess_max_plate_nesting(model: Callable, guide: Callable, *args, **kwargs) -> int:
    """The deepest plate nesting used by a model/guide pair, read off one dry run."""
    with poutine.block(), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    dims = [
        -frame.dim
        for trace in (guide_trace, model_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized and frame.dim is not None
    ]
    return max(dims, default=1)


def _per_datum(site: dict, num_samples: int, batch_size: int, max_plate_nesting: int) -> torch.Tensor:
    """Sum a site's log-density over every dimension but the samples and the data plate -> (S, B)."""
    frame = _data_frame(site)
    if frame is None:
        raise ValueError(
            f"sample site {site['name']!r} lies outside pyro.plate({DATA_PLATE!r}); a per-datum log-likelihood "
            f"needs every latent and observed site inside the {DATA_PLATE!r} plate (the model/guide contract)"
        )
    log_prob = site["log_prob"]
    width = max_plate_nesting + 1
    log_prob = log_prob.reshape((1,) * (width - log_prob.dim()) + log_prob.shape)
    data_dim = width + frame.dim  # position of the data plate among the kept dimensions
    other = [d for d in range(1, width) if d != data_dim]
    if other:
        log_prob = log_prob.sum(other, keepdim=True)
    return log_prob.reshape(log_prob.shape[0], -1).expand(num_samples, batch_size)


def log_importance_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int,
    max_plate_nesting: int = 1,
) -> torch.Tensor:
    """log w[s, i] = log p(x_i, z_s) - log q(z_s | x_i) for ``num_samples`` draws z_s ~ q(z | x_i): (S, B).

    The draws are vectorised in a plate left of the model's plates, so the model and guide must broadcast
    (every pyrovae model and guide does). Gradients flow when the guide is reparameterised.
    """
    batch_size = x.shape[0]
    samples_plate = pyro.plate(_SAMPLES_PLATE, num_samples, dim=-(max_plate_nesting + 1))
    with samples_plate:
        guide_trace = poutine.trace(guide).get_trace(x)
    with samples_plate:
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    log_weights = x.new_zeros(num_samples, batch_size)
    observed = False
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if sign < 0 and site["is_observed"]:
                continue
            if site["infer"].get("enumerate"):
                raise NotImplementedError(
                    f"site {site['name']!r} is enumerated; importance sampling sums enumerated sites through "
                    "the enumerated estimator (pass a model/guide pair without enumeration here)"
                )
            observed |= bool(site["is_observed"])
            log_weights = log_weights + sign * _per_datum(site, num_samples, batch_size, max_plate_nesting)
    if not observed:
        raise ValueError("the model has no observed site; call it with the data so that p(x | z) is scored")
    return log_weights

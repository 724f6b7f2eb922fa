"""Per-datum log importance weights log p(x_i, z) - log q(z | x_i), vectorised over samples.

Shared by :func:`~pyrovae.infer.log_likelihood` (the held-out estimate) and the IWAE objective.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyrovae.infer.batches import as_args
from pyrovae.infer.contract import DATA_PLATE, check_model_guide

SAMPLES_PLATE = "_importance_samples"  # the plate of the importance samples, left of the model's plates


def _data_frame(site: dict):
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE:
            return frame
    return None


def fingerprint(args: tuple) -> torch.Tensor:
    """A 64-bit hash of each datum x of a batch ``args = (x, ...)``, ``(batch,)`` int64 on the CPU: the bits of its
    values (as float64, so that one data set in float32 and float64 hashes alike; -0.0 as 0.0), mixed, each column
    weighed by an odd constant of its own and summed modulo 2^64 (on the data's device), so that other values or
    another order of the data give other hashes. The covariates are left out: two models of the same data, one
    conditioned on the batch and one not, are compared datum by datum."""
    x = args[0].detach()
    values = x.reshape(x.shape[0], -1)
    bits = (values.double() + 0.0).view(torch.int64) if values.is_floating_point() else values.long()
    bits = (bits ^ (bits >> 31)) * -7046029254386353131  # spread the high bits of a float into the low ones
    bits = bits ^ (bits >> 29)
    return (bits * _column_weights(values.shape[1]).to(bits.device)).sum(-1).cpu()  # int64 wraps: modulo 2^64


@functools.cache
def _column_weights(columns: int) -> torch.Tensor:
    """The odd constants of :func:`fingerprint`, one per column, the same in every batch and session."""
    generator = torch.Generator().manual_seed(1_000_003 + columns)
    return torch.randint(-(2**62), 2**62, (columns,), generator=generator) * 2 + 1


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


CHUNK_ELEMENTS = 2**24
"""Samples x data x features x enumerated values computed at once by default: about 1 GB for a conv decoder on
28 x 28 images."""


def enumerated_values(guide: Callable, *args, **kwargs) -> int:
    """How many joint values the guide's sites enumerated in parallel take (the GMVAE's K; 1 without any), read off
    one dry run (which leaves the random state as it was): every importance draw is scored for each of them at
    once. Sites enumerated under ``pyro.markov`` share dimensions, which this count does not see: it then errs
    high, which only bounds the memory more tightly than needed."""
    cuda = sorted({torch.cuda.current_device() if a.device.index is None else a.device.index
                   for a in args if isinstance(a, torch.Tensor) and a.is_cuda})
    with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=cuda):
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
    count = 1
    for site in trace.nodes.values():
        if site["type"] == "sample" and site["infer"].get("enumerate") == "parallel" and not site["is_observed"]:
            count *= int(site["fn"].enumerate_support(expand=False).shape[0])
    return count


ROW_ELEMENTS = 2**19
"""Data x features x enumerated values a batch is estimated with at once by default: more (a GMVAE with many
components on many genes) are estimated a part of the batch at a time, for a refined proposal optimises every datum
from several starts with several particles each, and its memory grows with all of them."""


def rows_per_pass(x: torch.Tensor, enumerated: int = 1) -> int:
    """The data of a batch ``x`` estimated at once (see :data:`ROW_ELEMENTS`): all of a batch of MNIST images or of
    a count model's cells on 2,000 genes; about 29 of a 9-component GMVAE's cells on 2,000 genes."""
    return max(1, ROW_ELEMENTS // (max(x.shape[-1], 1) * enumerated))


def split_rows(args: tuple, rows: int):
    """The batch ``args`` (tensors with the data on their first axis) ``rows`` data at a time."""
    size = args[0].shape[0]
    if size <= rows:
        yield args
        return
    for first in range(0, size, rows):
        yield tuple(a[first:first + rows] for a in args)


def samples_per_chunk(x: torch.Tensor, enumerated: int = 1) -> int:
    """Importance samples drawn at once for a batch ``x`` so that samples x data x features x ``enumerated`` values
    stay near :data:`CHUNK_ELEMENTS` (a GMVAE's components multiply the memory of every draw)."""
    return max(1, CHUNK_ELEMENTS // (x.shape[0] * max(x.shape[-1], 1) * enumerated))


def estimation_passes(model: Callable, guide: Callable, batches, max_samples_per_chunk: int | None = None):
    """The passes a data set is estimated in, ``(args, chunk, max_plate_nesting)``: the pairing checked (as train
    checks it) and the plate nesting and the guide's enumerated values read off the first of ``batches``, every
    batch split into :func:`rows_per_pass` data, each drawing ``chunk`` samples at once (``max_samples_per_chunk``,
    or :func:`samples_per_chunk`)."""
    max_plate_nesting = None
    for batch in batches:
        if max_plate_nesting is None:
            check_model_guide(model, guide, batch)
            max_plate_nesting = guess_max_plate_nesting(model, guide, *batch)
            enumerated = enumerated_values(guide, *batch)
        for args in split_rows(batch, rows_per_pass(batch[0], enumerated)):
            yield args, max_samples_per_chunk or samples_per_chunk(args[0], enumerated), max_plate_nesting


def per_datum_log_prob(site: dict, max_plate_nesting: int) -> torch.Tensor:
    """A site's log-density summed over every plate but the samples and the data plate: ``(*enum, S|1, B|1)``,
    with enumerated values (if any) in the leading dimensions."""
    frame = _data_frame(site)
    if frame is None:
        plates = [f.name for f in site.get("cond_indep_stack", ()) if f.vectorized and not f.name.startswith("_")]
        inside = f" (it is inside {plates}: the plate must be named {DATA_PLATE!r})" if plates else ""
        raise ValueError(
            f"sample site {site['name']!r} lies outside pyro.plate({DATA_PLATE!r}){inside}; a per-datum "
            f"log-likelihood needs every latent and observed site inside the {DATA_PLATE!r} plate (the model/guide "
            "contract)"
        )
    _check_unscaled(site)
    log_prob = site["log_prob"]
    width = max_plate_nesting + 1  # the samples plate and the model's plates
    if log_prob.dim() < width:
        log_prob = log_prob.reshape((1,) * (width - log_prob.dim()) + log_prob.shape)
    other = [d for d in range(-width + 1, 0) if d != frame.dim]
    return log_prob.sum(other) if other else log_prob


def _check_unscaled(site: dict) -> None:
    """Refuse a site whose log-density Pyro scales: the weights would not be those of p(x, z) / q(z | x)."""
    scale = site.get("scale", 1.0)
    if not isinstance(scale, torch.Tensor):  # Pyro's usual number: no tensor made in AIS's inner loop
        if scale == 1:
            return
    elif bool((scale == 1).all()):
        return
    shown = f"{float(scale):g}" if not isinstance(scale, torch.Tensor) or scale.numel() == 1 else "a tensor"
    raise ValueError(
        f"sample site {site['name']!r} has its log-density scaled by {shown} (a pyro.plate({DATA_PLATE!r}, size, "
        "subsample=...) whose size is not the number of data passed, or poutine.scale), so the importance weights "
        "would not be p(x, z) / q(z | x); score log p(x) with the plate's size equal to the data given (or no size "
        "and no subsample) and without poutine.scale"
    )


def point_mass(fn) -> bool:
    """Whether ``fn`` is a point mass (a ``Delta``) under its wrappers (``Independent``, masks, expansions)."""
    while True:
        if isinstance(fn, dist.Delta):
            return True
        inner = getattr(fn, "base_dist", None)
        if inner is None:
            return False
        fn = inner


def check_has_density(trace, what: str = "an importance distribution") -> None:
    """Refuse a guide trace whose continuous latent is a point mass: q(z | x) has no density there.

    With q = delta(z - f(x)), Pyro scores the draw with log q = 0, so ``log p(x, z) - log q`` is the joint
    log p(x, f(x)), not an importance weight: every "estimate" of log p(x) would be that joint, with constant
    weights that read as perfectly reliable.
    """
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]:
            continue
        if point_mass(site["fn"]):
            raise ValueError(
                f"the guide's site {name!r} is a point mass (a Delta, as DeltaGuide's q(z | x)); it has no density, "
                f"so it cannot serve as {what}: its 'estimate' of log p(x) would be the joint log p(x, f(x)) at the "
                "code. Refit a guide with a density to the frozen model and score that one, e.g. "
                "refit_guide(model, NormalGuide(x_dim, z_dim), train_data, test_data); compare auto-encoders by "
                "evaluate(model, guide, data), whose 'elbo' is then log p(x | f(x)) + log p(f(x))"
            )


@dataclass
class ImportanceDraws:
    """Log importance weights of a batch and which data's draws were all equal.

    :ivar log_weights: ``(S, B)``, as :func:`log_importance_weights` returns them.
    :ivar collapsed: ``(B,)`` bool: every one of the S draws of a continuous latent of datum i was the same value
        (S >= 2): q(z | x_i) is a point mass at the dtype's resolution (a scale that underflowed), so its weights
        are those of no density, however constant they look.
    """

    log_weights: torch.Tensor
    collapsed: torch.Tensor


def _weights_and_guide_trace(model, guide, args, num_samples, max_plate_nesting):
    """``(*enumerated, S, B)`` log weights and the guide's trace (with its log-densities)."""
    x = args[0]
    batch_size = x.shape[0]
    samples_plate = pyro.plate(SAMPLES_PLATE, num_samples, dim=-(max_plate_nesting + 1))
    with samples_plate, poutine.enum(first_available_dim=-(max_plate_nesting + 2)):
        guide_trace = poutine.trace(guide).get_trace(*args)
    with samples_plate:
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    log_weights = x.new_zeros(num_samples, batch_size)
    observed = False
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if sign < 0 and (site["is_observed"] or site["infer"].get("_enumerate_dim") is not None):
                continue  # q(y | x) of an enumerated site drops out of the stratified weights
            if sign > 0 and site["infer"].get("enumerate") and name not in guide_trace.nodes:
                raise NotImplementedError(
                    f"the model enumerates site {name!r}, which the guide does not sample; importance sampling "
                    "sums enumerated sites of the guide only (enumerate it in the guide, as GMVAEGuide does)"
                )
            observed |= bool(site["is_observed"])
            log_weights = log_weights + sign * per_datum_log_prob(site, max_plate_nesting)
    if not observed:
        raise ValueError("the model has no observed site; call it with the data so that p(x | z) is scored")
    return log_weights, guide_trace


def _collapsed(guide_trace, num_samples: int, batch_size: int, max_plate_nesting: int) -> torch.Tensor:
    """``(B,)``: the data whose S >= 2 draws of some continuous latent are all the same value."""
    collapsed = torch.zeros(batch_size, dtype=torch.bool)
    if num_samples < 2:
        return collapsed
    for site in guide_trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site) or site["is_observed"]:
            continue
        if site["infer"].get("_enumerate_dim") is not None or getattr(site["fn"].support, "is_discrete", False):
            continue
        value, fn = site["value"], site["fn"]
        batch_dims = value.dim() - len(fn.event_shape)
        sample_dim = batch_dims - (max_plate_nesting + 1)
        if sample_dim < 0 or value.shape[sample_dim] != num_samples:
            continue
        differs = value != value.narrow(sample_dim, 0, 1)
        if len(fn.event_shape):
            differs = differs.flatten(batch_dims).any(-1)
        spread = per_datum_log_prob({**site, "log_prob": differs.to(value.dtype)}, max_plate_nesting)  # (*enum, S, B)
        spread = spread.reshape(-1, *spread.shape[-2:]).sum((0, 1))
        collapsed |= (spread == 0).expand(batch_size).cpu()
    return collapsed


def importance_draws(model: Callable, guide: Callable, x, num_samples: int,
                     max_plate_nesting: int = 1) -> ImportanceDraws:
    """:func:`log_importance_weights` (summed over enumerated sites) for an estimate of log p(x): refuses a guide
    whose continuous latent is a point mass (:func:`check_has_density`) and says which data's draws collapsed
    onto one value."""
    args = as_args(x)
    log_weights, guide_trace = _weights_and_guide_trace(model, guide, args, num_samples, max_plate_nesting)
    check_has_density(guide_trace)
    if log_weights.dim() > 2:
        log_weights = log_weights.reshape(-1, num_samples, args[0].shape[0]).logsumexp(0)
    return ImportanceDraws(log_weights, _collapsed(guide_trace, num_samples, args[0].shape[0], max_plate_nesting))


def log_importance_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int,
    max_plate_nesting: int = 1,
    sum_enumerated: bool = True,
) -> torch.Tensor:
    """log w[s, i] = log p(x_i, z_s) - log q(z_s | x_i) for ``num_samples`` draws z_s ~ q(z | x_i): (S, B).
    ``x`` is the batch: a tensor, or the tuple of the model's arguments ``(x, cat, cont)``.

    The draws are vectorised in a plate left of the model's plates, so the model and guide must broadcast
    (every pyrovae model and guide does). Gradients flow when the guide is reparameterised. A point-mass guide
    is not refused here (the training objectives of an auto-encoder use it); :func:`importance_draws`, which
    the log-likelihood estimators use, refuses it.

    Guide sites marked ``infer={"enumerate": "parallel"}`` (the GMVAE's component y) are summed out
    exactly: every value y is scored with its own draw z_s^y ~ q(z | x, y), and

        w[s, i] = sum_y p(x_i, y, z_s^y) / q(z_s^y | x_i, y),

    an unbiased estimate of p(x_i) for each s (a stratified estimator in which q(y | x) cancels). With
    ``sum_enumerated=False`` the terms of the sum are returned instead, ``(*enumerated, S, B)``.
    """
    args = as_args(x)
    log_weights, _ = _weights_and_guide_trace(model, guide, args, num_samples, max_plate_nesting)
    if log_weights.dim() > 2 and sum_enumerated:  # enumerated values in the leading dimensions: sum them out
        log_weights = log_weights.reshape(-1, num_samples, args[0].shape[0]).logsumexp(0)
    return log_weights

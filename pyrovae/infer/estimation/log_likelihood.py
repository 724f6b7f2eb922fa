"""Importance-sampled estimate of the held-out log-likelihood log p(x), with PSIS diagnostics."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from tqdm.auto import tqdm

from pyrovae._caller import warn_user
from pyrovae.infer.arguments import check_device, check_integer, check_seed, floating_dtype
from pyrovae.infer.batches import as_batches, model_check, module_device
from pyrovae.infer.estimation.allocation import freed_memory_kept
from pyrovae.infer.estimation.importance import estimation_passes, fingerprint, importance_draws
from pyrovae.infer.estimation.proposals import DefensiveProposal, GuideProposal, Proposal
from pyrovae.infer.estimation.psis import khat_limit, psis_khat, psis_tail_length
from pyrovae.infer.estimation.refined import RefinedProposal
from pyrovae.infer.estimation.result import LogLikelihood
from pyrovae.infer.evaluation import evaluation_mode
from pyrovae.infer.seeding import seeded

_NAMED = {
    "guide": lambda steps: GuideProposal(),
    "defensive": lambda steps: DefensiveProposal(),
    "refined": lambda steps: RefinedProposal(steps=steps),
    "refined+defensive": lambda steps: DefensiveProposal(base=RefinedProposal(steps=steps)),
    "refined-iwae": lambda steps: RefinedProposal(objective="iwae", steps=steps),
    "refined-full": lambda steps: RefinedProposal(full_covariance=True, steps=steps),
}
REFINED = ("refined", "refined+defensive", "refined-iwae", "refined-full", "auto")  # what refine_steps sets


def _check_proposal_source(guide, data) -> None:
    """Refuse a Pyro autoguide (not amortised: its q(z) is fitted to one data set, and its draws lie on auxiliary
    sites) and warn about a shuffling DataLoader (the estimates would follow its random order)."""
    if isinstance(guide, pyro.infer.autoguide.AutoGuide):
        raise ValueError(
            f"log_likelihood takes an amortised guide q(z | x) as its proposal, and {type(guide).__name__} is a "
            "Pyro autoguide: it is fitted to the one data set it was trained on (its parameters are per datum or "
            "global, not a function of x), so it cannot propose for other data. Fit an amortised guide to the "
            "trained model, e.g. refit_guide(model, NormalGuide(x_dim, z_dim), data)"
        )
    sampler = getattr(data, "sampler", None)
    if isinstance(data, torch.utils.data.DataLoader) and isinstance(sampler, torch.utils.data.RandomSampler):
        warn_user("the DataLoader shuffles: per_datum (and flagged, certified) follow its random order, not the "
                   "data set's, so they cannot be paired with the data or another model's scores; pass "
                   "shuffle=False (the mean is unaffected)")


def as_proposal(proposal: str | Proposal, refine_steps: int | None = None) -> Proposal:
    """A :class:`Proposal` from itself or its name: ``"guide"``, ``"defensive"``, ``"refined"``,
    ``"refined+defensive"`` (the most reliable: the mixture of refined optima mixed with a wider copy of itself),
    ``"refined-iwae"`` or ``"refined-full"``; ``refine_steps``: the refined proposals' steps (default:
    :class:`~pyrovae.infer.RefinedProposal`'s, which grow with the latent size for a full covariance)."""
    if refine_steps is not None and proposal not in REFINED:
        raise ValueError(f"refine_steps sets the refinement of the proposals {list(REFINED)}, and proposal is "
                         f"{proposal!r}")
    if isinstance(proposal, Proposal):
        return proposal
    if isinstance(proposal, str) and proposal in _NAMED:
        return _NAMED[proposal](refine_steps)
    raise ValueError(f"proposal must be one of {sorted(['auto', *_NAMED])} or a Proposal, got {proposal!r}")


@dataclass
class BatchEstimate:
    """Importance sampling of one batch: per-datum ``per_datum``, ``mean_log_weight``, ``ess`` and ``khat`` (``(B,)``,
    on the CPU), and the counts of NaN weights (``undefined``) and of data whose draws collapsed (``collapsed``)."""

    per_datum: torch.Tensor
    mean_log_weight: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    undefined: int
    collapsed: int


def estimate_batch(model: Callable, draw_from: Callable, args: tuple, num_samples: int, chunk: int,
                   max_plate_nesting: int) -> BatchEstimate:
    """log p(x_i) of a batch ``args`` by ``num_samples`` draws of ``draw_from`` (a proposal's guide for the batch),
    drawn ``chunk`` at a time; k-hat is ``inf`` for a datum with a NaN weight or whose draws all collapsed."""
    x = args[0]
    chunks = []
    same_point = torch.ones(x.shape[0], dtype=torch.bool)  # every chunk's draws collapsed (S >= 2)
    compared = False
    remaining = num_samples
    while remaining > 0:
        size = min(remaining, chunk)
        draws = importance_draws(model, draw_from, args, size, max_plate_nesting)
        chunks.append(draws.log_weights)
        if size > 1:
            same_point &= draws.collapsed
            compared = True
        remaining -= size
    same_point &= compared  # one draw per chunk: nothing to compare
    log_weights = torch.cat(chunks).double()  # (S, B); float64 for the logsumexp over many samples
    nan_rows = log_weights.isnan().any(0).cpu()
    undefined = int(log_weights.isnan().sum())
    elbo = log_weights.nanmean(0)  # over the draws whose weight is defined (their rows are flagged: k-hat inf)
    log_weights = log_weights.nan_to_num(nan=-math.inf)
    normalised = log_weights - log_weights.max(0).values
    ess = normalised.logsumexp(0).mul(2).sub(normalised.mul(2).logsumexp(0)).exp().nan_to_num(0.0)
    khat = psis_khat(log_weights.T, resolution=torch.finfo(chunks[0].dtype).eps).cpu()
    khat = torch.where(nan_rows | same_point, torch.full_like(khat, math.inf), khat)
    return BatchEstimate((torch.logsumexp(log_weights, 0) - math.log(num_samples)).cpu(), elbo.cpu(),
                         ess.cpu(), khat, undefined, int(same_point.sum()))


@torch.no_grad()
@freed_memory_kept()
def log_likelihood(
    model: Callable,
    guide: Callable,
    data,
    num_samples: int = 500,
    batch_size: int | None = None,
    max_samples_per_chunk: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    proposal: str | Proposal = "guide",
    ais_chains: int | None = None,
    ais_steps: int | None = None,
    refine_steps: int | None = None,
    seed: int | None = None,
) -> LogLikelihood:
    """Estimate log p(x_i) for every datum by importance sampling.

    ``log p(x_i) ~= logsumexp_s [log p(x_i, z_s) - log r(z_s | x_i)] - log S`` with z_s ~ r(z | x_i)
    (Burda, Grosse & Salakhutdinov 2016). Works for any model/guide pair that follows the contract (per-datum sites
    in ``pyro.plate("data")``), plain Pyro functions included.

    What it guarantees: for any proposal r with a density that covers p(z | x_i), the exponential of each estimate is
    unbiased for p(x_i), so each estimate is a stochastic lower bound that tightens as S grows, exact for any S when r
    is the exact posterior. Each datum carries a certificate: the Pareto k-hat of its weights (above min(1 - 1 / log10
    S, 0.7), 0.63 at S = 500: the estimate cannot be trusted; it is a loose lower bound;
    :attr:`LogLikelihood.khat_limits`), the effective sample size and a Monte Carlo standard error
    (:attr:`LogLikelihood.mc_stderr`), and, for the refined proposals, the number of posterior modes found
    (:attr:`LogLikelihood.num_modes`). What no importance sampler can guarantee: mass r never draws (a mode far from
    every start) is missing from the estimate and from its k-hat alike; the refined proposals search for modes from
    several starts to make that unlikely, and say when the posterior is multimodal.

    When it refuses (ValueError): a guide whose latent is a point mass (``DeltaGuide``: q has no density, and its
    weights would give the joint log p(x, f(x)) at the code with a k-hat that reads as perfect; refit a guide with a
    density by :func:`~pyrovae.infer.refit_guide`), a site outside the ``"data"`` plate, bad numbers of samples.
    When it warns and flags: NaN weights (counted as zero weight; the datum's k-hat is ``inf``), draws of a datum
    that all collapsed onto one value (a scale that underflowed: k-hat ``inf``), and the guide's k-hat above its
    limit for more than a tenth of the data.

    The proposals: ``"guide"`` (the amortised q(z | x)); ``"defensive"`` (q mixed with a wider copy of itself);
    ``"refined"`` (q optimised per datum from several starts, the encoder's and the prior's best draws, and the
    distinct optima mixed); ``"refined+defensive"`` (that mixture mixed with a wider copy: the most reliable);
    see :mod:`pyrovae.infer.estimation.proposals` and :mod:`pyrovae.infer.estimation.refined`. ``"auto"`` escalates
    per datum, guide -> refined+defensive -> AIS, only for the data the previous estimator could not certify, and
    checks each importance-sampling certificate against a wider proposal, which k-hat alone cannot do (a proposal far
    narrower than the posterior has well-behaved weights from draws that never reach the mass it misses); the
    result says which estimator each datum used and what each stage cost (:mod:`pyrovae.infer.estimation.certify`).
    :attr:`LogLikelihood.certified` says which estimates can be trusted and :meth:`LogLikelihood.reasons` why not.

    :param data: a tensor ``(N, x_dim)``, a :class:`~pyrovae.data.TensorData`, a Dataset or a DataLoader.
    :param int num_samples: importance samples S per datum.
    :param int batch_size: data per batch (default 256; a DataLoader's or CellStream's own).
    :param int max_samples_per_chunk: draw the S samples in chunks of this size to bound memory
        (default: chosen so that samples x data x features x the guide's enumerated values (a GMVAE's K) in a
        chunk stay near 2^24, which bounds the decoder's memory: about 1 GB for a conv decoder on 28x28 images).
        A batch whose data x features x enumerated values exceed 2^19 is estimated a part at a time (a GMVAE
        with 9 components on 2,000 genes: 29 cells), for the refined proposals' memory grows with each datum.
    :param device: where to compute (default: the model's device).
    :param proposal: ``"auto"``, ``"guide"``, ``"defensive"``, ``"refined"``, ``"refined+defensive"`` or a
        :class:`~pyrovae.infer.estimation.proposals.Proposal`.
    :param int ais_chains: chains per datum of ``"auto"``'s AIS stage (default 128).
    :param int ais_steps: annealing steps of ``"auto"``'s AIS stage (default 200); its schedule is checked by
        bidirectional Monte Carlo whatever it is.
    :param int refine_steps: optimisation steps of the refined proposals and of ``"auto"``'s refined stage
        (default: ``max(100, 12 x`` the latent size per datum``)`` for a full-covariance refinement, as ``"auto"``'s
        of a Gaussian guide or of one on the sphere (refined as a projected normal); 100 within the guide's family:
        :class:`~pyrovae.infer.RefinedProposal`).
    :param int seed: draw from torch's generator seeded with this (the same estimate on every call, on one
        machine), leaving the caller's generator as it was; None (default): draw from the caller's generator.
    """
    check_integer("num_samples", num_samples, 1)
    check_integer("ais_chains", ais_chains, 1, allow_none=True)
    check_integer("ais_steps", ais_steps, 1, allow_none=True)
    check_integer("refine_steps", refine_steps, 1, allow_none=True)
    if proposal != "auto" and (ais_chains, ais_steps) != (None, None):
        raise ValueError(f"ais_chains and ais_steps set the AIS stage of proposal='auto', and proposal is "
                         f"{proposal!r}; use ais_log_likelihood for AIS on its own")
    check_integer("max_samples_per_chunk", max_samples_per_chunk, 1, allow_none=True)
    device = check_device(device) if device is not None else module_device(model, guide)
    if seed is not None:
        check_seed(seed)
        with seeded(seed):
            return log_likelihood(model, guide, data, num_samples, batch_size, max_samples_per_chunk, device,
                                  progress, proposal, ais_chains, ais_steps, refine_steps)
    _check_proposal_source(guide, data)  # after a seed's re-entry: its warning once
    if proposal == "auto":
        from pyrovae.infer.estimation.certify import auto_log_likelihood  # it uses AIS, which uses this module

        stage = {name: value for name, value in (("ais_chains", ais_chains), ("ais_steps", ais_steps),
                                                 ("refine_steps", refine_steps)) if value is not None}
        result = auto_log_likelihood(model, guide, data, num_samples, batch_size, max_samples_per_chunk, device,
                                     progress, **stage)
        uncertified = int((~result.certified).sum())
        if uncertified * 10 > len(result.certified):  # as the other proposals warn of their k-hats
            warn_user(
                f"proposal='auto' certified {len(result.certified) - uncertified} of the {len(result.certified)} "
                f"data: the other {uncertified} keep the best estimate found, which is not to be trusted (a lower "
                "bound where the proposal missed mass); result.reasons() says why for each, and more ais_chains or "
                "ais_steps, or a better-trained guide, certify more")
        return result
    proposal = as_proposal(proposal, refine_steps)
    per_datum, khats, mean_log_weights, effective, modes, prints = [], [], [], [], [], []
    undefined = collapsed = 0
    with evaluation_mode(model, guide, frozen=True):
        batches = as_batches(data, batch_size, shuffle=False, device=device, check=model_check(model),
                             default_batch_size=256, dtype=floating_dtype(model, guide))
        batches = tqdm(batches, desc="log-likelihood", disable=not progress, leave=False)
        for args, chunk, max_plate_nesting in estimation_passes(model, guide, batches, max_samples_per_chunk):
            with pyro.validation_enabled(False):
                draw_from = proposal.for_batch(model, guide, args, max_plate_nesting)
                estimate = estimate_batch(model, draw_from, args, num_samples, chunk, max_plate_nesting)
            per_datum.append(estimate.per_datum)
            mean_log_weights.append(estimate.mean_log_weight)
            effective.append(estimate.ess)
            khats.append(estimate.khat)
            modes.append(getattr(draw_from, "num_modes", None))
            prints.append(fingerprint(args))
            undefined += estimate.undefined
            collapsed += estimate.collapsed
    if not per_datum:
        raise ValueError("log_likelihood got an empty data set")
    if undefined:
        warn_user(f"{undefined} log importance weights are NaN (an overflow in the model or proposal); they count "
                   "as zero weight and their data get k-hat = inf")
    if collapsed:
        warn_user(
            f"for {collapsed} data every draw of q(z | x) was the same point: the guide's scale collapsed below the "
            "dtype's resolution, so q is a point mass there and has no usable density; their k-hat is inf. Refit "
            "the guide (refit_guide) or score in float64")
    num_modes = torch.cat([m.cpu() for m in modes]) if all(m is not None for m in modes) else None
    result = LogLikelihood(torch.cat(per_datum).cpu(), torch.cat(khats).cpu(), num_samples, proposal.name,
                           mean_log_weight=torch.cat(mean_log_weights).cpu(), ess=torch.cat(effective).cpu(),
                           num_modes=num_modes, fingerprint=torch.cat(prints))
    limit = khat_limit(num_samples)
    unreliable = int((~(result.khat <= limit)).sum())
    if psis_tail_length(num_samples) <= 4:  # every k-hat is inf: too few draws to judge, whatever the guide
        fewest = next(n for n in itertools.count(num_samples + 1) if psis_tail_length(n) > 4)
        warn_user(
            f"num_samples={num_samples} is too few draws to judge the importance weights: every k-hat is inf, "
            f"which says nothing about the proposal; use num_samples >= {fewest} to have k-hat (500 by default)")
    elif unreliable * 10 > len(result.khat):  # more than a tenth, counted (a float mean rounds 2 of 20 above 0.1)
        better = ("proposal='refined+defensive' is slower and far more reliable" if isinstance(proposal, GuideProposal)
                  else "proposal='auto' escalates those data to AIS")
        warn_user(
            f"k-hat > {limit:.2f} for {unreliable} of the {len(result.khat)} data: the {proposal.name} proposal is a "
            f"poor importance distribution there and the estimate is a loose lower bound; {better}")
    return result

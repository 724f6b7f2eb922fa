"""``log_likelihood(..., proposal="auto")``: per datum, the cheapest estimator whose estimate is certified.

Three stages, the last run only on the data the one before left uncertified:

1. the guide as the proposal, ``num_samples`` draws (the cost of the plain estimate). Its weights never certify a
   datum by themselves, however well they behave: an amortised guide that sits on one mode of a multimodal posterior
   gives tame weights from draws that never reach the other modes, and neither k-hat nor a wider copy of the guide
   sees them (on a 1-D latent with a decoder in z^2 the guide certified half the data 0.1-9.6 nats low; on the
   10-epoch MNIST VAE of ``benchmarks/certified_log_likelihood.py``, one image in 50 1.1 nats low, k-hat 0.43). Its
   estimate is the lower bound that the next stages must beat, and stays where they certify nothing better;
2. ``refined+defensive``, on every datum: the guide refined for each datum from several starts, the optima mixed
   and the mixture mixed with a wider copy of itself (full-covariance refinement where the guide is a diagonal
   Gaussian, and a projected normal with full covariance where it is a vMF or Power Spherical on the sphere: the
   posterior of a many-dimensional latent is far from diagonal or isotropic), ``REFINED_DRAWS * num_samples``
   draws: building the proposal (the refinement) costs far more than drawing from it, and the log of a mean of
   heavy-ish weights is low by a little that shrinks with the draws (on the 3-epoch MNIST VAE of
   ``benchmarks/certified_log_likelihood.py``, 0.015 nats per image at 500 draws);
3. annealed importance sampling from that proposal, ``ais_chains`` chains of ``ais_steps`` steps, whose weights
   over the chains get the same certificate (k-hat and ESS over the chains, meaningful with ~100 chains or more),
   and whose schedule is checked once per call by bidirectional Monte Carlo (:func:`~pyrovae.infer.bdmc`: 16
   data simulated from the model, 16 chains each way, the same steps from the same kind of start): if the reverse
   and forward bounds are more than ``SCHEDULE_MAX_GAP`` nats apart on average, no AIS estimate is certified
   (:attr:`LogLikelihood.schedule_gap`). A model without a prior predictive (a plain Pyro function) leaves the
   schedule unchecked. A latent on the sphere is annealed in R^(d+1) through the radial lift of
   :class:`~pyrovae.infer.estimation.ais.RadialLift`; discrete latents have no HMC path: their data stop after
   stage 2.

The refined stage certifies a datum when its weights do (k-hat at most
:func:`~pyrovae.infer.estimation.psis.khat_limit` of its draws, 0.7 from 2,155 draws and 0.63 at 500, and an
effective sample size of at least 10: :attr:`LogLikelihood.certified`) **and** a check that k-hat cannot make
agrees: ``num_samples // 4`` draws from the stage's proposal mixed half and half with a copy three times wider must
not find more mass, that is the check's estimate may not exceed the stage's by more than three combined Monte Carlo
standard errors (plus 0.05 nats). k-hat reads only the draws made: a proposal far narrower than the posterior can
give well-behaved weights from draws that never reach the mass it misses (a Gaussian guide at 0.15 times the
posterior's scale is 2 nats low with k-hat 0.4); the wider draws reach it.

Each datum keeps the estimate of the stage that certified it; where none did, a stage's uncertified estimate
replaces the one before only if its k-hat is lower (an estimate with k-hat = inf, from a NaN weight, collapsed draws
or a proposal degenerate enough that its own density underflows at its draws, never displaces a lower bound). The
result says which stage each estimate came from (:attr:`LogLikelihood.estimator`) and what each stage cost, the data
it was tried on included (:attr:`LogLikelihood.cost`). Estimates are not cherry-picked: the choice reads the
certificates, never which estimate is larger.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pyro
import torch
from tqdm.auto import tqdm

from pyrovae._caller import warn_user
from pyrovae.distributions import DefensiveMixture
from pyrovae.infer.arguments import floating_dtype
from pyrovae.infer.batches import as_batches, model_check
from pyrovae.infer.estimation.ais import AnnealingPath, batch_ais, sigmoid_schedule
from pyrovae.infer.estimation.bdmc import bdmc
from pyrovae.infer.estimation.importance import estimation_passes, fingerprint
from pyrovae.infer.estimation.log_likelihood import BatchEstimate, estimate_batch
from pyrovae.infer.estimation.proposals import widened, with_latents_replaced
from pyrovae.infer.estimation.psis import psis_khat
from pyrovae.infer.estimation.refined import RefinedProposal
from pyrovae.infer.estimation.result import SCHEDULE_MAX_GAP, LogLikelihood, sound_weights
from pyrovae.infer.evaluation import evaluation_mode

STAGES = ("guide", "refined+defensive", "ais")


REFINED_DRAWS = 4  # the refined stage's draws, in multiples of num_samples
CHECK_WEIGHT, CHECK_SCALE, CHECK_SLACK = 0.5, 3.0, 0.05  # the wider check's share and width, and its slack (nats)


def _mc_variance(estimate: BatchEstimate, num_samples: int) -> torch.Tensor:
    return (1.0 / estimate.ess.clamp_min(1e-12) - 1.0 / num_samples).clamp_min(0.0)


def _mixed(base: Callable, weight: float, scale: float) -> Callable:
    """``base`` (a proposal's guide for a batch), each continuous latent mixed with a copy ``scale`` times wider."""
    return with_latents_replaced(base, lambda name, fn, index: DefensiveMixture(fn, widened(fn, scale, None), weight))


class _Refiner:
    """The refined proposal of each batch: full covariance where the guide's family has such a member (a diagonal
    Gaussian; a law on the sphere, as a projected normal), else the guide's own family; the family is found on the
    first batch and kept for the call."""

    def __init__(self, steps: int | None = None) -> None:
        self.proposal: RefinedProposal | None = None
        self.steps = steps

    def __call__(self, model: Callable, guide: Callable, args: tuple, max_plate_nesting: int) -> Callable:
        if self.proposal is None:
            try:
                full = RefinedProposal(full_covariance=True, steps=self.steps)
                start = full.for_batch(model, guide, args, max_plate_nesting)
                self.proposal = full
                return start
            except ValueError:  # not a diagonal Gaussian guide: refine its own family
                self.proposal = RefinedProposal(steps=self.steps)
        return self.proposal.for_batch(model, guide, args, max_plate_nesting)


def _schedule_gap(model: Callable, guide: Callable, start: RefinedProposal, ais_steps: int,
                  covariates: list[tuple]) -> float | None:
    """The mean BDMC gap of the AIS stage's schedule (from ``start``) on data simulated from the model (with the
    ``covariates`` of the first data scored: (cat, cont) of the first batches, up to 16 rows), or None: no data to
    simulate (a plain Pyro model; a count likelihood scaled by the observed library size, the data's own total), or
    a simulation that failed (warned)."""
    if not hasattr(model, "latent_sites") or getattr(getattr(model, "likelihood", None), "library", None) == "observed":
        return None  # no data to simulate: a plain model's prior predictive, or counts scaled by their own total
    cat, cont = (torch.cat([c[i] for c in covariates])[:16] if covariates and len(covariates[0]) > i else None
                 for i in (0, 1))
    try:
        result = bdmc(model, guide, num_data=16, num_chains=16, num_steps=ais_steps, start=start, cat=cat, cont=cont)
    except (TypeError, ValueError, NotImplementedError) as error:  # a model whose prior predictive cannot be drawn
        warn_user(f"proposal='auto' could not check the AIS schedule by BDMC on data simulated from the model "
                  f"({error}); its AIS estimates rest on their weights alone")
        return None
    return result.mean_gap


def _refined_stage(model: Callable, base: Callable, args: tuple, num_samples: int, chunk: int,
                   max_plate_nesting: int) -> tuple[BatchEstimate, torch.Tensor]:
    """The estimate from ``base`` (the refined proposal) mixed with a wider copy of itself, and which data it
    certifies."""
    draws = REFINED_DRAWS * num_samples
    estimate = estimate_batch(model, _mixed(base, 0.2, 2.0), args, draws, chunk, max_plate_nesting)
    certified = sound_weights(estimate.khat, estimate.ess, draws)
    if certified.any():
        check_samples = max(num_samples // 4, 50)
        check = estimate_batch(model, _mixed(base, CHECK_WEIGHT, CHECK_SCALE), args, check_samples, chunk,
                               max_plate_nesting)
        spread = (_mc_variance(estimate, draws) + _mc_variance(check, check_samples)).sqrt()
        certified &= ~(check.per_datum - estimate.per_datum > 3 * spread + CHECK_SLACK)
    return estimate, certified


def _ais(model: Callable, start: Callable, args: tuple, num_chains: int, num_steps: int) -> BatchEstimate:
    num_tuning = min(max(8, num_chains // 8), 64)
    path = AnnealingPath(model, start, args, num_chains + num_tuning)
    with torch.enable_grad():
        log_weights, _ = batch_ais(path, sigmoid_schedule(num_steps), 5, 0.5, 0.65, False, num_tuning)
    log_weights = log_weights.double().nan_to_num(nan=-math.inf)  # (C, B)
    normalised = log_weights - log_weights.max(0).values
    ess = normalised.logsumexp(0).mul(2).sub(normalised.mul(2).logsumexp(0)).exp().nan_to_num(0.0)
    return BatchEstimate((log_weights.logsumexp(0) - math.log(num_chains)).cpu(), log_weights.mean(0).cpu(),
                         ess.cpu(), psis_khat(log_weights.T).cpu(), 0, 0)


def _merge(into: BatchEstimate, rows: torch.Tensor, new: BatchEstimate, keep: torch.Tensor) -> None:
    """Write the data ``keep`` (a mask over ``new``) of ``new``, the estimate of ``rows``, into ``into``."""
    for field in ("per_datum", "mean_log_weight", "ess", "khat"):
        getattr(into, field)[rows[keep]] = getattr(new, field)[keep].to(getattr(into, field).dtype)


def _escalate(model: Callable, guide: Callable, args: tuple, refined: _Refiner, cost: dict, num_samples: int,
              chunk: int, max_plate_nesting: int, ais_chains: int, ais_steps: int
              ) -> tuple[BatchEstimate, torch.Tensor, torch.Tensor]:
    """The estimate of one batch ``args`` through the stages, each for the data the one before left uncertified:
    the estimate, each datum's stage and whether it is certified; what each stage spent is added to ``cost``."""
    x = args[0]
    stage = torch.zeros(x.shape[0], dtype=torch.long)
    started = time.perf_counter()
    estimate = estimate_batch(model, guide, args, num_samples, chunk, max_plate_nesting)
    # the guide's weights never certify by themselves: they cannot see a mode the guide missed (see the module's
    # documentation); its estimate is the lower bound a later stage must do better than
    certified = torch.zeros(x.shape[0], dtype=torch.bool)
    cost["guide"]["seconds"] += time.perf_counter() - started
    cost["guide"]["data"] += x.shape[0]
    for level, name in enumerate(STAGES[1:], start=1):
        rows = torch.nonzero(~certified).squeeze(-1)
        if rows.numel() == 0:
            break
        sub = tuple(a[rows.to(a.device)] for a in args)
        started = time.perf_counter()
        start = refined(model, guide, sub, max_plate_nesting)
        if name == "ais":
            try:
                new = _ais(model, start, sub, ais_chains, ais_steps)
            except (NotImplementedError, ValueError):  # no HMC path (discrete latents)
                break
            now_certified = sound_weights(new.khat, new.ess, ais_chains)
        else:
            new, now_certified = _refined_stage(model, start, sub, num_samples, chunk, max_plate_nesting)
        cost[name]["seconds"] += time.perf_counter() - started
        cost[name]["data"] += rows.numel()
        # an estimate this stage does not certify replaces the last one only where its weights are better behaved:
        # one with k-hat = inf (a NaN weight, collapsed draws, or a degenerate proposal whose own density underflows
        # at its draws) is no estimate, and must not displace a lower bound
        taken = now_certified | (new.khat < estimate.khat[rows])
        _merge(estimate, rows, new, taken)
        certified[rows[taken]] = now_certified[taken]
        stage[rows[taken]] = level
    return estimate, stage, certified


@torch.no_grad()
def auto_log_likelihood(model: Callable, guide: Callable, data, num_samples: int = 500, batch_size: int | None = None,
                        max_samples_per_chunk: int | None = None, device: torch.device | None = None,
                        progress: bool = False, ais_chains: int = 128, ais_steps: int = 200,
                        refine_steps: int | None = None) -> LogLikelihood:
    """What ``log_likelihood(model, guide, data, proposal="auto")`` returns (see the module's documentation)."""
    estimates, stage_of, certified_of, prints, covariates = [], [], [], [], []
    draws_of_stage = torch.tensor([num_samples, REFINED_DRAWS * num_samples, ais_chains])
    cost = {name: {"data": 0, "seconds": 0.0} for name in STAGES}
    refined = _Refiner(refine_steps)
    with evaluation_mode(model, guide, frozen=True):
        batches = as_batches(data, batch_size, shuffle=False, device=device, check=model_check(model),
                             default_batch_size=256, dtype=floating_dtype(model, guide))
        batches = tqdm(batches, desc="log-likelihood (auto)", disable=not progress, leave=False)
        for args, chunk, max_plate_nesting in estimation_passes(model, guide, batches, max_samples_per_chunk):
            with pyro.validation_enabled(False):
                estimate, stage, certified = _escalate(model, guide, args, refined, cost, num_samples, chunk,
                                                       max_plate_nesting, ais_chains, ais_steps)
            estimates.append(estimate)
            stage_of.append(stage)
            certified_of.append(certified)
            prints.append(fingerprint(args))
            if len(args) > 1 and sum(len(c[0]) for c in covariates) < 16:  # (cat,) or (cat, cont): BDMC's
                covariates.append(tuple(a[:16] for a in args[1:3]))
    if not estimates:
        raise ValueError("log_likelihood got an empty data set")
    stage = torch.cat(stage_of)
    checked, schedule_gap = torch.cat(certified_of), None
    if cost["ais"]["data"]:
        started = time.perf_counter()
        with evaluation_mode(model, guide, frozen=True), pyro.validation_enabled(False), torch.enable_grad():
            schedule_gap = _schedule_gap(model, guide, refined.proposal, ais_steps, covariates)
        cost["ais"]["seconds"] += time.perf_counter() - started
        cost["ais"]["schedule_gap"] = schedule_gap
        if schedule_gap is not None and schedule_gap > SCHEDULE_MAX_GAP:
            checked &= stage != STAGES.index("ais")
    return LogLikelihood(
        torch.cat([e.per_datum for e in estimates]), torch.cat([e.khat for e in estimates]), num_samples, "auto",
        mean_log_weight=torch.cat([e.mean_log_weight for e in estimates]), ess=torch.cat([e.ess for e in estimates]),
        estimator=tuple(STAGES[int(s)] for s in stage), cost=cost, checked=checked, schedule_gap=schedule_gap,
        draws=draws_of_stage[stage], fingerprint=torch.cat(prints),
    )


__all__ = ["REFINED_DRAWS", "STAGES", "auto_log_likelihood"]

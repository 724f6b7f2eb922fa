"""Importance-sampled estimate of the held-out log-likelihood log p(x), with PSIS diagnostics."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from tqdm.auto import tqdm

from pyrovae.infer.arguments import check_device, check_integer, floating_dtype
from pyrovae.infer.batches import as_batches, model_check, module_device
from pyrovae.infer.estimation.importance import estimation_passes, importance_draws
from pyrovae.infer.estimation.proposals import DefensiveProposal, GuideProposal, Proposal
from pyrovae.infer.estimation.psis import psis_khat, psis_tail_length
from pyrovae.infer.estimation.refined import RefinedProposal
from pyrovae.infer.evaluation import evaluation_mode

CERTIFIED_KHAT = 0.7  # Pareto k-hat at or below which importance weights have a finite variance (Vehtari et al.)
CERTIFIED_MIN_ESS = 10.0  # and the fewest effective samples a certified estimate rests on


@dataclass
class LogLikelihood:
    """Per-datum estimates of log p(x) and the certificate of each.

    :ivar per_datum: (N,) log p(x_i) estimates.
    :ivar khat: (N,) Pareto k-hat of each datum's importance weights (> 0.7: unreliable estimate). Never NaN: a datum
        with a NaN weight, no positive weight, or draws that collapsed onto one point gets ``inf``.
    :ivar num_samples: importance samples per datum (for ``proposal="auto"``: the guide stage's; its refined stage
        draws :data:`~pyrovae.infer.estimation.certify.REFINED_DRAWS` times as many and its AIS stage runs
        ``ais_chains`` chains: :attr:`draws` says how many weights each datum's estimate averages).
    :ivar proposal: the importance distribution's name (``"guide"``, ``"refined+defensive"``, ...).
    :ivar acceptance: the mean HMC acceptance rate, for annealed importance sampling (else None).
    :ivar mean_log_weight: (N,) each datum's mean log importance weight, E_r[log p(x, z) - log r(z | x)]: the
        proposal's ELBO, for importance sampling (else None). With an enumerated site (the GMVAE's y) it is the mean
        log of the stratified weights, a bound between the ELBO and log p(x).
    :ivar ess: (N,) effective sample size of each datum's weights, (sum w)^2 / sum w^2 (else None).
    :ivar num_modes: (N,) for the refined proposals with several starts: how many distinct optima, each holding at
        least 5% of the estimated mass, the starts reached (else None: no search was made). 1 means every start
        agreed (evidence, not proof, that the posterior has one mode); more means the posterior is multimodal and
        the estimate mixes the modes found. A mode that no start reached is missing from the estimate, and k-hat
        cannot see it: no importance sampler can vouch for mass it never drew. A start that had not converged
        within the steps may also count as a mode: the flag errs on the side of caution.
    :ivar estimator: for ``proposal="auto"``, the estimator each datum's estimate came from (``"guide"``,
        ``"refined+defensive"``, ``"ais"``), else None (one estimator for all).
    :ivar cost: for ``proposal="auto"``, per stage, the data it estimated and its seconds.
    :ivar checked: for ``proposal="auto"``, (N,) bool: whether each estimate also passed the check that k-hat cannot
        make (a wider proposal found no more mass; for AIS, a schedule that bidirectional Monte Carlo found close to
        exact; see :mod:`~pyrovae.infer.estimation.certify`), else None.
    :ivar schedule_gap: for ``proposal="auto"`` with data estimated by AIS, the mean gap between the reverse and the
        forward AIS bounds of its schedule on data simulated from the model (:func:`~pyrovae.infer.bdmc`), else None
        (also when the model has no prior predictive to simulate from: the schedule is then unchecked).
    :ivar draws: for ``proposal="auto"``, (N,) how many weights each datum's estimate averages (its stage's draws, or
        its AIS chains), which :attr:`mc_stderr` reads; else None (every datum has ``num_samples``).
    """

    per_datum: torch.Tensor
    khat: torch.Tensor
    num_samples: int
    proposal: str = "guide"
    acceptance: float | None = None
    mean_log_weight: torch.Tensor | None = None
    ess: torch.Tensor | None = None
    num_modes: torch.Tensor | None = None
    estimator: tuple[str, ...] | None = None
    cost: dict | None = None
    checked: torch.Tensor | None = None
    schedule_gap: float | None = None
    draws: torch.Tensor | None = None

    @property
    def elbo(self) -> float:
        """Mean over the data of each datum's mean log weight: the proposal's ELBO (estimated from the same draws)."""
        return float(self.mean_log_weight.mean()) if self.mean_log_weight is not None else math.nan

    @property
    def mean(self) -> float:
        """Mean log-likelihood per datum."""
        return float(self.per_datum.mean())

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` over the data."""
        n = self.per_datum.numel()
        return float(self.per_datum.std() / math.sqrt(n)) if n > 1 else math.nan

    @property
    def mc_stderr(self) -> torch.Tensor | None:
        """(N,) Monte Carlo standard error of each datum's estimate, by the delta method: the relative variance of
        the mean weight is (S / ESS - 1) / S, so sd(log p_hat) ~= sqrt(1 / ESS - 1 / S). Meaningful only where
        k-hat < 0.7 (the weights' variance is finite), and blind to modes the proposal never drew."""
        if self.ess is None:
            return None
        draws = self.num_samples if self.draws is None else self.draws
        return (1.0 / self.ess - 1.0 / draws).clamp_min(0.0).sqrt()

    @property
    def flagged(self) -> torch.Tensor:
        """(N,) bool: the estimates to check (with more samples, more starts, or AIS): k-hat > 0.7, or a posterior
        found multimodal (:attr:`num_modes` > 1), where the estimate is only as complete as the search for modes."""
        flagged = ~(self.khat <= 0.7)
        return flagged | (self.num_modes > 1) if self.num_modes is not None else flagged

    @property
    def certified(self) -> torch.Tensor:
        """(N,) bool: the estimates that can be trusted, by this rule: k-hat <= 0.7 (the weights' variance is
        finite, so the estimate converges at the Monte Carlo rate), an effective sample size of at least
        :data:`CERTIFIED_MIN_ESS`, and one posterior mode found where the refined proposals searched for modes. An
        estimate without an effective sample size (no weights kept) is not certified. See :meth:`reasons`."""
        certified = self.khat <= CERTIFIED_KHAT
        certified &= self.ess >= CERTIFIED_MIN_ESS if self.ess is not None else torch.zeros_like(certified)
        if self.checked is not None:
            certified &= self.checked
        return certified & (self.num_modes <= 1) if self.num_modes is not None else certified

    def reasons(self) -> list[str]:
        """Why each estimate is certified or not, one line per datum (``"certified"``, ``"k-hat 0.93 > 0.7"``,
        ``"ESS 4.2 < 10"``, ``"2 posterior modes"``; several joined by ``"; "``)."""
        lines = []
        for i in range(self.per_datum.numel()):
            why = []
            if not self.khat[i] <= CERTIFIED_KHAT:
                why.append(f"k-hat {float(self.khat[i]):.2f} > {CERTIFIED_KHAT}")
            if self.ess is None:
                why.append("no effective sample size")
            elif self.ess[i] < CERTIFIED_MIN_ESS:
                why.append(f"ESS {float(self.ess[i]):.1f} < {CERTIFIED_MIN_ESS}")
            if self.num_modes is not None and self.num_modes[i] > 1:
                why.append(f"{int(self.num_modes[i])} posterior modes")
            if self.checked is not None and not self.checked[i] and not why:
                if self.estimator is not None and self.estimator[i] == "ais" and self.schedule_gap is not None:
                    why.append(f"the AIS schedule is {self.schedule_gap:.2f} nats from exact on simulated data")
                else:
                    why.append("a wider proposal found more mass")
            lines.append("; ".join(why) or "certified")
        return lines

    def summary(self) -> dict:
        """A JSON-ready summary: mean, standard error, and the share of data per k-hat band (and of multimodal
        posteriors, for a refined proposal with several starts)."""
        khat = self.khat
        n = max(khat.numel(), 1)
        return {
            "log_likelihood": self.mean,
            "stderr": self.stderr,
            "num_data": self.per_datum.numel(),
            "num_samples": self.num_samples,
            "proposal": self.proposal,
            **({"proposal_elbo": self.elbo} if self.mean_log_weight is not None else {}),
            **({"acceptance": self.acceptance} if self.acceptance is not None else {}),
            "khat_max": float(khat.max()) if khat.numel() else math.nan,
            "khat_median": float(khat.median()) if khat.numel() else math.nan,
            "frac_khat_gt_0.5": float((khat > 0.5).sum()) / n,
            "frac_khat_gt_0.7": float((khat > 0.7).sum()) / n,
            **({"frac_multimodal": float((self.num_modes > 1).sum()) / n} if self.num_modes is not None else {}),
            "frac_certified": float(self.certified.sum()) / n,
            **({"estimators": {name: self.estimator.count(name) for name in dict.fromkeys(self.estimator)}}
               if self.estimator is not None else {}),
            **({"cost": self.cost} if self.cost is not None else {}),
        }

    @classmethod
    def concat(cls, parts: list[LogLikelihood]) -> LogLikelihood:
        """One estimate of the data of ``parts`` (estimates of consecutive parts of a data set, by the same
        estimator), in their order: per-datum fields end to end, costs added, the acceptance rate averaged over the
        data and the AIS schedule's gap over the parts that measured it, and every AIS estimate judged against that
        average gap rather than its own part's (:func:`~pyrovae.infer.estimation.log_likelihood_in_parts` scores in
        such parts)."""
        parts = list(parts)
        if not parts or not all(isinstance(part, cls) for part in parts):
            raise ValueError(f"LogLikelihood.concat takes a non-empty list of LogLikelihood, got {parts!r:.200}")
        first = parts[0]
        for name in ("num_samples", "proposal"):
            values = {getattr(part, name) for part in parts}
            if len(values) > 1:
                raise ValueError(f"the parts differ in {name} ({sorted(map(str, values))}): they are estimates by "
                                 "different estimators, and their concatenation would be neither")
        fields = {}
        for name in ("per_datum", "khat", "mean_log_weight", "ess", "num_modes", "checked", "draws", "estimator"):
            values = [getattr(part, name) for part in parts]
            if all(value is None for value in values):
                fields[name] = None
            elif any(value is None for value in values):
                raise ValueError(f"some parts have {name} and some do not: they come from different estimators")
            else:
                fields[name] = sum(values, ()) if name == "estimator" else torch.cat(values)
        sizes = [part.per_datum.numel() for part in parts]
        rated = [(part.acceptance, size) for part, size in zip(parts, sizes) if part.acceptance is not None]
        acceptance = sum(a * n for a, n in rated) / sum(n for _, n in rated) if rated else None
        gaps = [part.schedule_gap for part in parts if part.schedule_gap is not None]
        schedule_gap = sum(gaps) / len(gaps) if gaps else None
        if gaps and all(fields[name] is not None for name in ("checked", "estimator", "ess")):
            # each part judged its AIS estimates by its own check of the schedule: judge them all by the average
            from pyrovae.infer.estimation.certify import SCHEDULE_MAX_GAP

            ais = torch.tensor([name == "ais" for name in fields["estimator"]], dtype=torch.bool)
            sound = (fields["khat"] <= CERTIFIED_KHAT) & (fields["ess"] >= CERTIFIED_MIN_ESS)
            fields["checked"] = torch.where(ais, sound & (schedule_gap <= SCHEDULE_MAX_GAP), fields["checked"])
        cost = None
        if any(part.cost is not None for part in parts):
            cost = {}
            for part in parts:
                for stage, spent in (part.cost or {}).items():
                    total = cost.setdefault(stage, {"data": 0, "seconds": 0.0})
                    total["data"] += spent.get("data", 0)
                    total["seconds"] += spent.get("seconds", 0.0)
                    if "schedule_gap" in spent:
                        total["schedule_gap"] = schedule_gap
        return cls(fields.pop("per_datum"), fields.pop("khat"), first.num_samples, first.proposal,
                   acceptance=acceptance, cost=cost, schedule_gap=schedule_gap, **fields)

    def __repr__(self) -> str:
        bad = int((self.khat > 0.7).sum())
        modes = f", multimodal: {int((self.num_modes > 1).sum())}" if self.num_modes is not None else ""
        return (
            f"LogLikelihood(mean={self.mean:.3f}, stderr={self.stderr:.3f}, num_data={self.per_datum.numel()}, "
            f"num_samples={self.num_samples}, proposal={self.proposal!r}, khat>0.7: {bad}{modes})"
        )


_NAMED = {
    "guide": GuideProposal,
    "defensive": DefensiveProposal,
    "refined": RefinedProposal,
    "refined+defensive": lambda: DefensiveProposal(base=RefinedProposal()),
    "refined-iwae": lambda: RefinedProposal(objective="iwae"),
    "refined-full": lambda: RefinedProposal(full_covariance=True),
}


def as_proposal(proposal: str | Proposal) -> Proposal:
    """A :class:`Proposal` from itself or its name: ``"guide"``, ``"defensive"``, ``"refined"``,
    ``"refined+defensive"`` (the most reliable: the mixture of refined optima mixed with a wider copy of itself),
    ``"refined-iwae"`` or ``"refined-full"``."""
    if isinstance(proposal, Proposal):
        return proposal
    if isinstance(proposal, str) and proposal in _NAMED:
        return _NAMED[proposal]()
    raise ValueError(f"proposal must be one of {sorted(_NAMED)} or a Proposal, got {proposal!r}")


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
    log_weights = log_weights.nan_to_num(nan=-math.inf)
    normalised = log_weights - log_weights.max(0).values
    ess = normalised.logsumexp(0).mul(2).sub(normalised.mul(2).logsumexp(0)).exp().nan_to_num(0.0)
    khat = psis_khat(log_weights.T, resolution=torch.finfo(chunks[0].dtype).eps).cpu()
    khat = torch.where(nan_rows | same_point, torch.full_like(khat, math.inf), khat)
    return BatchEstimate((torch.logsumexp(log_weights, 0) - math.log(num_samples)).cpu(), log_weights.mean(0).cpu(),
                         ess.cpu(), khat, undefined, int(same_point.sum()))


@torch.no_grad()
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
) -> LogLikelihood:
    """Estimate log p(x_i) for every datum by importance sampling.

    ``log p(x_i) ~= logsumexp_s [log p(x_i, z_s) - log r(z_s | x_i)] - log S`` with z_s ~ r(z | x_i)
    (Burda, Grosse & Salakhutdinov 2016). Works for any model/guide pair that follows the contract (per-datum sites
    in ``pyro.plate("data")``), plain Pyro functions included.

    What it guarantees: for any proposal r with a density that covers p(z | x_i), the exponential of each estimate
    is unbiased for p(x_i), so each estimate is a stochastic lower bound that tightens as S grows, exact for any S
    when r is the exact posterior. Each datum carries a certificate: the Pareto k-hat of its weights (> 0.7: the
    estimate cannot be trusted; it is a loose lower bound), the effective sample size and a Monte Carlo standard
    error (:attr:`LogLikelihood.mc_stderr`), and, for the refined proposals, the number of posterior modes found
    (:attr:`LogLikelihood.num_modes`). What no importance sampler can guarantee: mass r never draws (a mode far from
    every start) is missing from the estimate and from its k-hat alike; the refined proposals search for modes
    from several starts to make that unlikely, and say when the posterior is multimodal.

    When it refuses (ValueError): a guide whose latent is a point mass (``DeltaGuide``: q has no density, and its
    weights would give the joint log p(x, f(x)) at the code with a k-hat that reads as perfect; refit a guide with a
    density by :func:`~pyrovae.infer.refit_guide`), a site outside the ``"data"`` plate, bad numbers of samples.
    When it warns and flags: NaN weights (counted as zero weight; the datum's k-hat is ``inf``), draws of a datum
    that all collapsed onto one value (a scale that underflowed: k-hat ``inf``), and the guide's k-hat > 0.7 for
    more than a tenth of the data.

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
    """
    check_integer("num_samples", num_samples, 1)
    check_integer("ais_chains", ais_chains, 1, allow_none=True)
    check_integer("ais_steps", ais_steps, 1, allow_none=True)
    if proposal != "auto" and (ais_chains, ais_steps) != (None, None):
        raise ValueError(f"ais_chains and ais_steps set the AIS stage of proposal='auto', and proposal is "
                         f"{proposal!r}; use ais_log_likelihood for AIS on its own")
    check_integer("max_samples_per_chunk", max_samples_per_chunk, 1, allow_none=True)
    device = torch.device(device) if device is not None else module_device(model, guide)
    check_device(device)
    if proposal == "auto":
        from pyrovae.infer.estimation.certify import auto_log_likelihood  # it uses AIS, which uses this module

        stage = {name: value for name, value in (("ais_chains", ais_chains), ("ais_steps", ais_steps))
                 if value is not None}
        return auto_log_likelihood(model, guide, data, num_samples, batch_size, max_samples_per_chunk, device,
                                   progress, **stage)
    proposal = as_proposal(proposal)
    per_datum, khats, mean_log_weights, effective, modes = [], [], [], [], []
    undefined = collapsed = 0
    with evaluation_mode(model, guide):
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
            undefined += estimate.undefined
            collapsed += estimate.collapsed
    if not per_datum:
        raise ValueError("log_likelihood got an empty data set")
    if undefined:
        warnings.warn(f"{undefined} log importance weights are NaN (an overflow in the model or proposal); they count "
                      "as zero weight and their data get k-hat = inf", stacklevel=3)
    if collapsed:
        warnings.warn(
            f"for {collapsed} data every draw of q(z | x) was the same point: the guide's scale collapsed below the "
            "dtype's resolution, so q is a point mass there and has no usable density; their k-hat is inf. Refit "
            "the guide (refit_guide) or score in float64", stacklevel=3)
    num_modes = torch.cat([m.cpu() for m in modes]) if all(m is not None for m in modes) else None
    result = LogLikelihood(torch.cat(per_datum).cpu(), torch.cat(khats).cpu(), num_samples, proposal.name,
                           mean_log_weight=torch.cat(mean_log_weights).cpu(), ess=torch.cat(effective).cpu(),
                           num_modes=num_modes)
    unreliable = float((result.khat > 0.7).float().mean())
    if psis_tail_length(num_samples) <= 4:  # every k-hat is inf: too few draws to judge, whatever the guide
        fewest = next(n for n in itertools.count(num_samples + 1) if psis_tail_length(n) > 4)
        warnings.warn(
            f"num_samples={num_samples} is too few draws to judge the importance weights: every k-hat is inf, "
            f"which says nothing about the proposal; use num_samples >= {fewest} to have k-hat (500 by default)",
            stacklevel=3,
        )
    elif unreliable > 0.1 and isinstance(proposal, GuideProposal):
        warnings.warn(
            f"k-hat > 0.7 for {unreliable:.0%} of the data: the guide is a poor importance distribution there and "
            "the estimate is a loose lower bound; proposal='refined+defensive' is slower and far more reliable",
            stacklevel=3  # past torch.no_grad's wrapper, to the caller,
        )
    return result

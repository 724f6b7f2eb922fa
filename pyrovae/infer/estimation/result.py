"""The result of a log-likelihood estimate: per-datum estimates of log p(x) with the certificate of each
(:class:`LogLikelihood`), and the thresholds a certified estimate meets."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pyrovae.infer.estimation.psis import khat_limit

CERTIFIED_MIN_ESS = 10.0  # the fewest effective samples a certified estimate rests on
SCHEDULE_MAX_GAP = 0.5  # nats between the BDMC bounds of the AIS schedule beyond which AIS certifies nothing


def sound_weights(khat: torch.Tensor, ess: torch.Tensor, draws) -> torch.Tensor:
    """(N,) bool: the weights a certificate can rest on: k-hat within :func:`~pyrovae.infer.estimation.psis.khat_limit`
    of the ``draws`` (a number, or one per datum) and an effective sample size of at least :data:`CERTIFIED_MIN_ESS`."""
    limit = khat_limit(draws)
    return (khat <= (limit.to(khat.device) if isinstance(limit, torch.Tensor) else limit)) & (ess >= CERTIFIED_MIN_ESS)


@dataclass
class LogLikelihood:
    """Per-datum estimates of log p(x) and the certificate of each.

    :ivar per_datum: (N,) log p(x_i) estimates.
    :ivar khat: (N,) Pareto k-hat of each datum's importance weights (above :attr:`khat_limits`, 0.63 at 500 draws:
        unreliable estimate). Never NaN: a datum with a NaN weight, no positive weight, or draws that collapsed onto
        one point gets ``inf``.
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
    :ivar fingerprint: (N,) int64, a hash of each datum's values x (not its covariates: a model with a batch
        covariate and one without compare on the same cells), by which :meth:`compare` refuses estimates of other
        data or of the same data in another order; None in estimates saved by pyrovae 0.7 or earlier.
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
    fingerprint: torch.Tensor | None = None

    @property
    def elbo(self) -> float:
        """Mean over the data of each datum's mean log weight: the proposal's ELBO (estimated from the same draws).
        With an enumerated site (the GMVAE's y) it is the mean log of the stratified weights (see
        :attr:`mean_log_weight`): tighter than the ELBO that training and :func:`~pyrovae.infer.evaluate` report,
        and still below log p(x)."""
        return float(self.mean_log_weight.mean()) if self.mean_log_weight is not None else math.nan

    @property
    def mean(self) -> float:
        """Mean log-likelihood per datum."""
        return float(self.per_datum.mean())

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` over the data: how far the mean of these data may be from the mean over
        the data's population, not the estimator's error (that is :attr:`mc_stderr_of_mean`, far smaller)."""
        n = self.per_datum.numel()
        return float(self.per_datum.std() / math.sqrt(n)) if n > 1 else math.nan

    @property
    def khat_limits(self) -> torch.Tensor:
        """(N,) the largest k-hat at which each datum's estimate is reliable, for the draws it averages:
        min(1 - 1 / log10 S, 0.7) (:func:`~pyrovae.infer.estimation.psis.khat_limit`; Vehtari et al. 2024)."""
        return khat_limit(self._draws).to(self.khat.device)

    @property
    def _draws(self) -> torch.Tensor:
        """(N,) the weights each datum's estimate averages."""
        return self.draws if self.draws is not None else torch.full(self.khat.shape, self.num_samples)

    @property
    def mc_stderr(self) -> torch.Tensor | None:
        """(N,) Monte Carlo standard error of each datum's estimate, by the delta method: the relative variance of
        the mean weight is (S / ESS - 1) / S, so sd(log p_hat) ~= sqrt(1 / ESS - 1 / S). Exact in the limit where
        the weights' variance is finite (k < 0.5); above, it understates the error, and it is blind to modes the
        proposal never drew. Measured on weights with a known Pareto tail (S = 500, 2,000 data each, certified data
        only): the error exceeded twice this standard error for 5% of the data at k = 0.3, 10% at 0.45, 17% at 0.55
        and 25% at 0.6, where the estimates were also 0.03 and 0.06 nats low on average."""
        if self.ess is None:
            return None
        draws = self._draws.to(self.ess)
        return (1.0 / self.ess - 1.0 / draws).clamp_min(0.0).sqrt()

    @property
    def mc_stderr_of_mean(self) -> float:
        """Monte Carlo standard error of :attr:`mean`: sqrt(sum of :attr:`mc_stderr` squared) / N, the error of the
        estimator on these data (the estimates are independent), with the caveats of :attr:`mc_stderr`. Two models
        scored on the same data are compared by their paired per-datum differences, not by :attr:`stderr`."""
        spread = self.mc_stderr
        if spread is None or spread.numel() == 0:
            return math.nan
        return float(spread.double().square().sum().sqrt() / spread.numel())

    @property
    def flagged(self) -> torch.Tensor:
        """(N,) bool: the estimates to check (with more samples, more starts, or AIS): k-hat above
        :attr:`khat_limits`, an effective sample size below :data:`CERTIFIED_MIN_ESS` (an estimate resting on a few
        draws, however tame its tail looks), a posterior found multimodal (:attr:`num_modes` > 1), where the
        estimate is only as complete as the search for modes, or, for ``proposal="auto"``, an estimate its checks did
        not pass (:attr:`checked`: the guide's own, kept where no later stage did better, or one that wider draws
        found short), so that ``"auto"`` flags exactly what it does not certify."""
        flagged = ~(self.khat <= self.khat_limits)
        if self.ess is not None:
            flagged = flagged | ~(self.ess >= CERTIFIED_MIN_ESS)
        if self.checked is not None:
            flagged = flagged | ~self.checked
        return flagged | (self.num_modes > 1) if self.num_modes is not None else flagged

    @property
    def certified(self) -> torch.Tensor:
        """(N,) bool: the estimates that can be trusted, by this rule: k-hat at most :attr:`khat_limits` (0.63 at
        500 draws, 0.7 from 2,155: Vehtari et al. 2024's limit for S draws; below 0.5 the weights' variance is
        finite, between 0.5 and the limit the estimate still converges, more slowly: see :attr:`mc_stderr`), an
        effective sample size of at least
        :data:`CERTIFIED_MIN_ESS`, and one posterior mode found where the refined proposals searched for modes. An
        estimate without an effective sample size (no weights kept) is not certified. ``proposal="auto"`` replaces
        the count of modes by its check with wider draws (:attr:`checked`), so it may certify a datum with several
        optima that a refined proposal alone does not. See :meth:`reasons`.

        What the rule cannot see, for every proposal but ``"auto"``: a proposal narrower than the posterior draws
        well-behaved weights from the part of the mass it covers, so k-hat and the ESS pass an estimate that misses
        the rest. Measured on linear-Gaussian models with their exact log p(x): a mean-field guide at 0.3 times the
        posterior's spread (d = 10) passed an estimate 5 nats low; ``"refined+defensive"`` at d = 25 passed some 1.2 to
        1.4 nats low. ``"auto"`` checks every importance-sampling certificate against a wider proposal, which catches
        these; it is the estimator to believe for model comparison (see docs/guide/log_likelihood.md)."""
        certified = (sound_weights(self.khat, self.ess, self._draws) if self.ess is not None
                     else torch.zeros_like(self.khat, dtype=torch.bool))
        if self.checked is not None:
            certified &= self.checked
        return certified & (self.num_modes <= 1) if self.num_modes is not None else certified

    def reasons(self) -> list[str]:
        """Why each estimate is certified or not, one line per datum (``"certified"``, ``"k-hat 0.93 > 0.63"``,
        ``"ESS 4.2 < 10"``, ``"2 posterior modes"``; several joined by ``"; "``). An estimate of a single proposal
        (not ``"auto"``) that passes is ``"certified by its weights alone (...)"``: no wider draws checked it; an AIS
        estimate whose schedule BDMC could not check, ``"certified by its weights (...)"``."""
        lines = []
        limits = self.khat_limits
        for i in range(self.per_datum.numel()):
            why = []
            if not self.khat[i] <= limits[i]:
                why.append(f"k-hat {float(self.khat[i]):.2f} > {float(limits[i]):.2f}")
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
            if not why and self.checked is None:  # a single proposal: its weights alone (see certified)
                why.append("certified by its weights alone (no wider draws checked them: proposal='auto' does)")
            elif (not why and self.estimator is not None and self.estimator[i] == "ais"
                  and self.schedule_gap is None):
                why.append("certified by its weights (the AIS schedule was not checked: BDMC simulates data from "
                           "the model, which a plain Pyro model or counts scaled by their observed library size "
                           "cannot give, and a failed simulation is warned of; bdmc(model, guide, x=x, latents=...) "
                           "checks it on data you simulate)")
            lines.append("; ".join(why) or "certified")
        return lines

    def summary(self) -> dict:
        """A summary of plain Python values: mean, standard error, and the share of data per k-hat band (and of
        multimodal posteriors, for a refined proposal with several starts). A value that is not finite stays a float
        (``khat_max`` is ``inf`` where a guide collapsed): Python's ``json`` writes it as ``Infinity`` or ``NaN``,
        which strict JSON readers refuse; :func:`pyrovae.experiment.write_metrics` writes such values as strings."""
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
            "frac_khat_over_limit": float((~(khat <= self.khat_limits)).sum()) / n,
            **({"frac_multimodal": float((self.num_modes > 1).sum()) / n} if self.num_modes is not None else {}),
            "frac_certified": float(self.certified.sum()) / n,
            **({"mc_stderr_of_mean": self.mc_stderr_of_mean} if self.ess is not None else {}),
            **({"estimators": {name: self.estimator.count(name) for name in dict.fromkeys(self.estimator)}}
               if self.estimator is not None else {}),
            **({"cost": self.cost} if self.cost is not None else {}),
        }

    def compare(self, other: LogLikelihood, certified_only: bool = False) -> dict:
        """This estimate minus ``other``'s, datum by datum, for two models scored on the same data in the same
        order: the paired difference removes the spread of the data that :attr:`stderr` holds, so two models a few
        tenths of a nat apart can be told apart where their ``stderr`` overlap.

        :param bool certified_only: compare on the data both estimates certify (:attr:`certified`) only.
        :returns: ``difference`` (the mean of the per-datum differences), ``stderr`` (its standard error over the
            data), ``mc_stderr`` (its Monte Carlo standard error, from both estimates' :attr:`mc_stderr`; NaN where
            one has none), ``num_data`` (data compared) and ``certified_both`` (data both certify).
        :raises ValueError: estimates of different numbers of data, or no datum left to compare.
        """
        if self.per_datum.shape != other.per_datum.shape:
            raise ValueError(f"compare takes two estimates of the same data, got {self.per_datum.numel()} and "
                             f"{other.per_datum.numel()} data; score both models on the same data, in one order")
        if self.fingerprint is not None and other.fingerprint is not None:
            differ = self.fingerprint != other.fingerprint
            if bool(differ.any()):
                same_data = torch.equal(self.fingerprint.sort().values, other.fingerprint.sort().values)
                raise ValueError(
                    "compare takes two estimates of the same data in the same order, and these are of "
                    + ("the same data in another order" if same_data else
                       f"other data ({int(differ.sum())} of the {differ.numel()} data differ, the first at index "
                       f"{int(differ.nonzero()[0])})")
                    + "; score both models on the same data, in one order (shuffle=False; data drawn afresh at "
                    "each read, such as dynamically binarised images, differ between two scorings: draw them once)")
        both = self.certified & other.certified
        keep = both if certified_only else torch.ones_like(both)
        difference = (self.per_datum.double() - other.per_datum.double())[keep]
        n = difference.numel()
        if n == 0:
            raise ValueError("compare has no datum to compare: no datum is certified by both estimates")
        errors = [e.mc_stderr for e in (self, other)]
        mc = (math.nan if any(e is None for e in errors)
              else float((errors[0].double()[keep].square() + errors[1].double()[keep].square()).sum().sqrt() / n))
        return {"difference": float(difference.mean()),
                "stderr": float(difference.std() / math.sqrt(n)) if n > 1 else math.nan,
                "mc_stderr": mc, "num_data": n, "certified_both": int(both.sum())}

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
        prints = [part.fingerprint for part in parts]  # parts saved by earlier versions have none
        fields["fingerprint"] = None if any(p is None for p in prints) else torch.cat(prints)
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
            ais = torch.tensor([name == "ais" for name in fields["estimator"]], dtype=torch.bool)
            draws = fields["draws"] if fields["draws"] is not None else first.num_samples
            sound = sound_weights(fields["khat"], fields["ess"], draws)
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
        bad = int((~(self.khat <= self.khat_limits)).sum())
        modes = f", multimodal: {int((self.num_modes > 1).sum())}" if self.num_modes is not None else ""
        return (
            f"LogLikelihood(mean={self.mean:.3f}, stderr={self.stderr:.3f}, num_data={self.per_datum.numel()}, "
            f"num_samples={self.num_samples}, proposal={self.proposal!r}, khat over its limit: {bad}{modes})"
        )

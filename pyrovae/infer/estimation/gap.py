"""How far a trained pair's ELBO is from log p(x), and why: the amortisation and approximation gaps.

Cremer, Li & Duvenaud (2018) split the inference gap ``log p(x) - ELBO(q)`` of an amortised guide q into

* the **amortisation gap** ``ELBO(q*) - ELBO(q)``: what the encoder loses against the best member q* of its family
  fitted to each datum alone (here: :class:`~pyrovae.infer.estimation.refined.RefinedProposal`), and
* the **approximation gap** ``log p(x) - ELBO(q*)``: what the family itself cannot express; a flow guide refitted
  to the frozen decoder shows how much of it a richer family recovers.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from pyrovae.infer.estimation.ais import ais_log_likelihood
from pyrovae.infer.estimation.log_likelihood import log_likelihood
from pyrovae.infer.estimation.proposals import DefensiveProposal
from pyrovae.infer.estimation.refined import RefinedProposal
from pyrovae.infer.estimation.result import LogLikelihood


@dataclass
class GapReport:
    """Estimates of log p(x) and ELBOs of one pair on the same data, and the gaps between them (mean nats per datum).

    :ivar rows: name -> :class:`~pyrovae.infer.LogLikelihood` of each estimator.
    :ivar log_likelihood: the reference estimate of log p(x): the annealed one where run, else the highest of the
        importance-sampled ones (each is a stochastic lower bound).
    :ivar gaps: ``inference`` (log p - ELBO(q)), ``amortisation`` (ELBO(q*) - ELBO(q)), ``approximation``
        (log p - ELBO(q*)), and, with a flow guide, ``flow_approximation`` (log p - ELBO(flow)).
    """

    rows: dict[str, LogLikelihood] = field(default_factory=dict)
    log_likelihood: float = math.nan
    gaps: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """The report as a text table."""
        lines = [f"{'estimator':<44}{'ELBO':>10}{'log p(x)':>10}{'+/-':>7}{'k>limit':>8}"]
        for name, row in self.rows.items():
            elbo = f"{row.elbo:>10.2f}" if row.mean_log_weight is not None else f"{'':>10}"
            unreliable = float((~(row.khat <= row.khat_limits)).float().mean())
            lines.append(f"{name:<44}{elbo}{row.mean:>10.2f}{row.stderr:>7.2f}{unreliable:>8.1%}")
        lines.append("gaps (nats): " + ", ".join(f"{k} {v:.2f}" for k, v in self.gaps.items()))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """A JSON-ready form: each row's summary, the reference log-likelihood and the gaps."""
        return {"rows": {name: row.summary() for name, row in self.rows.items()},
                "log_likelihood": self.log_likelihood, "gaps": dict(self.gaps)}

    def __str__(self) -> str:
        return self.table()


def gap_report(
    model: Callable,
    guide: Callable,
    data,
    *,
    num_samples: int = 500,
    flow_guide: Callable | None = None,
    refine: RefinedProposal | None = None,
    ais_chains: int | None = 500,
    ais_steps: int = 50,
    batch_size: int | None = None,
    progress: bool = False,
) -> GapReport:
    """Score ``model`` with its ``guide`` every way pyrovae knows, on the same ``data``, and split the gap.

    Rows: the guide (its ELBO and importance-sampled log p(x)); the per-datum refined guide q* (``refine``,
    default :class:`~pyrovae.infer.RefinedProposal` ()); q* mixed with a wider copy (the most reliable
    importance sampler); ``flow_guide`` if given (a :class:`~pyrovae.guides.FlowGuide` refitted to the frozen model
    with :func:`~pyrovae.infer.refit_guide`); and annealed importance sampling from q* with ``ais_chains`` chains
    of ``ais_steps`` steps, the reference, which stands for log p(x) in the gaps even where an importance-sampled row
    is higher (None: skipped; it needs continuous latents, so for an enumerated y it is skipped with a warning,
    and the highest of the other estimates stands for log p(x)).
    """
    if refine is not None and not isinstance(refine, RefinedProposal):
        raise TypeError(f"gap_report's refine is the per-datum refinement, a RefinedProposal (or None for the "
                        f"default), got {type(refine).__name__} {refine!r}; pass e.g. "
                        "refine=pyrovae.infer.RefinedProposal(steps=100)")
    # one q* per batch, shared by the refined rows and the AIS start
    refine = copy.copy(refine or RefinedProposal())
    refine._memory = {}
    options = dict(num_samples=num_samples, batch_size=batch_size, progress=progress)
    report = GapReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the guide's own k-hat warning: the rows below are the answer to it
        report.rows["guide"] = log_likelihood(model, guide, data, proposal="guide", **options)
    report.rows["refined q* (per datum)"] = log_likelihood(model, guide, data, proposal=refine, **options)
    report.rows["refined q* + defensive"] = log_likelihood(model, guide, data,
                                                           proposal=DefensiveProposal(base=refine), **options)
    if flow_guide is not None:
        report.rows["flow guide (refitted)"] = log_likelihood(model, flow_guide, data, proposal="guide", **options)
    report.log_likelihood = max(row.mean for row in report.rows.values())
    if ais_chains is not None:
        try:
            annealed = ais_log_likelihood(model, guide, data, num_chains=ais_chains, num_steps=ais_steps,
                                          start=refine, batch_size=batch_size, progress=progress)
        except NotImplementedError as error:  # discrete latents: the IS rows are all there is
            warnings.warn(f"gap_report has no AIS row: {error}", stacklevel=2)
        else:
            report.rows[f"AIS from q*, {ais_chains} chains x {ais_steps} steps"] = annealed
            report.log_likelihood = annealed.mean
    elbo, refined_elbo = report.rows["guide"].elbo, report.rows["refined q* (per datum)"].elbo
    report.gaps = {"inference": report.log_likelihood - elbo, "amortisation": refined_elbo - elbo,
                   "approximation": report.log_likelihood - refined_elbo}
    if flow_guide is not None:
        report.gaps["flow_approximation"] = report.log_likelihood - report.rows["flow guide (refitted)"].elbo
    return report


__all__ = ["GapReport", "gap_report"]

"""Estimating the held-out log p(x) of a model/guide pair, and saying how far to trust the estimate.

- :mod:`~pyrovae.infer.estimation.log_likelihood`: the importance-sampled estimate (:func:`log_likelihood`);
- :mod:`~pyrovae.infer.estimation.result`: what every estimator returns, per-datum estimates with the certificate
  of each (:class:`LogLikelihood`), and the thresholds a certified estimate meets;
- :mod:`~pyrovae.infer.estimation.importance`: the log importance weights, vectorised over samples;
- :mod:`~pyrovae.infer.estimation.proposals`: importance distributions: the guide and a defensive mixture;
- :mod:`~pyrovae.infer.estimation.refined`: the guide refined for each datum from several starts
  (:class:`RefinedProposal`), with the posterior modes it finds (:mod:`~pyrovae.infer.estimation.modes`);
- :mod:`~pyrovae.infer.estimation.psis`: the Pareto k-hat of the weights (:func:`psis_khat`);
- :mod:`~pyrovae.infer.estimation.ais`: annealed importance sampling (:func:`ais_log_likelihood`);
- :mod:`~pyrovae.infer.estimation.bdmc`: bidirectional Monte Carlo, how far an AIS schedule is from exact
  (:func:`bdmc`);
- :mod:`~pyrovae.infer.estimation.certify`: ``proposal="auto"``, the cheapest estimator that certifies, per datum;
- :mod:`~pyrovae.infer.estimation.parts`: a long scoring in parts saved as they finish, which resumes
  (:func:`log_likelihood_in_parts`);
- :mod:`~pyrovae.infer.estimation.gap`: the inference, amortisation and approximation gaps (:func:`gap_report`);
- :mod:`~pyrovae.infer.estimation.refit`: a guide refitted to a frozen model and scored (:func:`refit_guide`).
"""

from pyrovae.infer.estimation.ais import ais_log_likelihood
from pyrovae.infer.estimation.bdmc import BDMC, bdmc
from pyrovae.infer.estimation.gap import GapReport, gap_report
from pyrovae.infer.estimation.importance import log_importance_weights
from pyrovae.infer.estimation.log_likelihood import log_likelihood
from pyrovae.infer.estimation.parts import log_likelihood_in_parts
from pyrovae.infer.estimation.proposals import DefensiveProposal, GuideProposal, Proposal
from pyrovae.infer.estimation.psis import psis_khat
from pyrovae.infer.estimation.refined import RefinedProposal
from pyrovae.infer.estimation.refit import refit_guide
from pyrovae.infer.estimation.result import LogLikelihood

__all__ = [
    "BDMC",
    "DefensiveProposal",
    "GapReport",
    "GuideProposal",
    "LogLikelihood",
    "Proposal",
    "RefinedProposal",
    "ais_log_likelihood",
    "bdmc",
    "gap_report",
    "log_importance_weights",
    "log_likelihood",
    "log_likelihood_in_parts",
    "psis_khat",
    "refit_guide",
]

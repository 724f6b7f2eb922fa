"""Observation models p(x | z) by name: each says how many decoder outputs per feature it needs and
turns them into a distribution. Extend with :func:`register_likelihood`."""

from pyrovae.likelihoods.base import Likelihood, get_likelihood, likelihood_names, register_likelihood
from pyrovae.likelihoods.continuous import Bernoulli, ContinuousBernoulli, Gaussian

__all__ = [
    "Likelihood",
    "Bernoulli",
    "ContinuousBernoulli",
    "Gaussian",
    "get_likelihood",
    "likelihood_names",
    "register_likelihood",
]

"""Observation models p(x | z) by name, for binary, real-valued and count data: each says how many decoder
outputs per feature it needs and turns them into a distribution. Extend with :func:`register_likelihood`."""

from pyrovae.likelihoods.base import Likelihood, get_likelihood, likelihood_names, register_likelihood
from pyrovae.likelihoods.continuous import Bernoulli, ContinuousBernoulli, Gaussian
from pyrovae.likelihoods.counts import (
    ConstrainedPoisson,
    CountLikelihood,
    NegativeBinomialLikelihood,
    Poisson,
    ZeroInflatedNegativeBinomialLikelihood,
    ZeroInflatedPoisson,
)

__all__ = [
    "Likelihood",
    "Bernoulli",
    "ConstrainedPoisson",
    "CountLikelihood",
    "NegativeBinomialLikelihood",
    "Poisson",
    "ZeroInflatedNegativeBinomialLikelihood",
    "ZeroInflatedPoisson",
    "ContinuousBernoulli",
    "Gaussian",
    "get_likelihood",
    "likelihood_names",
    "register_likelihood",
]

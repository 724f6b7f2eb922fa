"""Refit a guide to a frozen model and score the pair: how a point-mass auto-encoder gets a likelihood, and how
much of a VAE's gap to log p(x) its amortised guide explains (Cremer, Li & Duvenaud 2018)."""

from __future__ import annotations

from collections.abc import Callable

from pyrovae.infer.estimation.log_likelihood import log_likelihood
from pyrovae.infer.estimation.result import LogLikelihood
from pyrovae.infer.training.history import History
from pyrovae.infer.training.train import train


def refit_guide(model: Callable, guide: Callable, data, test_data=None, *, num_samples: int = 500,
                **train_options) -> tuple[History, LogLikelihood | None]:
    """Train ``guide`` against ``model`` with the model's parameters frozen, then, given ``test_data``, score
    the pair by :func:`~pyrovae.infer.log_likelihood` with ``num_samples`` importance samples.

    ``train_options`` go to :func:`~pyrovae.infer.train` (``epochs``, ``elbo``, ``lr``, ...); ``freeze`` is
    ``"model"`` here. Returns the refit's history and the held-out estimate (None without ``test_data``).
    """
    if train_options.get("freeze", "model") != "model":
        raise ValueError("refit_guide trains the guide against a frozen model; freeze must be 'model'")
    history = train(model, guide, data, **{**train_options, "freeze": "model"})
    if test_data is None:
        return history, None
    progress = train_options.get("progress", True)
    return history, log_likelihood(model, guide, test_data, num_samples=num_samples, progress=progress)


__all__ = ["refit_guide"]

"""Early stopping on a metric to maximise, keeping the parameters of the best epoch."""

from __future__ import annotations

import copy

from torch import nn


class EarlyStopping:
    """Track the best epoch of a metric (higher is better, e.g. the validation ELBO).

    :param int patience: stop after this many epochs without improvement (None: never stop).
    :param bool keep_best: keep a copy of the modules' state at the best epoch (:meth:`restore` puts it back).
    """

    def __init__(self, patience: int | None = None, keep_best: bool = False) -> None:
        self.patience, self.keep_best = patience, keep_best
        self.metric, self.epoch, self.bad_epochs, self.state = -float("inf"), None, 0, None

    def update(self, metric: float, epoch: int, modules: dict[str, nn.Module]) -> None:
        """Record the metric of ``epoch`` (counted from 1)."""
        if metric > self.metric:
            self.metric, self.epoch, self.bad_epochs = metric, epoch, 0
            if self.keep_best:
                self.state = {name: copy.deepcopy(m.state_dict()) for name, m in modules.items()}
        else:
            self.bad_epochs += 1

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def restore(self, modules: dict[str, nn.Module]) -> None:
        """Load the best epoch's state into ``modules`` (nothing when none was kept)."""
        if self.state is not None:
            for name, module in modules.items():
                module.load_state_dict(self.state[name])

    def state_dict(self) -> dict:
        return {"metric": self.metric, "epoch": self.epoch, "bad_epochs": self.bad_epochs, "state": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.metric, self.epoch = state["metric"], state["epoch"]
        self.bad_epochs, self.state = state["bad_epochs"], state["state"]


__all__ = ["EarlyStopping"]

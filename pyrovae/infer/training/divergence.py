"""When training fails: :class:`TrainingDiverged` and the messages that say where, what the parameters hold and what
to do (a learning rate too large, data outside the likelihood's support)."""

from __future__ import annotations

import os

import torch

from pyrovae.infer.training.step import SVIStep


class TrainingDiverged(FloatingPointError):
    """The loss or a gradient became NaN or infinite; the offending step was not applied."""


_DIVERGENCE = 1e6  # an epoch's loss per datum this many times the first step's size above it: diverged


def exploded(first: float, loss: float) -> bool:
    """Whether an epoch's loss per datum rose more than a million times the first step's size above it."""
    return loss - first > _DIVERGENCE * max(abs(first), 1.0)


def _kept(checkpoint) -> str:
    """What the checkpoint holds after a failure: the last finished epoch, or nothing yet."""
    if checkpoint is None:
        return ""
    if os.path.exists(checkpoint):
        return f"; {checkpoint} holds the last finished epoch"
    return f"; no epoch finished, so {checkpoint} was not written"


def _rate(step: SVIStep) -> str:
    rates = sorted({float(group["lr"]) for group in step.optimizer.param_groups if "lr" in group})
    return f"lr={rates[0]:g}" if len(rates) == 1 else "several learning rates"


def exploded_message(first: float, loss: float, epoch: int, step: SVIStep, checkpoint) -> str:
    rate = _rate(step)
    return (f"training diverged: the loss per datum rose from {first:.4g} at the first step to {loss:.4g} in epoch "
            f"{epoch + 1}, over {_DIVERGENCE:.0e} times the first step's size. The learning rate ({rate}) is the "
            "likely cause: lower it, or clip the gradients (pyro.optim.ClippedAdam). The model and guide hold the "
            f"diverged parameters{_kept(checkpoint)}")


def non_finite_step(step: int, steps_per_epoch: int, params: list, checkpoint) -> str:
    """What a user needs to know when a step is not finite: where, what the parameters are now, what to do."""
    finite = all(bool(torch.isfinite(p).all()) for p in params)
    state = ("the step was not applied, so the model and guide keep their last finite parameters" if finite else
             "the parameters themselves are no longer finite (an earlier step with finite gradients made them so)")
    epoch, within = divmod(step, max(steps_per_epoch, 1))
    where = f"epoch {epoch + 1}, step {within + 1} of {steps_per_epoch} (step {step + 1} of the run)"
    go_on = ""
    if checkpoint is not None and os.path.exists(checkpoint):  # its settings are fixed: another rate is a new run
        go_on = (f"; to go on from that epoch with another rate, load its weights (saved = load_checkpoint("
                 f"{str(checkpoint)!r}); model.load_state_dict(saved['modules']['model']); the guide's likewise) and "
                 "train with a new checkpoint path")
    return (f"the loss or a gradient became non-finite at {where}; {state}{_kept(checkpoint)}. Lower the learning "
            f"rate, use pyro.optim.ClippedAdam, or check the data scale{go_on}")


def non_finite_metrics(record: dict, bad: list[str], epoch: int, first_loss: float, step: SVIStep, checkpoint) -> str:
    """What a user needs to know when an epoch's scores (``bad``, keys of ``record``) are not finite."""
    return (f"{', '.join(bad)} of epoch {epoch + 1} is not finite ({', '.join(str(record[k]) for k in bad)}): "
            "the model gives some data a log-density of NaN or -inf. Check the data against the likelihood "
            "(e.g. values outside its support, a library size of 0), or whether training diverged (the loss "
            f"per datum went from {first_loss:.4g} at the first step to {record['loss']:.4g} in this epoch; "
            f"with {_rate(step)}, lower the learning rate){_kept(checkpoint)}")


__all__ = ["TrainingDiverged", "exploded", "exploded_message", "non_finite_metrics", "non_finite_step"]

"""Training a model/guide pair by SVI: :func:`train` and the parts it is composed of.

- :mod:`~pyrovae.infer.training.train`: the loop (:func:`train`);
- :mod:`~pyrovae.infer.training.divergence`: when a step or an epoch is not finite (:class:`TrainingDiverged`);
- :mod:`~pyrovae.infer.training.objectives`: Pyro's ELBOs by name, their traced forms, the IWAE and Renyi bounds;
- :mod:`~pyrovae.infer.training.step`: the parameters, the optimiser and the guarded step (:class:`SVIStep`);
- :mod:`~pyrovae.infer.training.schedule`: KL warm-up (:class:`KLSchedule`);
- :mod:`~pyrovae.infer.training.early_stopping`: the best epoch and patience (:class:`EarlyStopping`);
- :mod:`~pyrovae.infer.training.checkpoint`: atomic checkpoints that resume exactly (:class:`TrainingCheckpoint`);
- :mod:`~pyrovae.infer.training.files`: files two jobs may share (:func:`atomic_write`, :class:`FileLock`, checksums);
- :mod:`~pyrovae.infer.training.history`: the per-epoch metrics (:class:`History`);
- :mod:`~pyrovae.infer.training.start`: a GMVAE started from k-means pseudo-labels (:func:`pseudo_label_start`).
"""

from pyrovae.infer.training.checkpoint import (
    CheckpointInUse,
    SettingsMismatch,
    TrainingCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from pyrovae.infer.training.divergence import TrainingDiverged
from pyrovae.infer.training.early_stopping import EarlyStopping
from pyrovae.infer.training.files import FileLock, atomic_write
from pyrovae.infer.training.history import History
from pyrovae.infer.training.objectives import ELBO_NAMES, ObjectiveScale, importance_weighted_bound, make_objective
from pyrovae.infer.training.schedule import KLSchedule
from pyrovae.infer.training.start import pseudo_label_start
from pyrovae.infer.training.step import SVIStep, trainable_parameters
from pyrovae.infer.training.train import train

__all__ = [
    "CheckpointInUse",
    "ELBO_NAMES",
    "EarlyStopping",
    "FileLock",
    "History",
    "KLSchedule",
    "ObjectiveScale",
    "SVIStep",
    "SettingsMismatch",
    "TrainingCheckpoint",
    "TrainingDiverged",
    "atomic_write",
    "importance_weighted_bound",
    "load_checkpoint",
    "make_objective",
    "pseudo_label_start",
    "save_checkpoint",
    "train",
    "trainable_parameters",
]

"""Inference for model/guide pairs, in three rooms around a shared core.

- :mod:`pyrovae.infer.training`: the SVI loop (:func:`train`) and its parts: objectives, the guarded step, the
  KL schedule, early stopping, checkpoints and the training history.
- :mod:`pyrovae.infer.estimation`: the held-out log p(x): importance sampling with its proposals, annealed
  importance sampling, PSIS diagnostics, the amortisation/approximation gap report and refitting a guide.
- :mod:`pyrovae.infer.analysis`: what is done with a trained pair: encoding data, latent locations,
  reconstruction and interpolation; normalised and differential expression and label transfer of count models.
- the core that all three use: the model/guide contract (:mod:`~pyrovae.infer.contract`), evaluation
  (:mod:`~pyrovae.infer.evaluation`), batches (:mod:`~pyrovae.infer.batches`), argument checks
  (:mod:`~pyrovae.infer.arguments`) and torchrun/DDP (:mod:`~pyrovae.infer.distributed`).

Every public name of the rooms is importable from here. The clustering and reconstruction scores live in
:mod:`pyrovae.metrics` and are re-exported here.
"""

from pyrovae.infer.analysis import (
    differential_expression,
    encode_data,
    interpolate,
    interpolation_path,
    latent_location,
    locate,
    markers,
    normalized_expression,
    predict_labels,
    reconstruct,
)
from pyrovae.infer.contract import check_model_guide
from pyrovae.infer.estimation import (
    BDMC,
    DefensiveProposal,
    GapReport,
    GuideProposal,
    LogLikelihood,
    Proposal,
    RefinedProposal,
    ais_log_likelihood,
    bdmc,
    gap_report,
    log_importance_weights,
    log_likelihood,
    log_likelihood_in_parts,
    psis_khat,
    refit_guide,
)
from pyrovae.infer.evaluation import elbo_terms, evaluate
from pyrovae.infer.training import (
    ELBO_NAMES,
    CheckpointInUse,
    EarlyStopping,
    FileLock,
    History,
    KLSchedule,
    ObjectiveScale,
    SettingsMismatch,
    SVIStep,
    TrainingCheckpoint,
    TrainingDiverged,
    atomic_write,
    importance_weighted_bound,
    load_checkpoint,
    make_objective,
    pseudo_label_start,
    save_checkpoint,
    train,
    trainable_parameters,
)
from pyrovae.metrics import clustering_scores, kmeans_clusters, reconstruction_scores, silhouette_sweep

__all__ = [
    # training
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
    # estimation of log p(x)
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
    # analysis of a trained pair
    "differential_expression",
    "encode_data",
    "interpolate",
    "interpolation_path",
    "latent_location",
    "locate",
    "markers",
    "normalized_expression",
    "predict_labels",
    "reconstruct",
    # the shared core
    "check_model_guide",
    "elbo_terms",
    "evaluate",
    # re-exported from pyrovae.metrics
    "clustering_scores",
    "kmeans_clusters",
    "reconstruction_scores",
    "silhouette_sweep",
]

"""Training and evaluation: SVI, importance-sampled log-likelihood with its proposals, annealed importance sampling,
the amortisation/approximation gap report, PSIS diagnostics, checkpoints; normalised and differential expression
of count models.

The clustering and reconstruction scores live in :mod:`pyrovae.metrics` and are re-exported here.
"""

from pyrovae.infer.ais import ais_log_likelihood
from pyrovae.infer.checkpoint import (
    CheckpointInUse,
    FileLock,
    TrainingCheckpoint,
    atomic_write,
    load_checkpoint,
    save_checkpoint,
)
from pyrovae.infer.contract import check_model_guide
from pyrovae.infer.early_stopping import EarlyStopping
from pyrovae.infer.encoding import encode_data
from pyrovae.infer.evaluation import elbo_terms, evaluate
from pyrovae.infer.expression import differential_expression, markers, normalized_expression, predict_labels
from pyrovae.infer.gap import GapReport, gap_report
from pyrovae.infer.history import History
from pyrovae.infer.importance import log_importance_weights
from pyrovae.infer.latent import interpolate, interpolation_path, latent_location, locate, reconstruct
from pyrovae.infer.log_likelihood import LogLikelihood, log_likelihood
from pyrovae.infer.objectives import ELBO_NAMES, ObjectiveScale, importance_weighted_bound, make_objective
from pyrovae.infer.proposals import DefensiveProposal, GuideProposal, Proposal, RefinedProposal
from pyrovae.infer.psis import psis_khat
from pyrovae.infer.refit import refit_guide
from pyrovae.infer.schedule import KLSchedule
from pyrovae.infer.step import SVIStep, trainable_parameters
from pyrovae.infer.train import TrainingDiverged, train
from pyrovae.metrics import clustering_scores, kmeans_clusters, reconstruction_scores, silhouette_sweep

__all__ = [
    "CheckpointInUse",
    "FileLock",
    "atomic_write",
    "importance_weighted_bound",
    "DefensiveProposal",
    "GapReport",
    "GuideProposal",
    "Proposal",
    "RefinedProposal",
    "ais_log_likelihood",
    "gap_report",
    "ELBO_NAMES",
    "EarlyStopping",
    "KLSchedule",
    "SVIStep",
    "TrainingCheckpoint",
    "interpolate",
    "interpolation_path",
    "latent_location",
    "locate",
    "reconstruct",
    "refit_guide",
    "trainable_parameters",
    "History",
    "LogLikelihood",
    "ObjectiveScale",
    "TrainingDiverged",
    "check_model_guide",
    "clustering_scores",
    "elbo_terms",
    "encode_data",
    "evaluate",
    "kmeans_clusters",
    "load_checkpoint",
    "log_importance_weights",
    "log_likelihood",
    "make_objective",
    "psis_khat",
    "reconstruction_scores",
    "save_checkpoint",
    "silhouette_sweep",
    "train",
    "differential_expression",
    "markers",
    "normalized_expression",
    "predict_labels",
]

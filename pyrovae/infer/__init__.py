"""Training and evaluation: SVI, importance-sampled log-likelihood, PSIS diagnostics, checkpoints."""

from pyrovae.infer.checkpoint import load_checkpoint, save_checkpoint
from pyrovae.infer.clustering import clustering_scores, kmeans_clusters, reconstruction_scores, silhouette_sweep
from pyrovae.infer.contract import check_model_guide
from pyrovae.infer.encoding import encode_data
from pyrovae.infer.evaluation import elbo_terms, evaluate
from pyrovae.infer.history import History
from pyrovae.infer.importance import log_importance_weights
from pyrovae.infer.log_likelihood import LogLikelihood, log_likelihood
from pyrovae.infer.objectives import ELBO_NAMES, ObjectiveScale, make_objective
from pyrovae.infer.psis import psis_khat
from pyrovae.infer.train import TrainingDiverged, train

__all__ = [
    "ELBO_NAMES",
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
]

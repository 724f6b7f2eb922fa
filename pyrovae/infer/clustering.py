"""Clustering of latent representations and its scores against known labels (ARI, NMI, silhouette)."""

from __future__ import annotations

import numpy as np
import torch


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def kmeans_clusters(latent, num_clusters: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """KMeans cluster of each row of ``latent`` (scikit-learn, ``n_init`` restarts, seeded)."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=num_clusters, n_init=n_init, random_state=seed).fit_predict(_numpy(latent))


def clustering_scores(labels, clusters, latent=None, max_silhouette: int = 5000, seed: int = 0) -> dict:
    """Agreement of ``clusters`` with known ``labels`` and, given ``latent``, how well the labels separate there.

    :returns: ``{"ari", "nmi"}`` (adjusted Rand index, normalised mutual information; 1 is perfect, ARI ~0 is
        chance) and, with ``latent``, ``"silhouette"`` of the known labels in the latent space (in [-1, 1];
        computed on at most ``max_silhouette`` rows, drawn with ``seed``).
    """
    from sklearn import metrics

    labels, clusters = _numpy(labels).ravel(), _numpy(clusters).ravel()
    if labels.shape != clusters.shape:
        raise ValueError(f"{labels.shape[0]} labels for {clusters.shape[0]} cluster assignments")
    scores = {
        "ari": float(metrics.adjusted_rand_score(labels, clusters)),
        "nmi": float(metrics.normalized_mutual_info_score(labels, clusters)),
    }
    if latent is not None:
        latent = _numpy(latent)
        rows = np.arange(len(labels))
        if len(rows) > max_silhouette:
            rows = np.random.default_rng(seed).choice(rows, max_silhouette, replace=False)
        if len(np.unique(labels[rows])) > 1:
            scores["silhouette"] = float(metrics.silhouette_score(latent[rows], labels[rows]))
    return scores


__all__ = ["clustering_scores", "kmeans_clusters"]

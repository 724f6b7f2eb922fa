"""Scores of what a model learned, in one place: clustering of latent representations against known labels (ARI,
NMI, silhouette), reconstruction (MSE, per-row correlation), and the circular correlation of angles (for latents
on a circle)."""

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


def silhouette_sweep(latent, ks=range(2, 11), seed: int = 0, max_points: int = 5000) -> dict[int, float]:
    """Silhouette of KMeans clusterings of ``latent`` for each number of clusters in ``ks`` (on at most
    ``max_points`` rows drawn with ``seed``): the notebook-000 choice of k."""
    from sklearn.metrics import silhouette_score

    latent = _numpy(latent)
    if len(latent) > max_points:
        latent = latent[np.random.default_rng(seed).choice(len(latent), max_points, replace=False)]
    return {int(k): float(silhouette_score(latent, kmeans_clusters(latent, int(k), seed))) for k in ks}


def reconstruction_scores(data, reconstruction) -> dict:
    """Mean squared error over all entries, and the Pearson correlation of each row with its reconstruction.

    :returns: ``{"mse", "correlation_mean", "correlations"}``; a constant row has correlation NaN (left out of the
        mean).
    """
    data, reconstruction = _numpy(data).astype(np.float64), _numpy(reconstruction).astype(np.float64)
    if data.shape != reconstruction.shape:
        raise ValueError(f"data {data.shape} and reconstruction {reconstruction.shape} differ in shape")
    centred = data - data.mean(1, keepdims=True)
    centred_hat = reconstruction - reconstruction.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlations = (centred * centred_hat).sum(1) / np.sqrt((centred**2).sum(1) * (centred_hat**2).sum(1))
    return {"mse": float(((data - reconstruction) ** 2).mean()), "correlation_mean": float(np.nanmean(correlations)),
            "correlations": correlations}


def circular_correlation(a, b) -> float:
    """|Jammalamadaka & SenGupta (1988)'s circular correlation| of two samples of angles (radians): 1 when one is
    a rotation or reflection of the other, near 0 when they are independent.

    rho = sum sin(a - abar) sin(b - bbar) / sqrt(sum sin^2(a - abar) sum sin^2(b - bbar)), abar and bbar the
    circular means. The absolute value makes it invariant to reflection as well.
    """
    a, b = _numpy(a).astype(np.float64).ravel(), _numpy(b).astype(np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"{a.shape[0]} angles against {b.shape[0]}")
    sine_a = np.sin(a - np.arctan2(np.sin(a).mean(), np.cos(a).mean()))
    sine_b = np.sin(b - np.arctan2(np.sin(b).mean(), np.cos(b).mean()))
    return abs(float((sine_a * sine_b).sum() / np.sqrt((sine_a**2).sum() * (sine_b**2).sum())))


__all__ = ["circular_correlation", "clustering_scores", "kmeans_clusters", "reconstruction_scores", "silhouette_sweep"]

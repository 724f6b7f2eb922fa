"""Figures shared by experiments: image grids, latent scatters, training curves (matplotlib, no torchvision).

Importing this module leaves matplotlib's backend alone, so figures show inline in a notebook; experiment
scripts choose the file-only Agg backend themselves (:func:`pyrovae.experiment.setup`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from pyrovae.optional import lazy_import

plt = lazy_import("matplotlib.pyplot")


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def image_grid(images, image_shape: Sequence[int] = (28, 28), num_columns: int = 10, padding: int = 1) -> np.ndarray:
    """Tile flattened images ``(N, H*W)`` into one ``(rows*(H+p), cols*(W+p))`` array.

    Blank cells and gaps are 0 (white with the ``gray_r`` colour map).
    """
    images = _numpy(images).reshape(-1, *image_shape)
    count, (height, width) = len(images), image_shape
    rows = -(-count // num_columns)
    grid = np.zeros((rows * (height + padding) + padding, num_columns * (width + padding) + padding), dtype=float)
    for index, image in enumerate(images):
        r, c = divmod(index, num_columns)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def show_images(ax, images, image_shape=(28, 28), num_columns=10, title: str | None = None) -> None:
    ax.imshow(image_grid(images, image_shape, num_columns), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)


def principal_axes(x, num_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The centre ``(D,)`` and the first ``num_components`` principal axes ``(k, D)`` of the rows of ``x`` (an SVD of
    the centred data); project with ``(v - centre) @ axes.T``."""
    x = _numpy(x).astype(np.float64)
    centre = x.mean(0)
    _, _, vt = np.linalg.svd(x - centre, full_matrices=False)
    return centre, vt[:num_components]


def latent_scatter(ax, codes, labels=None, title: str | None = None, max_points: int = 10000) -> None:
    """Scatter of 2-D codes (first two principal components when the codes have more dimensions), coloured by
    integer labels or by names (with a legend up to 20 categories)."""
    codes = _numpy(codes)[:max_points]
    if codes.shape[1] > 2:
        centre, axes = principal_axes(codes)
        codes = (codes - centre) @ axes.T
        ax.set_xlabel("PC 1 of latent means")
        ax.set_ylabel("PC 2")
    else:
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
    if labels is None:
        ax.scatter(codes[:, 0], codes[:, 1], s=2, alpha=0.6)
    else:
        labels = _numpy(labels)[:max_points]
        if labels.dtype.kind in "OUS":  # names: one colour and one legend entry per name
            names, labels = np.unique(labels.astype(str), return_inverse=True)
        else:
            names = None
        cmap = "tab10" if labels.max() < 10 else "tab20"
        scatter = ax.scatter(codes[:, 0], codes[:, 1], c=labels, s=2, alpha=0.7, cmap=cmap)
        if len(np.unique(labels)) <= 20:
            handles, values = scatter.legend_elements()
            if names is not None:
                values = [names[int(v)] for v in np.unique(labels)]
            ax.legend(handles, values, loc="best", fontsize="x-small", markerscale=0.8, ncol=2)
    if title:
        ax.set_title(title)


def training_curves(ax, histories: dict, key: str = "val_elbo", ylabel: str = "ELBO per datum") -> None:
    """One line per labelled :class:`~pyrovae.infer.History`."""
    for label, history in histories.items():
        values = history[key]
        if any(v is None for v in values):
            values = history["train_elbo"]
        ax.plot(history["epoch"], values, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend()


def save(fig, path: str | os.PathLike) -> None:
    """Save a figure (creating its folder) and close it."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)

"""MNIST and Fashion-MNIST as flattened [0, 1] images, with static or dynamic binarisation."""

from __future__ import annotations

import os

import numpy as np
import torch

from pyrovae.data.idx import OFFICIAL_SHA256, download_idx, find_idx_file, read_idx
from pyrovae.data.paths import cache_dir, find_dataset
from pyrovae.data.tensor_data import TensorData
from pyrovae.optional import require

BINARIZE = (None, "static", "dynamic", "threshold")

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
)


def _binarize(images: torch.Tensor, mode: str | None, seed: int) -> torch.Tensor:
    if mode == "threshold":
        return (images > 0.5).float()
    if mode in ("static", "dynamic"):
        generator = torch.Generator().manual_seed(seed)
        return torch.bernoulli(images, generator=generator)
    return images


def load_idx_images(
    dataset: str,
    data_dir: str | os.PathLike | None = None,
    binarize: str | None = None,
    download: bool = False,
    seed: int = 0,
) -> tuple[TensorData, TensorData]:
    """Train and test splits of an IDX image data set (``"mnist"`` or ``"fashion-mnist"``).

    Images are flattened to ``(N, 784)`` float32 in [0, 1]; labels are int64. ``binarize``:

    * ``None``: grey levels;
    * ``"static"``: one Bernoulli draw per pixel, fixed by ``seed`` (train and test);
    * ``"dynamic"``: training pixels are redrawn every time a batch is formed (Salakhutdinov & Murray 2008),
      the test set is drawn once with ``seed`` so that evaluations are reproducible;
    * ``"threshold"``: pixel > 0.5.

    Files are looked for in ``data_dir`` (only there when given; it must exist), else in
    ``$PYROVAE_DATA/<dataset>``, ``../shared/data/<dataset>`` and the cache; with ``download=True`` missing files
    are fetched from the official mirrors into the cache.
    """
    if binarize not in BINARIZE:
        raise ValueError(f"binarize must be one of {BINARIZE}, got {binarize!r}")
    if dataset not in OFFICIAL_SHA256:
        raise ValueError(f"unknown IDX data set {dataset!r}; expected one of {sorted(OFFICIAL_SHA256)}")
    directory = find_dataset(dataset, data_dir)
    arrays = {}
    for stem, expected in OFFICIAL_SHA256[dataset].items():
        path = find_idx_file(directory, stem) if directory is not None else None
        if path is None:
            if not download:
                where = (f"data_dir={str(data_dir)!r} and its {dataset}/ folder" if data_dir is not None
                         else f"$PYROVAE_DATA, ../shared/data and {cache_dir()}")
                raise FileNotFoundError(
                    f"{dataset} file {stem}(.gz) not found (looked in {where}); pass data_dir=, set PYROVAE_DATA, "
                    "or use download=True when online"
                )
            path = download_idx(dataset, stem, cache_dir() / dataset)
        arrays[stem] = read_idx(path, expected)
    splits = []
    for split, name in (("train", "train"), ("t10k", "test")):
        images = torch.from_numpy(np.asarray(arrays[f"{split}-images-idx3-ubyte"], dtype=np.float32) / 255.0)
        labels = torch.from_numpy(np.asarray(arrays[f"{split}-labels-idx1-ubyte"], dtype=np.int64))
        splits.append(TensorData(images.reshape(len(images), -1), labels, name=f"{dataset} {name}"))
    return binarize_split(splits[0], splits[1], binarize, seed)


def binarize_split(train: TensorData, test: TensorData, binarize: str | None, seed: int = 0):
    """A (train, test) pair of grey-level images in [0, 1], binarised as the loaders' ``binarize`` option.

    ``"dynamic"`` makes the training set redraw its pixels at every batch and draws the test set once with
    ``seed + 1``; ``"static"`` draws both once (seeds ``seed`` and ``seed + 1``); ``"threshold"`` cuts at
    0.5; ``None`` returns the pair unchanged. Use it to get grey and binary versions from one read.
    """
    if binarize not in BINARIZE:
        raise ValueError(f"binarize must be one of {BINARIZE}, got {binarize!r}")
    if binarize is None:
        return train, test
    if binarize == "dynamic":
        train = TensorData(train.x, train.labels, torch.bernoulli, name=train.name)
    else:
        train = TensorData(_binarize(train.x, binarize, seed), train.labels, train.transform, name=train.name)
    return train, TensorData(_binarize(test.x, binarize, seed + 1), test.labels, test.transform, name=test.name)


def load_mnist(data_dir=None, binarize: str | None = None, download: bool = False, seed: int = 0):
    """MNIST (LeCun et al. 1998): 60,000 training and 10,000 test digits. See :func:`load_idx_images`."""
    return load_idx_images("mnist", data_dir, binarize, download, seed)


def load_fashion_mnist(data_dir=None, binarize: str | None = None, download: bool = False, seed: int = 0):
    """Fashion-MNIST (Xiao et al. 2017): Zalando's 28x28 clothing images, 10 classes (:data:`FASHION_CLASSES`)."""
    return load_idx_images("fashion-mnist", data_dir, binarize, download, seed)


def load_digits(binarize: str | None = None, test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's bundled 8x8 digits (1,797 images, grey levels 0-16 scaled to [0, 1]), split at random.

    The offline stand-in for MNIST: always available, no file needed.
    """
    sklearn_digits = require("sklearn.datasets").load_digits

    if binarize not in BINARIZE:
        raise ValueError(f"binarize must be one of {BINARIZE}, got {binarize!r}")
    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.data.astype(np.float32) / 16.0)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    num_test = int(round(test_fraction * len(images)))
    test, train = order[:num_test], order[num_test:]
    return binarize_split(
        TensorData(images[train], labels[train], name="digits train"),
        TensorData(images[test], labels[test], name="digits test"),
        binarize,
        seed,
    )

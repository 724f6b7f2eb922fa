"""Data: IDX images (MNIST, Fashion-MNIST), scikit-learn digits, the notebooks' synthetic sets."""

from pyrovae.data.idx import IDXError, parse_idx, read_idx
from pyrovae.data.mnist import (
    FASHION_CLASSES,
    binarize_split,
    load_digits,
    load_fashion_mnist,
    load_idx_images,
    load_mnist,
)
from pyrovae.data.paths import cache_dir, data_roots, find_dataset
from pyrovae.data.synthetic import circle_clusters, gaussian_mixture_1d, gaussian_mixture_1d_log_density, two_groups
from pyrovae.data.tensor_data import TensorData, check_finite

__all__ = [
    "FASHION_CLASSES",
    "IDXError",
    "TensorData",
    "binarize_split",
    "cache_dir",
    "check_finite",
    "circle_clusters",
    "data_roots",
    "find_dataset",
    "gaussian_mixture_1d",
    "gaussian_mixture_1d_log_density",
    "load_digits",
    "load_fashion_mnist",
    "load_idx_images",
    "load_mnist",
    "parse_idx",
    "read_idx",
    "two_groups",
]

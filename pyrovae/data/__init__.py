"""Data: IDX images (MNIST, Fashion-MNIST), scikit-learn digits, the notebooks' synthetic sets, and single-cell
counts (10x mtx and h5, scDeepCluster HDF5, CSV, AnnData) kept sparse on the host, and Tahoe-schema parquet atlases
streamed shard by shard."""

from pyrovae.data.anndata_io import add_results, from_anndata, raw_counts, read_h5ad
from pyrovae.data.anndata_stream import AnnDataStream
from pyrovae.data.atlas import TahoeAtlas
from pyrovae.data.cell_stream import BatchStream, CellBatch, CellStream
from pyrovae.data.count_data import CountData
from pyrovae.data.idx import IDXError, parse_idx, read_idx
from pyrovae.data.log_pca import LogPCA
from pyrovae.data.mnist import (
    FASHION_CLASSES,
    binarize_split,
    load_digits,
    load_fashion_mnist,
    load_idx_images,
    load_mnist,
)
from pyrovae.data.paths import cache_dir, data_roots, find_dataset
from pyrovae.data.single_cell import (
    SHARED_SETS,
    CountFileError,
    load_count_dataset,
    read_10x_h5,
    read_10x_mtx,
    read_count_csv,
    read_scdeepcluster_h5,
)
from pyrovae.data.source import DataSource, as_source
from pyrovae.data.synthetic import circle_clusters, gaussian_mixture_1d, gaussian_mixture_1d_log_density, two_groups
from pyrovae.data.tahoe import TAHOE_HUB, GeneVocabulary, TahoeFormatError
from pyrovae.data.tahoe_synthetic import write_tahoe_shards
from pyrovae.data.tensor_data import TensorData, check_finite

__all__ = [
    "DataSource",
    "as_source",
    "TAHOE_HUB",
    "CellBatch",
    "CellStream",
    "AnnDataStream",
    "BatchStream",
    "GeneVocabulary",
    "LogPCA",
    "TahoeAtlas",
    "TahoeFormatError",
    "write_tahoe_shards",
    "SHARED_SETS",
    "CountData",
    "CountFileError",
    "add_results",
    "from_anndata",
    "load_count_dataset",
    "read_10x_h5",
    "read_10x_mtx",
    "read_count_csv",
    "raw_counts",
    "read_h5ad",
    "read_scdeepcluster_h5",
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

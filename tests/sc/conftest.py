"""A small generated AnnData for the single-cell layer: three cell types with their own marker genes, two
batches, raw counts in the layer "counts" and log-normalised values in X, as scverse users keep them."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

NUM_CELLS, NUM_GENES = 90, 24
TYPES = ("B", "NK", "T")


def make_adata(seed: int = 0, sparse: bool = True):
    import anndata

    rng = np.random.default_rng(seed)
    kind = np.arange(NUM_CELLS) % 3
    rates = np.full((3, NUM_GENES), 1.0)
    for k in range(3):
        rates[k, k * 4:(k + 1) * 4] = 12.0  # four markers per type
    batch = rng.integers(0, 2, NUM_CELLS)
    counts = rng.poisson(rates[kind] * (1 + 0.5 * batch)[:, None]).astype(np.float32)
    counts[:, 0] += 1  # no empty cell
    obs = pd.DataFrame({"cell_type": np.asarray(TYPES)[kind], "batch": np.where(batch, "b2", "b1"),
                        "percent_mt": rng.random(NUM_CELLS)}, index=[f"cell{i}" for i in range(NUM_CELLS)])
    var = pd.DataFrame(index=[f"gene{j}" for j in range(NUM_GENES)])
    matrix = sp.csr_matrix(counts) if sparse else counts
    adata = anndata.AnnData(X=matrix.copy(), obs=obs, var=var)
    adata.layers["counts"] = matrix
    adata.X = np.log1p(counts) if not sparse else sp.csr_matrix(np.log1p(counts))
    return adata


@pytest.fixture
def adata():
    return make_adata()

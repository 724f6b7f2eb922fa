"""Single-cell readers on generated files (every format), CountData processing, bad input, and the real sets."""

import gzip
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
import torch

from pyrovae.data import (
    CountData,
    CountFileError,
    add_results,
    from_anndata,
    load_count_dataset,
    read_10x_h5,
    read_10x_mtx,
    read_count_csv,
    read_h5ad,
    read_scdeepcluster_h5,
)
from pyrovae.data.paths import find_dataset

RNG = np.random.default_rng(0)
COUNTS = sp.random(30, 12, density=0.3, random_state=1, data_rvs=lambda n: RNG.integers(1, 50, n)).tocsr()
COUNTS[np.arange(30), np.arange(30) % 12] += 1  # no empty cell or gene
GENES = [f"G{j}" for j in range(12)]
CELLS = [f"C{i}" for i in range(30)]
TYPES = [["T", "B", "NK"][i % 3] for i in range(30)]


def _write_mtx(folder, gz, features=False):
    folder.mkdir()
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(folder / f"matrix.mtx{suffix}", "wb") as handle:
        scipy.io.mmwrite(handle, COUNTS.T.tocoo().astype(np.int64))
    gene_rows = [f"ENSG{j}\t{g}\tGene Expression" if features else f"ENSG{j}\t{g}" for j, g in enumerate(GENES)]
    with opener(folder / (f"features.tsv{suffix}" if features else f"genes.tsv{suffix}"), "wt") as handle:
        handle.write("\n".join(gene_rows) + "\n")
    with opener(folder / f"barcodes.tsv{suffix}", "wt") as handle:
        handle.write("\n".join(CELLS) + "\n")
    pd.DataFrame({"barcode": CELLS, "cell_type": TYPES}).to_csv(folder / "cell_metadata.csv", index=False)


@pytest.mark.parametrize("gz, features", [(False, False), (True, True)])
def test_read_10x_mtx(tmp_path, gz, features):
    _write_mtx(tmp_path / "mtx", gz, features)
    data = read_10x_mtx(tmp_path / "mtx")
    assert (data.counts != COUNTS).nnz == 0
    assert data.gene_names == GENES and data.obs.index.tolist() == CELLS
    assert data.label_names == ["B", "NK", "T"] and data.labels.tolist()[:3] == [2, 0, 1]


def test_read_10x_h5_v3_and_v2(tmp_path):
    csc = COUNTS.T.tocsc()  # genes x cells, stored column-compressed as Cell Ranger does
    for layout in ("v3", "v2"):
        path = tmp_path / f"{layout}.h5"
        with h5py.File(path, "w") as handle:
            group = handle.create_group("matrix" if layout == "v3" else "GRCh38")
            for key in ("data", "indices", "indptr"):
                group[key] = getattr(csc, key)
            group["shape"] = np.array(csc.shape)
            group["barcodes"] = np.array(CELLS, dtype="S")
            if layout == "v3":
                group["features/name"] = np.array(GENES, dtype="S")
                group["features/id"] = np.array([f"ENSG{j}" for j in range(12)], dtype="S")
            else:
                group["gene_names"] = np.array(GENES, dtype="S")
                group["genes"] = np.array([f"ENSG{j}" for j in range(12)], dtype="S")
        data = read_10x_h5(path)
        assert (data.counts != COUNTS).nnz == 0 and data.gene_names == GENES


def test_read_scdeepcluster_h5(tmp_path):
    path = tmp_path / "set.h5"
    with h5py.File(path, "w") as handle:
        handle["X"] = COUNTS.toarray().astype(np.float64)
        handle["Y"] = np.arange(30, dtype=np.float64) % 4
    data = read_scdeepcluster_h5(path)
    assert (data.counts != COUNTS).nnz == 0 and data.labels.tolist()[:5] == [0, 1, 2, 3, 0]


def test_read_count_csv_with_metadata_and_spike_ins(tmp_path):
    table = pd.DataFrame(COUNTS.toarray().T, index=GENES, columns=CELLS)
    spike = pd.DataFrame([[1] * 30], index=["ERCC-00002"], columns=CELLS)
    pd.concat([table, spike]).to_csv(tmp_path / "counts.csv.gz")
    pd.DataFrame({"line": TYPES}, index=CELLS).to_csv(tmp_path / "meta.csv")
    with pytest.warns(UserWarning, match="dropped 1 ERCC spike-in rows"):
        data = read_count_csv(tmp_path / "counts.csv.gz", tmp_path / "meta.csv", label_key="line")
    assert (data.counts != COUNTS).nnz == 0 and data.label_names == ["B", "NK", "T"]


def test_anndata_round_trip_and_results(tmp_path):
    data = CountData(COUNTS, pd.DataFrame({"cell_type": TYPES}, index=CELLS), pd.DataFrame(index=GENES), "cell_type")
    adata = data.to_anndata()
    adata.X = adata.X.log1p()  # X normalised, raw counts kept in a layer, as scverse users do
    adata.write_h5ad(tmp_path / "cells.h5ad")
    back = read_h5ad(tmp_path / "cells.h5ad", layer="counts", label_key="cell_type")
    assert (back.counts != COUNTS).nnz == 0 and back.label_names == data.label_names
    with pytest.raises(ValueError, match="non-integer count"):
        from_anndata(adata)  # log1p values are not counts
    with pytest.raises(ValueError, match="no layer 'raw'"):
        from_anndata(adata, layer="raw")
    add_results(adata, latent=torch.ones(30, 3), clusters=torch.arange(30) % 2)
    assert adata.obsm["X_pyrovae"].shape == (30, 3)
    assert adata.obs["pyrovae_cluster"].cat.categories.tolist() == ["0", "1"]


def test_text_read_by_pandas_3_is_written(tmp_path):
    # pandas 3 reads text as its nullable string dtype, which anndata refuses to write unless told to: the
    # AnnData of a CountData read so (CellBench's metadata) must still save
    with pd.option_context("future.infer_string", True):
        obs = pd.DataFrame({"cell_type": TYPES, "barcode": [f"c{i}" for i in range(30)]},
                           index=pd.Index(CELLS, dtype="string"))
        obs["barcode"] = obs["barcode"].astype("string")
        data = CountData(COUNTS, obs, pd.DataFrame({"symbol": GENES}, index=GENES).astype("string"), "cell_type")
        data.to_anndata().write_h5ad(tmp_path / "cells.h5ad")
    back = read_h5ad(tmp_path / "cells.h5ad", label_key="cell_type")
    assert (back.counts != COUNTS).nnz == 0 and back.obs["barcode"].tolist() == obs["barcode"].tolist()


def test_a_text_continuous_covariate_and_a_non_anndata_are_named():
    data = CountData(COUNTS, pd.DataFrame({"cell_type": TYPES}, index=CELLS), pd.DataFrame(index=GENES), "cell_type")
    adata = data.to_anndata()
    # a column of levels as a continuous covariate used to fail in pandas: could not convert string to float
    with pytest.raises(ValueError, match=r"continuous covariate 'cell_type' is not numeric .*categorical_keys"):
        from_anndata(adata, layer="counts", continuous_covariate_keys=["cell_type"])
    with pytest.raises(TypeError, match=r"takes an anndata.AnnData, got DataFrame; .*CountData\(counts, obs, var\)"):
        from_anndata(pd.DataFrame(COUNTS.toarray()))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"a negative count \(-2.0\) at cell 1 \(b\), gene 0 \(x\)"):
        CountData(np.array([[1, 0], [-2, 3]]), pd.DataFrame(index=["a", "b"]), pd.DataFrame(index=["x", "y"]))
    with pytest.raises(ValueError, match="non-finite"):
        CountData(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="non-integer count"):
        CountData(np.array([[1.5, 0.0]]))
    with pytest.raises(ValueError, match="3 genes .* gene table has 2 rows"):
        CountData(np.ones((2, 3)), var=pd.DataFrame(index=["x", "y"]))
    with pytest.raises(ValueError, match="1 cell\\(s\\) have no counts .*filter_cells"):
        CountData(np.array([[1, 0], [0, 0]])).require_nonempty()


def test_unreadable_and_inconsistent_files(tmp_path):
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(CountFileError, match="cannot open .*junk.h5 as HDF5"):
        read_scdeepcluster_h5(tmp_path / "junk.h5")
    _write_mtx(tmp_path / "mtx", gz=False)
    (tmp_path / "mtx" / "barcodes.tsv").write_text("\n".join(CELLS[:-1]) + "\n")
    with pytest.raises(CountFileError, match="12 genes x 30 cells, but genes.tsv lists 12 genes and barcodes.tsv 29"):
        read_10x_mtx(tmp_path / "mtx")
    with pytest.raises(CountFileError, match="no matrix.mtx"):
        read_10x_mtx(tmp_path)


def test_filters_report_what_they_drop_and_split_is_seeded():
    counts = COUNTS.toarray()
    counts[3] = 0
    counts[:, 5] = 0
    data = CountData(counts)
    with pytest.warns(UserWarning, match=r"dropped 1 cell\(s\) .*cell_3"):
        cells = data.filter_cells(min_counts=1)
    with pytest.warns(UserWarning, match=r"dropped 1 gene\(s\) .*gene_5"):
        genes = cells.filter_genes(min_cells=1)
    assert genes.counts.shape == (29, 11)
    train, test = genes.split(0.81, seed=0)
    order = np.random.default_rng(0).permutation(29)
    assert train.obs.index.tolist() == genes.obs.index[order[:23]].tolist() and len(test) == 6


def test_batches_are_dense_rows_and_train_uses_them():
    from pyrovae.guides import NormalGuide
    from pyrovae.models import VAE

    from pyrovae.infer import log_likelihood, train

    data = CountData(COUNTS)
    assert torch.equal(data.batch(torch.tensor([4, 0])), torch.tensor(COUNTS[[4, 0]].toarray(), dtype=torch.float32))
    model, guide = VAE(12, 2, [8], likelihood="nb"), NormalGuide(12, 2, [8], input_transform="log1p")
    history = train(model, guide, data, epochs=2, batch_size=8, progress=False)
    assert np.isfinite(history.records[-1]["train_elbo"])
    assert log_likelihood(model, guide, data, num_samples=5).per_datum.shape == (30,)


def test_highly_variable_genes_prefers_overdispersed_genes():
    rng = np.random.default_rng(1)
    means = np.linspace(1.0, 5.0, 60)
    poisson = rng.poisson(means, size=(400, 60))
    noisy_means = np.linspace(1.5, 4.5, 6)
    noisy = rng.negative_binomial(0.5, 0.5 / (0.5 + noisy_means), size=(400, 6))  # same range, far more variance
    data = CountData(np.hstack([poisson, noisy]) + 0)
    assert set(data.highly_variable_genes(6, num_bins=5)) == set(range(60, 66))


@pytest.mark.data
@pytest.mark.parametrize("name, shape, types", [
    ("pbmc3k", (2638, 13714), 9), ("mouse_bladder", (2100, 20670), 16), ("worm_neuron", (4186, 13488), 10),
    ("cellbench_celseq2", (274, None), 3), ("cellbench_dropseq", (225, 15127), 3),
])
def test_shared_real_sets(name, shape, types):
    folders = {"pbmc3k": "pbmc3k", "mouse_bladder": "scdeepcluster", "worm_neuron": "scdeepcluster"}
    folder = folders.get(name, "cellbench")
    if find_dataset(folder) is None:
        pytest.skip(f"{folder} not found in ../shared/data or $PYROVAE_DATA")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_count_dataset(name)
    assert data.counts.shape[0] == shape[0] and (shape[1] is None or data.num_genes == shape[1])
    assert len(data.label_names) == types
    if name == "pbmc3k":
        metadata = pd.read_csv(find_dataset("pbmc3k") / "cell_metadata.csv", index_col=0)
        assert np.array_equal(data.library_sizes, metadata.loc[data.obs.index, "n_counts"].to_numpy())
        train, test = data.split()
        assert (len(train), len(test)) == (2137, 501)


def test_prepare_filters_subsamples_and_selects_genes():
    counts = COUNTS.toarray()
    counts[3] = 0
    with pytest.warns(UserWarning, match=r"dropped 1 cell\(s\)"):
        prepared = CountData(counts).prepare(num_genes=5, max_cells=20, seed=1)
    # 20 cells drawn, less those left without counts in the 5 selected genes (each reported)
    assert prepared.num_genes == 5 and 0 < len(prepared) <= 20 and "cell_3" not in prepared.obs.index
    assert (prepared.library_sizes > 0).all()


def test_prepare_drops_cells_left_empty_by_the_gene_selection():
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.05, (300, 200))
    counts[:, 0] += 1  # no cell is empty before the selection
    data = CountData(counts)
    with pytest.warns(UserWarning, match="dropped .* cell"):
        prepared = data.prepare(num_genes=5)
    assert prepared.num_genes == 5 and (prepared.library_sizes > 0).all() and len(prepared) < 300


def test_damaged_and_malformed_files_are_named(tmp_path):
    import gzip as gz

    folder = tmp_path / "tenx"
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", sp.csr_matrix(np.array([[1, 0], [2, 3], [0, 1]])))  # genes x cells
    (folder / "genes.tsv").write_text("g1\ng2\ng3\n")
    (folder / "barcodes.tsv").write_text("AAA\nAAA\n")
    with pytest.raises(CountFileError, match="barcodes.tsv lists 1 barcode.* more than once .*AAA"):
        read_10x_mtx(folder)
    (folder / "barcodes.tsv").write_text("AAA\nCCC\n")
    (folder / "genes.tsv").unlink()
    (folder / "genes.tsv.gz").write_bytes(gz.compress(b"g1\ng2\ng3\n")[:-12] + b"garbage-----")
    with pytest.raises(CountFileError, match="genes.tsv.gz"):
        read_10x_mtx(folder)
    table = tmp_path / "counts.csv"
    table.write_text("gene;c1;c2\ng1;1;2\ng2;0;3\n")
    with pytest.raises(CountFileError, match="is it comma-separated"):
        read_count_csv(table)

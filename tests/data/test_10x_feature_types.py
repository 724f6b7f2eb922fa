"""The 10x readers keep gene expression by default: the antibody-capture rows of CITE-seq and the peaks of multiome
files are not genes (scanpy's ``gex_only``); the other types are read on request."""

import gzip

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

from pyrovae.data import CountFileError, read_10x_h5, read_10x_mtx

# (id, name, feature_type) of six features: three genes, two antibodies, one peak, interleaved as files may be
FEATURES = [("ENSG1", "CD3E", "Gene Expression"), ("CD3", "CD3_TotalSeqB", "Antibody Capture"),
            ("ENSG2", "MS4A1", "Gene Expression"), ("chr1:100-600", "chr1:100-600", "Peaks"),
            ("CD19", "CD19_TotalSeqB", "Antibody Capture"), ("ENSG3", "NKG7", "Gene Expression")]
GENES, ANTIBODIES = [0, 2, 5], [1, 4]
RNG = np.random.default_rng(0)
COUNTS = sp.csr_matrix(RNG.poisson(3.0, (7, len(FEATURES))).astype(np.float32))  # cells x features
BARCODES = [f"AAAC-{i}" for i in range(7)]


def _write_h5(path):
    matrix = sp.csc_matrix(COUNTS.T)  # the file is features x cells, CSC: the CSR of cells x features
    with h5py.File(path, "w") as handle:
        group = handle.create_group("matrix")
        group["data"], group["indices"], group["indptr"] = matrix.data, matrix.indices, matrix.indptr
        group["shape"] = np.array(matrix.shape)
        group["barcodes"] = np.array(BARCODES, dtype="S")
        features = group.create_group("features")
        for column, key in enumerate(("id", "name", "feature_type")):
            features[key] = np.array([f[column] for f in FEATURES], dtype="S")
        features["genome"] = np.array(["GRCh38"] * len(FEATURES), dtype="S")
    return path


def _write_mtx(folder):
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as handle:
        scipy.io.mmwrite(handle, sp.coo_matrix(COUNTS.T))
    with gzip.open(folder / "features.tsv.gz", "wt") as handle:
        handle.writelines("\t".join(f) + "\n" for f in FEATURES)
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as handle:
        handle.writelines(b + "\n" for b in BARCODES)
    return folder


@pytest.fixture(params=["h5", "mtx"])
def read(request, tmp_path):
    if request.param == "h5":
        path = _write_h5(tmp_path / "filtered_feature_bc_matrix.h5")
        return lambda **options: read_10x_h5(path, **options)
    folder = _write_mtx(tmp_path / "filtered_feature_bc_matrix")
    return lambda **options: read_10x_mtx(folder, **options)


def test_gene_expression_only_by_default(read):
    with pytest.warns(UserWarning, match=r"kept the 3 features .* dropped 2 'Antibody Capture', 1 'Peaks'"):
        data = read()
    assert data.gene_names == ["CD3E", "MS4A1", "NKG7"]
    assert (data.counts != COUNTS[:, GENES]).nnz == 0  # each kept column is its own feature's counts
    assert set(data.var["feature_type"]) == {"Gene Expression"}
    assert data.obs.index.tolist() == BARCODES


def test_other_types_on_request(read):
    everything = read(feature_types=None)
    assert everything.num_genes == len(FEATURES) and (everything.counts != COUNTS).nnz == 0
    assert everything.var["feature_type"].tolist() == [f[2] for f in FEATURES]
    with pytest.warns(UserWarning, match="dropped 1 'Peaks'"):
        cite = read(feature_types=["Gene Expression", "Antibody Capture"])
    assert (cite.counts != COUNTS[:, sorted(GENES + ANTIBODIES)]).nnz == 0
    with pytest.warns(UserWarning):
        antibodies = read(feature_types="Antibody Capture")
    assert antibodies.gene_names == ["CD3_TotalSeqB", "CD19_TotalSeqB"]
    with pytest.raises(CountFileError, match=r"no feature of type \['Gene Expressions'\].*types there"):
        read(feature_types="Gene Expressions")


def test_h5_genome_selects_features(tmp_path):
    path = _write_h5(tmp_path / "m.h5")
    with pytest.warns(UserWarning):
        assert read_10x_h5(path, genome="GRCh38").num_genes == 3
    with pytest.raises(CountFileError, match="no features of genome 'mm10'"):
        read_10x_h5(path, genome="mm10")

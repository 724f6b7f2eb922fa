"""Bad input to the data layer (issue 24): CountData's selections and settings, the readers and the search for data
folders. Each is refused with an error that names what was wrong and the fix, and the accepted forms give the
same numbers as a hand computation."""

import gzip

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from pyrovae.data import (
    CountData,
    CountFileError,
    find_dataset,
    from_anndata,
    load_count_dataset,
    read_10x_h5,
    read_count_csv,
)
from pyrovae.data.checks import check_int, check_real, selection_indices


def cells(n=8, genes=5, seed=0, **obs_columns):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, (n, genes)) + 1
    obs = pd.DataFrame({"kind": np.where(np.arange(n) % 2, "a", "b"), **obs_columns},
                       index=[f"c{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(genes)])
    return CountData(counts, obs, var, label_key="kind", name="toy")


# -- the shared checks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -5, 2.5, True, "3", None, float("nan")])
def test_check_int_refuses_what_is_not_an_integer_in_range(value):
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, got"):
        check_int("n", value, 1)


def test_check_int_and_real_accept_numpy_numbers():
    assert check_int("n", np.int64(3)) == 3 and isinstance(check_int("n", np.int32(3)), int)
    assert check_real("f", np.float32(0.5), 0.0, 1.0, open_interval=True) == 0.5
    for bad in (0.0, 1.0, float("inf"), -0.1):
        with pytest.raises(ValueError, match=r"f must be a finite number in \(0, 1\)"):
            check_real("f", bad, 0.0, 1.0, open_interval=True)


@pytest.mark.parametrize("selection", [
    np.array([0, 1, 1, 0, 0]),  # ints holding only 0 and 1, one per cell: a mask or indices?
    torch.tensor([1, 0, 0, 1, 1], dtype=torch.uint8),
    [0, 0, 1, 1, 0],
])
def test_an_integer_zero_one_array_of_one_entry_per_cell_is_ambiguous(selection):
    with pytest.raises(ValueError, match=r"zeros and ones.*Pass a boolean mask"):
        selection_indices(selection, 5, "known")


def test_masks_and_indices_select_the_same_cells():
    mask = np.array([True, False, True, False, True])
    for form in (mask, torch.from_numpy(mask), pd.Series(mask), [0, 2, 4], torch.tensor([0, 2, 4]), np.array([0., 2.])):
        chosen = selection_indices(form, 5, "cells")
        assert set(chosen) <= {0, 2, 4} and len(chosen) >= 2
    assert selection_indices([1, 0], 2, "cells").tolist() == [1, 0]  # distinct values: indices, order kept
    with pytest.raises(ValueError, match=r"outside 0..4 \(e.g. \[5, -1\]\); there are 5 cells"):
        selection_indices([0, 5, -1], 5, "cells")
    with pytest.raises(ValueError, match="boolean mask of shape \\(4,\\), but there are 5 cells"):
        selection_indices(np.ones(4, bool), 5, "cells")
    with pytest.raises(ValueError, match="integer cell indices, got float64"):
        selection_indices([0.5, 1.0], 5, "cells")
    with pytest.raises(ValueError, match=r"lists cells more than once \(\[2\]\)"):
        selection_indices([2, 3, 2], 5, "cells", unique=True)


# -- CountData ----------------------------------------------------------------------------------------------------
def test_duplicated_cell_ids_or_gene_names_are_named():
    counts = np.ones((3, 2))
    with pytest.raises(ValueError, match=r"cell ids must be unique, but 1 repeat \('a'\).*obs_names_make_unique"):
        CountData(counts, pd.DataFrame(index=["a", "b", "a"]))
    with pytest.raises(ValueError, match=r"gene names must be unique, but 1 repeat \('CD3E'\).*var_names_make_uniq"):
        CountData(counts, None, pd.DataFrame(index=["CD3E", "CD3E"]))


def test_from_anndata_with_repeated_cell_names_says_how_to_fix_it():
    anndata = pytest.importorskip("anndata")
    adata = anndata.AnnData(X=sp.csr_matrix(np.ones((3, 2))))
    adata.obs_names = ["x", "x", "y"]
    with pytest.raises(ValueError, match="adata.obs_names_make_unique"):
        from_anndata(adata)


def test_a_split_that_leaves_a_part_empty_is_refused():
    data = cells(n=3)
    with pytest.raises(ValueError, match="train_fraction=0.1 of 3 cells leaves the training part empty"):
        data.split(0.1)
    with pytest.raises(ValueError, match="leaves the test part empty"):
        data.split(0.9)
    train_part, test_part = cells(n=10).split(0.7)
    assert (len(train_part), len(test_part)) == (7, 3)
    assert set(train_part.obs.index).isdisjoint(test_part.obs.index)


@pytest.mark.parametrize("arguments, message", [
    ({"num_genes": -5}, "num_genes must be an integer >= 0, got -5"),
    ({"num_genes": 2.5}, "num_genes must be an integer >= 0, got 2.5"),
    ({"max_cells": -1}, "max_cells must be an integer >= 0, got -1"),
])
def test_prepare_refuses_negative_or_fractional_sizes(arguments, message):
    with pytest.raises(ValueError, match=message):
        cells().prepare(**arguments)


def test_select_genes_refuses_no_genes_repeats_and_a_bare_string():
    data = cells()
    with pytest.raises(ValueError, match="select_genes got no gene names"):
        data.select_genes([])
    with pytest.raises(ValueError, match=r"requested gene names must be unique, but 1 repeat \('g1'\)"):
        data.select_genes(["g1", "g2", "g1"])
    with pytest.raises(ValueError, match=r"the string 'g1': pass \['g1'\]"):
        data.select_genes("g1")
    chosen = data.select_genes(["g3", "g0"])
    np.testing.assert_array_equal(chosen.counts.toarray(), data.counts.toarray()[:, [3, 0]])


def test_subset_and_filters_never_return_an_empty_or_repeated_selection():
    data = cells()
    with pytest.raises(ValueError, match="lists cells more than once"):
        data.subset([0, 0, 1])
    with pytest.raises(ValueError, match="keeps no cell"):
        data.subset(np.zeros(8, bool))
    with pytest.raises(ValueError, match=r"drops every cell \(8, all fewer than 1000000 counts.*lower the threshold"):
        data.filter_cells(min_counts=10**6)
    with pytest.raises(ValueError, match="min_cells must be an integer >= 0, got -1"):
        data.filter_genes(min_cells=-1)


def test_with_labels_takes_indices_or_a_boolean_mask_and_refuses_the_rest():
    data = cells()
    codes = data.labels.numpy()
    by_mask = data.with_labels(np.arange(8) < 3).y.numpy()
    by_indices = data.with_labels([0, 1, 2]).y.numpy()
    np.testing.assert_array_equal(by_mask, np.where(np.arange(8) < 3, codes, -1))
    np.testing.assert_array_equal(by_indices, by_mask)
    np.testing.assert_array_equal(data.with_labels(torch.arange(8) < 3).y.numpy(), by_mask)
    with pytest.raises(ValueError, match=r"known holds cell indices outside 0..7 \(e.g. \[8\]\)"):
        data.with_labels([0, 8])
    with pytest.raises(ValueError, match="known is an integer array of 8 zeros and ones"):
        data.with_labels((np.arange(8) < 3).astype(int))
    with pytest.raises(ValueError, match="known is an integer array of 8 zeros and ones"):
        data.with_labels(torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.uint8))


def test_the_number_of_labels_is_checked_against_a_gmvae_s_components():
    data = cells()
    assert data.num_labels == 2
    data.with_labels().check_components(2)
    with pytest.raises(ValueError, match=r"carries 2 labels .* but the GMVAE has 3 components.*num_components="):
        data.with_labels().check_components(3)
    CountData(np.ones((2, 2))).check_components(7)  # no labels: any number of components


def test_concatenate_refuses_to_overwrite_a_column():
    clashing = cells(batch=["x"] * 8)
    with pytest.raises(ValueError, match=r"parts \['one'\] already have a column 'batch'.*another batch_key="):
        CountData.concatenate({"one": clashing, "two": cells(seed=1)})
    joined = CountData.concatenate({"one": clashing, "two": cells(seed=1)}, batch_key="technology")
    assert joined.obs["batch"].iloc[0] == "x" and list(joined.levels["technology"]) == ["one", "two"]
    np.testing.assert_array_equal(joined.counts.toarray()[8:], cells(seed=1).counts.toarray())


# -- readers and data folders -------------------------------------------------------------------------------------
def test_an_explicit_data_dir_that_does_not_exist_is_named(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "pbmc3k").mkdir(parents=True)
    monkeypatch.setenv("PYROVAE_DATA", str(shared))
    missing = tmp_path / "typo"
    with pytest.raises(FileNotFoundError, match=f"data_dir='{missing}' is not a folder \\(nothing is there\\)"):
        load_count_dataset("pbmc3k", data_dir=missing)
    with pytest.raises(FileNotFoundError, match="data_dir=.* is not a folder"):
        find_dataset("pbmc3k", missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_dataset("pbmc3k", empty) is None  # an explicit folder is the only place looked in
    with pytest.raises(FileNotFoundError, match=f"not found in data_dir='{empty}' \\(no pbmc3k/ folder there\\)"):
        load_count_dataset("pbmc3k", data_dir=empty)
    assert find_dataset("pbmc3k") == shared / "pbmc3k"  # without data_dir: $PYROVAE_DATA
    assert find_dataset("pbmc3k", shared / "pbmc3k") == shared / "pbmc3k"


def _write_gz(path, text):
    with gzip.open(path, "wt") as handle:
        handle.write(text)


def test_a_truncated_csv_gz_is_called_truncated(tmp_path):
    rows = "\n".join(f"gene{g}," + ",".join(str((g * 7 + c) % 5) for c in range(40)) for g in range(400))
    table = "," + ",".join(f"cell{c}" for c in range(40)) + "\n" + rows + "\n"
    whole = tmp_path / "counts.csv.gz"
    _write_gz(whole, table)
    data = read_count_csv(whole)
    assert data.counts.shape == (40, 400) and data.counts[3, 2] == (2 * 7 + 3) % 5
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    with pytest.raises(CountFileError, match=r"cut.csv.gz is truncated or corrupt \(EOFError.*download or copy it"):
        read_count_csv(truncated)
    metadata = tmp_path / "meta.csv.gz"
    _write_gz(metadata, "cell,type\n" + "".join(f"cell{c},t{c % 2}\n" for c in range(40)) * 30)
    cut_metadata = tmp_path / "meta_cut.csv.gz"
    cut_metadata.write_bytes(metadata.read_bytes()[:-12])
    with pytest.raises(CountFileError, match="meta_cut.csv.gz is truncated or corrupt"):
        read_count_csv(whole, cut_metadata)


def test_a_cell_table_listing_a_cell_twice_is_named(tmp_path):
    _write_gz(tmp_path / "counts.csv.gz", ",c0,c1\ng0,1,2\ng1,0,3\n")
    (tmp_path / "meta.csv").write_text("cell,type\nc0,a\nc1,b\nc1,b\n")
    with pytest.raises(CountFileError, match=r"meta.csv lists 1 cell id\(s\) more than once \(\['c1'\]\)"):
        read_count_csv(tmp_path / "counts.csv.gz", tmp_path / "meta.csv")


def test_an_h5_that_is_not_10x_names_what_was_expected_and_found(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "deep.h5", "w") as handle:
        handle["X"] = np.ones((3, 4))
        handle["Y"] = np.arange(3.0)
    with pytest.raises(CountFileError, match=r"deep.h5 is not a 10x Cell Ranger matrix: expected a group 'matrix' "
                                             r"\(v3: .*found \['X', 'Y'\]; .*use read_scdeepcluster_h5"):
        read_10x_h5(tmp_path / "deep.h5")
    with h5py.File(tmp_path / "partial.h5", "w") as handle:
        group = handle.create_group("matrix")
        for key in ("data", "indices", "indptr", "shape"):
            group[key] = np.zeros(2, dtype=np.int64)
    with pytest.raises(CountFileError, match=r"the 10x v3 group '/matrix' lacks \['barcodes', 'features/name', "):
        read_10x_h5(tmp_path / "partial.h5")


@pytest.mark.parametrize("dense", [False, True])
def test_a_backed_anndata_is_read_into_memory_as_it_is(tmp_path, dense):
    anndata = pytest.importorskip("anndata")
    from pyrovae.data import anndata_io

    counts = sp.random(37, 6, density=0.4, format="csr", random_state=3, dtype=np.float64)
    counts.data = np.ceil(counts.data * 9)
    adata = anndata.AnnData(X=counts.toarray() if dense else counts)
    adata.obs["kind"] = np.where(np.arange(37) < 20, "a", "b")
    adata.write_h5ad(tmp_path / "cells.h5ad")
    backed = anndata.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    try:
        assert backed.isbacked
        data = from_anndata(backed, labels_key="kind")
        np.testing.assert_array_equal(data.counts.toarray(), counts.toarray())
        assert data.label_names == ["a", "b"]
        rows = anndata_io._read_rows(backed.X, "X", rows_per_read=5)  # several blocks, the last one short
        np.testing.assert_array_equal(rows.toarray(), counts.toarray())
    finally:
        backed.file.close()


def test_count_tables_of_the_wrong_kind_are_named():
    with pytest.raises(ValueError, match=r"counts must be a matrix, cells x genes, got shape \(2, 2, 2\)"):
        CountData(np.ones((2, 2, 2)))
    with pytest.raises(TypeError, match="obs \\(the cell table\\) must be a pandas DataFrame .*got list"):
        CountData(np.ones((2, 2)), obs=["a", "b"])
    nested = CountData([[1, 0], [2, 3]])  # nested lists are a matrix too
    np.testing.assert_array_equal(nested.counts.toarray(), [[1, 0], [2, 3]])


def test_a_cell_index_out_of_range_is_named_with_the_number_of_cells():
    cells = CountData(np.ones((10, 5), dtype=int))
    for index in ([10], torch.tensor([3, 11]), [-11]):
        with pytest.raises(IndexError, match="out of range for 10 cells"):
            cells.batch(index)
    assert cells.batch([-10, 9]).shape == (2, 5)


def test_prepare_says_when_it_has_fewer_genes_than_asked_for():
    cells = CountData(np.ones((10, 5), dtype=int))
    with pytest.warns(UserWarning, match="num_genes=50 but only 5 genes"):
        assert cells.prepare(num_genes=50).num_genes == 5


def test_a_tuple_of_model_arguments_is_data_and_a_ragged_one_is_named():
    from pyrovae.data.source import as_source

    x, cat, cont = torch.rand(10, 4), torch.zeros(10, 1, dtype=torch.long), torch.zeros(10, 0)
    source = as_source((x, cat, cont), batch_size=4)
    batches = list(source.batches(0, torch.Generator(), False, False, torch.device("cpu")))
    assert [len(b[0]) for b in batches] == [4, 4, 2] and all(len(b) == 3 for b in batches)
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), x)
    with pytest.raises(ValueError, match="one row per datum each, got lengths"):
        as_source((x, cat[:9], cont))
    with pytest.raises(ValueError, match="must be a matrix"):
        as_source((x[0], cat, cont))

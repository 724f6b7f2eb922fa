"""AnnDataStream against the AnnData it reads: every cell once per epoch, its counts, labels and library exact,
across ranks and workers, in .h5ad and .zarr; reproducible epochs; train on it; bad files refused by name."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

ad = pytest.importorskip("anndata")
pd = pytest.importorskip("pandas")

from pyrovae import make_pair  # noqa: E402
from pyrovae.data import AnnDataStream  # noqa: E402
from pyrovae.infer import train  # noqa: E402

CELLS, GENES = 1000, 30
pytestmark = [pytest.mark.filterwarnings("ignore:k-hat > "), pytest.mark.filterwarnings("ignore:Writing zarr v2")]


def _adata(seed=0, dense=False):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(0.5, 2.0, (CELLS, GENES))).astype(np.float32)
    counts[:, 0] += 1  # no empty cell
    obs = pd.DataFrame({"batch": pd.Categorical(rng.choice(["a", "b", "c"], CELLS)),
                        "line": rng.choice(["x", "y"], CELLS),
                        "library": rng.uniform(100, 200, CELLS).astype(np.float32)},
                       index=[f"cell{i}" for i in range(CELLS)])
    return ad.AnnData(counts if dense else sp.csr_matrix(counts), obs=obs,
                      var=pd.DataFrame(index=[f"g{j}" for j in range(GENES)]))


@pytest.fixture(scope="module", params=["h5ad", "zarr"])
def written(request, tmp_path_factory):
    adata = _adata()
    path = tmp_path_factory.mktemp("anndata") / f"cells.{request.param}"
    adata.write_h5ad(path) if request.param == "h5ad" else adata.write_zarr(path)
    return path, adata


def _epoch(stream, epoch, workers):
    stream.set_epoch(epoch)
    return list(stream.loader() if workers else stream)


@pytest.mark.parametrize("world_size, workers", [(1, 0), (2, 2)])
def test_every_cell_once_per_epoch_with_its_counts_labels_and_library(written, world_size, workers):
    path, adata = written
    dense = adata.X.toarray()
    codes = adata.obs["batch"].cat.codes.to_numpy()
    line = pd.Categorical(adata.obs["line"]).codes
    streams = [AnnDataStream(path, 64, labels="line", covariates="batch", chunk_size=50, preload_chunks=3, seed=1,
                             drop_last=False, rank=r, world_size=world_size, num_workers=workers)
               for r in range(world_size)]
    assert streams[0].categories == {"line": ["x", "y"], "batch": ["a", "b", "c"]}
    assert streams[0].categorical_sizes == (3,)
    seen = []
    for stream in streams:
        batches = _epoch(stream, 0, workers)
        assert len(batches) == len(stream)  # every rank yields the common number of batches
        for batch in batches:
            ids = batch.ids.numpy()
            np.testing.assert_array_equal(batch.counts.numpy(), dense[ids])
            np.testing.assert_array_equal(batch.labels["batch"].numpy(), codes[ids])
            np.testing.assert_array_equal(batch.labels["line"].numpy(), line[ids])
            np.testing.assert_allclose(batch.library.numpy(), dense[ids].sum(1), rtol=1e-6)
            x, cat, cont = stream.inputs(batch)
            assert torch.equal(cat[:, 0], batch.labels["batch"]) and cont.shape == (len(x), 0)
            seen.append(ids)
    seen = np.concatenate(seen)
    assert len(seen) == CELLS and len(np.unique(seen)) == CELLS  # no cell twice, none missed


def test_epochs_reproduce_and_differ_and_library_from_obs(written):
    path, adata = written
    stream = AnnDataStream(path, 100, library_key="library", chunk_size=64, seed=2)
    first = [b.ids for b in _epoch(stream, 0, False)]
    again = [b.ids for b in _epoch(stream, 0, False)]
    other = [b.ids for b in _epoch(stream, 1, False)]
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(first) == len(stream) == CELLS // 100
    assert not torch.equal(torch.cat(first), torch.cat(other))
    batch = _epoch(stream, 0, False)[0]
    np.testing.assert_allclose(batch.library.numpy(), adata.obs["library"].to_numpy()[batch.ids.numpy()])
    sample = stream.take(25, seed=3)
    np.testing.assert_array_equal(sample.counts.numpy(), adata.X.toarray()[sample.ids.numpy()])
    ordered = AnnDataStream(path, 128, shuffle=False)
    assert torch.equal(torch.cat([b.ids for b in ordered]), torch.arange(CELLS))


def test_train_and_log_likelihood_read_it(written):
    from pyrovae.infer import log_likelihood

    path, _ = written
    stream = AnnDataStream(path, 128, covariates="batch", chunk_size=100, num_workers=1)
    model, guide = make_pair("vae", stream.num_genes, 2, (16,), "nb", input_transform="log1p",
                             categorical=stream.categorical_sizes)
    history = train(model, guide, stream, epochs=2, progress=False, seed=0, eval_size=0)
    assert len(history) == 2 and np.isfinite(history.last["loss"])
    held = AnnDataStream(path, 256, covariates="batch", shuffle=False)
    assert np.isfinite(log_likelihood(model, guide, held, num_samples=25).mean)


def test_values_that_are_not_counts_past_the_first_chunk_stop_the_epoch_by_cell(tmp_path):
    """Only the first chunk was checked: a matrix normalised from some row on trained silently."""
    adata = _adata()
    counts = adata.X.toarray()
    counts[700, 3] = 0.25
    adata.X = sp.csr_matrix(counts)
    adata.write_h5ad(tmp_path / "late.h5ad")
    stream = AnnDataStream(tmp_path / "late.h5ad", 100, chunk_size=64, shuffle=False)  # its first chunk is clean
    with pytest.raises(ValueError, match=r"is not raw counts: cell 700 holds 0.25 .*layer="):
        list(stream)
    with pytest.raises(ValueError, match="cell 700 holds 0.25"):
        stream.take(CELLS)


def test_bad_files_are_refused_by_name(tmp_path):
    dense = tmp_path / "dense.h5ad"
    _adata(dense=True).write_h5ad(dense)
    with pytest.raises(ValueError, match="reads a CSR matrix.*csr_matrix"):
        AnnDataStream(dense)
    csc = _adata()
    csc.X = sp.csc_matrix(csc.X)
    csc.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(ValueError, match="csc_matrix"):
        AnnDataStream(tmp_path / "csc.h5ad")
    normalised = _adata()
    normalised.X = normalised.X.multiply(1 / normalised.X.sum(1)).tocsr()
    normalised.write_h5ad(tmp_path / "normalised.h5ad")
    with pytest.raises(ValueError, match="not raw counts"):
        AnnDataStream(tmp_path / "normalised.h5ad")
    _adata().write_h5ad(tmp_path / "good.h5ad")
    with pytest.raises(ValueError, match=r"\['plate'\] are not obs columns"):
        AnnDataStream(tmp_path / "good.h5ad", covariates="plate")
    with pytest.raises(ValueError, match="no 'layers/counts'"):
        AnnDataStream(tmp_path / "good.h5ad", layer="counts")
    with pytest.raises(ValueError, match=r"obs\['library'\] holds continuous values .* covariate here is categorical"):
        AnnDataStream(tmp_path / "good.h5ad", covariates="library")
    holed = _adata()
    holed.obs.loc[holed.obs.index[3], "library"] = np.nan
    holed.write_h5ad(tmp_path / "holed.h5ad")
    with pytest.raises(ValueError, match=r"obs\['library'\] \(library_key\) holds NaN"):
        AnnDataStream(tmp_path / "holed.h5ad", library_key="library")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AnnDataStream(tmp_path / "missing.h5ad")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "train-00000.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"is not an AnnData .* but a folder of parquet shards: read it with"):
        AnnDataStream(tmp_path / "shards")
    (tmp_path / "text.h5ad").write_text("not hdf5")
    with pytest.raises(ValueError, match=r"text.h5ad is not an AnnData"):
        AnnDataStream(tmp_path / "text.h5ad")


def test_an_anndata_object_is_refused_with_the_path_to_pass(written):
    path, adata = written
    with pytest.raises(TypeError, match=r"pass the path of the \.h5ad file or \.zarr folder.*got AnnData; an AnnData"):
        AnnDataStream(adata, 64)

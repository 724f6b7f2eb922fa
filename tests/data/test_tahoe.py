"""Tahoe-schema shards: decoding against pyarrow's own rows, bad input, gene panels, streaming HVG, CellStream."""


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import torch

from pyrovae.data import CellStream, CountData, TahoeAtlas, TahoeFormatError
from pyrovae.data.hvg import rank_by_binned_dispersion
from pyrovae.data.tahoe import find_shards


def _reference(atlas_dir):
    """Dense counts and labels from pyarrow's Python rows, the marker dropped by hand."""
    vocabulary = pq.read_table(atlas_dir / "metadata" / "gene_metadata.parquet").column("token_id").to_pylist()
    position = {t: i for i, t in enumerate(vocabulary)}
    rows, drugs = [], []
    for path in sorted((atlas_dir / "data").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            assert row["expressions"][0] < 0
            dense = np.zeros(len(vocabulary))
            for token, count in zip(row["genes"][1:], row["expressions"][1:]):
                dense[position[token]] += count
            rows.append(dense)
            drugs.append(row["drug"])
    return np.array(rows), drugs


def test_decoded_cells_match_pyarrow_rows(atlas, atlas_dir):
    expected, drugs = _reference(atlas_dir)
    blocks = [b for shard in range(len(atlas.shards)) for b in atlas.read(shard, atlas.panel_positions(), 100)]
    counts = np.vstack([b.counts.toarray() for b in blocks])
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(np.concatenate([b.library for b in blocks]), expected.sum(1))
    np.testing.assert_array_equal(np.concatenate([b.ids for b in blocks]), np.arange(1200))
    names = atlas.categories["drug"]
    assert [names[c] for b in blocks for c in b.labels["drug"]] == drugs


def test_simulation_has_the_documented_structure(atlas):
    block = next(atlas.read(0, atlas.panel_positions(), 400))
    detected = (block.counts > 0).sum(1).mean()
    assert 0.8 * 60 < detected < 1.2 * 60  # about genes_per_cell detected per cell
    assert set(atlas.categories) == {"drug", "cell_line", "plate"}
    assert atlas.categories["plate"] == ["plate1", "plate2", "plate3"]
    assert len(atlas.categories["cell_line"]) == 5 and "DMSO_TF" in atlas.categories["drug"]


def test_gene_panel_by_symbol_ensembl_or_token(atlas):
    by_token = atlas.panel_positions([7, 3, 250])
    np.testing.assert_array_equal(by_token, atlas.panel_positions(["GENE7", "GENE3", "GENE250"]))
    np.testing.assert_array_equal(by_token, atlas.panel_positions(["ENSG00000000007", "ENSG00000000003",
                                                                   "ENSG00000000250"]))
    full = np.vstack([b.counts.toarray() for b in atlas.read(1, atlas.panel_positions())])
    panel = np.vstack([b.counts.toarray() for b in atlas.read(1, by_token)])
    np.testing.assert_array_equal(panel, full[:, [7, 3, 250]])
    with pytest.raises(ValueError, match="not in the vocabulary.*GENE9999"):
        atlas.panel_positions(["GENE1", "GENE9999"])


def test_streaming_hvg_equals_the_in_memory_computation(atlas, atlas_dir):
    expected, _ = _reference(atlas_dir)
    scaled = expected * (1e4 / np.maximum(expected.sum(1, keepdims=True), 1))  # Seurat: moments of scaled counts
    exact = rank_by_binned_dispersion(scaled.mean(0), scaled.var(0, ddof=1), 50)
    np.testing.assert_array_equal(atlas.highly_variable_genes(50, num_cells=10_000), exact)
    in_memory = CountData(sp.csr_matrix(expected)).highly_variable_genes(50)  # the same genes as CountData's
    np.testing.assert_array_equal(in_memory, exact)
    sampled = atlas.highly_variable_genes(50, num_cells=400)
    expressed = np.flatnonzero(expected.sum(0) > 0)
    assert np.isin(sampled, expressed).all()


def _write(path, **columns):
    pq.write_table(pa.table(columns), path)


def _bad_atlas(tmp_path, atlas_dir, **columns):
    (tmp_path / "metadata").mkdir(exist_ok=True)
    (tmp_path / "metadata" / "gene_metadata.parquet").write_bytes(
        (atlas_dir / "metadata" / "gene_metadata.parquet").read_bytes())
    base = {"genes": [[503, 1, 2], [503, 4]], "expressions": [[-2.0, 1.0, 3.0], [-2.0, 5.0]],
            "drug": ["a", "b"], "cell_line_id": ["x", "x"], "plate": ["p", "p"]}
    base.update(columns)
    _write(tmp_path / "bad.parquet", **base)
    return TahoeAtlas(tmp_path)


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"expressions": [[-2.0, 1.0, 3.0], [-2.0, 5.0, 1.0]]}, r"bad.parquet, row 1: genes has 2 entries but expr"),
        ({"genes": [[503, 1, 2], [503, 4000]]}, r"bad.parquet, row 1: token id 4000 is not in the gene vocabulary"),
        ({"expressions": [[-2.0, 1.0, -3.0], [-2.0, 5.0]]}, r"bad.parquet, row 0: count -3.0 for token 2: counts must"),
        ({"expressions": [[-2.0, 1.0, 3.0], [-2.0, 0.5]]}, r"bad.parquet, row 1: count 0.5 for token 4 is not an int"),
        ({"genes": [[503, 1, 2], None]}, r"bad.parquet, row 1: genes is missing"),
        ({"expressions": [[-2.0, 1.0, 3.0], [-2.0, float("inf")]]}, r"bad.parquet, row 1: count inf for token 4 is"),
        ({"genes": [[503, 1, 2], [503, 4, 4]], "expressions": [[-2.0, 1.0, 3.0], [-2.0, 5.0, 1.0]]},
         r"bad.parquet, row 1: a gene's token id appears more than once"),
    ],
)
def test_bad_rows_name_the_shard_and_row(tmp_path, atlas_dir, columns, message):
    atlas = _bad_atlas(tmp_path, atlas_dir, **columns)
    with pytest.raises(TahoeFormatError, match=message):
        list(atlas.read(0, atlas.panel_positions()))


def test_a_shard_with_another_schema_is_named(tmp_path, atlas_dir):
    _bad_atlas(tmp_path, atlas_dir)
    _write(tmp_path / "other.parquet", genes=[["a"]], expressions=[[1.0]], drug=["a"], cell_line_id=["x"],
           plate=["p"])
    atlas = TahoeAtlas(tmp_path)
    with pytest.raises(TahoeFormatError, match=r"other.parquet does not follow the Tahoe expression schema: column "
                                               r"'genes' is list<element: string>, expected a list of integers"):
        list(atlas.read(1, atlas.panel_positions()))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(TahoeFormatError, match="junk.parquet cannot be read as parquet"):
        TahoeAtlas(tmp_path)


def test_missing_vocabulary_and_hub_without_client(tmp_path, monkeypatch):
    _write(tmp_path / "x.parquet", genes=[[1]], expressions=[[1.0]])
    with pytest.raises(FileNotFoundError, match="no gene_metadata table"):
        TahoeAtlas(tmp_path, labels=())
    with pytest.raises(FileNotFoundError, match="no parquet file or folder at /nonexistent/x"):
        find_shards("/nonexistent/x")
    for path in ("/nonexistent", "./nonexistent/x", "~/nonexistent"):  # a path, never a hub name
        with pytest.raises(FileNotFoundError, match="no parquet file or folder at"):
            find_shards(path)
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        find_shards("tahoebio/Tahoe-100M")


def _epoch_ids(stream, epoch, workers=False):
    stream.set_epoch(epoch)
    batches = stream.loader() if workers else stream
    return torch.cat([b.ids for _, b in zip(range(len(stream)), batches)]).numpy()


def test_stream_is_deterministic_given_seed_and_epoch(atlas):
    stream = CellStream(atlas, batch_size=50, buffer_size=300, seed=4)
    first = _epoch_ids(stream, 0)
    np.testing.assert_array_equal(first, _epoch_ids(stream, 0))
    assert not np.array_equal(first, _epoch_ids(stream, 1))
    assert len(first) == len(np.unique(first)) == 1200  # every cell once (1,200 = 24 batches of 50)
    again = CellStream(atlas, batch_size=50, buffer_size=300, seed=4)
    np.testing.assert_array_equal(first, _epoch_ids(again, 0))


def test_shuffle_mixes_shards_and_unshuffled_keeps_file_order(atlas):
    stream = CellStream(atlas, batch_size=50, buffer_size=400, interleave=3, seed=0)
    stream.set_epoch(0)
    first_batch = next(iter(stream))
    assert len(np.unique(first_batch.ids.numpy() // 200)) >= 3  # cells of several shards in one batch
    ordered = CellStream(atlas, batch_size=50, shuffle=False)
    np.testing.assert_array_equal(_epoch_ids(ordered, 0), np.arange(1200))


def test_workers_and_ranks_split_shards_without_overlap(atlas):
    two_workers = CellStream(atlas, batch_size=40, buffer_size=200, seed=2, num_workers=2)
    ids = _epoch_ids(two_workers, 0, workers=True)
    assert len(ids) == len(np.unique(ids)) == 40 * len(two_workers)
    per_rank = [CellStream(atlas, batch_size=40, buffer_size=200, seed=2, rank=r, world_size=2) for r in (0, 1)]
    seen = [set(_epoch_ids(s, 0)) for s in per_rank]
    assert not seen[0] & seen[1]
    assert len(per_rank[0]) == len(per_rank[1]) == 15  # 600 cells per rank
    shards = [set(s.rank_shards()) for s in per_rank]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(6))


def test_cell_level_split(atlas):
    train = CellStream(atlas, batch_size=32, split="train", test_fraction=0.2, shuffle=False)
    test = CellStream(atlas, batch_size=32, split="test", test_fraction=0.2, shuffle=False)
    train_ids, test_ids = set(_epoch_ids(train, 0)), set(_epoch_ids(test, 0))
    assert not train_ids & test_ids and train_ids | test_ids == set(range(1200))
    assert train.num_cells + test.num_cells == 1200 and abs(test.num_cells / 1200 - 0.2) < 0.05
    assert len(test_ids) == test.num_cells


def test_cell_batch_counts_on_any_device(atlas):
    stream = CellStream(atlas, batch_size=64, shuffle=False)
    batch = next(iter(stream))
    block = next(atlas.read(0, atlas.panel_positions(), 64))
    torch.testing.assert_close(batch.counts, torch.from_numpy(block.counts.toarray()))
    torch.testing.assert_close(batch.to("cpu").counts, batch.counts)
    assert batch.drug.dtype == torch.int64 and batch.cell_line.shape == (64,)
    sample = stream.take(300)
    assert len(sample) == 300 and len(np.unique(sample.ids.numpy() // 200)) == 6  # spread over all shards


def test_train_refuses_a_batch_size_the_stream_would_ignore(atlas):
    from pyrovae.guides import NormalGuide
    from pyrovae.models import VAE

    from pyrovae.infer import train

    stream = CellStream(atlas, batch_size=50, buffer_size=300, seed=4)
    model, guide = VAE(stream.num_genes, 2, (8,), "nb"), NormalGuide(stream.num_genes, 2, (8,))
    with pytest.raises(ValueError, match="batches by itself"):
        train(model, guide, stream, batch_size=128, epochs=1, progress=False)


def test_a_panel_outside_the_vocabulary_is_refused_when_the_stream_is_made(atlas):
    for panel, message in ((np.array([3, -1]), "integers in 0.."), (np.array([3, 3]), "more than once"),
                           (np.array([0.5]), "integers in 0..")):
        with pytest.raises(ValueError, match=message):
            CellStream(atlas, panel=panel)


def test_a_stream_carries_atlas_labels_as_covariates_through_training(atlas):
    from pyrovae.guides import NormalGuide
    from pyrovae.models import VAE

    from pyrovae.infer import log_likelihood, train

    panel = atlas.panel_positions()[:50]
    stream = CellStream(atlas, panel, batch_size=100, split="train", covariates=("plate",), seed=0)
    x, cat, cont = stream.inputs(next(iter(stream.loader())))
    assert cat.shape == (100, 1) and cont.shape == (100, 0)
    assert stream.categorical_sizes == (len(atlas.categories["plate"]),) == (3,)
    assert set(cat[:, 0].tolist()) <= {0, 1, 2}
    model = VAE(50, 3, (16,), "poisson", categorical=stream.categorical_sizes)
    guide = NormalGuide(50, 3, (16,), input_transform="log1p")
    history = train(model, guide, stream, epochs=1, eval_size=64, progress=False, seed=0)
    assert np.isfinite(history.last["train_elbo"])
    test = CellStream(atlas, panel, batch_size=100, split="test", covariates="plate", shuffle=False)
    with pytest.warns(UserWarning, match="k-hat"):
        assert np.isfinite(log_likelihood(model, guide, test, num_samples=4).mean)
    with pytest.raises(ValueError, match="not labels of the atlas"):
        CellStream(atlas, panel, covariates=("donor",))


def test_whole_plates_can_be_held_out_and_none_leaks_into_training(atlas):
    plates = atlas.categories["plate"]
    held = {"plate": [plates[-1]]}
    panel = atlas.panel_positions()[:20]
    train_part = CellStream(atlas, panel, batch_size=64, split="train", held_out=held, shuffle=False)
    test_part = CellStream(atlas, panel, batch_size=64, split="test", held_out=held, shuffle=False)
    last = len(plates) - 1
    train_plates = {int(c) for b in train_part.loader() for c in b.plate}
    test_plates = {int(c) for b in test_part.loader() for c in b.plate}
    assert last not in train_plates and test_plates == {last}
    counts = np.zeros(len(plates), dtype=int)
    for shard in range(len(atlas.shards)):
        for block in atlas.read(shard, panel):
            counts += np.bincount(block.labels["plate"], minlength=len(plates))
    assert test_part.num_cells == counts[last] and train_part.num_cells == counts[:last].sum()
    assert len(test_part.take(10)) == 10 and set(test_part.take(10).labels["plate"].tolist()) == {last}
    with pytest.raises(ValueError, match=r"\[.no such plate.\] are not among its categories"):
        CellStream(atlas, panel, split="test", held_out={"plate": ["no such plate"]})
    with pytest.raises(ValueError, match="split="):
        CellStream(atlas, panel, held_out=held)
    with pytest.raises(ValueError, match="never trained"):
        CellStream(atlas, panel, split="train", held_out=held, covariates=("plate",))


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"genes": [[503, 1, 2], [4, 7]], "expressions": [[-2.0, 1.0, 3.0], [5.0, 1.0]]},
         r"bad.parquet, row 1: the row does not start with the marker element \(first token 4, expression 5.0"),
        ({"genes": [[1, 2], [503, 4]], "expressions": [[1.0, 3.0], [-2.0, 5.0]]},
         r"bad.parquet, row 0: the row does not start with the marker"),
        ({"genes": [[503, 1, 2], []], "expressions": [[-2.0, 1.0, 3.0], []]},
         r"bad.parquet, row 1: genes and expressions are empty; every row starts with the marker"),
        ({"drug": ["a", None]}, r"bad.parquet, row 1: the label 'drug' is missing \(null; 1 such rows"),
        ({"cell_line_id": [None, "x"]}, r"bad.parquet, row 0: the label 'cell_line_id' is missing"),
    ],
)
def test_rows_without_the_marker_or_with_a_null_label_name_the_shard_and_row(tmp_path, atlas_dir, columns, message):
    atlas = _bad_atlas(tmp_path, atlas_dir, **columns)
    with pytest.raises(TahoeFormatError, match=message):
        list(atlas.read(0, atlas.panel_positions()))
    stream = CellStream(atlas, batch_size=1, shuffle=False)
    with pytest.raises(TahoeFormatError, match=message):  # a stream stops there too, rather than streaming on
        list(stream)


def test_a_label_outside_the_given_categories_names_the_row(tmp_path, atlas_dir):
    _bad_atlas(tmp_path, atlas_dir)
    atlas = TahoeAtlas(tmp_path, categories={"drug": ["a"]})
    with pytest.raises(TahoeFormatError, match=r"bad.parquet, row 1: the label 'drug' is 'b', not one of its categ"):
        list(atlas.read(0, atlas.panel_positions()))
    marked = TahoeAtlas(tmp_path)  # scanned categories: the marked rows decode as pyarrow reads them
    block = next(marked.read(0, marked.panel_positions()))
    np.testing.assert_array_equal(block.counts.toarray()[:, [1, 2, 4]], [[1, 3, 0], [0, 0, 5]])
    np.testing.assert_array_equal(block.library, [4, 5])
    assert [marked.categories["drug"][c] for c in block.labels["drug"]] == ["a", "b"]


@pytest.mark.parametrize("option, value, message", [
    ("num_workers", -1, "num_workers must be an integer >= 0, got -1"),
    ("buffer_size", 0, "buffer_size must be an integer >= 1, got 0"),
    ("interleave", 0, "interleave must be an integer >= 1, got 0"),
    ("batch_size", 2.5, "batch_size must be an integer >= 1, got 2.5"),
    ("rows_per_read", 0, "rows_per_read must be an integer >= 1, got 0"),
    ("seed", -3, "seed must be an integer >= 0, got -3"),
    ("world_size", 0, "world_size must be an integer >= 1, got 0"),
    ("test_fraction", 1.5, "test_fraction"),  # out of range even where no split reads it
])
def test_stream_settings_out_of_range_are_named(atlas, option, value, message):
    with pytest.raises(ValueError, match=message):
        CellStream(atlas, **{option: value})


def test_an_empty_split_is_refused_when_the_stream_is_made(atlas):
    with pytest.raises(ValueError, match=r"the 'test' split \(test_fraction=1e-09\) of TahoeAtlas\(1,200 cells.* "
                                         r"holds no cells"):
        CellStream(atlas, split="test", test_fraction=1e-9)
    plates = atlas.categories["plate"]
    with pytest.raises(ValueError, match=r"the 'train' split \(held_out=.*plate1.*\) .* holds no cells"):
        CellStream(atlas, split="train", held_out={"plate": plates})


def test_empty_or_repeated_gene_panels_are_refused(atlas):
    with pytest.raises(ValueError, match="the gene panel is empty"):
        atlas.panel_positions([])
    with pytest.raises(ValueError, match=r"names 1 gene\(s\) more than once \(\['GENE7'\]\)"):
        atlas.panel_positions(["GENE7", "GENE3", "GENE7"])
    with pytest.raises(ValueError, match="the gene panel is empty"):
        CellStream(atlas, panel=np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match=r"lists 1 gene\(s\) more than once \(\['GENE3'\]\)"):
        CellStream(atlas, panel=np.array([3, 5, 3]))


def test_take_beyond_the_data_says_how_many_there_are(atlas):
    stream = CellStream(atlas, batch_size=50, split="test", test_fraction=0.1)
    available = stream.num_cells
    assert 60 < available < 180  # about a tenth of 1,200
    with pytest.raises(ValueError, match=f"take\\({available + 1}\\) asks for more cells than the 'test' split "
                                         f"holds \\({available}\\); take at most {available}"):
        stream.take(available + 1)
    assert len(stream.take(available)) == available
    with pytest.raises(ValueError, match="num_cells must be an integer >= 1, got 0"):
        stream.take(0)


def test_stream_and_atlas_arguments_of_the_wrong_kind_are_named(atlas, atlas_dir):
    with pytest.raises(ValueError, match="shuffle must be True or False, got 'no'"):
        CellStream(atlas, shuffle="no")  # a truthy string would shuffle
    with pytest.raises(ValueError, match="shard_index must be an integer in 0..5 .*got 6"):
        list(atlas.read(6, atlas.panel_positions()))
    with pytest.raises(ValueError, match="mixes \\['names', 'token ids'\\]"):
        atlas.panel_positions(["GENE1", 3])
    with pytest.raises(ValueError, match="1-D list of vocabulary positions, got shape \\(1, 2\\)"):
        CellStream(atlas, panel=np.array([[1, 2]]))
    with pytest.raises(FileNotFoundError, match="no gene_metadata table at .*nope.parquet"):
        TahoeAtlas(atlas_dir, genes=str(atlas_dir / "nope.parquet"))
    assert TahoeAtlas(atlas_dir, labels="drug").labels == ["drug"]  # one label by name, not its letters
    with pytest.raises(ValueError, match="held_out 'plate' lists no categories"):
        CellStream(atlas, split="test", held_out={"plate": []})

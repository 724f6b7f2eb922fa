"""The fast paths of the Tahoe stream against their references: decoding rows (fast path vs the checked path),
the shuffle buffer (vs concatenating the buffer at each draw), read-ahead threads, and batches as one buffer."""

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pyrovae.data import CellBatch, CellStream, TahoeAtlas, TahoeFormatError, write_tahoe_shards
from pyrovae.data.source import StreamSource
from pyrovae.data.tahoe import CellBlock, GeneVocabulary, Shard
from pyrovae.data.tahoe_decode import _decode_checked, _decode_fast, decode_rows, panel_table


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    write_tahoe_shards(folder, num_cells=900, num_shards=5, vocabulary_size=400, genes_per_cell=50, num_plates=2,
                       rows_per_group=64, seed=2)
    return TahoeAtlas(folder)


VOCABULARY = GeneVocabulary(np.arange(0, 60, 2), np.array([f"ENSG{t}" for t in range(30)], dtype=object),
                            np.array([f"G{t}" for t in range(30)], dtype=object))  # tokens 0, 2, ..., 58


def _rows(genes, expressions, value_type=None):
    return pa.record_batch({"genes": pa.array(genes, pa.list_(pa.int64())),
                            "expressions": pa.array(expressions, pa.list_(value_type or pa.float32()))})


def _both(batch, panel):
    vocabulary, lookup = VOCABULARY.lookup(), VOCABULARY.lookup(panel)
    genes, expressions = batch.column("genes"), batch.column("expressions")
    fast = _decode_fast(genes, expressions, panel_table(vocabulary, lookup), len(panel))
    checked = _decode_checked(genes, expressions, Shard("x.parquet", batch.num_rows), 0, vocabulary, lookup,
                              len(panel))
    return fast, checked


@pytest.mark.parametrize("value_type", [pa.float32(), pa.float64(), pa.int64()])
@pytest.mark.parametrize("panel", [np.arange(30), np.array([29, 3, 0, 17]), np.array([5])])
def test_fast_decoding_equals_the_checked_path(value_type, panel):
    rng = np.random.default_rng(0)
    genes, expressions = [], []
    for size in (0, 1, 7, 30, 12):
        tokens = np.sort(rng.choice(30, size, replace=False)) * 2
        genes.append([999, *tokens.tolist()])
        expressions.append([-2, *rng.integers(0, 50, size).tolist()])
    fast, checked = _both(_rows(genes, expressions, value_type), panel)
    assert fast is not None  # clean rows take the fast path
    np.testing.assert_array_equal(fast[0].toarray(), checked[0].toarray())
    np.testing.assert_array_equal(fast[1], checked[1])
    assert fast[1].dtype == checked[1].dtype == np.float32
    sliced = _rows(genes, expressions, value_type).slice(2, 2)  # offsets not from 0: the slice is respected
    fast, checked = _both(sliced, panel)
    np.testing.assert_array_equal(fast[0].toarray(), checked[0].toarray())
    np.testing.assert_array_equal(fast[1], checked[1])


@pytest.mark.parametrize("genes, expressions, fast_path", [
    ([[999, 4, 2, 8]], [[-2.0, 1.0, 2.0, 3.0]], True),  # genes out of token order: checked for repeats by sorting
    ([[999, 2, 4, 2]], [[-2.0, 1.0, 2.0, 3.0]], False),  # a repeated panel gene: the checked path names it
    ([[-5, 2, 4]], [[-2.0, 1.0, 2.0]], False),  # a negative marker token: accepted, by the checked path
    ([[999, 2, 4]], [[-0.5, 1.0, 2.0]], False),  # a non-integer marker: accepted, by the checked path
])
def test_unusual_rows_decode_as_the_checked_path_decodes_them(genes, expressions, fast_path):
    panel = np.array([1, 2])  # tokens 2 and 4
    batch = _rows(genes, expressions)
    vocabulary, lookup = VOCABULARY.lookup(), VOCABULARY.lookup(panel)
    fast = _decode_fast(batch.column("genes"), batch.column("expressions"), panel_table(vocabulary, lookup), 2)
    assert (fast is not None) == fast_path
    try:
        _, checked = _both(batch, panel)
    except TahoeFormatError as error:
        assert "more than once" in str(error)
        with pytest.raises(TahoeFormatError, match="row 0: a gene's token id appears more than once"):
            decode_rows(batch, Shard("x.parquet", 1), 0, vocabulary, lookup, 2, {})
        return
    block = decode_rows(batch, Shard("x.parquet", 1), 0, vocabulary, lookup, 2, {})
    np.testing.assert_array_equal(block.counts.toarray(), checked[0].toarray())
    np.testing.assert_array_equal(block.library, checked[1])


def _concatenating_stream(stream, blocks, rng):
    """The shuffle buffer as documented, written the plain way: concatenate, permute, yield all but half a buffer
    in batches, keep the rest."""
    buffer, keep = [], stream.buffer_size // 2
    for block in blocks:
        buffer.append(block)
        if sum(map(len, buffer)) >= stream.buffer_size:
            cells = CellBlock.concat(buffer)
            emit = (len(cells) - keep) // stream.batch_size * stream.batch_size
            order = rng.permutation(len(cells))
            yield from (cells.take(order[s:s + stream.batch_size]) for s in range(0, emit, stream.batch_size))
            buffer = [cells.take(order[emit:])]
    cells = CellBlock.concat(buffer)
    order = rng.permutation(len(cells))
    yield from (cells.take(order[s:s + stream.batch_size]) for s in range(0, len(cells), stream.batch_size))


@pytest.mark.parametrize("batch_size, buffer_size, rows_per_read", [(32, 300, 64), (50, 120, 20), (7, 40, 5)])
def test_the_shuffle_buffer_draws_as_concatenating_it_would(atlas, batch_size, buffer_size, rows_per_read):
    stream = CellStream(atlas, batch_size=batch_size, buffer_size=buffer_size, rows_per_read=rows_per_read,
                        drop_last=False, seed=5, read_threads=0)
    shards = stream._parts()[0][0]
    expected = list(_concatenating_stream(stream, stream._blocks(shards), np.random.default_rng([5, 0, 0, 0])))
    batches = list(stream)
    assert len(batches) == len(expected) == -(-900 // batch_size)
    for batch, block in zip(batches, expected):
        np.testing.assert_array_equal(batch.ids.numpy(), block.ids)
        np.testing.assert_array_equal(batch.counts.numpy(), block.counts.toarray())
        np.testing.assert_array_equal(batch.library.numpy(), block.library)
        np.testing.assert_array_equal(batch.plate.numpy(), block.labels["plate"])


def test_read_ahead_threads_give_the_same_batches(atlas):
    def epoch(threads, **options):
        stream = CellStream(atlas, batch_size=40, buffer_size=200, interleave=3, seed=1, read_threads=threads,
                            **options)
        return [(b.ids.numpy(), b.counts.numpy()) for b in stream]

    for options in ({}, {"shuffle": False}, {"split": "test", "test_fraction": 0.3}):
        reference = epoch(0, **options)
        for threads in (1, 3):
            batches = epoch(threads, **options)
            assert len(batches) == len(reference)
            for (ids, counts), (expected_ids, expected_counts) in zip(batches, reference):
                np.testing.assert_array_equal(ids, expected_ids)
                np.testing.assert_array_equal(counts, expected_counts)
    stream = CellStream(atlas, batch_size=40, read_threads=2)
    for _ in stream:  # stopping early leaves no reader behind
        break
    with pytest.raises(ValueError, match="read_threads must be an integer >= 0, got -1"):
        CellStream(atlas, read_threads=-1)


def test_a_bad_shard_read_ahead_raises_in_the_iterating_thread(tmp_path):
    write_tahoe_shards(tmp_path, num_cells=20, num_shards=1, vocabulary_size=50, genes_per_cell=5)
    pq.write_table(pa.table({"genes": [[53, 1], [53, 1, 1]], "expressions": [[-2.0, 1.0], [-2.0, 1.0, 2.0]],
                             "drug": ["DMSO_TF"] * 2, "cell_line_id": ["CVCL_1000"] * 2, "plate": ["plate1"] * 2}),
                   tmp_path / "data" / "z.parquet")
    stream = CellStream(TahoeAtlas(tmp_path), batch_size=4, shuffle=False, read_threads=2)
    with pytest.raises(TahoeFormatError, match=r"z.parquet, row 1: a gene's token id appears more than once"):
        list(stream)


def _storages(batch):
    return {t.untyped_storage().data_ptr() for t in (batch.indptr, batch.indices, batch.values, batch.library,
                                                     batch.ids, *batch.labels.values())}


def test_a_batch_travels_as_one_buffer(atlas):
    stream = CellStream(atlas, batch_size=64, shuffle=False, read_threads=0)
    batch = next(iter(stream))
    assert batch.indices.dtype == batch.indptr.dtype == batch.ids.dtype == torch.int64
    assert batch.values.dtype == batch.library.dtype == torch.float32
    assert _storages(batch) == {batch._buffer.untyped_storage().data_ptr()}
    from_worker = next(iter(CellStream(atlas, batch_size=64, shuffle=False, num_workers=1).loader()))
    assert len(_storages(from_worker)) == 1  # crossed from the worker as one block of shared memory
    for copy in (pickle.loads(pickle.dumps(batch)), from_worker, batch.to("cpu")):
        torch.testing.assert_close(copy.counts, batch.counts)
        for name in ("indptr", "indices", "values", "library", "ids", "drug", "plate"):
            assert torch.equal(getattr(copy, name), getattr(batch, name))
    batch.values = batch.values * 2  # a tensor replaced: the batch is pickled tensor by tensor
    assert not batch._packed()
    copy = pickle.loads(pickle.dumps(batch))
    torch.testing.assert_close(copy.counts, 2 * pickle.loads(pickle.dumps(next(iter(stream)))).counts)
    made = CellBatch(batch.indptr, batch.indices, batch.values, batch.num_genes, batch.library, batch.labels,
                     batch.ids)  # made by hand: no buffer, the same behaviour
    torch.testing.assert_close(pickle.loads(pickle.dumps(made)).counts, copy.counts)


def test_persistent_workers_read_each_epoch_as_fresh_workers_do(atlas):
    """Workers kept from epoch to epoch learn each epoch through shared memory: the same batches, epoch by epoch,
    as workers started afresh, also after an epoch left early; train's stream source starts them once."""
    fresh = CellStream(atlas, batch_size=40, buffer_size=200, seed=3, num_workers=2)
    kept = CellStream(atlas, batch_size=40, buffer_size=200, seed=3, num_workers=2)
    loader = kept.loader(persistent_workers=True)
    assert loader.persistent_workers
    pids = set()
    for epoch in (0, 1, 0, 2):
        fresh.set_epoch(epoch)
        kept.set_epoch(epoch)
        expected = [b.ids for b in fresh.loader()]
        batches = iter(loader)
        pids.update(w.pid for w in batches._workers)
        got = [b.ids for _, b in zip(range(2), batches)] if epoch == 1 else [b.ids for b in batches]
        assert len(got) == (2 if epoch == 1 else len(expected)) and len(expected) > 2  # epoch 1 left early
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert len(pids) == 2  # the same two processes throughout

    source = StreamSource(kept, None, "stream")
    cpu, pids = torch.device("cpu"), []
    for epoch in range(2):
        batches = source.batches(epoch, None, True, False, cpu)
        next(batches)
        pids.append({w.pid for w in source._loaders[False]._iterator._workers})
        batches.close()
    assert pids[0] == pids[1] and len(pids[0]) == 2

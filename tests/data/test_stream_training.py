"""CellStream with train and the estimators: scoring reads every cell in file order, drop_last is followed or
refused, a run resumed with workers is the run that did not stop, and ranks that would leave cells out are named."""

import warnings

import pytest
import torch

from pyrovae.data import CellStream


def test_scoring_and_encoding_a_training_stream_read_every_cell_in_file_order(atlas):
    """A stream's shuffle and drop_last (its defaults: both on) are for training; encode_data, evaluate and
    log_likelihood read all its cells in file order."""
    from pyrovae.guides import NormalGuide
    from pyrovae.models import VAE

    from pyrovae.infer import encode_data, evaluate

    stream = CellStream(atlas, batch_size=64, buffer_size=300, seed=1)  # 1,200 cells: 18 whole batches, 48 left
    assert stream.shuffle and stream.drop_last
    torch.manual_seed(0)
    model, guide = VAE(stream.num_genes, 2, (8,), "nb"), NormalGuide(stream.num_genes, 2, (8,))
    latent = encode_data(guide, stream)
    ordered = encode_data(guide, CellStream(atlas, batch_size=64, shuffle=False))
    assert latent.shape == (1200, 2)
    torch.testing.assert_close(latent, ordered)
    ordered_stream = CellStream(atlas, batch_size=64, shuffle=False)
    assert evaluate(model, guide, stream, seed=0) == evaluate(model, guide, ordered_stream, seed=0)
    assert stream.shuffle and stream.drop_last  # the stream itself left as it was


def test_train_refuses_a_drop_last_the_stream_would_not_follow_and_names_an_epoch_without_a_batch(atlas):
    from pyrovae.guides import NormalGuide
    from pyrovae.models import VAE

    from pyrovae.infer import train

    def pair():
        return VAE(atlas.num_genes, 2, (8,), "nb"), NormalGuide(atlas.num_genes, 2, (8,))

    dropping = CellStream(atlas, batch_size=64, buffer_size=300, seed=1)
    with pytest.raises(ValueError, match=r"stream built with drop_last=True.*asked for drop_last=False"):
        train(*pair(), dropping, epochs=1, drop_last=False, progress=False)
    keeping = CellStream(atlas, batch_size=64, shuffle=False)
    assert len(train(*pair(), keeping, epochs=1, elbo="jit", eval_size=0, progress=False)) == 1  # unset: followed
    too_big = CellStream(atlas, batch_size=2000, seed=1)
    with pytest.raises(ValueError, match=r"1200 cells make no whole batch of 2000.*drop_last=False"):
        train(*pair(), too_big, epochs=1, progress=False)
    ranks = CellStream(atlas, batch_size=300, seed=1, rank=0, world_size=6)  # a shard of 200 cells per rank
    with pytest.raises(ValueError, match=r"a rank of the 6 reads no whole batch of 300.*more, smaller shards"):
        train(*pair(), ranks, epochs=1, progress=False)


def test_a_run_resumed_with_stream_workers_is_the_run_that_did_not_stop(atlas, tmp_path):
    """The loader's workers draw their seed from a generator of their own: torch's global one, restored from the
    checkpoint, then gives the resumed run the draws of the run it continues."""
    from pyrovae.guides import NormalGuide
    from pyrovae.models import VAE

    from pyrovae.infer import train

    def run(epochs, checkpoint=None):
        torch.manual_seed(0)
        model, guide = VAE(atlas.num_genes, 2, (8,), "nb"), NormalGuide(atlas.num_genes, 2, (8,))
        stream = CellStream(atlas, batch_size=100, buffer_size=300, seed=1, num_workers=2)
        history = train(model, guide, stream, epochs=epochs, seed=0, eval_size=200, progress=False,
                        checkpoint=checkpoint)
        return history["loss"], guide.state_dict()

    straight, straight_state = run(2)
    run(1, tmp_path / "c.pt")
    resumed, resumed_state = run(2, tmp_path / "c.pt")
    assert resumed == straight
    for key, value in straight_state.items():
        assert torch.equal(value, resumed_state[key]), key


def test_ranks_that_would_leave_many_cells_untrained_are_warned_of(atlas):
    """Six shards dealt to four ranks: two ranks hold one shard, and all stop after its batches (800 of 1,200 cells
    trained); to two ranks, three shards each, nothing of note is lost."""
    from pyrovae.infer.batches import BatchSource, check_training_source

    def check(world_size):
        stream = CellStream(atlas, batch_size=50, seed=1, rank=0, world_size=world_size)
        check_training_source(BatchSource(stream, None, True, torch.device("cpu"), drop_last=True), None, True)

    with pytest.warns(UserWarning, match=r"the 4 ranks train about 800 of its 1,200 cells each epoch"):
        check(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check(2)


def test_a_stream_built_for_other_ranks_is_refused_in_the_process_group(atlas, monkeypatch):
    """Under torchrun, a stream reading as rank 1 of 2 in the process of rank 0 of 2 would train rank 1's cells
    twice and rank 0's never."""
    from pyrovae.infer import batches

    stream = CellStream(atlas, batch_size=64, rank=1, world_size=2)
    monkeypatch.setattr(batches, "rank", lambda: 0)
    monkeypatch.setattr(batches, "world_size", lambda: 2)
    with pytest.raises(ValueError, match=r"reads as rank 1 of 2, but this process is rank 0 of 2: build the stream "
                                         r"without rank= and world_size="):
        batches.check_stream_ranks(stream)
    monkeypatch.setattr(batches, "rank", lambda: 1)
    batches.check_stream_ranks(stream)  # its own rank
    batches.check_stream_ranks(torch.zeros(3, 2))  # data in memory: nothing to check


def test_train_in_a_process_group_refuses_a_stream_of_other_ranks_before_anything_else(atlas, monkeypatch):
    import importlib

    from pyrovae.guides import NormalGuide
    from pyrovae.models import VAE

    from pyrovae.infer import batches, train

    train_module = importlib.import_module("pyrovae.infer.training.train")  # the module (its name is the function's)

    stream = CellStream(atlas, batch_size=64, rank=1, world_size=2)
    monkeypatch.setattr(train_module, "init_distributed", lambda: True)  # as under torchrun, rank 0 of 2
    monkeypatch.setattr(batches, "rank", lambda: 0)
    monkeypatch.setattr(batches, "world_size", lambda: 2)
    model, guide = VAE(stream.num_genes, 2, (8,), "nb"), NormalGuide(stream.num_genes, 2, (8,))
    with pytest.raises(ValueError, match="reads as rank 1 of 2, but this process is rank 0 of 2"):
        train(model, guide, stream, epochs=1, progress=False)


class _LibraryGuide(torch.nn.Module):
    """A guide whose latent is the cell's total count: encoding shows the order the cells were read in."""

    def encode(self, x):
        return torch.distributions.Normal(x.sum(-1, keepdim=True), 1.0)


@pytest.mark.parametrize("kind", ["cells", "anndata"])
def test_encoding_a_stream_read_by_workers_keeps_the_file_order(atlas, tmp_path, kind):
    """A DataLoader takes its workers' batches in turn (cells 0, 600, 100, 700, ...); scoring and encoding read in
    this process instead, so that the rows of the result are the cells in file order."""
    from pyrovae.data import AnnDataStream
    from pyrovae.infer import encode_data

    if kind == "cells":
        def stream(**options):
            return CellStream(atlas, batch_size=100, **options)
    else:
        ad = pytest.importorskip("anndata")
        import scipy.sparse as sp

        counts = sp.csr_matrix(torch.poisson(torch.full((1000, 20), 3.0), torch.Generator().manual_seed(0)).numpy())
        ad.AnnData(counts).write_h5ad(tmp_path / "cells.h5ad")

        def stream(**options):
            return AnnDataStream(tmp_path / "cells.h5ad", 100, chunk_size=200, **options)

    in_order = torch.cat([batch.library for batch in stream(shuffle=False)])
    by_workers = stream(shuffle=False, num_workers=2)
    assert not torch.equal(torch.cat([batch.library for batch in by_workers.loader()]), in_order)  # interleaved
    torch.testing.assert_close(encode_data(_LibraryGuide(), by_workers).squeeze(-1), in_order)
    assert by_workers.num_workers == 2  # the stream itself left as it was


@pytest.mark.parametrize("workers", [0, 2])
def test_every_rank_iterates_as_many_batches_as_its_length(atlas, workers):
    """Six shards of 200 cells on four ranks: two ranks hold 400 cells, two 200; each yields the fewest (two
    batches of 100), so that a hand-written loop over the stream keeps the ranks in step."""
    streams = [CellStream(atlas, batch_size=100, shuffle=False, rank=r, world_size=4, num_workers=workers)
               for r in range(4)]
    for stream in streams:
        batches = list(stream.loader()) if workers else list(stream)
        assert len(stream) == len(batches) == 2
        assert all(len(batch.ids) == 100 for batch in batches)


def test_a_shard_listed_twice_is_read_once(atlas_dir):
    from pyrovae.data import TahoeAtlas

    shard = sorted(atlas_dir.rglob("*.parquet"))
    shard = next(p for p in shard if "metadata" not in p.name)
    with pytest.warns(UserWarning, match=r"1 shard\(s\) listed more than once are read once"):
        twice = TahoeAtlas([atlas_dir, shard])
    assert twice.num_cells == TahoeAtlas(atlas_dir).num_cells


def test_a_stream_that_fills_no_batch_says_so_when_iterated(atlas):
    with pytest.warns(UserWarning, match="yields no batch this epoch.*drop_last drops the short one"):
        assert list(CellStream(atlas, batch_size=5000, shuffle=False, drop_last=True)) == []


def test_a_mistyped_folder_is_not_silently_a_hub_name(tmp_path, monkeypatch):
    from pyrovae.data import TahoeAtlas

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)  # as where it is not installed
    with pytest.raises(ImportError, match="no file or folder data/atlass exists here, so it was taken as the name"):
        TahoeAtlas("data/atlass")


def test_validation_and_evaluate_keep_the_stream_workers(atlas, monkeypatch):
    """Sums over the cells need no file order: their stream keeps its DataLoader workers (encoding reads in the
    process)."""
    from pyrovae.data.source import StreamSource
    from pyrovae.infer.batches import BatchSource

    stream = CellStream(atlas, batch_size=100, shuffle=False, num_workers=2)
    assert BatchSource(stream, None, False, torch.device("cpu"), per_datum=False).source.stream is stream
    in_process = BatchSource(stream, None, False, torch.device("cpu")).source
    assert isinstance(in_process, StreamSource) and in_process.stream.num_workers == 0

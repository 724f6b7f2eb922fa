"""Data held in memory, or a Dataset, dealt to the ranks of data-parallel training: each rank's share of an epoch,
and the ranks' batches together as one process reads the global batch (no process group needed: a source is told
its rank). The run under torchrun itself is in tests/infer/test_distributed.py."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from pyrovae.data import TensorData
from pyrovae.data.source import as_source, rank_share
from pyrovae.infer import batches as batches_module
from pyrovae.infer.batches import BatchSource, check_training_source, no_batch

CPU = torch.device("cpu")


def test_a_rank_takes_every_world_size_th_datum_of_the_whole_part_of_the_order():
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    shares = [rank_share(order, r, 3) for r in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3]
    assert sorted(torch.cat(shares).tolist()) == sorted(order[:9].tolist())
    assert torch.equal(rank_share(order, 0, 1), order)
    assert rank_share(order[:2], 2, 3).numel() == 0


def _indices(batch) -> list[int]:
    return batch[0][:, 0].long().tolist()


@pytest.mark.parametrize("kind", ["TensorData", "Dataset"])
@pytest.mark.parametrize("world_size, n, batch_size", [(2, 101, 8), (3, 64, 5), (4, 40, 10)])
def test_the_ranks_batches_together_are_the_global_batch_of_one_process(kind, world_size, n, batch_size):
    """Two epochs: the ranks' t-th batches are disjoint and together the t-th batch of one process reading
    world_size x batch_size at a time in the same order (short of the n % world_size data left out)."""
    x = torch.arange(n, dtype=torch.float32).unsqueeze(-1).repeat(1, 3)  # each row says which it is
    data = TensorData(x) if kind == "TensorData" else TensorDataset(x)

    def batches(source):
        return BatchSource(source, None, shuffle=True, device=CPU, seed=4)

    one = batches(as_source(data, world_size * batch_size))
    ranks = [batches(as_source(data, batch_size).for_ranks(r, world_size)) for r in range(world_size)]
    assert len({len(b) for b in ranks}) == 1 and len(ranks[0]) == -(-(n // world_size) // batch_size)
    for epoch in range(2):
        for b in (one, *ranks):
            b.set_epoch(epoch)
        seen = []
        for whole, *parts in zip(one, *ranks):
            parts = [_indices(p) for p in parts]
            assert len({len(p) for p in parts}) == 1
            assert set(sum(parts, [])) <= set(_indices(whole))
            assert len(_indices(whole)) - len(sum(parts, [])) < world_size  # all but what is left out
            seen += sum(parts, [])
        assert len(seen) == len(set(seen)) == n // world_size * world_size  # each datum once, all but n % ws


def test_the_share_of_a_rank_keeps_the_whole_data_set_size_for_the_elbo():
    source = as_source(torch.zeros(10, 2), 4).for_ranks(1, 2)
    assert source.num_data == 10 and source.num_batches(0, False) == 2 and source.num_batches(0, True) == 1
    assert as_source(torch.zeros(10, 2), 4).ranks == (0, 1)  # the source it came from is left alone


@pytest.mark.parametrize("data, drop_last, expected", [
    (torch.zeros(1, 2), False, "holds 1 data, fewer than the 2 ranks that would share them"),
    (TensorDataset(torch.zeros(3, 2)), False, "holds 3 data, fewer than the 4 ranks"),
    (TensorDataset(torch.zeros(10, 2)), True, "each of the 2 ranks reads 5 of its 10 data an epoch, too few for a "
                                              "batch of 8 with drop_last=True"),
])
def test_a_share_without_a_batch_names_the_ranks(data, drop_last, expected):
    ranks = 4 if len(data) == 3 else 2
    batches = BatchSource(as_source(data, 8).for_ranks(0, ranks), None, shuffle=True, device=CPU,
                          drop_last=drop_last, seed=0)
    assert len(batches) == 0
    with pytest.raises(ValueError, match=expected):
        raise no_batch(batches)


def test_a_dataloader_is_read_as_its_sampler_says_and_without_a_distributed_one_train_warns(monkeypatch):
    dataset = TensorDataset(torch.arange(12, dtype=torch.float32).unsqueeze(-1))
    plain = as_source(DataLoader(dataset, batch_size=3))
    assert plain.for_ranks(1, 2) is plain
    with pytest.warns(UserWarning, match="DataLoader without a DistributedSampler"):
        check_training_source(BatchSource(plain, None, True, CPU, seed=0), None, True)

    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=0)
    batches = BatchSource(as_source(DataLoader(dataset, batch_size=3, sampler=sampler)), None, True, CPU, seed=0)
    _as_rank(monkeypatch, 1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_training_source(batches, None, True)
    epochs = []
    for epoch in range(2):  # the sampler is told the epoch, so each epoch has a shuffle of its own
        batches.set_epoch(epoch)
        epochs.append([int(v) for (x,) in batches for v in x[:, 0]])
        assert sampler.epoch == epoch
    assert epochs[0] != epochs[1]


def test_a_dataloader_with_a_distributed_batch_sampler_is_recognised_and_told_the_epoch(monkeypatch):
    from torch.utils.data import BatchSampler

    _as_rank(monkeypatch, 0, 2)
    dataset = TensorDataset(torch.arange(12, dtype=torch.float32).unsqueeze(-1))
    sampler = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_sampler=BatchSampler(sampler, batch_size=3, drop_last=False))
    batches = BatchSource(as_source(loader), None, True, CPU, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_training_source(batches, None, True)
    batches.set_epoch(3)
    list(batches)
    assert sampler.epoch == 3


def _as_rank(monkeypatch, this_rank: int, ranks: int) -> None:
    """This process as rank ``this_rank`` of ``ranks``, as check_training_source reads it."""
    monkeypatch.setattr(batches_module, "rank", lambda: this_rank)
    monkeypatch.setattr(batches_module, "world_size", lambda: ranks)


@pytest.mark.parametrize(("sampled", "this"), [((1, 2), (0, 1)), ((0, 2), (1, 2)), ((0, 4), (0, 2))])
def test_a_distributed_sampler_for_other_ranks_than_this_processs_is_refused(monkeypatch, sampled, this):
    """A DistributedSampler built for another rank or number of ranks would train on another rank's data or leave
    some unread, in silence: refused by name (a single process included, whose sampler would read half the set)."""
    dataset = TensorDataset(torch.arange(12, dtype=torch.float32).unsqueeze(-1))
    sampler = DistributedSampler(dataset, num_replicas=sampled[1], rank=sampled[0])
    batches = BatchSource(as_source(DataLoader(dataset, batch_size=3, sampler=sampler)), None, True, CPU, seed=0)
    _as_rank(monkeypatch, *this)
    with pytest.raises(ValueError, match=rf"DistributedSampler reads as rank {sampled[0]} of {sampled[1]}, but this "
                                         rf"process is rank {this[0]} of {this[1]}.*num_replicas=world_size\(\)"):
        check_training_source(batches, None, this[1] > 1)


def test_a_dataset_takes_no_draw_from_torchs_generator():
    """The DataLoader built over a Dataset seeds itself from a generator of its own: training or scoring on a Dataset
    draws the latents as on the tensor it wraps, from the same global seed."""
    from pyrovae.guides import NormalGuide
    from pyrovae.models import VAE

    from pyrovae.infer import evaluate

    x = torch.bernoulli(torch.full((40, 6), 0.3, dtype=torch.float32), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    model, guide = VAE(6, 2, (8,), likelihood="bernoulli"), NormalGuide(6, 2, (8,))
    scores = []
    for data in (x, TensorDataset(x)):
        torch.manual_seed(5)
        scores.append(evaluate(model, guide, data))
    assert scores[0] == scores[1]


@pytest.mark.parametrize("num_data, batch_size, drop_last, expected", [
    (22, 10, None, "11 data on each of the 2 ranks in batches of 10 leave a last batch of one datum"),  # warned
    (22, 10, False, "11 data on each of the 2 ranks in batches of 10 leave a last batch of one datum"),
    (3, 10, None, "train got 3 data for 2 ranks, one datum each"),
    (21, 10, False, None),  # 10 data on each rank: no batch of one, though 21 % 10 == 1
])
def test_batch_normalisation_is_checked_on_each_ranks_share(num_data, batch_size, drop_last, expected):
    from pyrovae.infer.batches import check_batch_norm_batches

    source = as_source(torch.zeros(num_data, 2), batch_size).for_ranks(0, 2)
    batches = BatchSource(source, None, shuffle=True, device=CPU, drop_last=False, seed=0)
    trained = [torch.nn.BatchNorm1d(2)]
    if expected is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_batch_norm_batches(batches, trained, drop_last) is False
    elif drop_last is None and "each of the" in expected:
        with pytest.warns(UserWarning, match=expected):
            assert check_batch_norm_batches(batches, trained, drop_last) is True
    else:
        with pytest.raises(ValueError, match=expected):
            check_batch_norm_batches(batches, trained, drop_last)


def test_a_checkpoint_resumes_with_its_own_number_of_ranks_only(tmp_path, monkeypatch):
    """Another number of ranks is another global batch and another deal of the data: refused by name."""
    import importlib

    from pyrovae.guides import NormalGuide
    from pyrovae.models import VAE

    from pyrovae import SettingsMismatch
    from pyrovae.infer import train

    train_module = importlib.import_module("pyrovae.infer.training.train")  # the module (its name is the function's)
    x = torch.bernoulli(torch.full((32, 6), 0.3), generator=torch.Generator().manual_seed(0))
    model, guide = VAE(6, 2, (8,), likelihood="bernoulli"), NormalGuide(6, 2, (8,))
    checkpoint = tmp_path / "run.pt"
    train(model, guide, x, epochs=1, batch_size=8, seed=0, progress=False, checkpoint=checkpoint)
    monkeypatch.setattr(train_module, "world_size", lambda: 2)  # as if resumed under torchrun with two processes
    with pytest.raises(SettingsMismatch, match="ranks=1 there, 2 here"):
        train(model, guide, x, epochs=2, batch_size=8, seed=0, progress=False, checkpoint=checkpoint)

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


@pytest.mark.parametrize("data, expected", [(torch.zeros(1, 2), "reads 0 of its 1 data"),
                                            (TensorDataset(torch.zeros(10, 2)), "reads 5 of its 10 data")])
def test_a_share_without_a_batch_names_the_ranks(data, expected):
    batches = BatchSource(as_source(data, 8).for_ranks(0, 2), None, shuffle=True, device=CPU, drop_last=True, seed=0)
    assert len(batches) == 0
    with pytest.raises(ValueError, match=f"each of the 2 ranks {expected} an epoch, too few for a batch of 8"):
        raise no_batch(batches)


def test_a_dataloader_is_read_as_its_sampler_says_and_without_a_distributed_one_train_warns():
    dataset = TensorDataset(torch.arange(12, dtype=torch.float32).unsqueeze(-1))
    plain = as_source(DataLoader(dataset, batch_size=3))
    assert plain.for_ranks(1, 2) is plain
    with pytest.warns(UserWarning, match="DataLoader without a DistributedSampler"):
        check_training_source(BatchSource(plain, None, True, CPU, seed=0), None, True)

    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=0)
    batches = BatchSource(as_source(DataLoader(dataset, batch_size=3, sampler=sampler)), None, True, CPU, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_training_source(batches, None, True)
    epochs = []
    for epoch in range(2):  # the sampler is told the epoch, so each epoch has a shuffle of its own
        batches.set_epoch(epoch)
        epochs.append([int(v) for (x,) in batches for v in x[:, 0]])
        assert sampler.epoch == epoch
    assert epochs[0] != epochs[1]

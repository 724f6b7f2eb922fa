"""Data-parallel training: two gloo processes under torchrun on the CPU, against one process, and the same two
processes launched as two "nodes" that meet through a c10d rendezvous on localhost."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyrovae.data import write_tahoe_shards

SCRIPT = Path(__file__).with_name("ddp_train.py")


def _run(args: list[str], processes: int) -> None:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(SCRIPT.parents[2]))
    done = subprocess.run([sys.executable, *launcher, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _run_two_nodes(args: list[str]) -> None:
    """``torchrun --nnodes=2 --nproc_per_node=1`` twice, as two machines would start it, meeting at a c10d
    rendezvous on a free local port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = ["-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
                f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=pyrovae-test"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(SCRIPT.parents[2]))
    nodes = [subprocess.Popen([sys.executable, *launcher, str(SCRIPT), *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:  # a node left waiting at the rendezvous (its port taken meanwhile) does not outlive the test
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert all(node.returncode == 0 for node in nodes), "\n".join(output[-3000:] for output in outputs)


def _load(folder: Path, rank: int) -> dict:
    return torch.load(folder / f"rank{rank}.pt", weights_only=False)


def _assert_same_parameters(a: dict, b: dict) -> None:
    for side in ("model", "guide"):
        for name in a[side]:
            torch.testing.assert_close(a[side][name], b[side][name], rtol=0, atol=0, equal_nan=True,
                                       msg=lambda m, key=f"{side}.{name}": f"{key}: {m}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The runs the tests compare, four launches in all: runs of the same launch train one after the other in the
    same processes (each launch costs seconds of imports), except the resumed run, which must start anew."""
    root = tmp_path_factory.mktemp("ddp")
    shards = root / "shards"
    write_tahoe_shards(shards, num_cells=2048, num_shards=8, vocabulary_size=300, genes_per_cell=40, num_expressed=80)
    atlas = [str(shards)]
    checkpoint = str(root / "checkpoint.pt")
    # in memory, scored every epoch (early stopping's scores; a patience it does not reach, so that both run 3 epochs)
    memory = ["--epochs", "3", "--in-memory", "1001", "--patience", "100"]
    _run([*atlas, str(root / "two"), "--batch-size", "32", "--epochs", "3",
          "+", *atlas, str(root / "memory_two"), "--batch-size", "32", *memory,
          "+", *atlas, str(root / "first"), "--batch-size", "32", "--epochs", "2", "--checkpoint", checkpoint,
          "+", *atlas, str(root / "compiled"), "--batch-size", "32", "--epochs", "3", "--compile"], processes=2)
    _run([*atlas, str(root / "resumed"), "--batch-size", "32", "--epochs", "3", "--checkpoint", checkpoint], 2)
    _run([*atlas, str(root / "one"), "--batch-size", "64", "--epochs", "3",
          "+", *atlas, str(root / "memory_one"), "--batch-size", "64", *memory], processes=1)
    _run_two_nodes([*atlas, str(root / "nodes"), "--batch-size", "32", "--epochs", "3"])
    return root


def test_ranks_read_disjoint_cells_covering_the_atlas(runs):
    cells = [set(_load(runs / "two", rank)["cells"].tolist()) for rank in (0, 1)]
    assert not cells[0] & cells[1]
    assert len(cells[0]) == len(cells[1]) == 1024  # 8 shards of 256 cells dealt 4 and 4
    assert cells[0] | cells[1] == set(range(2048))


def test_parameters_identical_on_both_ranks(runs):
    _assert_same_parameters(_load(runs / "two", 0), _load(runs / "two", 1))
    assert _load(runs / "two", 0)["loss"] == _load(runs / "two", 1)["loss"]  # metrics reduced across ranks


def test_loss_curve_matches_one_process_with_the_same_global_batch(runs):
    two, one = _load(runs / "two", 0)["loss"], _load(runs / "one", 0)["loss"]
    assert len(two) == len(one) == 3
    assert two[0] > 1.4 * two[-1]  # it learns
    # the same initial parameters, global batch 64 and data; only the Monte Carlo draws and batch compositions differ
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=0.02, atol=0)


def test_resumed_distributed_run_continues_exactly(runs):
    resumed, straight = _load(runs / "resumed", 0), _load(runs / "two", 0)
    assert resumed["loss"] == straight["loss"]
    _assert_same_parameters(resumed, straight)
    _assert_same_parameters(resumed, _load(runs / "resumed", 1))


def test_two_nodes_train_the_run_of_one_node_with_two_processes(runs):
    """Ranks, shards, seeds and the reduction do not depend on how the processes were launched: two single-process
    nodes meeting through a c10d rendezvous train exactly the run of one node with two processes."""
    for rank in (0, 1):
        nodes, one_node = _load(runs / "nodes", rank), _load(runs / "two", rank)
        assert nodes["loss"] == one_node["loss"]
        _assert_same_parameters(nodes, one_node)
        assert torch.equal(nodes["cells"], one_node["cells"])


def test_a_compiled_distributed_run_follows_the_uncompiled_one(runs):
    """train(compile=True) under torchrun: DDP averages the gradients the compiled graph computed; the ranks stay
    identical and the run equals the uncompiled one to float rounding."""
    _assert_same_parameters(_load(runs / "compiled", 0), _load(runs / "compiled", 1))
    compiled, eager = _load(runs / "compiled", 0), _load(runs / "two", 0)
    torch.testing.assert_close(torch.tensor(compiled["loss"]), torch.tensor(eager["loss"]), rtol=1e-5, atol=0)
    for side in ("model", "guide"):
        for name, value in eager[side].items():
            torch.testing.assert_close(compiled[side][name], value, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_data_in_memory_are_split_between_the_ranks_as_one_process_reads_the_global_batch(runs):
    """Under torchrun, data held in memory are dealt to the ranks: each reads half of every epoch, the halves
    disjoint, and the two ranks' t-th batches together are the t-th batch of one process with the global batch
    (the same order; the one datum of 1,001 left over is left out). Each rank's loss is the global one."""
    ranks = [_load(runs / "memory_two", rank) for rank in (0, 1)]
    one = _load(runs / "memory_one", 0)
    assert len(ranks[0]["reads"]) == len(ranks[1]["reads"]) == len(one["reads"])  # 3 epochs of 16 batches
    for first, second, whole in zip(ranks[0]["reads"], ranks[1]["reads"], one["reads"], strict=True):
        assert not set(first.tolist()) & set(second.tolist())
        assert set(first.tolist()) | set(second.tolist()) <= set(whole.tolist())
        assert len(first) == len(second) and len(whole) - 2 * len(first) in (0, 1)
    probe = len(one["reads"]) - 3 * 16  # train's look at a first batch reads the data where nothing else is scored
    epoch = torch.cat([torch.cat(ranks[r]["reads"][probe:probe + 16]) for r in (0, 1)])  # the first epoch
    assert len(epoch) == len(set(epoch.tolist())) == 1000
    _assert_same_parameters(ranks[0], ranks[1])
    assert ranks[0]["loss"] == ranks[1]["loss"]
    assert ranks[0]["loss"][0] > 1.02 * ranks[0]["loss"][-1]  # it learns
    # the same order and global batches; only the Monte Carlo draws differ (seed + rank)
    torch.testing.assert_close(torch.tensor(ranks[0]["loss"]), torch.tensor(one["loss"]), rtol=0.01, atol=0)


def test_ranks_score_each_epoch_alike_and_so_stop_early_together(runs):
    """Each rank scores the training head and the validation data with draws of its own: the scores are averaged
    over the ranks, so that every rank decides early stopping on the same numbers (a rank that stopped alone would
    leave the other waiting for it, or crash it: seen with patience 1 before the scores were averaged)."""
    ranks = [_load(runs / "memory_two", rank) for rank in (0, 1)]
    scores = [[{k: v for k, v in record.items() if k != "seconds"} for record in r["records"]] for r in ranks]
    assert scores[0] == scores[1]  # the same epochs (strictly: the same length) and the same numbers
    assert "val_elbo" in ranks[0]["records"][0] and "train_elbo" in ranks[0]["records"][0]
    _assert_same_parameters(ranks[0], ranks[1])


def test_before_the_group_is_joined_the_rank_is_torchruns(monkeypatch):
    """A stream built before train joins the process group (the tutorial's script) takes its rank from torchrun's
    environment, not 0 of 1: each rank reads its own shards from the first batch."""
    from pyrovae.process_group import is_main_process, rank, world_size

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (rank(), world_size(), is_main_process()) == (1, 2, False)
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun with one process: as without it
    assert (rank(), world_size()) == (0, 1)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert (rank(), world_size(), is_main_process()) == (0, 1, True)

"""Where this process stands in a ``torch.distributed`` process group (rank 0 of 1 without one).

Shared by the data layer (a :class:`~pyrovae.data.CellStream` reads its rank's shards) and training
(:mod:`pyrovae.infer.distributed`), so that neither imports the other.
"""

from __future__ import annotations

import os

import torch.distributed as dist


def is_distributed() -> bool:
    """Whether this process is one rank of an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def launched_by_torchrun() -> bool:
    """Whether ``torchrun`` started this process as one of several (its environment says so from the start, before
    the process group is joined)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def rank() -> int:
    """This process's rank: the process group's, or before it is joined the one ``torchrun`` gave (so that a stream
    built before ``train`` joins the group reads its own shards); 0 outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def world_size() -> int:
    """The number of ranks: the process group's, or before it is joined torchrun's; 1 outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def is_main_process() -> bool:
    return rank() == 0


__all__ = ["is_distributed", "is_main_process", "launched_by_torchrun", "rank", "world_size"]

"""Where this process stands in a ``torch.distributed`` process group (rank 0 of 1 without one).

Shared by the data layer (a :class:`~pyrovae.data.CellStream` reads its rank's shards) and training
(:mod:`pyrovae.infer.distributed`), so that neither imports the other.
"""

from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    """Whether this process is one rank of an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


__all__ = ["is_distributed", "is_main_process", "rank", "world_size"]

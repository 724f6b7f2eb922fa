"""Draws from a seed of their own, leaving the caller's generators as they were."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def initialised_cuda_devices() -> list[int]:
    """The CUDA devices whose generators a seeded block sets and restores: those started already (none on a
    machine without CUDA, and no CUDA context is started for them)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU generator, and those of the CUDA devices already started, seeded with
    ``seed``; every one of them is as it was after the block. ``torch.manual_seed`` is not used: on a machine whose
    CUDA is not started yet it would queue the seed for CUDA's start, and change the caller's later draws there."""
    devices = initialised_cuda_devices()
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for device in devices:
            torch.cuda.default_generators[device].manual_seed(seed)
        yield


__all__ = ["initialised_cuda_devices", "seeded"]

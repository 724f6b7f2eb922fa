"""Data-parallel training under ``torchrun`` with PyTorch DistributedDataParallel.

:func:`~pyrovae.infer.train` calls :func:`init_distributed`: under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE``
> 1 in the environment) it joins the process group (NCCL on GPUs, gloo on CPUs), left again when the process
exits, and trains on the rank's own device; otherwise nothing changes. DDP wraps the SVI objective of
:func:`~pyrovae.infer.training.objectives.make_objective`, a module that holds the model and guide and whose
forward is the loss, so it broadcasts their parameters from rank 0 at the start and averages gradients during
backward.
"""

from __future__ import annotations

import atexit
import datetime
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pyrovae.process_group import is_distributed, is_main_process, launched_by_torchrun, rank, world_size


def init_distributed(backend: str | None = None, timeout_s: float = 1800) -> bool:
    """Join the process group set up by ``torchrun`` (no-op when already joined or not launched by it).

    :param backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available, else gloo.
    :returns: whether this process trains as one of several ranks.
    """
    if not dist.is_available():
        return False
    if not dist.is_initialized() and launched_by_torchrun():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        # the group this call created is left at exit (a script that ends without destroy_process_group can
        # otherwise abort in the backend's teardown: "terminate called without an active exception")
        atexit.register(_leave_process_group)
    return is_distributed()


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device() -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` with CUDA, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def data_parallel(objective: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """The SVI objective (a module holding the model and guide, whose forward is the loss; see
    :func:`~pyrovae.infer.training.objectives.make_objective`) wrapped in DistributedDataParallel over its trained
    parameters.

    The wrapper broadcasts rank 0's parameters and buffers now, and averages gradients across ranks in every
    backward pass: with each rank's loss scaled by N / local batch, the average is the gradient of the ELBO
    estimated from the global batch, exactly as one process with that batch would compute it.
    """
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(objective, device_ids=device_ids)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks (the tensor itself when not distributed)."""
    if not is_distributed():
        return tensor
    device = tensor.device
    reduced = tensor.to(_backend_device(), copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.to(device)


def _backend_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors (and copies CUDA ones)."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_finite(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (so that all ranks skip or apply a step together)."""
    if not is_distributed():
        return flag
    value = torch.tensor(1.0 if flag else 0.0, device=_backend_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value)


def any_rank(flag: torch.Tensor) -> torch.Tensor:
    """A boolean tensor that holds where ``flag`` holds on any rank, computed on the device (no host round trip
    on NCCL; ``flag`` itself when not distributed)."""
    if not is_distributed():
        return flag
    value = flag.to(_backend_device(), torch.float32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.to(flag.device) > 0


def gather_objects(value) -> list:
    """``value`` from every rank, in rank order (``[value]`` when not distributed)."""
    if not is_distributed():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    if is_distributed():
        dist.barrier()


__all__ = [
    "all_finite",
    "all_reduce_sum",
    "barrier",
    "data_parallel",
    "gather_objects",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "launched_by_torchrun",
    "local_device",
    "rank",
    "world_size",
]

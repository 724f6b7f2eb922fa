"""Checkpoints written atomically (a crash mid-write never leaves a truncated file behind), and the training
checkpoint that resumes a run exactly."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from pyrovae.infer.history import History


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` with :func:`torch.save` to a temporary file beside ``path``, fsync it, then rename it
    over ``path`` (an atomic replace on POSIX and Windows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(path.name + ".*.tmp"):  # left by a writer killed mid-save
        stale.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location=None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, with a clear error for a damaged file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises several types for a damaged file
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); delete it to start afresh"
        ) from error


_CHECKPOINT_VERSION = 1


def rng_state() -> dict:
    """Every generator a training step draws from: torch (CPU and CUDA), Python's and numpy's."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainingCheckpoint:
    """The file from which an interrupted :func:`~pyrovae.infer.train` resumes as if it had never stopped.

    It holds the modules, the ``pyro.param`` leaves no module owns, the optimiser, the batch order's generator
    and epoch, every RNG state (one per rank in distributed training), the history and the early-stopping
    state; :meth:`save` writes it atomically (:func:`save_checkpoint`) and :meth:`restore` loads it back.
    """

    def __init__(self, path, modules: dict, optimizer, batches, store_params: dict) -> None:
        self.path = path
        self.modules, self.optimizer, self.batches, self.store_params = modules, optimizer, batches, store_params

    def exists(self) -> bool:
        return self.path is not None and os.path.exists(self.path)

    def save(self, epoch: int, history, stopping, rng_states) -> None:
        save_checkpoint(
            {
                "version": _CHECKPOINT_VERSION,
                "epoch": epoch,
                "modules": {name: m.state_dict() for name, m in self.modules.items()},
                "pyro_params": {name: p.detach() for name, p in self.store_params.items()},
                "optimizer": self.optimizer.state_dict(),
                "batches": self.batches.state_dict(),
                "rng": rng_states,
                "history": history.to_dict(),
                "best": stopping.state_dict(),
                "architecture": {name: repr(m) for name, m in self.modules.items()},
                "optimizer_class": type(self.optimizer).__name__,
            },
            self.path,
        )

    def restore(self, device, stopping, rank: int = 0):
        """Load the file into the modules, optimiser, batches, generators and ``stopping``; return
        ``(epoch, history)``: the epochs already done and their records."""
        saved = load_checkpoint(self.path, map_location=device)
        if saved.get("version") != _CHECKPOINT_VERSION or set(saved.get("modules", {})) != set(self.modules):
            raise ValueError(f"checkpoint {self.path} was not written by this training setup; delete it to restart")
        for name, module in self.modules.items():
            architecture = saved.get("architecture", {}).get(name)
            if architecture is not None and architecture != repr(module):
                mismatch = next((f"{a.strip()} (saved) against {b.strip()} (now)" for a, b in
                                 zip(architecture.splitlines(), repr(module).splitlines()) if a != b), "")
                raise ValueError(f"checkpoint {self.path} holds a {name} of another architecture: {mismatch}; "
                                 "delete the checkpoint to start afresh, or build the same model")
            try:
                module.load_state_dict(saved["modules"][name])
            except RuntimeError as error:
                raise ValueError(
                    f"checkpoint {self.path} holds a different {name} ({error}); delete it or fix the sizes"
                ) from error
        with torch.no_grad():
            for name, value in saved.get("pyro_params", {}).items():
                self.store_params[name].copy_(value)
        saved_optimizer = saved.get("optimizer_class", type(self.optimizer).__name__)
        if saved_optimizer != type(self.optimizer).__name__:
            raise ValueError(f"checkpoint {self.path} was trained with {saved_optimizer}, not "
                             f"{type(self.optimizer).__name__}; resume with the same optimiser, or delete it")
        self.optimizer.load_state_dict(saved["optimizer"])
        self.batches.load_state_dict(saved["batches"])
        rng = saved["rng"]
        if isinstance(rng, list):  # one state per rank; a run resumed with more ranks reseeds the new ones
            rng = rng[rank] if rank < len(rng) else None
        if rng is not None:
            set_rng_state(rng)
        stopping.load_state_dict(saved["best"])
        return saved["epoch"], History(**saved["history"])

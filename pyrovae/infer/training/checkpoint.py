"""The training checkpoint that resumes a run exactly and refuses a run with other settings, written and read
through the shared-file tools of :mod:`~pyrovae.infer.training.files` (re-exported here)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from pyrovae.infer.training.files import FileLock, atomic_write, damaged_record, save_with_checksums
from pyrovae.infer.training.history import History


class SettingsMismatch(ValueError):
    """A saved run (a checkpoint, a sweep's results) holds other settings than the run asked for: resuming it would
    return it as this one. ``differences`` says which, ``files`` what to delete to start again in the same place
    (an experiment script words its own advice from them)."""

    def __init__(self, message: str, differences: str = "", files: tuple = ()) -> None:
        super().__init__(message)
        self.differences, self.files = differences, tuple(str(f) for f in files)


class CheckpointInUse(RuntimeError):
    """Another live training run holds the checkpoint file."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` with :func:`torch.save` to ``path`` atomically (:func:`atomic_write`), with the CRC-32 of
    every record (also where ``torch.serialization.set_crc32_options(False)`` turned them off), so that
    :func:`load_checkpoint` can tell a file damaged since from the one written."""
    return atomic_write(path, lambda stream: save_with_checksums(state, stream))


def _numpy_globals() -> list:
    """What a checkpoint's numpy random state is rebuilt from (arrays, their dtypes and scalars): the only globals
    that loading with ``weights_only=True`` must be allowed beyond tensors and Python's containers."""
    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray
    dtypes = [type(np.dtype(kind)) for kind in (np.uint32, np.int64, np.float64, np.float32, np.bool_)]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]


def load_checkpoint(path: str | os.PathLike, map_location=None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` without running code from it (``torch.load`` with
    ``weights_only=True``: tensors, containers and numpy's arrays only), with a clear error for a damaged or foreign
    file (a record whose bytes no longer match their CRC-32 is named: :func:`damaged_record`)."""
    damaged = damaged_record(path)
    if damaged is not None:
        raise ValueError(f"checkpoint {path} is damaged: its record {damaged} no longer matches the checksum written "
                         "with it, so its tensors would load with other values; delete it to start afresh, or put "
                         "back a copy")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises several types for a damaged file
        raise ValueError(
            f"checkpoint {path} cannot be read ({load_error(error)}); it is damaged, or holds objects a checkpoint "
            "never holds (a file crafted to run code is refused, never run); delete it to start afresh"
        ) from None


def load_error(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line: the error's type and first line, without
    torch's advice to load it with ``weights_only=False`` (which would run a crafted file's code)."""
    line = str(error).splitlines()[0] if str(error) else ""
    unsafe = not line or "weights_only" in line or "Weights only" in line
    return type(error).__name__ if unsafe else f"{type(error).__name__}: {line}"


_CHECKPOINT_VERSION = 1
# optimiser arguments that choose an implementation, not the run (fused is decided by the device)
_OPTIMIZER_MECHANICS = {"params", "fused", "foreach", "capturable", "differentiable"}


def _same(a, b) -> bool:
    """Equality of settings that may be tensors, tuples or floats."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        try:
            return torch.equal(torch.as_tensor(a).double().cpu(), torch.as_tensor(b).double().cpu())
        except (TypeError, RuntimeError):
            return False
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


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


def _module_settings(modules: dict) -> dict:
    """The numbers, strings and flags a pyrovae model or guide keeps as public attributes (``"guide.min_scale"``,
    ...), but not its mode (``training``); a user's own modules are left to their ``repr``."""
    return {f"{name}.{attribute}": value for name, module in modules.items()
            if type(module).__module__.startswith("pyrovae.")
            for attribute, value in vars(module).items()
            if not attribute.startswith("_") and attribute != "training" and isinstance(value, (bool, int, float, str))}


class TrainingCheckpoint:
    """The file from which an interrupted :func:`~pyrovae.infer.train` resumes as if it had never stopped.

    It holds the modules, the ``pyro.param`` leaves no module owns, the optimiser, the batch order's generator
    and epoch, every RNG state (one per rank in distributed training), the history and the early-stopping
    state; :meth:`save` writes it atomically (:func:`save_checkpoint`) and :meth:`restore` loads it back.

    ``settings`` (what ``train`` was asked for: batch size, the data's size and fingerprint, objective, KL weight,
    seed, ...) are saved too, with the settings of pyrovae's modules that their ``repr`` does not show (a guide's
    ``min_scale``, a GMVAE guide's ``classification_weight``); :meth:`restore` refuses a file whose settings or
    optimiser arguments (the learning rate among them) differ from this run's, naming each difference, instead of
    continuing another run in silence (a file saved before a setting was recorded is not checked for it).
    """

    def __init__(self, path, modules: dict, optimizer, batches, store_params: dict, settings: dict | None = None,
                 hints: dict | None = None) -> None:
        self.check_path(path)
        self.path = path
        self.modules, self.optimizer, self.batches, self.store_params = modules, optimizer, batches, store_params
        self.settings = {**_module_settings(modules), **dict(settings or {})}
        self.hints = dict(hints or {})  # setting -> why it may differ though the user did not change it
        self.first_loss = None  # the run's first step's loss per datum, the scale of divergence (restored too)

    @staticmethod
    def check_path(path) -> None:
        """Refuse a folder given as the checkpoint (a file's path is meant)."""
        if path is not None and os.path.isdir(path):
            raise ValueError(f"checkpoint {path} is a folder; give a file: "
                             f"checkpoint={os.path.join(path, 'run.pt')!r}")

    def exists(self) -> bool:
        return self.path is not None and os.path.exists(self.path)

    def save(self, epoch: int, history, stopping, rng_states) -> None:
        """Write the file after epoch ``epoch``, with :attr:`first_loss`, which a resumed run goes on measuring
        divergence against (a resumed run stops where an uninterrupted one does)."""
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
                "settings": self.settings,
                "first_loss": self.first_loss,
            },
            self.path,
        )

    def _check_settings(self, saved: dict) -> None:
        """Refuse to resume a run whose settings (learning rate and other optimiser arguments, batch size, the data,
        objective, KL weight, seed, ...) differ from the saved run's: loading would silently continue the old run
        and return it as if it were this one."""
        differences = [
            f"{name}={saved_value!r} there, {self.settings[name]!r} here"
            + (f" ({self.hints[name]})" if name in self.hints else "")
            for name, saved_value in saved.get("settings", {}).items()
            if name in self.settings and not _same(saved_value, self.settings[name])
        ]
        now = self.optimizer.state_dict()["param_groups"]
        for index, (then, group) in enumerate(zip(saved["optimizer"].get("param_groups", []), now)):
            for name in sorted(set(then) & set(group) - _OPTIMIZER_MECHANICS):
                if not _same(then[name], group[name]):
                    where = f" (parameter group {index})" if len(now) > 1 else ""
                    differences.append(f"optimiser {name}={then[name]!r} there, {group[name]!r} here{where}")
        if differences:
            raise SettingsMismatch(
                f"checkpoint {self.path} holds a run with other settings: {'; '.join(differences)}. Resuming would "
                "continue that run and return it as this one: resume with the same settings, or give this run a "
                "new checkpoint path (or delete the file) to start afresh", "; ".join(differences), (self.path,))

    def restore(self, device, stopping, rank: int = 0):
        """Load the file into the modules, optimiser, batches, generators and ``stopping``; return
        ``(epoch, history)``: the epochs already done and their records."""
        saved = load_checkpoint(self.path, map_location=device)
        if saved.get("version") != _CHECKPOINT_VERSION or set(saved.get("modules", {})) != set(self.modules):
            raise ValueError(f"checkpoint {self.path} was not written by this training setup; delete it to restart")
        missing = sorted({"optimizer", "batches", "rng", "best", "epoch", "history"} - set(saved))
        if missing:
            raise ValueError(f"checkpoint {self.path} lacks {', '.join(missing)}: it was not written by train (or is "
                             "damaged); delete it to restart")
        for name, module in self.modules.items():  # every check before anything is loaded: a refusal changes nothing
            architecture = saved.get("architecture", {}).get(name)
            if architecture is not None and architecture != repr(module):
                mismatch = next((f"{a.strip()} (saved) against {b.strip()} (now)" for a, b in
                                 zip(architecture.splitlines(), repr(module).splitlines()) if a != b), "")
                raise SettingsMismatch(f"checkpoint {self.path} holds a {name} of another architecture: {mismatch}; "
                                       "delete the checkpoint to start afresh, or build the same model",
                                       f"the {name}'s architecture: {mismatch}", (self.path,))
        saved_optimizer = saved.get("optimizer_class", type(self.optimizer).__name__)
        if saved_optimizer != type(self.optimizer).__name__:
            raise SettingsMismatch(f"checkpoint {self.path} was trained with {saved_optimizer}, not "
                                   f"{type(self.optimizer).__name__}; resume with the same optimiser, or delete it",
                                   f"the optimiser {saved_optimizer} there, {type(self.optimizer).__name__} here",
                                   (self.path,))
        self._check_settings(saved)
        kept = {name: {key: value.clone() for key, value in module.state_dict().items()}
                for name, module in self.modules.items()}
        for name, module in self.modules.items():
            try:
                module.load_state_dict(saved["modules"][name])
            except RuntimeError as error:  # a module of other sizes: put back what was loaded before it
                for other, loaded in self.modules.items():
                    loaded.load_state_dict(kept[other])
                raise SettingsMismatch(
                    f"checkpoint {self.path} holds a different {name} ({error}); delete it or fix the sizes",
                    f"the {name}'s sizes", (self.path,)) from error
        with torch.no_grad():
            for name, value in saved.get("pyro_params", {}).items():
                self.store_params[name].copy_(value)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.batches.load_state_dict(saved["batches"])
        rng = saved["rng"]
        if isinstance(rng, list):  # one state per rank; a run resumed with more ranks reseeds the new ones
            rng = rng[rank] if rank < len(rng) else None
        if rng is not None:
            set_rng_state(rng)
        stopping.load_state_dict(saved["best"])
        self.first_loss = saved.get("first_loss")  # None in a file of an older version: the resumed run's first step
        return saved["epoch"], History(**saved["history"])


__all__ = [  # the shared-file tools re-exported: the modules that took them from here before files.py
    "CheckpointInUse", "FileLock", "SettingsMismatch", "TrainingCheckpoint", "atomic_write", "damaged_record",
    "load_checkpoint", "load_error", "rng_state", "save_checkpoint", "save_with_checksums", "set_rng_state",
]

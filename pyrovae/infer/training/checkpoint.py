"""Files that two jobs may share without losing anything: atomic writes (a crash mid-write never leaves a truncated
file behind, and writers never remove each other's temporary files), advisory locks, and the training checkpoint that
resumes a run exactly and refuses a run with other settings."""

from __future__ import annotations

import os
import random
import socket
import stat
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pyrovae.infer.training.history import History

try:  # POSIX advisory locks; where there are none (Windows) a lock is a no-op and says so in its docstring
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None

_STALE_AFTER_S = 24 * 3600  # another host's temporary file older than this is a crash's leftover


def _writer() -> str:
    """This writer's tag in temporary names: host and process (read at each write: a fork has another pid)."""
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:40] or "host"
    return f"{host}~{os.getpid()}"


def _is_own(temporary: Path, prefix: str) -> bool:
    """Whether a ``prefix*.tmp`` file is a temporary of this path: ``<name>.<host>~<pid>.<random>.tmp``, or an
    unnamed ``<name>.<random>.tmp`` of an older version. Another path that starts with this one's name (``run.pt.v2``
    beside ``run.pt``) has temporaries of more parts, never judged here."""
    parts = temporary.name[len(prefix):-len(".tmp")].split(".")
    return len(parts) == 1 or len(parts) == 2 and "~" in parts[0]


def _is_stale(temporary: Path, prefix: str) -> bool:
    """Whether a temporary file beside the target was left by a writer that is gone: one of this host whose
    process no longer runs, one without a writer's name (every writer names itself: an older version's, or a
    kill's leftover), or another host's untouched for a day."""
    writer = temporary.name[len(prefix):].split(".", 1)[0]
    host, _, pid = writer.rpartition("~")
    if not (host and pid.isdigit()):
        return True
    if host == _writer().rpartition("~")[0]:
        if os.name != "posix":  # no cheap liveness test: by age
            return _older_than(temporary, _STALE_AFTER_S)
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except OSError:  # alive, under another user
            return False
        return False
    return _older_than(temporary, _STALE_AFTER_S)


def _older_than(file: Path, seconds: float) -> bool:
    try:
        return time.time() - file.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def _umask() -> int:
    """The process's umask, read without changing it where the platform says (Linux), else the usual 022."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0o022


def _file_mode(path: Path) -> int:
    """The mode a new version of ``path`` gets: the existing file's, else what ``open(path, "w")`` would give."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable, binary: bool = True) -> Path:
    """Write ``path`` atomically: ``write(stream)`` fills a temporary file beside it, which is flushed, fsynced and
    renamed over ``path`` (an atomic replace on POSIX and Windows). Readers see the old file or the new one, never
    a part; a crash leaves the old file.

    The file gets the mode a plain ``open(path, "w")`` would give it (an existing file's, else 0666 less the umask),
    not the private 0600 of a temporary file.

    Each writer's temporary file carries its host and process id and a random part, so two jobs writing the same
    path never touch each other's; the last rename wins. Temporary files of writers that are gone (a process of
    this host that no longer runs, an unnamed one, another host's left for a day) are removed. Writers that must
    not overwrite each other take a :class:`FileLock` around reading, merging and writing (as
    :class:`~pyrovae.sweep.Sweep` does).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = path.name + "."
    for temporary in path.parent.glob(prefix + "*.tmp"):
        if _is_own(temporary, prefix) and _is_stale(temporary, prefix):
            temporary.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f"{prefix}{_writer()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb" if binary else "w") as stream:
            write(stream)
            stream.flush()
            os.chmod(stream.fileno() if os.chmod in os.supports_fd else temporary, _file_mode(path))
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


class FileLock:
    """An exclusive advisory lock (``fcntl.flock``) on the file ``path + ".lock"``, beside ``path``, for jobs that
    share ``path``: two processes, or two objects in one process. The lock file holds the holder's host and pid
    (for the message of a job that finds it taken) and stays behind, empty of meaning once released; the lock
    itself ends with the process. Where the platform has no ``flock`` (Windows) the lock is a no-op.

    ::

        with FileLock(results):   # waits for the other job
            ... read, merge, write ...
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(str(path) + ".lock")
        self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting for it when ``blocking``); False when another job holds it and not ``blocking``."""
        if self._handle is not None:
            raise RuntimeError(f"{self.path} is already held by this FileLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                handle.close()
                return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle
        return True

    def holder(self) -> str:
        """Who holds (or last held) the lock, as written in the lock file."""
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._handle is not None:
            if fcntl is not None:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


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


def save_with_checksums(obj, stream) -> None:
    """:func:`torch.save` of ``obj`` to ``stream`` with the CRC-32 of every record (:func:`damaged_record`)."""
    serialization = torch.serialization
    if not hasattr(serialization, "set_crc32_options"):  # torch < 2.6 always writes them
        torch.save(obj, stream)
        return
    computed = serialization.get_crc32_options()
    try:
        serialization.set_crc32_options(True)
        torch.save(obj, stream)
    finally:
        serialization.set_crc32_options(computed)


def damaged_record(path: str | os.PathLike) -> str | None:
    """The first record of a file written by :func:`torch.save` whose bytes no longer match the CRC-32 written with
    them (a bit flipped on a disk, a copy gone wrong), or None: every record matches, or the file is not a zip
    archive (``torch.load`` then says what it is). ``torch.load`` reads such a record without a word: its tensors come
    back with other values. A record written without a checksum (CRC-32 0, as ``set_crc32_options(False)`` writes
    them, or empty) is not checked."""
    try:
        with zipfile.ZipFile(path) as archive:
            for record in archive.infolist():
                if record.CRC == 0:
                    continue
                try:
                    with archive.open(record) as stream:  # zipfile compares the CRC-32 at the record's end
                        while stream.read(1 << 22):
                            pass
                except (zipfile.BadZipFile, zlib.error, EOFError):
                    return record.filename
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError):
        return None
    return None


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

    def __init__(self, path, modules: dict, optimizer, batches, store_params: dict, settings: dict | None = None
                 ) -> None:
        self.check_path(path)
        self.path = path
        self.modules, self.optimizer, self.batches, self.store_params = modules, optimizer, batches, store_params
        self.settings = {**_module_settings(modules), **dict(settings or {})}
        self.first_loss = None  # the run's first step's loss per datum, the scale of divergence (restored too)

    @staticmethod
    def check_path(path) -> None:
        """Refuse a folder given as the checkpoint (a file's path is meant)."""
        if path is not None and os.path.isdir(path):
            raise ValueError(f"checkpoint {path} is a folder; give a file: "
                             f"checkpoint={os.path.join(path, 'run.pt')!r}")

    def exists(self) -> bool:
        return self.path is not None and os.path.exists(self.path)

    def save(self, epoch: int, history, stopping, rng_states, first_loss: float | None = None) -> None:
        """Write the file after epoch ``epoch``; ``first_loss`` is the run's first step's loss per datum, which a
        resumed run goes on measuring divergence against (a resumed run stops where an uninterrupted one does)."""
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
                "first_loss": first_loss,
            },
            self.path,
        )

    def _check_settings(self, saved: dict) -> None:
        """Refuse to resume a run whose settings (learning rate and other optimiser arguments, batch size, the data,
        objective, KL weight, seed, ...) differ from the saved run's: loading would silently continue the old run
        and return it as if it were this one."""
        differences = [
            f"{name}={saved_value!r} there, {self.settings[name]!r} here"
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

"""Files that two jobs may share without losing anything: atomic writes (a crash mid-write never leaves a truncated
file behind, and writers never remove each other's temporary files), advisory locks, and files written by
``torch.save`` whose records carry checksums that say when their bytes changed on the disk since."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

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


__all__ = ["FileLock", "atomic_write", "damaged_record", "save_with_checksums"]

"""A resumable sweep over configurations: finished runs are kept, an interrupted one resumes, nothing is redone.

::

    sweep = Sweep("results/grid.json")
    for hidden in (128, 256):
        for latent in (5, 10):
            result = sweep.run(f"h{hidden}-z{latent}", fit_and_score, hidden, latent)

``run(key, fn, *args)`` returns the stored result of a finished ``key``, or calls ``fn(*args)`` and stores what
it returns (JSON-serialisable) before returning it. The file is rewritten atomically after every run, so a kill never
loses a finished result; ``fn`` itself resumes a half-finished run from its own checkpoint
(:meth:`checkpoint_path` gives one per key).

Several jobs may share one results file (two processes, or two ``Sweep`` objects in one): each write takes a lock
beside the file (``results.json.lock``), reads the file again and merges, so every job's finished runs are kept,
and a run that another job has finished meanwhile is not run again. A job claims a key while it runs it (a lock in
``claims/`` beside the file): another job that reaches the same key waits for it and takes its result, so nothing
is run twice (two jobs that should run different keys at once give each its own keys, as ``svae_mnist.py --jobs``
does).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from pyrovae.infer.training.checkpoint import SettingsMismatch
from pyrovae.infer.training.files import FileLock, atomic_write

logger = logging.getLogger(__name__)


def _check_key(key) -> None:
    if not isinstance(key, str):
        raise TypeError(f"sweep keys are strings (JSON object keys), got {type(key).__name__} {key!r}")


class Sweep:
    """The results of a sweep, by key, in one JSON file that several jobs may share.

    :param path: the results file (created with its folder on the first finished run).
    :param dict settings: what every run of the sweep shares and its results depend on (a script's options: hidden
        sizes, learning rate, ...), JSON-able. They are kept beside the results (``<path>.settings.json``), and a
        sweep whose file holds results of other settings is refused, naming the differences: a changed setting
        must not be answered with results of the old one. A file written without settings takes these.
    :param retired: names of settings an older version of the sweep kept that its results do not depend on (a
        script's option that only a final step reads): not compared, so the older file's results are kept.

    ``results`` (and ``key in sweep``, ``sweep[key]``) hold the file as last read: at construction, and at every
    :meth:`run` (before it decides whether ``key`` is done, and again when it stores a result); :meth:`reload`
    reads it now.
    """

    def __init__(self, path: str | os.PathLike, settings: dict | None = None, *, retired=()) -> None:
        self.path = Path(path)
        self._lock = FileLock(self.path)
        self.results: dict = self._read()
        if settings is not None:
            self._check_settings(json.loads(json.dumps(settings)), set(retired))

    def _check_settings(self, settings: dict, retired: set) -> None:
        """Record ``settings`` beside the results, or refuse results of other settings (``retired``: names an older
        settings file may hold that the results no longer depend on, not compared)."""
        path = self.path.with_name(self.path.name + ".settings.json")
        with self._lock:
            if path.exists():  # (before any result too: another job of the sweep may be on its first run)
                found = {k: v for k, v in json.loads(path.read_text()).items() if k not in retired}
                differ = sorted(set(found) | set(settings), key=str)
                differ = [key for key in differ if found.get(key) != settings.get(key)]
                if differ:
                    differences = ", ".join(f"{key} {found.get(key)!r} there, {settings.get(key)!r} now"
                                            for key in differ)
                    raise SettingsMismatch(
                        f"{self.path} holds results of other settings: {differences}; give the sweep another "
                        f"results file (a script: another --out), or delete it (and {path.name}) to start again",
                        differences, (self.path, path))
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda stream: json.dump(settings, stream, indent=1), binary=False)

    def _read(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            results = json.loads(self.path.read_text())
        except ValueError as error:
            raise ValueError(f"sweep results {self.path} are not valid JSON ({error}); fix or move the file") from error
        if not isinstance(results, dict):
            raise ValueError(f"sweep results {self.path} hold a {type(results).__name__}, not an object of results "
                             "by key; give the sweep another file")
        return results

    def reload(self) -> dict:
        """Read the file again (other jobs' finished runs included) and return the results."""
        self.results.update(self._read())
        return self.results

    def __contains__(self, key: str) -> bool:
        return key in self.results

    def __getitem__(self, key: str):
        return self.results[key]

    def checkpoint_path(self, key: str) -> Path:
        """A checkpoint file for run ``key`` beside the results (for ``train(..., checkpoint=...)``), one per key."""
        _check_key(key)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:80]
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]  # keys that read alike still get their own file
        return self.path.parent / "checkpoints" / f"{safe}-{digest}.pt"

    def run(self, key: str, fn: Callable[..., object], *args, verbose: bool = True, **kwargs):
        """The result of run ``key``: stored (by this job or another sharing the file), or computed by
        ``fn(*args, **kwargs)`` and stored now; a key another job is running is waited for and its result returned.
        Storing merges under the file's lock, so other jobs' results are kept; where another job stored ``key``
        while this one computed it (a job of an older version, which claimed nothing), the first stored result is
        kept and returned. With ``verbose``, each of these is said on the ``pyrovae.sweep`` logger (at INFO for a stored
        run, WARNING for a result another job stored first).

        :raises TypeError: for a key that is not a string, or a result that JSON cannot hold (convert tensors
            and numpy numbers with ``float()`` / ``.tolist()``); nothing is stored then.
        """
        _check_key(key)
        self.reload()
        if key in self.results:
            if verbose:
                logger.info("%s: done before, result kept", key)
            return self.results[key]
        with FileLock(self._claim_path(key)):  # a job running this key now is waited for, not run beside
            self.reload()
            if key in self.results:
                if verbose:
                    logger.info("%s: done by another job meanwhile, its result kept", key)
                return self.results[key]
            return self._computed(key, fn, args, kwargs, verbose)

    def _claim_path(self, key: str) -> Path:
        checkpoint = self.checkpoint_path(key)
        return self.path.parent / "claims" / checkpoint.stem

    def _computed(self, key: str, fn: Callable, args: tuple, kwargs: dict, verbose: bool):
        result = fn(*args, **kwargs)
        try:
            json.dumps(result)
        except (TypeError, ValueError) as error:
            raise TypeError(f"the result of sweep run {key!r} cannot be stored as JSON ({error}); return plain "
                            "numbers, strings, lists and dicts (float(x), tensor.tolist())") from error
        with self._lock:
            stored = self._read()
            if key in stored and verbose:
                logger.warning("%s: another job stored it first; its result is kept", key)
            merged = {**self.results, **stored}
            merged.setdefault(key, result)
            atomic_write(self.path, lambda stream: json.dump(merged, stream, indent=1), binary=False)
        self.results = merged
        return merged[key]


__all__ = ["Sweep"]

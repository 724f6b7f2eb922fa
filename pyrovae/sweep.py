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
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _check_key(key) -> None:
    if not isinstance(key, str):
        raise TypeError(f"sweep keys are strings (JSON object keys), got {type(key).__name__} {key!r}")


class Sweep:
    """The results of a sweep, by key, in one JSON file.

    :param path: the results file (created with its folder on the first finished run).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.results: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

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
        """The result of run ``key``: stored, or computed by ``fn(*args, **kwargs)`` and stored now.

        :raises TypeError: for a key that is not a string, or a result that JSON cannot hold (convert tensors
            and numpy numbers with ``float()`` / ``.tolist()``); nothing is stored then.
        """
        _check_key(key)
        if key in self.results:
            if verbose:
                print(f"{key}: done before, result kept")
            return self.results[key]
        result = fn(*args, **kwargs)
        try:
            json.dumps(result)
        except (TypeError, ValueError) as error:
            raise TypeError(f"the result of sweep run {key!r} cannot be stored as JSON ({error}); return plain "
                            "numbers, strings, lists and dicts (float(x), tensor.tolist())") from error
        self.results[key] = result
        self._write()
        return result

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump(self.results, stream, indent=1)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise


__all__ = ["Sweep"]

"""Checkpoints written atomically: a crash mid-write never leaves a truncated file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` with :func:`torch.save` to a temporary file beside ``path``, fsync it, then rename it
    over ``path`` (an atomic replace on POSIX and Windows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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

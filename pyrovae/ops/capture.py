"""Whether the code running is being captured as a graph (``train(compile=True)``), for the few places that take a
faster path whose shapes or branches depend on the data (a graph captured with fixed shapes cannot hold those, and
would keep the branches of the batch it was captured on)."""

from __future__ import annotations

import contextlib
import contextvars

_CAPTURING = contextvars.ContextVar("pyrovae_capturing", default=False)


def capturing() -> bool:
    """True while :func:`capture_mode` is active: take the path whose shapes do not depend on values."""
    return _CAPTURING.get()


@contextlib.contextmanager
def capture_mode():
    token = _CAPTURING.set(True)
    try:
        yield
    finally:
        _CAPTURING.reset(token)


__all__ = ["capture_mode", "capturing"]

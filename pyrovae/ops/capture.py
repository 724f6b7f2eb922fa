"""Whether the code running is being captured as a graph (``train(compile=True)``), for the few places that take a
faster path whose shapes or branches depend on the data (a graph captured with fixed shapes cannot hold those, and
would keep the branches of the batch it was captured on)."""

from __future__ import annotations

import contextlib
import contextvars

import torch

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


def compile_function(function, **options):
    """``torch.compile(function, **options)``, without its side effect on validation: the first ``torch.compile``
    of a process turns off ``torch.distributions``' argument checks for the rest of it
    (``Distribution.set_default_validate_args(False)``, in torch._dynamo's one-time patching), behind Pyro's back,
    which still reports its validation on. The default is put back as it was."""
    from torch.distributions import Distribution

    validate = Distribution._validate_args
    try:
        return torch.compile(function, **options)
    finally:
        Distribution.set_default_validate_args(validate)


__all__ = ["capture_mode", "capturing", "compile_function"]

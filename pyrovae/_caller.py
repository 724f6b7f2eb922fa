"""Warnings pointed at the user's line, wherever in the library they are raised."""

from __future__ import annotations

import sys
import warnings


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` pointed at the first caller outside pyrovae (and the wrappers of its decorators, torch's
    ``no_grad`` and contextlib's): a fixed stacklevel points into the library wherever the call comes through another
    of its functions (``log_likelihood`` under ``seed=`` re-enters itself, ``log_likelihood_in_parts`` calls it per
    part, ``auto`` calls the refined proposals and BDMC)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and _wrapping(frame.f_globals.get("__name__", "")):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _wrapping(module: str) -> bool:
    return module.startswith(("pyrovae.", "torch.utils._contextlib")) or module == "contextlib"

"""Checks of the numbers a user passes to ``train`` and ``log_likelihood``: each bad value is named with what was
expected, before any work is done."""

from __future__ import annotations

import math

import torch


def check_integer(name: str, value, minimum: int, allow_none: bool = False) -> None:
    """``value`` is an integer >= ``minimum`` (or None when allowed); bools and floats such as 2.5 are refused."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def check_number(name: str, value, minimum: float = 0.0, strict: bool = False) -> None:
    """``value`` is a finite real number >= ``minimum`` (> when ``strict``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum:g}, got {value!r}")


def check_device(device: torch.device) -> None:
    """A CUDA device that this machine has."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} was asked for, but no CUDA device is available; use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={str(device)!r} was asked for, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")


def floating_dtype(*modules) -> torch.dtype | None:
    """The dtype of the first floating-point parameter of ``modules`` (None if they have none)."""
    for module in modules:
        if isinstance(module, torch.nn.Module):
            for tensor in module.parameters():
                if tensor.is_floating_point():
                    return tensor.dtype
    return None


__all__ = ["check_device", "check_integer", "check_number", "floating_dtype"]

"""Checks of the numbers a user passes to ``train`` and ``log_likelihood``: each bad value is named with what was
expected, before any work is done."""

from __future__ import annotations

import math
import numbers

import torch


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a float or string where an integer or a number was expected). A TypeError,
    and a ValueError too, as the checks raised before."""


def check_integer(name: str, value, minimum: int, allow_none: bool = False, maximum: int | None = None) -> None:
    """``value`` is an integer >= ``minimum`` (and <= ``maximum``; or None when allowed).

    :raises ArgumentTypeError: for a value that is not an integer (bools and floats such as 2.5 included).
    :raises ValueError: for an integer out of range.
    """
    if value is None and allow_none:
        return
    expected = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
    expected += " or None" if allow_none else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def check_number(name: str, value, minimum: float = 0.0, strict: bool = False) -> None:
    """``value`` is a finite real number >= ``minimum`` (> when ``strict``).

    :raises ArgumentTypeError: for a value that is not a real number (a string, a tensor, a bool).
    :raises ValueError: for a number out of range, NaN or infinite.
    """
    relation = ">" if strict else ">="
    expected = f"a finite number {relation} {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def check_seed(seed) -> None:
    """A seed for ``pyro.set_rng_seed``: None, or an integer in 0..2**32 - 1 (numpy's range)."""
    check_integer("seed", seed, 0, allow_none=True, maximum=2**32 - 1)


def learning_rate(optim, lr: float | None) -> float:
    """The learning rate that ``lr`` gives the default optimiser (Adam; 1e-3 when None) or a torch optimiser class.

    :raises ValueError: where ``optim`` sets its own learning rate (a ``pyro.optim`` optimiser, or a function of
        the parameters) and ``lr`` asks for another, which it would ignore.
    """
    if lr is None:
        return DEFAULT_LR
    check_number("lr", lr)
    if optim is None or (isinstance(optim, type) and issubclass(optim, torch.optim.Optimizer)):
        return float(lr)
    own = getattr(optim, "pt_optim_args", None)
    if isinstance(own, dict):  # a pyro.optim optimiser: its dict holds the rate it uses
        if own.get("lr") == lr:
            return float(lr)
        where = f"its own lr={own['lr']!r}" if "lr" in own else "no lr, so torch's default"
        raise ValueError(
            f"optim={type(optim).__name__}({own}) has {where}, and lr={lr!r} was also given, which it would ignore; "
            f"give the learning rate in one place: in optim's arguments ({{'lr': {lr!r}}}), or lr alone"
        )
    raise ValueError(
        f"optim={getattr(optim, '__name__', type(optim).__name__)} builds the optimiser itself, so lr={lr!r} would be "
        "ignored; set the learning rate inside optim, or leave lr unset"
    )


DEFAULT_LR = 1e-3


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that this machine has: a name torch does not know (``"gpu"``) or a backend
    this build or machine lacks (``"mps"`` here, ``"cuda"`` without a GPU) is a ValueError naming the choices."""
    if not isinstance(device, torch.device):
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device={device!r} is not a device name: use 'cpu', 'cuda' or 'cuda:N' (the N-th "
                             "GPU)") from None
    if device.type not in ("cpu", "cuda"):  # mps, xpu, ...: a backend this build may lack
        available = (torch.backends.mps.is_available if device.type == "mps"
                     else getattr(getattr(torch, device.type, None), "is_available", None))
        if available is None or not available():
            raise ValueError(f"device={str(device)!r} was asked for, but this torch build or machine has no "
                             f"{device.type!r} device; use device='cpu'"
                             + (" or 'cuda'" if torch.cuda.is_available() else ""))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} was asked for, but no CUDA device is available; use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={str(device)!r} was asked for, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def floating_dtype(*modules) -> torch.dtype | None:
    """The dtype of the first floating-point parameter of ``modules`` (None if they have none)."""
    for module in modules:
        if isinstance(module, torch.nn.Module):
            for tensor in module.parameters():
                if tensor.is_floating_point():
                    return tensor.dtype
    return None


__all__ = [
    "ArgumentTypeError",
    "DEFAULT_LR",
    "check_device",
    "check_integer",
    "check_number",
    "check_seed",
    "floating_dtype",
    "learning_rate",
]

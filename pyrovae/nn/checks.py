"""Checks of what models, guides and trunks are given: construction numbers, and the data a call receives.

One helper per kind of argument, shared by every constructor (models, guides, trunks, covariates), so that a
size or a scale is refused the same way everywhere, with its owner and name in the message, before any network
is built. The data checks split by cost: :func:`check_batch` (shape, dtype, device: no tensor is read) runs on
every untraced call; :func:`check_values` (NaN, the likelihood's support: a host round trip) runs only while
Pyro's validation is on (``pyro.enable_validation``, on by default) and only once per data tensor, so that a
loop of ``svi.step(x)`` on the same ``x`` reads it once and ``train`` (which validates each batch on its own and
switches validation off inside its steps) pays nothing.
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Callable, Sequence

import torch
from pyro.infer.util import is_validation_enabled
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.runtime import _PYRO_STACK


def _kind(value) -> str:
    return type(value).__name__


def check_int(owner: str, name: str, value, minimum: int = 1) -> int:
    """``value`` as an ``int`` when it is an integer (Python, numpy) >= ``minimum``; floats such as 784.5 or
    784.0, strings and bools are refused with a ValueError naming ``owner`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = ""
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            hint = f"; pass the number, {value.strip()}, not the string"
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            hint = "; pass an int (e.g. int(...) of a size computed by division)"
        elif isinstance(value, torch.Tensor):
            hint = "; pass a Python int (e.g. x.shape[1], or int(tensor))"
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r} ({_kind(value)}){hint}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_real(owner: str, name: str, value, minimum: float = 0.0, *, strict: bool = True,
               maximum: float | None = None) -> float:
    """``value`` as a ``float`` when it is a finite real number > ``minimum`` (>= unless ``strict``) and, with
    ``maximum``, < ``maximum``; otherwise a ValueError naming ``owner``, ``name`` and the range."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > minimum if strict else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum
    if not ok:
        low = f"{'>' if strict else '>='} {minimum:g}"
        high = f" and < {maximum:g}" if maximum is not None else ""
        raise ValueError(f"{owner}: {name} must be a finite number {low}{high}, got {value!r}")
    return float(value)


def check_widths(owner: str, hidden, name: str = "hidden", allow_empty: bool = True) -> tuple[int, ...]:
    """Hidden widths as a tuple of positive ints (a single int is one layer); the empty tuple (a linear map) only
    with ``allow_empty``."""
    if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
        hidden = (hidden,)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ValueError(f"{owner}: {name} must be a sequence of positive integer widths such as (400,) or "
                         f"(256, 128), got {hidden!r}")
    widths = tuple(check_int(owner, f"{name}[{i}]", width) for i, width in enumerate(hidden))
    if not widths and not allow_empty:
        raise ValueError(f"{owner}: {name} needs at least one layer, got {hidden!r}")
    return widths


def check_dropout(owner: str, dropout) -> float:
    """A dropout probability in [0, 1)."""
    return check_real(owner, "dropout", dropout, 0.0, strict=False, maximum=1.0)


def check_name(owner: str, name) -> str | None:
    """A module's name in Pyro's param store: None (derived from the class) or a non-empty string without
    Pyro's divider ``$$$``."""
    if name is None:
        return None
    if not isinstance(name, str) or not name or "$$$" in name:
        raise ValueError(f"{owner}: name must be a non-empty string without '$$$' (it prefixes the module's "
                         f"parameter names in Pyro's param store), got {name!r}")
    return name


def check_shape(x, x_dim: int, who: str) -> None:
    """Raise a TypeError or ValueError, with the fix, when ``x`` is not a non-empty ``(batch, x_dim)`` tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} expected the data x as a torch.Tensor of shape (batch, {x_dim}), got "
                        f"{_kind(x)}; convert it with torch.as_tensor(x, dtype=torch.float32)")
    if x.dim() != 2 or x.shape[-1] != x_dim:
        if x.dim() == 1 and x.shape[0] == x_dim:
            fix = "a single datum: add a batch dimension with x.unsqueeze(0)"
        elif x.dim() > 2 and x.shape[-1] == x_dim:
            fix = f"one datum per row: x.reshape(-1, {x_dim})"
        elif x.dim() > 2 and math.prod(x.shape[1:]) == x_dim:
            fix = "flatten each datum into a vector with x.flatten(1)"
        else:
            fix = f"check x_dim (the module was built for {x_dim} features)"
        raise ValueError(f"{who} expected data of shape (batch, {x_dim}), got {tuple(x.shape)}: {fix}")
    if x.shape[0] == 0:
        raise ValueError(f"{who} was given an empty batch, of shape {tuple(x.shape)}: pass at least one datum (an "
                         "empty selection or index list gives none)")


def check_batch(x, x_dim: int, anchor: torch.Tensor | None, who: str) -> None:
    """Raise a TypeError or ValueError, with the fix, when ``x`` is not a ``(batch, x_dim)`` floating tensor of
    the module's dtype and device (``anchor``: a tensor of that dtype and device, or None to check neither).
    Reads no values."""
    check_shape(x, x_dim, who)
    dtype = anchor.dtype if anchor is not None else torch.get_default_dtype()
    if not x.is_floating_point():
        raise TypeError(f"{who} expected floating-point data ({dtype}), got {x.dtype}; cast it with "
                        f"x.to({dtype}) (x.float() for a float32 module)")
    if anchor is None:
        return
    if x.dtype != anchor.dtype:
        raise TypeError(f"{who} holds {anchor.dtype} parameters but was given {x.dtype} data; cast the data with "
                        f"x.to({anchor.dtype}) (x.float() for float32), or the module with module.to({x.dtype})")
    if x.device != anchor.device:
        raise ValueError(f"{who} lives on {anchor.device} but the data x are on {x.device}; move them with "
                         f"x.to('{anchor.device}')")


def check_batch_norm_batch(module: torch.nn.Module, num_data: int, who: str) -> None:
    """Raise a ValueError, with the fix, when ``module`` in training mode would normalise a batch of one datum
    over the batch (a batch-norm layer has no spread to divide by: torch's error is deep and says neither)."""
    if num_data == 1 and module.training and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                                 for m in module.modules()):
        raise ValueError(f"{who} normalises its hidden layers over the batch (batch_norm=True), and was given a batch "
                         "of one datum in training mode, which has no spread to normalise by: train on batches of "
                         "two or more (train(batch_size=...)), or call .eval() on the model and guide to encode, "
                         "decode or score single data")


def check_finite(x: torch.Tensor, who: str) -> None:
    """Raise a ValueError naming the first NaN or infinite entry of ``x`` (a host round trip)."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        row, column = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{who}: the data x hold {x[row, column].item()} at row {row}, column {column}; remove or "
                         "impute the non-finite values before training or scoring")


def check_enumeration_room(who: str) -> None:
    """Under Pyro's parallel enumeration (``TraceEnum_ELBO``), raise a ValueError when the enumerated values would
    take the ``"data"`` plate's dimension (``max_plate_nesting=0``): the mixture component is sampled inside that
    plate, so enumeration must start left of it."""
    for frame in _PYRO_STACK:
        first = getattr(frame, "first_available_dim", None)
        if isinstance(frame, EnumMessenger) and first is not None and first > -2:
            raise ValueError(f"{who} samples its mixture component inside the 'data' plate (dim -1), and Pyro's "
                             f"enumeration was set to start at dim {first}, the plate's own: pass "
                             "max_plate_nesting=1 (e.g. TraceEnum_ELBO(max_plate_nesting=1)), or leave it unset")


_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (weak x, x._version) last checked


def check_values(module: torch.nn.Module, x: torch.Tensor, check: Callable[[torch.Tensor], None]) -> None:
    """``check(x)`` while Pyro's validation is on and nothing is traced, unless ``module`` has already checked this
    very tensor, unchanged since (so a loop over one data tensor reads it once)."""
    if torch.jit.is_tracing() or not is_validation_enabled():
        return
    try:
        version = x._version
    except RuntimeError:  # an inference-mode tensor keeps no version counter: check it every time
        check(x)
        return
    last = _CHECKED.get(module)
    if last is not None and last[0]() is x and last[1] == version:
        return
    check(x)
    _CHECKED[module] = (weakref.ref(x), version)


__all__ = [
    "check_batch",
    "check_batch_norm_batch",
    "check_shape",
    "check_dropout",
    "check_enumeration_room",
    "check_finite",
    "check_int",
    "check_name",
    "check_real",
    "check_values",
    "check_widths",
]

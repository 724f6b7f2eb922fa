"""Checks of what a user passes to the data layer (readers, :class:`~pyrovae.data.CountData`, streams) and to the
single-cell analyses: each bad value is named, with what was expected and the fix, before any work is done.

One helper per kind of argument, shared by every constructor and method that takes one, so that a number, a
selection of cells or a list of names is checked the same way everywhere.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from pyrovae.optional import lazy_import

pd = lazy_import("pandas")


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an ``int`` when it is an integer (Python or numpy) >= ``minimum``; bools, floats such as 2.5
    and strings are refused with a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_real(name: str, value, minimum: float | None = None, maximum: float | None = None, *,
               open_interval: bool = False) -> float:
    """``value`` as a ``float`` when it is a finite real number in [``minimum``, ``maximum``] (the open interval
    with ``open_interval``); otherwise a ValueError naming ``name`` and the range."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if open_interval else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if open_interval else value <= maximum
    if not ok:
        low, high = ("(", ")") if open_interval else ("[", "]")
        lower = "-inf" if minimum is None else f"{minimum:g}"
        upper = "inf" if maximum is None else f"{maximum:g}"
        bounds = f"{low}{lower}, {upper}{high}"
        raise ValueError(f"{name} must be a finite number in {bounds}, got {value!r}")
    return float(value)


def _array(selection) -> np.ndarray:
    if isinstance(selection, torch.Tensor):
        return selection.detach().cpu().numpy()
    if isinstance(selection, (pd.Series, pd.Index)):
        return selection.to_numpy()
    return np.asarray(selection)


def selection_indices(selection, num_cells: int, name: str, *, unique: bool = False, kind: str = "cell"
                      ) -> np.ndarray:
    """Integer positions of the cells (or genes: ``kind``) ``selection`` picks: a boolean mask of ``num_cells``
    entries (numpy, torch, pandas) or integer indices in ``0..num_cells - 1`` (order kept).

    An integer array of ``num_cells`` entries holding only 0 and 1 (with repeats) reads either as a mask or as
    indices of the first two cells; it is refused, with the fix (a boolean mask), rather than guessed.

    :param unique: refuse indices that repeat a cell.
    :raises ValueError: for a mask of another length, indices out of range, non-integer values, or an ambiguous
        0/1 array.
    """
    values = _array(selection)
    if values.dtype == bool:
        if values.shape != (num_cells,):
            raise ValueError(f"{name} is a boolean mask of shape {values.shape}, but there are {num_cells} "
                             f"{kind}s; a mask needs one entry per {kind}")
        return np.flatnonzero(values)
    values = values.ravel() if values.ndim == 0 else values
    if values.ndim != 1:
        raise ValueError(f"{name} must be a boolean mask or a 1-D list of {kind} indices, got shape {values.shape}")
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    if values.dtype.kind not in "iu":
        if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.array_equal(values, np.round(values)):
            values = values.astype(np.int64)
        else:
            raise ValueError(f"{name} must be a boolean mask or integer {kind} indices, got {values.dtype} values "
                             f"(first: {values[:3].tolist()})")
    values = values.astype(np.int64)
    zeros_and_ones = len(values) == num_cells and np.isin(values, (0, 1)).all()
    if zeros_and_ones and len(np.unique(values)) < len(values):  # as indices it would pick a cell twice
        raise ValueError(
            f"{name} is an integer array of {num_cells} zeros and ones: a 0/1 mask or indices of {kind}s 0 and 1? "
            f"Pass a boolean mask ({name}.astype(bool), or tensor.bool()) or the indices (numpy.flatnonzero(mask))"
        )
    outside = (values < 0) | (values >= num_cells)
    if outside.any():
        raise ValueError(f"{name} holds {kind} indices outside 0..{num_cells - 1} (e.g. "
                         f"{values[outside][:5].tolist()}); there are {num_cells} {kind}s")
    if unique and len(np.unique(values)) != len(values):
        repeated = pd.Index(values)[pd.Index(values).duplicated()].unique()[:5].tolist()
        raise ValueError(f"{name} lists {kind}s more than once ({repeated}); each {kind} can be selected once")
    return values


def check_unique_names(index, what: str, name: str, fix: str) -> None:
    """Raise a ValueError naming the repeated entries of ``index`` (cell ids, gene names), with ``fix``."""
    index = pd.Index(index)
    if index.is_unique:
        return
    repeated = index[index.duplicated()].unique()
    shown = ", ".join(repr(v) for v in repeated[:5].tolist()) + (", ..." if len(repeated) > 5 else "")
    raise ValueError(f"{name}: {what} must be unique, but {len(repeated)} repeat ({shown}); {fix}")


def require_columns(frame: pd.DataFrame, columns, what: str, fix: str) -> None:
    """Raise a ValueError when ``frame`` lacks some of ``columns``, naming them and the columns it has."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks the column(s) {missing} (its columns: {list(frame.columns)[:20]}); {fix}")


def non_counts(values: np.ndarray) -> tuple[np.ndarray, str] | None:
    """The entries of ``values`` that are not raw counts, as a mask, and what is wrong with them (``"a non-finite
    value"``, ``"a negative count"`` or ``"a non-integer count"``, the first of these found); None when every
    value is a non-negative integer."""
    for test, problem in ((lambda v: ~np.isfinite(v), "a non-finite value"), (lambda v: v < 0, "a negative count"),
                          (lambda v: v != np.round(v), "a non-integer count")):
        bad = test(values)
        if bad.any():
            return bad, problem
    return None


__all__ = ["check_int", "check_real", "check_unique_names", "non_counts", "require_columns", "selection_indices"]

"""How a module's parameters reach Pyro's inference: ``pyro.param`` sites named per instance.

Pyro's :class:`~pyro.infer.SVI` optimises exactly the parameters whose ``pyro.param`` sites it sees while it
traces the model and the guide (``poutine.trace(param_only=True)``); :class:`~pyro.infer.JitTrace_ELBO` passes
the same parameters to its traced function as inputs. A module that never emits those sites is trained by
nothing, silently. :func:`register_module` is what Pyro's own ``pyro.module(name, module)`` does, with these
differences, which keep the promises of pyrovae's model/guide contract:

* **The name is unique per instance** (``"VAE_3$$$decoder.layers.0.weight"``), assigned on first use and kept
  in a weak map, so two pairs in one notebook never share a parameter, and a ``copy.deepcopy`` of a model is
  a new instance with its own name.
* **The store holds the module's own tensors**, never copies (Pyro's ``store[name] = value`` would copy a
  non-contiguous tensor, such as a ``channels_last`` convolution weight, and SVI would then train the copy).
* **A store entry of that name holding other values** (after ``pyro.get_param_store().load(...)`` or
  ``set_state``) is taken as an assignment: its values are copied into the module's parameter, which then
  replaces the entry. So a loaded param store restores the module, as Pyro users expect, and
  ``pyro.clear_param_store()`` breaks nothing: the next call registers the same tensors again. A value of
  another shape is an error that names the parameter.
* **Frozen parameters** (``requires_grad=False``) are not emitted, so SVI leaves them alone, without the
  warning ``pyro.module`` gives for them: that is how one side of a pair is frozen.

Pyro's ``JitTrace_ELBO`` looks its parameters up by name on every call without running the model first: after
clearing or loading the param store, or freezing or unfreezing a side, give ``SVI`` a new ``JitTrace_ELBO``
(pyrovae's own ``train`` has no such restriction). Entries stay in the store while it lives, as with
``pyro.module``; :func:`unregister_module` (or ``pyro.clear_param_store()``) frees them.
"""

from __future__ import annotations

import itertools
import weakref

import pyro
import torch
from pyro.distributions import constraints
from torch import nn

_MODULE_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NEXT_ID = itertools.count()
_DIVIDER = "$$$"  # pyro's separator of module and parameter names (pyro.params.param_store)


def pyro_name(module: nn.Module) -> str:
    """The instance's name in Pyro's parameter store, e.g. ``"VAE_3"`` (given on first use, kept for its life)."""
    name = _MODULE_NAMES.get(module)
    if name is None:
        name = f"{type(module).__name__}_{next(_NEXT_ID)}"
        _MODULE_NAMES[module] = name
    return name


def forget_pyro_attributes(module: nn.Module) -> None:
    """Drop the weak reference Pyro's param store attaches to each tensor it hands out (``.unconstrained``), which
    ``pickle`` cannot store; Pyro attaches it again on the next call. Models and guides call it before pickling, so
    ``torch.save(model)`` works after training."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        tensor.__dict__.pop("unconstrained", None)


def _store_exactly(store, name: str, value: torch.Tensor) -> None:
    """Put ``value`` itself (not a contiguous copy) in the store under ``name``, unconstrained."""
    store._constraints[name] = constraints.real
    store._params[name] = value
    store._param_to_name[value] = name


def register_module(module: nn.Module) -> nn.Module:
    """Emit a ``pyro.param`` site for every trainable parameter of ``module`` and return the module.

    Call it at the start of a model's or guide's ``forward``, as Pyro's VAE example calls ``pyro.module``:
    then ``pyro.infer.SVI`` with any ELBO (JIT forms included), ``Predictive`` and ``poutine`` handlers see
    and train the module's parameters. pyrovae's models and guides all do.

    :raises ValueError: when the param store holds a value of another shape under one of the module's names.
    """
    prefix = pyro_name(module) + _DIVIDER
    store = pyro.get_param_store()
    for param_name, value in module.named_parameters():
        if not value.requires_grad:
            continue
        name = prefix + param_name
        stored = store._params.get(name)
        if stored is not value:
            if stored is not None:  # loaded or assigned in the store: that value is the module's now
                if stored.shape != value.shape:
                    raise ValueError(
                        f"the param store holds {name} of shape {tuple(stored.shape)}, but the module's parameter "
                        f"has shape {tuple(value.shape)}; it was saved from another architecture: clear the param "
                        "store (pyro.clear_param_store()) or load a matching one"
                    )
                with torch.no_grad():
                    value.copy_(store[name])
                del store[name]
            _store_exactly(store, name, value)
        pyro.param(name, value)
    return module


def unregister_module(module: nn.Module) -> None:
    """Remove the module's parameters from Pyro's param store (they stay in the module)."""
    prefix = pyro_name(module) + _DIVIDER
    store = pyro.get_param_store()
    for name in [n for n in store.keys() if n.startswith(prefix)]:
        del store[name]


__all__ = ["pyro_name", "register_module", "unregister_module"]

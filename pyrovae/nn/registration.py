"""How a module's parameters reach Pyro's inference: ``pyro.param`` sites named per instance.

Pyro's :class:`~pyro.infer.SVI` optimises exactly the parameters whose ``pyro.param`` sites it sees while it
traces the model and the guide (``poutine.trace(param_only=True)``); :class:`~pyro.infer.JitTrace_ELBO` passes
the same parameters to its traced function as inputs. A module that never emits those sites is trained by
nothing, silently. :func:`register_module` is what Pyro's own ``pyro.module(name, module)`` does, with three
differences that keep the promises of pyrovae's model/guide contract:

* **The name is unique per instance** (``"VAE_3$$$decoder.layers.0.weight"``), assigned on first use and kept
  in a weak map, so two pairs in one notebook never share a parameter, and a ``copy.deepcopy`` of a model is
  a new instance with its own name.
* **The module is the source of truth.** Its own ``nn.Parameter`` objects are what the store holds; a store
  entry of the same name that holds another tensor (after ``pyro.get_param_store().load(...)`` or another
  process's writes) is replaced, never silently used instead of the module's. ``pyro.clear_param_store()``
  therefore breaks nothing: the next call registers the same tensors again. Save and load models with
  ``state_dict`` (or :func:`pyrovae.infer.save_checkpoint`).
* **Frozen parameters** (``requires_grad=False``) are not emitted, so SVI leaves them alone, without the
  warning ``pyro.module`` gives for them: that is how one side of a pair is frozen.
"""

from __future__ import annotations

import itertools
import weakref

import pyro
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


def register_module(module: nn.Module) -> nn.Module:
    """Emit a ``pyro.param`` site for every trainable parameter of ``module`` and return the module.

    Call it at the start of a model's or guide's ``forward``, as Pyro's VAE example calls ``pyro.module``:
    then ``pyro.infer.SVI`` with any ELBO (JIT forms included), ``Predictive`` and ``poutine`` handlers see
    and train the module's parameters. pyrovae's models and guides all do.
    """
    prefix = pyro_name(module) + _DIVIDER
    store = pyro.get_param_store()
    for param_name, value in module.named_parameters():
        if not value.requires_grad:
            continue
        name = prefix + param_name
        if name in store and store[name] is not value:
            del store[name]  # a stale tensor of this name: the module's own parameter wins
        pyro.param(name, value)
    return module


__all__ = ["pyro_name", "register_module"]

"""How a module's parameters reach Pyro's inference: ``pyro.param`` sites under a stable name per live instance.

Pyro's :class:`~pyro.infer.SVI` optimises exactly the parameters whose ``pyro.param`` sites it sees while it
traces the model and the guide (``poutine.trace(param_only=True)``); :class:`~pyro.infer.JitTrace_ELBO` passes
the same parameters to its traced function as inputs. A module that never emits those sites is trained by
nothing, silently. :func:`register_module` is what Pyro's own ``pyro.module(name, module)`` does, with these
differences, which keep the promises of pyrovae's model/guide contract:

* **Names are stable, and unique among live modules.** A module is named when it is built: its ``name=`` (every
  pyrovae model and guide takes one), else its class name, so a parameter is ``"VAE$$$decoder.layers.0.weight"``.
  While another live module holds that name, the new one gets the first free suffix (``"VAE_1"``,
  ``"VAE_2"``, ...): two pairs in one notebook never share a parameter, and a ``copy.deepcopy`` or an unpickled
  copy is named on first use as a new instance. A script that builds its objects in the same order therefore
  finds the same names in every run: ``pyro.get_param_store().save(path)`` in one run and ``load(path)`` after
  building the same architecture in another (or later in the same process, once the old objects are gone)
  restores the values. An explicit ``name`` taken by another live module gets a suffix too, with a warning.
* **The store holds the module's own tensors**, never copies (Pyro's ``store[name] = value`` would copy a
  non-contiguous tensor, such as a ``channels_last`` convolution weight, and SVI would then train the copy).
* **A store entry under the module's name holding other values** (after ``pyro.get_param_store().load(...)``
  or ``set_state``, or an assignment) is taken as an assignment: its values are copied into the module's
  parameter (frozen ones included), which then replaces the entry. So a loaded param store restores the module,
  as Pyro users expect, and ``pyro.clear_param_store()`` breaks nothing: the next call registers the same
  tensors again. A value of another shape is an error that names the parameter.
* **Loaded values that reach no module are named in a warning**, the first time a module registers after the
  store changed: values under a name no live module holds whose parameter names are this module's or whose name
  is this module's class name with another suffix (saved from objects built in another order or under another
  ``name``); values under this module's own name for parameters it does not have (another architecture); and,
  when this module received no loaded values of its own, loaded values waiting under another live module's name
  (the store was loaded while the objects that were saved still live: those take the values, not this one).
* **The store holds a module's entries while the module lives.** When it is garbage-collected its entries leave
  the store (Pyro's ``pyro.module`` leaves them behind), so a dead model's values are neither saved with the
  store nor given to a new model of the same name, and notebooks do not accumulate dead parameters. Save the
  store while the objects live (or save the modules themselves, with ``torch.save(model.state_dict())``).
* **Frozen parameters** (``requires_grad=False``) are not emitted, so SVI leaves them alone, without the
  warning ``pyro.module`` gives for them: that is how one side of a pair is frozen.

Pyro's ``JitTrace_ELBO`` looks its parameters up by name on every call without running the model first: after
clearing or loading the param store, or freezing or unfreezing a side, give ``SVI`` a new ``JitTrace_ELBO``
(pyrovae's own ``train`` has no such restriction). :func:`unregister_module` (or ``pyro.clear_param_store()``)
frees a module's entries at once.
"""

from __future__ import annotations

import itertools
import re
import warnings
import weakref

import pyro
import torch
from pyro.distributions import constraints
from torch import nn

_DIVIDER = "$$$"  # pyro's separator of module and parameter names (pyro.params.param_store)
_NAMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> its name
_HOLDERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # name -> the live module holding it
_ENTRIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {store name: its tensor}
_OWN_TENSORS: dict[int, weakref.ref] = {}  # id -> tensor, for every tensor a module put in the store
_SCANNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> store size at its last scan
_WARNED: set[tuple[str, int]] = set()
_SUFFIX = re.compile(r"_\d+$")


def _base_of(name: str) -> str:
    return _SUFFIX.sub("", name)


def name_module(module: nn.Module, name: str | None = None, *, explicit: bool = True) -> str:
    """Give ``module`` its name in Pyro's param store now (models and guides call it when they are built): ``name``,
    else the class name, with the first free suffix ``_1``, ``_2``, ... while another live module holds it (a
    warning says so for an ``explicit`` name)."""
    base = name or type(module).__name__
    module.__dict__["_pyro_base_name"] = base  # copies (deepcopy, pickle) keep the base and are named anew
    previous = _NAMES.get(module)
    if previous is not None:
        if _HOLDERS.get(previous) is module:
            del _HOLDERS[previous]
    chosen = base
    for k in itertools.count(1):
        holder = _HOLDERS.get(chosen)
        if holder is None or holder is module:
            break
        chosen = f"{base}_{k}"
    if explicit and name is not None and chosen != name:
        warnings.warn(
            f"another live module is named {name!r} in Pyro's param store, so this {type(module).__name__} is "
            f"{chosen!r}; give each live pair its own name (or delete the other objects first) to save and load "
            "the store by name", stacklevel=3,
        )
    _NAMES[module] = chosen
    _HOLDERS[chosen] = module
    return chosen


def pyro_name(module: nn.Module) -> str:
    """The module's name in Pyro's parameter store, e.g. ``"VAE"`` or ``"NormalGuide_1"`` (given when it is built,
    or on first use for a copy or another module, and kept for its life)."""
    name = _NAMES.get(module)
    if name is None:
        name = name_module(module, module.__dict__.get("_pyro_base_name"), explicit=False)
    return name


def module_named(name: str) -> nn.Module | None:
    """The live module holding ``name`` in Pyro's param store (None if none does)."""
    return _HOLDERS.get(name)


def forget_pyro_attributes(module: nn.Module) -> None:
    """Drop the weak reference Pyro's param store attaches to each tensor it hands out (``.unconstrained``), which
    ``pickle`` cannot store; Pyro attaches it again on the next call. Models and guides call it before pickling, so
    ``torch.save(model)`` works after training."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        tensor.__dict__.pop("unconstrained", None)


def _is_own_tensor(tensor) -> bool:
    ref = _OWN_TENSORS.get(id(tensor))
    return ref is not None and ref() is tensor


def _forget_tensor(key: int, ref: weakref.ref) -> None:
    if _OWN_TENSORS.get(key) is ref:
        del _OWN_TENSORS[key]


def _release(entries: dict) -> None:
    """Remove a dead module's entries from the store (those that are still its own tensors)."""
    store = pyro.get_param_store()
    for name, tensor in entries.items():
        if store._params.get(name) is tensor:
            del store[name]
    entries.clear()


def _store_exactly(store, module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Put ``value`` itself (not a contiguous copy) in the store under ``name``, unconstrained."""
    store._constraints[name] = constraints.real
    store._params[name] = value
    store._param_to_name[value] = name
    entries = _ENTRIES.get(module)
    if entries is None:
        entries = _ENTRIES[module] = {}
        weakref.finalize(module, _release, entries).atexit = False
    entries[name] = value
    key = id(value)
    if not _is_own_tensor(value):
        _OWN_TENSORS[key] = weakref.ref(value, lambda ref, key=key: _forget_tensor(key, ref))


def take_loaded(module: nn.Module) -> nn.Module:
    """Copy into ``module`` the values loaded into Pyro's param store under its names (``load``, ``set_state`` or an
    assignment), and return it; loaded values that reach no module are named in a warning.

    :func:`register_module` does this first. pyrovae's models and guides also do it wherever they read their
    weights outside ``forward`` (``encode``, ``decode``, ``prior``, ``sample``), so a loaded store is what
    :func:`~pyrovae.infer.encode_data`, ``predict_labels`` or ``normalized_expression`` use, even before SVI runs.

    :raises ValueError: when the param store holds a value of another shape under one of the module's names.
    """
    name = pyro_name(module)
    prefix = name + _DIVIDER
    store = pyro.get_param_store()
    params = store._params
    received = False
    for param_name, value in module.named_parameters():
        full_name = prefix + param_name
        stored = params.get(full_name)
        if stored is None or stored is value:
            continue
        if stored.shape != value.shape:  # loaded or assigned in the store: that value is the module's now
            raise ValueError(
                f"the param store holds {full_name} of shape {tuple(stored.shape)}, but the module's "
                f"parameter has shape {tuple(value.shape)}; it was saved from another architecture: clear "
                "the param store (pyro.clear_param_store()) or load a matching one"
            )
        with torch.no_grad():
            value.copy_(store[full_name])
        del store[full_name]
        _store_exactly(store, module, full_name, value)
        received = True
    if _SCANNED.get(module) != len(params) and not torch.jit.is_tracing():
        _warn_unclaimed(module, name, received, store)
        _SCANNED[module] = len(params)
    return module


class InParamStore:
    """What reads or writes a whole module (``state_dict``, ``load_state_dict``, pickling) takes the values loaded
    into Pyro's param store under its names first (:func:`take_loaded`), as its calls do: after
    ``pyro.get_param_store().load(path)``, ``model.state_dict()``, ``torch.save(model)`` and
    :func:`~pyrovae.save_pair` hold the loaded values, and a ``load_state_dict`` afterwards is the one kept (the
    store's older values do not overwrite it at the next call). pyrovae's models and guides inherit it; put it
    before ``nn.Module`` among a class's bases."""

    def state_dict(self, *args, **kwargs):
        take_loaded(self)
        return super().state_dict(*args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        take_loaded(self)
        return super().load_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict:
        take_loaded(self)
        forget_pyro_attributes(self)  # Pyro's weak references cannot be pickled: torch.save(model) works
        return super().__getstate__()


def register_module(module: nn.Module) -> nn.Module:
    """Emit a ``pyro.param`` site for every trainable parameter of ``module`` and return the module.

    Call it at the start of a model's or guide's ``forward``, as Pyro's VAE example calls ``pyro.module``:
    then ``pyro.infer.SVI`` with any ELBO (JIT forms included), ``Predictive`` and ``poutine`` handlers see
    and train the module's parameters. pyrovae's models and guides all do. Values loaded into the store under the
    module's names are copied into it first (:func:`take_loaded`); loaded values that reach no module are named in a
    warning (see the module's documentation).

    :raises ValueError: when the param store holds a value of another shape under one of the module's names.
    """
    take_loaded(module)
    prefix = pyro_name(module) + _DIVIDER
    store = pyro.get_param_store()
    params = store._params
    for param_name, value in module.named_parameters():
        if not value.requires_grad:
            continue
        full_name = prefix + param_name
        if params.get(full_name) is not value:
            _store_exactly(store, module, full_name, value)
        pyro.param(full_name, value)
    return module


def _warn_unclaimed(module: nn.Module, name: str, received: bool, store) -> None:
    """Warn about values in the store (loaded: no module's own tensors) that no module will take (see above)."""
    own = {param_name for param_name, _ in module.named_parameters()}
    base = _base_of(name)
    groups: dict[tuple[str, str], list[str]] = {}
    for key, tensor in list(store._params.items()):
        if _DIVIDER not in key or _is_own_tensor(tensor):
            continue
        owner, param_name = key.split(_DIVIDER, 1)
        if owner == name:
            kind = "unknown"
        elif owner in _HOLDERS:
            if received or param_name not in own or _base_of(owner) != base:
                continue
            kind = "other"
        elif param_name in own or _base_of(owner) == base:
            kind = "orphan"
        else:
            continue
        groups.setdefault((owner, kind), []).append(param_name)
    what = f"this {type(module).__name__} ({name!r})"
    for (owner, kind), names in groups.items():
        tag = (owner, id(store._params[owner + _DIVIDER + names[0]]))
        if tag in _WARNED:
            continue
        _WARNED.add(tag)
        listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        if kind == "unknown":
            message = (f"the param store holds values under {what}'s name for parameters it does not have "
                       f"({listed}): they were saved from another architecture and are ignored")
        elif kind == "other":
            message = (f"the param store holds {len(names)} loaded value(s) under {owner!r} ({listed}), the name of "
                       f"another live {type(_HOLDERS[owner]).__name__}, which takes them at its next call; {what} "
                       "keeps its own values. To load a saved store into newly built objects, delete the old ones "
                       "(and any SVI holding them) before building the new, or build both with the same name=")
        else:
            message = (f"the param store holds {len(names)} value(s) under {owner!r} ({listed}) that no live module "
                       f"is named for, so they are ignored; {what} keeps its own values. Names follow the order "
                       f"in which objects are built ({base!r}, {base + '_1'!r}, ...) or their name=: build them "
                       "in the order, or with the names, they had when the store was saved")
        warnings.warn(message, UserWarning, stacklevel=4)


def unregister_module(module: nn.Module) -> None:
    """Remove the module's parameters from Pyro's param store (they stay in the module)."""
    prefix = pyro_name(module) + _DIVIDER
    store = pyro.get_param_store()
    for name in [n for n in store.keys() if n.startswith(prefix)]:
        del store[name]
    _ENTRIES.get(module, {}).clear()


__all__ = ["InParamStore", "forget_pyro_attributes", "module_named", "name_module", "pyro_name", "register_module",
           "take_loaded", "unregister_module"]

"""A trained pair saved in a folder and loaded back: its arguments as JSON, its weights as a plain dict of tensors
read without running code, the package version and the training history."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from pathlib import Path

import torch

from pyrovae.guides.base import AmortizedGuide
from pyrovae.infer.training.checkpoint import load_error
from pyrovae.infer.training.files import FileLock, atomic_write
from pyrovae.likelihoods import get_likelihood
from pyrovae.models import VAE
from pyrovae.pairs.building import build_pair, likelihood_spec, pair_config

CONFIG_FILE, WEIGHTS_FILE = "pair.json", "weights.pt"
FORMAT_VERSION = 1


def _plain_state(module) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


def save_pair(folder: str | os.PathLike, model, guide, history=None, *, extra: dict | None = None) -> Path:
    """Save a trained ``(model, guide)`` in ``folder``: ``pair.json`` (the :func:`make_pair` arguments, the
    likelihood by name and options, the package version, the training history and ``extra``) and ``weights.pt``
    (``{"model": {name: tensor}, "guide": {name: tensor}}``, a plain dict of tensors).

    :param history: a :class:`~pyrovae.infer.History` (or its ``to_dict()``), kept with the pair.
    :param dict extra: more JSON-able information to keep (the single-cell layer keeps its data registration).
    :returns: the folder.
    """
    import pyrovae

    if isinstance(folder, torch.nn.Module):
        raise TypeError(f"save_pair(folder, model, guide) takes the folder first, and got a {type(folder).__name__} "
                        "there: save_pair('my_pair', model, guide)")
    for role, module in (("model", model), ("guide", guide)):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"save_pair saves torch modules; the {role} is a {type(module).__name__}. A plain Pyro "
                            "function keeps its parameters in the param store: pyro.get_param_store().save(path)")
    if isinstance(model, AmortizedGuide) or isinstance(guide, VAE):
        raise TypeError(f"save_pair(folder, model, guide) got a {type(model).__name__} as the model and a "
                        f"{type(guide).__name__} as the guide: pass the model first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if history is not None and hasattr(history, "to_dict"):
        history = history.to_dict()
    _warn_if_another_pair(folder, type(model).__name__, type(guide).__name__)
    arguments = pair_config(model, guide)
    if arguments is None:
        warnings.warn(f"save_pair: this {type(model).__name__} / {type(guide).__name__} pair was not built by "
                      "make_pair (or has custom networks, or an activation given as a module), so its architecture "
                      "is not recorded: load_pair will need the two objects built as now, load_pair(folder, "
                      "model=..., guide=...)", UserWarning, stacklevel=2)
    config = {"format": FORMAT_VERSION, "pyrovae_version": pyrovae.__version__, "pair": arguments,
              "model_class": type(model).__name__, "guide_class": type(guide).__name__, "history": history,
              **(extra or {})}
    buffer = io.BytesIO()
    torch.save({"model": _plain_state(model), "guide": _plain_state(guide)}, buffer)
    weights = buffer.getvalue()
    config["weights_sha256"] = hashlib.sha256(weights).hexdigest()  # the two files of one save, told from others'
    text = json.dumps(config, indent=1, allow_nan=True)
    with FileLock(folder / CONFIG_FILE):  # two jobs saving into one folder write their pairs one after the other
        previous = _saved_digest(folder)
        if previous is not None and (folder / WEIGHTS_FILE).exists():  # kept until the new pair.json is written
            backup = _backup_path(folder, previous)
            if not backup.exists():
                try:
                    os.link(folder / WEIGHTS_FILE, backup)
                except OSError:  # a file system without hard links: a copy, whole or not at all
                    kept = (folder / WEIGHTS_FILE).read_bytes()
                    atomic_write(backup, lambda stream: stream.write(kept))
        atomic_write(folder / WEIGHTS_FILE, lambda stream: stream.write(weights))
        atomic_write(folder / CONFIG_FILE, lambda stream: stream.write(text), binary=False)
        for backup in folder.glob(f"{_BACKUP_PREFIX}*.pt"):  # the new pair is whole: the old one's weights go
            backup.unlink(missing_ok=True)
    return folder


_BACKUP_PREFIX = "weights-of-"  # the weights of the pair.json a save in progress replaces, until it has


def _backup_path(folder: Path, digest: str) -> Path:
    return folder / f"{_BACKUP_PREFIX}{digest[:16]}.pt"


def _saved_digest(folder: Path) -> str | None:
    """The weights' digest that ``folder``'s pair.json records, or None (no readable pair.json)."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    return config.get("weights_sha256") if isinstance(config, dict) else None


def _warn_if_another_pair(folder: Path, model_class: str, guide_class: str) -> None:
    """Warn when ``folder`` holds a saved pair of other classes, which saving replaces."""
    try:
        saved = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return
    before = (saved.get("model_class"), saved.get("guide_class"))
    if before != (model_class, guide_class):
        warnings.warn(f"save_pair: {folder} held a {before[0]} / {before[1]} pair, now replaced by a {model_class} / "
                      f"{guide_class} pair", UserWarning, stacklevel=3)


def read_config(folder: str | os.PathLike) -> dict:
    """The configuration saved in ``folder`` by :func:`save_pair`, warning when another pyrovae version wrote it."""
    import pyrovae

    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {folder}: is it a folder written by save_pair (or a "
                                "single-cell model's save)?")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); the folder is damaged: save the pair again") from error
    if not isinstance(config, dict) or config.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a pyrovae pair configuration of format {FORMAT_VERSION}")
    saved = config.get("pyrovae_version")
    if saved != pyrovae.__version__:
        warnings.warn(f"{folder} was saved by pyrovae {saved} and is loaded by pyrovae {pyrovae.__version__}; "
                      "check the results, or load it with the version that saved it", stacklevel=3)
    return config


class OtherSave(ValueError):
    """The weights in a saved pair's folder are not those its ``pair.json`` was saved with."""


def read_weights(folder: str | os.PathLike, config: dict | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """The weights saved in ``folder``, read with ``torch.load(weights_only=True)``: a file holding anything but
    tensors in dicts (such as a pickle that would run code) is refused, and nothing in it is executed. With the
    folder's ``config`` (:func:`read_config`), weights of another save than the configuration's are refused
    (:class:`OtherSave`), unless the weights of that configuration's save are still kept beside them: a save
    interrupted after its weights, or in progress, keeps the pair it replaces loadable."""
    folder = Path(folder)
    path = folder / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {folder}: is it a folder written by save_pair?")
    content = path.read_bytes()
    expected = (config or {}).get("weights_sha256")
    if expected is not None and hashlib.sha256(content).hexdigest() != expected:
        backup = _backup_path(folder, expected)
        try:
            kept = backup.read_bytes()
        except OSError:
            kept = None
        if kept is None or hashlib.sha256(kept).hexdigest() != expected:
            raise OtherSave(f"{path} is not the weights file {folder / CONFIG_FILE} was saved with (its SHA-256 "
                            "differs): the file was changed or damaged since, or another job is saving into the "
                            "folder now; load it again, or save the pair again")
        path, content = backup, kept
    try:
        weights = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception as error:  # whatever a damaged or foreign file raises: say so, never run it
        raise ValueError(
            f"{path} was refused: it is not a plain dict of tensors ({load_error(error)}). It may be damaged or "
            "crafted to run code, and it was not executed; load only folders from people you trust, or save the "
            "pair again"
        ) from None
    valid = (isinstance(weights, dict) and set(weights) == {"model", "guide"}
             and all(isinstance(part, dict) and all(isinstance(t, torch.Tensor) for t in part.values())
                     for part in weights.values()))
    if not valid:
        raise ValueError(f"{path} does not hold {{'model': {{name: tensor}}, 'guide': {{name: tensor}}}}; it was not "
                         "written by save_pair")
    return weights


def load_weights(module, state: dict[str, torch.Tensor], role: str, folder) -> None:
    """Copy ``state`` into ``module``, naming every parameter that is missing, unexpected or of another shape."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{key} (saved {tuple(state[key].shape)}, here {tuple(own[key].shape)})"
              for key in own if key in state and state[key].shape != own[key].shape]
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:8]}" if missing else "", f"unexpected {unexpected[:8]}" if unexpected else "",
                 f"other shapes: {', '.join(shapes[:8])}" if shapes else ""]
        raise ValueError(
            f"the {role} saved in {folder} does not fit the {type(module).__name__} given: "
            f"{'; '.join(p for p in parts if p)}. Build the {role} with the arguments it was trained with"
        )
    device = next((t.device for t in own.values()), torch.device("cpu"))
    cast = sorted({f"{state[k].dtype} into {own[k].dtype}" for k in own
                   if state[k].is_floating_point() and state[k].dtype != own[k].dtype})
    if cast:
        warnings.warn(f"the {role} saved in {folder} is loaded with a cast ({', '.join(cast)}): build it in the dtype "
                      "it was saved in (module.to(torch.float64)) to keep every digit", UserWarning, stacklevel=3)
    with torch.no_grad():
        module.load_state_dict({key: value.to(device) for key, value in state.items()})


def _check_likelihood(model, recorded: dict, folder) -> None:
    """Refuse a model given to :func:`load_pair` whose likelihood is not the saved one's (its weights would load,
    the shapes agreeing, and be read as another law's)."""
    likelihood = getattr(model, "likelihood", None)
    try:
        saved = likelihood_spec(get_likelihood(recorded["likelihood"], recorded["x_dim"],
                                               **recorded.get("likelihood_options", {})))
        now = likelihood_spec(likelihood)
    except (KeyError, TypeError, ValueError):  # a likelihood not rebuilt by name: nothing to compare
        return
    if now != saved:
        raise ValueError(f"{folder} holds a model with the likelihood {saved[0]!r} {saved[1]}, and the model given has "
                         f"{now[0]!r} {now[1]}: its weights would load (the shapes agree) and be read as another "
                         "law's; build the model with the saved likelihood, or load_pair(folder) without objects")


def load_pair(folder: str | os.PathLike, model=None, guide=None):
    """The pair saved in ``folder`` by :func:`save_pair`: ``(model, guide, history)``.

    Without ``model`` and ``guide`` the pair is rebuilt from its recorded :func:`make_pair` arguments; with them,
    the weights are loaded into the objects given (built as the saved ones were), their parameter names and shapes
    checked. The history is a :class:`~pyrovae.infer.History` (None when none was saved). A file written by another
    pyrovae version loads with a warning; the weights are read with ``torch.load(weights_only=True)``.
    """
    from pyrovae.infer import History

    for attempt in range(3):  # a save finishing meanwhile: read its pair.json again
        config = read_config(folder)
        try:
            weights = read_weights(folder, config)
            break
        except OtherSave:
            if attempt == 2:
                raise
            time.sleep(0.1)
    if (model is None) != (guide is None):
        raise ValueError("load_pair takes both model= and guide= (objects built as the saved ones), or neither")
    given = model is not None
    if model is None:
        if config.get("pair") is None:
            raise ValueError(
                f"the pair in {folder} ({config.get('model_class')} + {config.get('guide_class')}) was not built by "
                "make_pair (or has custom networks, or an activation given as a module), so its architecture is not "
                "recorded: build the model and guide as before and pass load_pair(folder, model=model, guide=guide)"
            )
        model, guide = build_pair(config["pair"])
        rebuilt = {}
        for role, module in (("model", model), ("guide", guide)):  # a float64 module comes back in float64
            saved = {t.dtype for t in weights[role].values() if t.is_floating_point()}
            rebuilt[role] = module.to(*saved) if len(saved) == 1 and saved != {torch.get_default_dtype()} else module
        model, guide = rebuilt["model"], rebuilt["guide"]
    for role, module in (("model", model), ("guide", guide)):
        recorded = config.get(f"{role}_class")
        # same shapes, other meaning (a vMF guide's weights in a Power Spherical guide); a subclass of the saved one
        if recorded is not None and recorded not in {c.__name__ for c in type(module).__mro__}:
            raise ValueError(f"{folder} holds a {recorded} as the {role}, and a {type(module).__name__} was given: "
                             f"its weights would load (the shapes agree) and mean something else; build the {role} as "
                             "it was saved")
    if given and config.get("pair") is not None:
        _check_likelihood(model, config["pair"], folder)
    load_weights(model, weights["model"], "model", folder)
    load_weights(guide, weights["guide"], "guide", folder)
    history = config.get("history")
    if history is not None:
        history = History(records=list(history["records"]), best_epoch=history.get("best_epoch"),
                          stopped_early=bool(history.get("stopped_early")))
    return model, guide, history


__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "OtherSave", "load_pair", "load_weights", "read_config", "read_weights",
           "save_pair"]

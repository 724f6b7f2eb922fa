"""Model/guide pairs by name, for scripts and sweeps that compare latent geometries, and saved pairs.

``make_pair("svae-vmf", 784, 10, hidden=(256, 128))`` builds the S-VAE on S^10 with its vMF guide. The
conventions are applied once, here:

* ``latent_dim`` is the dimension d of the latent manifold: R^d for the Gaussian kinds, the sphere S^d in
  R^(d+1) for the spherical ones (Davidson et al. 2018 compare N-VAE and S-VAE at equal d), so an S-VAE's
  ``z_dim`` is ``latent_dim + 1``;
* ``hidden`` lists widths from the data side for both networks: the decoder mirrors the encoder.

A pair that :func:`make_pair` builds records its arguments (``model.pair_arguments``), so that
:func:`save_pair` writes a folder from which :func:`load_pair` rebuilds it: the arguments as JSON, the weights as a
plain dict of tensors read back with ``torch.load(weights_only=True)`` (loading never runs code from a file), the
package version and the training history. A pair built otherwise is saved too, and its weights load into objects
the user builds as before (``load_pair(folder, model=..., guide=...)``).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from pyrovae.guides import DeltaGuide, GMVAEGuide, NormalGuide, PowerSphericalGuide, VMFGuide
from pyrovae.guides.base import AmortizedGuide
from pyrovae.infer.training.checkpoint import FileLock, atomic_write, load_error
from pyrovae.likelihoods import get_likelihood, likelihood_names
from pyrovae.models import GMVAE, SVAE, VAE
from pyrovae.nn.checks import check_int, check_name

PAIR_KINDS = ("vae", "ae", "svae-vmf", "svae-power", "gmvae")
CONFIG_FILE, WEIGHTS_FILE = "pair.json", "weights.pt"
FORMAT_VERSION = 1


def latent_size(kind: str, latent_dim: int) -> int:
    """The length of a latent vector of ``kind``: ``latent_dim``, or ``latent_dim + 1`` on the sphere."""
    _check_kind(kind)
    return latent_dim + 1 if kind.startswith("svae") else latent_dim


def _check_kind(kind: str) -> None:
    if kind not in PAIR_KINDS:
        raise ValueError(f"unknown pair {kind!r}; expected one of {PAIR_KINDS}")


def make_pair(
    kind: str,
    x_dim: int,
    latent_dim: int,
    hidden: Sequence[int] = (400,),
    likelihood="bernoulli",
    *,
    likelihood_options: dict | None = None,
    num_components: int | None = None,
    classification_weight: float | None = None,
    feature_batch_norm: bool = False,
    activation: str = "relu",
    input_transform: str | None = None,
    latent_library: bool | None = None,
    batch_norm: bool = False,
    dropout: float = 0.0,
    encoder=None,
    decoder=None,
    name: str | None = None,
    categorical=(),
    continuous: int = 0,
    encode_covariates: bool = True,
):
    """A fresh ``(model, guide)`` of ``kind``:

    * ``"vae"``: :class:`~pyrovae.models.VAE` + :class:`~pyrovae.guides.NormalGuide`;
    * ``"ae"``: the same model + :class:`~pyrovae.guides.DeltaGuide` (train with ``kl_weight=0`` for a plain AE);
    * ``"svae-vmf"`` / ``"svae-power"``: :class:`~pyrovae.models.SVAE` + :class:`~pyrovae.guides.VMFGuide` /
      :class:`~pyrovae.guides.PowerSphericalGuide`;
    * ``"gmvae"``: :class:`~pyrovae.models.GMVAE` + :class:`~pyrovae.guides.GMVAEGuide` (``num_components``).

    Both modules record the arguments in ``pair_arguments`` (a JSON-able dict), which :func:`save_pair` writes.

    :param int latent_dim: the latent manifold's dimension d (S^d in R^(d+1) for the spherical kinds).
    :param latent_library: whether the guide encodes q(library | x): by default where the likelihood's library size
        is latent (``likelihood_options={"library": "latent"}``); a value the likelihood contradicts is refused.
    :param hidden: widths from the data side, shared by the encoder and (mirrored) the decoder.
    :param likelihood: a likelihood name or instance (count likelihoods: pass ``input_transform="log1p"``).
    :param dict likelihood_options: keyword arguments of the named likelihood (``{"dispersion": "gene-batch"}``).
    :param float classification_weight: for ``"gmvae"``, the weight of log q(y | x) on labelled data (the
        guide's default when None).
    :param bool feature_batch_norm: for ``"gmvae"``, batch norm on the guide's features too (see
        :class:`~pyrovae.guides.GMVAEGuide`; it lets ``map_query(batch_norm="query")`` adapt the classifier).
    :param encoder, decoder: custom networks instead of the MLPs (sizes: see the guide's and model's docs).
    :param categorical: the number of levels of each categorical covariate (batch first), for data
        ``(x, cat, cont)``: both the encoder and the decoder are conditioned on them (e.g. a
        ``CellStream``'s or ``CountData``'s ``categorical_sizes``); ``continuous``: the number of continuous ones.
    :param bool encode_covariates: False: only the decoder sees the covariates, the encoder reads the data alone
        (scVI's default). Batches then mix more in the latent (CellBench CEL-seq2 + Drop-seq, NB VAE: iLISI 0.55
        against 0.23), but :func:`~pyrovae.sc.map_query` cannot adapt the encoder to a query's new batches.
    :param str name: the pair's name in Pyro's param store: the model is ``name + "/model"`` and the guide
        ``name + "/guide"`` (default: their class names; see :mod:`pyrovae.nn.registration`).
    """
    _check_kind(kind)
    latent_dim = check_int("make_pair", "latent_dim", latent_dim)
    z_dim = latent_size(kind, latent_dim)
    name = check_name("make_pair", name)
    if likelihood_options:
        if not isinstance(likelihood, str):
            raise ValueError("likelihood_options are for a likelihood given by name; a likelihood instance takes its "
                             "options in its constructor")
        likelihood_name, likelihood = likelihood, get_likelihood(likelihood, x_dim, **likelihood_options)
    else:
        likelihood_name = likelihood if isinstance(likelihood, str) else None
    covariates = dict(categorical=tuple(categorical), continuous=continuous)
    model_options = dict(batch_norm=batch_norm, dropout=dropout, name=None if name is None else f"{name}/model",
                         **covariates)
    if not isinstance(encode_covariates, bool):
        raise TypeError(f"make_pair: encode_covariates must be True or False, got {encode_covariates!r}")
    guide_options = dict(input_transform=input_transform, batch_norm=batch_norm, dropout=dropout,
                         name=None if name is None else f"{name}/guide", **(covariates if encode_covariates else {}))
    if kind == "gmvae":
        if num_components is None:
            raise ValueError("make_pair('gmvae', ...) needs num_components")
        if classification_weight is not None:
            guide_options["classification_weight"] = classification_weight
        if feature_batch_norm is not False:  # the guide refuses what is not a bool
            guide_options["feature_batch_norm"] = feature_batch_norm
        model = GMVAE(x_dim, z_dim, num_components, hidden, likelihood, activation, decoder, **model_options)
        latent_library = _latent_library(model, latent_library)
        guide = GMVAEGuide(x_dim, z_dim, hidden, activation, num_components=num_components, encoder=encoder,
                           latent_library=latent_library, **guide_options)
    else:
        for option, value in (("num_components", num_components), ("classification_weight", classification_weight),
                              ("feature_batch_norm", None if feature_batch_norm is False else feature_batch_norm)):
            if value is not None:
                raise ValueError(f"{option} is for 'gmvae', not {kind!r}")
        model_class = SVAE if kind.startswith("svae") else VAE
        guide_class = {"vae": NormalGuide, "ae": DeltaGuide, "svae-vmf": VMFGuide,
                       "svae-power": PowerSphericalGuide}[kind]
        model = model_class(x_dim, z_dim, hidden, likelihood, activation, decoder, **model_options)
        latent_library = _latent_library(model, latent_library)
        guide = guide_class(x_dim, z_dim, hidden, activation, encoder, latent_library=latent_library,
                            **guide_options)
    arguments = dict(
        kind=kind, x_dim=int(x_dim), latent_dim=latent_dim, hidden=[int(h) for h in hidden],
        likelihood=likelihood_name, likelihood_options=dict(likelihood_options or {}),
        num_components=num_components, classification_weight=classification_weight,
        **({"feature_batch_norm": True} if feature_batch_norm is True else {}), activation=activation,
        input_transform=input_transform, latent_library=latent_library, batch_norm=batch_norm, dropout=dropout,
        name=name, categorical=[int(c) for c in categorical], continuous=int(continuous),
        encode_covariates=encode_covariates,
        custom_networks=[part for part, net in (("encoder", encoder), ("decoder", decoder)) if net is not None],
    )
    for module in (model, guide):
        module.pair_arguments = arguments
    return model, guide


def _latent_library(model, asked: bool | None) -> bool:
    """Whether the guide encodes a library size: where the model's likelihood has a latent one (``asked`` None),
    and an ``asked`` value the model contradicts is refused."""
    mode = model.likelihood.library
    needed = mode == "latent"
    if asked is None:
        return needed
    if not isinstance(asked, bool):
        raise TypeError(f"make_pair: latent_library must be True, False or None, got {asked!r}")
    if asked != needed:
        raise ValueError(
            "make_pair: the likelihood's library size is latent, so the guide must encode it: latent_library=True "
            "(or leave it unset)" if needed else
            "make_pair: latent_library=True asks the guide for a library size, but the likelihood's is "
            f"{'observed (the total count of x)' if mode == 'observed' else 'not used'} "
            f"({type(model.likelihood).__name__}); leave latent_library unset"
        )
    return asked


# -- saving and loading --------------------------------------------------------------------------------------
def likelihood_spec(likelihood) -> tuple[str, dict]:
    """The registry name and constructor options of a likelihood instance, so that it can be rebuilt by name.

    Options are the constructor's arguments the instance keeps as attributes of the same name (``library``,
    ``dispersion``, ...); its learned parameters and buffers travel with the weights.

    :raises ValueError: for a likelihood whose class is not registered, or whose constructor takes arguments it
        does not keep (naming them, with the fix).
    """
    names = [name for name in likelihood_names() if _registered_class(name) is type(likelihood)]
    if not names:
        raise ValueError(
            f"the likelihood {type(likelihood).__name__} is not registered under a name, so a saved pair could not "
            "rebuild it: register its class with pyrovae.likelihoods.register_likelihood('name') (and import that "
            "module before loading), or save the pair and load it with load_pair(folder, model=..., guide=...)"
        )
    options, missing = {}, []
    for parameter in list(inspect.signature(type(likelihood).__init__).parameters.values())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        value = getattr(likelihood, parameter.name, inspect.Parameter.empty)
        if isinstance(value, torch.Tensor) or callable(value):
            continue  # a buffer or method of that name: the weights restore it
        if value is inspect.Parameter.empty:
            if parameter.default is inspect.Parameter.empty:
                missing.append(parameter.name)
            continue
        if value != parameter.default:
            options[parameter.name] = value
    if missing:
        raise ValueError(
            f"the likelihood {names[0]!r} ({type(likelihood).__name__}) does not keep its constructor arguments "
            f"{missing}, so a saved pair could not rebuild it: store them as attributes of the same name, or pass "
            "the likelihood to make_pair by name with likelihood_options="
        )
    try:
        json.dumps(options)
    except TypeError as error:
        raise ValueError(f"the options {options} of the likelihood {names[0]!r} cannot be saved as JSON ({error}); "
                         "give it plain values (strings, numbers, lists)") from error
    return sorted(names, key=len)[0], options


def _registered_class(name: str):
    """The class a registered likelihood name builds with its default options (None when it needs arguments)."""
    try:
        return type(get_likelihood(name, 1))
    except (TypeError, ValueError):
        return None


def pair_config(model, guide) -> dict | None:
    """The JSON-able arguments that rebuild ``(model, guide)`` with :func:`make_pair`, or None for a pair not
    built by it (or with custom networks, which are code, not configuration)."""
    arguments = getattr(model, "pair_arguments", None)
    if arguments is None or arguments is not getattr(guide, "pair_arguments", None):
        return None
    if arguments["custom_networks"]:
        return None
    arguments = dict(arguments)
    if arguments["likelihood"] is None:
        arguments["likelihood"], arguments["likelihood_options"] = likelihood_spec(model.likelihood)
    return arguments


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
    config = {"format": FORMAT_VERSION, "pyrovae_version": pyrovae.__version__, "pair": pair_config(model, guide),
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
    with torch.no_grad():
        module.load_state_dict({key: value.to(device) for key, value in state.items()})


def build_pair(arguments: dict):
    """``make_pair`` from the arguments a pair recorded (``pair_arguments``, as :func:`save_pair` writes them)."""
    options = {key: value for key, value in arguments.items() if key not in ("kind", "x_dim", "latent_dim",
                                                                            "custom_networks")}
    return make_pair(arguments["kind"], arguments["x_dim"], arguments["latent_dim"], **options)


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
    if model is None:
        if config.get("pair") is None:
            raise ValueError(
                f"the pair in {folder} ({config.get('model_class')} + {config.get('guide_class')}) was not built by "
                "make_pair (or has custom networks), so its architecture is not recorded: build the model and guide "
                "as before and pass load_pair(folder, model=model, guide=guide)"
            )
        model, guide = build_pair(config["pair"])
    load_weights(model, weights["model"], "model", folder)
    load_weights(guide, weights["guide"], "guide", folder)
    history = config.get("history")
    if history is not None:
        history = History(records=list(history["records"]), best_epoch=history.get("best_epoch"),
                          stopped_early=bool(history.get("stopped_early")))
    return model, guide, history


__all__ = ["PAIR_KINDS", "latent_size", "likelihood_spec", "load_pair", "make_pair", "pair_config", "read_config",
           "save_pair"]

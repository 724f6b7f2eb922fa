"""Model/guide pairs by name: :func:`make_pair`, the arguments a pair records, and the pair rebuilt from them."""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence

import numpy as np
import torch

from pyrovae.guides import DeltaGuide, GMVAEGuide, NormalGuide, PowerSphericalGuide, VMFGuide
from pyrovae.likelihoods import CountLikelihood, get_likelihood, likelihood_names
from pyrovae.models import GMVAE, SVAE, VAE
from pyrovae.nn.checks import check_int, check_name

PAIR_KINDS = ("vae", "ae", "svae-vmf", "svae-power", "gmvae")


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
    classifier_hidden: int | None = None,
    activation: str = "relu",
    input_transform: str | None = "auto",
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
    :param likelihood: a likelihood name or instance.
    :param input_transform: what the encoder reads: ``"log1p"`` log(1 + x), None x itself; by default (``"auto"``)
        ``"log1p"`` for a count likelihood with the MLP encoder (raw counts, whose scale spans orders of magnitude,
        train an MLP encoder poorly), None otherwise: a custom ``encoder`` reads the data as given.
    :param dict likelihood_options: keyword arguments of the named likelihood (``{"dispersion": "gene-batch"}``).
    :param float classification_weight: for ``"gmvae"``, the weight of log q(y | x) on labelled data (the
        guide's default when None).
    :param int classifier_hidden: for ``"gmvae"``, a hidden layer of this width in the guide's classifier
        q(y | x) (see :class:`~pyrovae.guides.GMVAEGuide`; None: linear).
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
    guide_options = dict(batch_norm=batch_norm, dropout=dropout,
                         name=None if name is None else f"{name}/guide", **(covariates if encode_covariates else {}))
    if kind == "gmvae":
        if num_components is None:
            raise ValueError("make_pair('gmvae', ...) needs num_components")
        if classification_weight is not None:
            guide_options["classification_weight"] = classification_weight
        if feature_batch_norm is not False:  # the guide refuses what is not a bool
            guide_options["feature_batch_norm"] = feature_batch_norm
        if classifier_hidden is not None:
            guide_options["classifier_hidden"] = classifier_hidden
        model = GMVAE(x_dim, z_dim, num_components, hidden, likelihood, activation, decoder, **model_options)
        latent_library = _latent_library(model, latent_library)
        input_transform = guide_options["input_transform"] = _input_transform(model, input_transform, encoder)
        guide = GMVAEGuide(x_dim, z_dim, hidden, activation, num_components=num_components, encoder=encoder,
                           latent_library=latent_library, **guide_options)
    else:
        for option, value in (("num_components", num_components), ("classification_weight", classification_weight),
                              ("feature_batch_norm", None if feature_batch_norm is False else feature_batch_norm),
                              ("classifier_hidden", classifier_hidden)):
            if value is not None:
                raise ValueError(f"{option} is for 'gmvae', not {kind!r}")
        model_class = SVAE if kind.startswith("svae") else VAE
        guide_class = {"vae": NormalGuide, "ae": DeltaGuide, "svae-vmf": VMFGuide,
                       "svae-power": PowerSphericalGuide}[kind]
        model = model_class(x_dim, z_dim, hidden, likelihood, activation, decoder, **model_options)
        latent_library = _latent_library(model, latent_library)
        input_transform = guide_options["input_transform"] = _input_transform(model, input_transform, encoder)
        guide = guide_class(x_dim, z_dim, hidden, activation, encoder, latent_library=latent_library,
                            **guide_options)
    arguments = dict(
        kind=kind, x_dim=int(x_dim), latent_dim=latent_dim, hidden=[int(h) for h in hidden],
        likelihood=likelihood_name, likelihood_options=dict(likelihood_options or {}),
        num_components=num_components, classification_weight=classification_weight,
        **({"feature_batch_norm": True} if feature_batch_norm is True else {}),
        **({"classifier_hidden": int(classifier_hidden)} if classifier_hidden is not None else {}),
        activation=activation,
        input_transform=input_transform, latent_library=latent_library, batch_norm=batch_norm, dropout=dropout,
        name=name, categorical=[int(c) for c in categorical], continuous=int(continuous),
        encode_covariates=encode_covariates,
        custom_networks=[part for part, net in (("encoder", encoder), ("decoder", decoder)) if net is not None],
    )
    for module in (model, guide):
        module.pair_arguments = arguments
    return model, guide


def _input_transform(model, asked: str | None, encoder) -> str | None:
    """What the encoder reads: ``asked``, or by default log1p for a count likelihood with the MLP encoder, and x
    itself otherwise (a custom encoder's input is the user's)."""
    if asked != "auto":
        return asked
    return "log1p" if isinstance(model.likelihood, CountLikelihood) and encoder is None else None


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
    built by it, or with custom networks or other code among its arguments (an activation given as a module):
    code, not configuration."""
    arguments = pair_arguments(model, guide)
    if arguments is None or _holds_code(arguments):
        return None
    if arguments["likelihood"] is None:
        arguments["likelihood"], arguments["likelihood_options"] = likelihood_spec(model.likelihood)
    return _plain(arguments)


def pair_arguments(model, guide) -> dict | None:
    """The :func:`make_pair` arguments ``(model, guide)`` were built with, as given (an activation module too), or
    None for a pair not built by it or with custom networks."""
    arguments = getattr(model, "pair_arguments", None)
    if arguments is None or arguments is not getattr(guide, "pair_arguments", None) or arguments["custom_networks"]:
        return None
    return dict(arguments)


def _holds_code(value) -> bool:
    if isinstance(value, dict):
        return any(_holds_code(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_code(v) for v in value)
    return isinstance(value, torch.nn.Module) or callable(value)


def _plain(value):
    """``value`` with numpy numbers as Python's (``np.float32(0.1)`` as 0.1...), for JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def build_pair(arguments: dict):
    """``make_pair`` from the arguments a pair recorded (``pair_arguments``, as :func:`save_pair` writes them)."""
    options = {key: value for key, value in arguments.items() if key not in ("kind", "x_dim", "latent_dim",
                                                                            "custom_networks")}
    return make_pair(arguments["kind"], arguments["x_dim"], arguments["latent_dim"], **options)


__all__ = ["PAIR_KINDS", "build_pair", "latent_size", "likelihood_spec", "make_pair", "pair_arguments", "pair_config"]

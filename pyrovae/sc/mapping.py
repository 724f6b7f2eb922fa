"""Reference mapping: a query data set with new batches mapped onto a trained reference model, which stays frozen,
and the reference's labels transferred to the query.

This is scArches' *architecture surgery* (Lotfollahi et al. 2022, Nat. Biotechnol. 40:121): the batch reaches
the networks as a one-hot input, so a new batch needs only new input columns. :func:`map_query`

1. checks that the query has the reference's genes, by name and order;
2. registers the query with the reference's registration, its new batches appended after the reference's (the
   reference's batches keep their codes; a batch the reference knows is mapped onto its own column);
3. builds a pair of the reference's architecture whose batch one-hot is wider by the number of new batches: every
   layer that sees the covariates (:class:`~pyrovae.nn.covariates.ConditionalMLP`, encoder and decoder) gets one
   weight column per new batch, and a per-batch dispersion (``dispersion="gene-batch"``) one row, initialised to
   the mean of the reference batches' columns (``new_batch_init="mean"``) or to zero;
4. copies every reference weight and freezes it: only the new columns train (a gradient mask on the widened
   parameters, no gradient at all for the others), and batch normalisation keeps the reference's statistics (or,
   with ``batch_norm="query"``, estimates the query's own: AdaBN);
5. trains on the query alone with :func:`~pyrovae.infer.train` (early stopping as
   :meth:`SingleCellModel.train <pyrovae.sc.SingleCellModel.train>`).

The result is a new model of the reference's class bound to the query, an ordinary model once mapped (it saves,
loads and trains as any); the reference object is not touched. Since a reference cell's one-hot is zero in the new
columns, the mapped model encodes the reference's cells exactly as the reference does (with the reference's batch
normalisation statistics).

:func:`transfer_labels` gives the query the reference's labels: for a :class:`~pyrovae.sc.LabelTransferGMVAE`
reference, the mapped model's (frozen) classifier q(y | x); for the other kinds, a k-nearest-neighbour vote
(k = 15) among the reference cells in the latent space.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pandas as pd
import torch
from torch import nn

from pyrovae.data import add_results
from pyrovae.infer import History, encode_data, train
from pyrovae.infer.arguments import check_device
from pyrovae.nn.covariates import ConditionalMLP
from pyrovae.optional import require
from pyrovae.pairs.building import build_pair, pair_arguments
from pyrovae.sc.model import RESULTS_KEY, SingleCellModel, default_epochs
from pyrovae.sc.registration import UNS_KEY, DataRegistration
from pyrovae.sc.saving import gene_mismatch

logger = logging.getLogger(__name__)

NEW_BATCH_INITS = ("mean", "zero")
BATCH_NORM_STATISTICS = ("reference", "query")


def map_query(reference: SingleCellModel, query_adata, *, new_batch_init: str = "mean", batch_norm: str = "reference",
              epochs: int | None = None,
              batch_size: int = 128, lr: float = 1e-3, train_size: float = 1.0, early_stopping: bool = False,
              patience: int = 45, seed: int | None = 0, device=None, progress: bool = True,
              **options) -> SingleCellModel:
    """The ``reference`` model extended to the query's new batches and fitted to ``query_adata`` with every
    reference weight frozen (see the module's description); the reference is left as it was.

    :param reference: a trained model set up with a ``batch_key``.
    :param query_adata: an AnnData with the reference's genes in the same order, raw counts in the reference's
        layer, and the reference's ``obs`` columns (its batch column may hold new batches; the other categorical
        covariates only levels the reference knows). The query's labels are not used for training; its
        registration (the reference's, with the new batches) is written to its ``uns``, as
        :func:`~pyrovae.sc.setup_anndata` does.
    :param str new_batch_init: the new batches' weights start as the mean of the reference batches' (``"mean"``)
        or at zero (``"zero"``).
    :param str batch_norm: the statistics the mapped model's batch normalisation uses: the reference's
        (``"reference"``, scArches' choice: the reference's cells encode exactly as before) or the query's own,
        estimated while mapping (``"query"``, AdaBN: Li et al. 2018; the reference's scale and shift kept).
    :param epochs, batch_size, lr, train_size, early_stopping, patience, seed, device, progress: as in
        :meth:`SingleCellModel.train <pyrovae.sc.SingleCellModel.train>` (``epochs`` defaults to scvi-tools'
        rule on the query's number of cells).
    :param options: more arguments of :func:`~pyrovae.infer.train` (``kl_warmup_epochs``, ...), except
        ``optim``, ``freeze`` and ``compile``: the default Adam leaves a parameter with a zero gradient exactly
        where it is, which keeps the reference's weights bit for bit.
    :returns: a model of the reference's class on ``query_adata``, its ``history`` the mapping's training (empty
        when the query holds no new batch: nothing is trained then).
    :raises ValueError: for a reference without a batch, a query whose genes differ from the reference's (naming
        the first difference), that lacks a registered column or layer, or holds a level of another covariate
        the reference does not know.
    """
    if not isinstance(reference, SingleCellModel):
        raise TypeError(f"map_query maps onto a pyrovae.sc model, got {type(reference).__name__}")
    if new_batch_init not in NEW_BATCH_INITS:
        raise ValueError(f"new_batch_init must be one of {NEW_BATCH_INITS}, got {new_batch_init!r}")
    if batch_norm not in BATCH_NORM_STATISTICS:
        raise ValueError(f"batch_norm must be one of {BATCH_NORM_STATISTICS}, got {batch_norm!r}")
    if not 0.0 < train_size <= 1.0:
        raise ValueError(f"train_size is the share of cells trained on, in (0, 1], got {train_size}")
    refused = sorted({"optim", "freeze", "compile"} & set(options))
    if refused:
        raise TypeError(f"map_query does not take {refused}: it trains the new batches' weights with the default "
                        "Adam, which keeps every frozen reference weight exactly as it was")
    genes = [str(g) for g in query_adata.var_names]
    if genes != reference.gene_names:
        raise ValueError(gene_mismatch(genes, reference.gene_names, "be mapped onto it", "reference.gene_names"))
    registration = query_registration(reference, query_adata)
    num_reference = len(reference.registration.levels[registration.batch_key])
    num_new = len(registration.levels[registration.batch_key]) - num_reference

    arguments = pair_arguments(reference.model, reference.guide)
    if arguments is None:
        raise ValueError("map_query needs a reference pair built from its AnnData (make_pair's networks); this one "
                         "has custom networks, whose batch inputs it cannot widen")
    arguments["categorical"] = [arguments["categorical"][0] + num_new, *arguments["categorical"][1:]]
    if arguments.get("name"):
        arguments["name"] = f"{arguments['name']}_query"  # the reference keeps its name in Pyro's param store
    model, guide = build_pair(arguments)
    where = check_device(device) if device is not None else next(reference.model.parameters()).device
    widened = [(target, _copy_widened(source, target, num_reference, num_new, new_batch_init, role))
               for role, source, target in (("model", reference.model, model), ("guide", reference.guide, guide))]

    model.to(where), guide.to(where)  # before the gradient masks are placed beside the parameters
    mapped = SingleCellModel.__new__(type(reference))
    mapped.registration, mapped.adata, mapped.gene_names = registration, query_adata, list(reference.gene_names)
    mapped.pair_kind, mapped.model, mapped.guide = reference.pair_kind, model, guide
    mapped.history = History()
    mapped.is_trained = getattr(reference, "is_trained", True)  # the frozen reference's weights
    query_adata.uns[UNS_KEY] = json.dumps(registration.to_dict())
    if num_new == 0:
        logger.info("map_query: every batch of the query is known to the reference; nothing to train")
        return mapped
    data = dataclasses.replace(registration, labels_key=None).count_data(query_adata)  # query labels unused
    validation = None
    if train_size < 1.0:
        data, validation = data.split(train_size, seed=seed or 0)
    with _only_new_batches_train(widened, batch_norm):
        history = train(model, guide, data, epochs=default_epochs(len(data)) if epochs is None else epochs,
                        batch_size=batch_size, lr=lr, val_data=validation,
                        patience=patience if early_stopping else None, seed=seed, device=device, progress=progress,
                        **options)
    mapped.history = history
    return mapped


def query_registration(reference: SingleCellModel, query_adata) -> DataRegistration:
    """The reference's registration with the query's new batches appended, in sorted order, after the
    reference's; the query's other categorical covariates must hold levels the reference knows."""
    registration = reference.registration
    if registration.batch_key is None:
        raise ValueError("the reference was set up without a batch_key, so it has no batch input to extend to the "
                         "query's batches: set the reference up with setup_anndata(..., batch_key=...) and train it "
                         "again, or encode the query directly with reference.get_latent_representation(query)")
    registration.check_columns(query_adata)
    levels = {key: list(values) for key, values in registration.levels.items()}
    batch_key = registration.batch_key
    query_batches = query_adata.obs[batch_key]
    if query_batches.isna().any():
        raise ValueError(f"obs[{batch_key!r}] of the query is missing for {int(query_batches.isna().sum())} cells; "
                         "give every cell a batch")
    seen = set(map(str, query_batches.unique()))
    levels[batch_key] += sorted(seen - set(levels[batch_key]))
    for key in registration.categorical_covariate_keys:
        unknown = sorted(set(map(str, query_adata.obs[key].unique())) - set(levels[key]))
        if unknown:
            raise ValueError(f"obs[{key!r}] of the query holds levels {unknown[:5]} the reference does not know "
                             f"(it knows {levels[key][:10]}); map_query adds new levels of the batch "
                             f"({batch_key!r}) only: fold them into known levels, or make {key!r} the batch")
    return dataclasses.replace(registration, levels=levels)


def _copy_widened(source: nn.Module, target: nn.Module, num_reference: int, num_new: int, init: str,
                  role: str) -> dict[str, torch.Tensor]:
    """Copy ``source``'s state into ``target``, whose batch inputs are ``num_new`` wider, and return, for each
    widened parameter, the mask of its new entries.

    A widened tensor differs from the reference's along one axis, by ``num_new``: the covariate weights of a
    :class:`~pyrovae.nn.covariates.ConditionalMLP` (``(out, features)``, the batch's one-hot first among the
    features) and a per-batch parameter (``(batches, ...)``). In both the reference's batches are entries
    ``0 .. num_reference - 1`` of that axis, so the new entries are inserted at ``num_reference``.
    """
    reference_state, state = source.state_dict(), target.state_dict()
    if set(reference_state) != set(state):
        raise RuntimeError(f"the mapped {role} does not have the reference's parameters "
                           f"({sorted(set(reference_state) ^ set(state))[:5]}): map_query cannot copy them")
    side_weights = {f"{name}.side.{i}.weight" for name, module in target.named_modules()
                    if isinstance(module, ConditionalMLP) for i, side in enumerate(module.side) if side is not None}
    copied, masks = {}, {}
    for name, value in reference_state.items():
        value = value.detach().to("cpu")
        if value.shape == state[name].shape:
            copied[name] = value.clone()
            continue
        axes = [a for a, (old, new) in enumerate(zip(value.shape, state[name].shape)) if old != new]
        if len(axes) != 1 or state[name].shape[axes[0]] - value.shape[axes[0]] != num_new:
            raise RuntimeError(f"the {role}'s {name} has shape {tuple(value.shape)} in the reference and "
                               f"{tuple(state[name].shape)} once widened, not {num_new} more batch entries")
        axis = axes[0]
        if name not in side_weights and axis != 0:
            raise RuntimeError(f"the {role}'s {name} depends on the batch in a way map_query does not know")
        before, after = value.split([num_reference, value.shape[axis] - num_reference], axis)
        fresh = before.mean(axis, keepdim=True)
        fresh = (fresh if init == "mean" else torch.zeros_like(fresh)).repeat_interleave(num_new, axis)
        copied[name] = torch.cat([before, fresh, after], axis)
        mask = torch.zeros(state[name].shape, dtype=torch.bool)
        mask.narrow(axis, num_reference, num_new).fill_(True)
        masks[name] = mask
    with torch.no_grad():
        target.load_state_dict(copied)
    parameters = dict(target.named_parameters())
    frozen_buffers = [name for name in masks if name not in parameters]
    if frozen_buffers:
        raise RuntimeError(f"the {role}'s batch-dependent buffers {frozen_buffers} cannot be fitted to the query")
    return masks


class _only_new_batches_train:
    """Inside the block only the new batches' entries (``masks``) of each module's parameters train: the
    parameters without any are frozen (``requires_grad=False``), the others' gradients are masked to their new
    entries, and batch normalisation runs on the reference's statistics (``batch_norm="reference"``) or, with
    ``"query"``, re-estimates them on the query (their running means and variances restarted and averaged over
    every batch of the mapping, the scale and shift still frozen). All else is as before after the block."""

    def __init__(self, widened: list[tuple[nn.Module, dict[str, torch.Tensor]]], batch_norm: str = "reference"
                 ) -> None:
        self.widened, self.handles, self.batch_norm, self.momenta = widened, [], batch_norm, {}

    def __enter__(self) -> None:
        self.flags = {p: p.requires_grad for m, _ in self.widened for p in m.parameters()}
        for module, masks in self.widened:
            for name, parameter in module.named_parameters():
                mask = masks.get(name)
                parameter.requires_grad_(mask is not None)
                if mask is not None:
                    mask = mask.to(parameter.device)
                    self.handles.append(parameter.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device)))
            for layer in module.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    if self.batch_norm == "reference":
                        self.handles.append(layer.register_forward_pre_hook(_use_running_statistics))
                    elif layer.track_running_stats:
                        layer.reset_running_stats()
                        self.momenta[layer], layer.momentum = layer.momentum, None  # a cumulative average

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        for parameter, flag in self.flags.items():
            parameter.requires_grad_(flag)
        for layer, momentum in self.momenta.items():
            layer.momentum = momentum


def _use_running_statistics(layer: nn.Module, inputs) -> None:
    layer.training = False  # normalise with the reference's statistics, and leave them as they are


def transfer_labels(reference: SingleCellModel, mapped: SingleCellModel, *, num_neighbors: int = 15,
                    key: str = RESULTS_KEY) -> pd.Series:
    """The reference's labels transferred to the query cells of ``mapped`` (from :func:`map_query`), a categorical
    Series indexed by the query's cells; also written to ``mapped.adata.obs["<key>_label"]`` and
    ``obs["<key>_label_probability"]``.

    A :class:`~pyrovae.sc.LabelTransferGMVAE` reference classifies with the mapped model's q(y | x), the
    reference's classifier seeing the query's batch; any other kind votes among the ``num_neighbors`` nearest
    labelled reference cells in the latent space (latent means; Euclidean distance), the probability being the
    share of the votes.

    :raises ValueError: for a reference set up without ``labels_key`` (the kNN vote needs the reference's labels).
    """
    from pyrovae.sc.kinds import LabelTransferGMVAE

    if isinstance(reference, LabelTransferGMVAE):
        return mapped.predict(key=key)
    labels_key = reference.registration.labels_key
    if labels_key is None:
        raise ValueError("transfer_labels needs the reference's labels: set its AnnData up with "
                         "setup_anndata(..., labels_key=...) before training it")
    reference_data = reference.registration.count_data(reference.adata)
    labels = reference_data.obs[labels_key]
    known = labels.notna().to_numpy()
    if not known.any():
        raise ValueError(f"no reference cell has a label in obs[{labels_key!r}]")
    reference_latent = encode_data(reference.guide, reference_data).numpy()[known]
    frame = nearest_neighbor_labels(reference_latent, labels[known], mapped.get_latent_representation(key=key),
                                    num_neighbors=num_neighbors, label_names=reference.registration.label_names)
    frame.index = mapped.adata.obs_names
    add_results(mapped.adata, labels=frame, key=key)
    return pd.Series(frame["label"], index=frame.index, name="label")


def nearest_neighbor_labels(reference_latent, reference_labels, query_latent, *, num_neighbors: int = 15,
                            label_names=None) -> pd.DataFrame:
    """Each query cell's label by a vote of its ``num_neighbors`` nearest reference cells (Euclidean distance
    between latent means, uniform weights): columns ``label`` (categorical), ``probability`` (its share of the
    votes) and the share of each label, one row per query cell, as :func:`~pyrovae.infer.predict_labels` gives.

    :param reference_latent: ``(reference cells, latent size)``; ``reference_labels``: their labels.
    :param query_latent: ``(query cells, latent size)``.
    :param label_names: the labels in column order (default: the distinct reference labels, sorted).
    """
    neighbors = require("sklearn.neighbors")
    labels = np.asarray(reference_labels, dtype=object).astype(str)
    names = [str(n) for n in (sorted(set(labels)) if label_names is None else label_names)]
    codes = pd.Categorical(labels, categories=names).codes
    if len(labels) != len(reference_latent) or (codes < 0).any():
        raise ValueError(f"{len(labels)} reference labels for {len(reference_latent)} reference cells, among them "
                         f"{sorted(set(labels) - set(names))[:5]} not in label_names; give one label per cell")
    vote = neighbors.KNeighborsClassifier(n_neighbors=min(num_neighbors, len(labels)))
    vote.fit(np.asarray(reference_latent), codes)
    probabilities = np.zeros((len(query_latent), len(names)))
    probabilities[:, vote.classes_] = vote.predict_proba(np.asarray(query_latent))
    best = probabilities.argmax(1)
    frame = pd.DataFrame(probabilities, columns=names)
    frame.insert(0, "probability", probabilities[np.arange(len(best)), best])
    frame.insert(0, "label", pd.Categorical(np.asarray(names)[best], categories=names))
    return frame


__all__ = ["NEW_BATCH_INITS", "map_query", "nearest_neighbor_labels", "query_registration", "transfer_labels"]

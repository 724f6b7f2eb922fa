"""The AnnData-first model object: a pyrovae pair built from a registered AnnData, with scverse's verbs.

:class:`SingleCellModel` holds a ``(model, guide)`` from :func:`~pyrovae.pairs.make_pair`, sized from the data,
and does its work through the functional API: :func:`~pyrovae.infer.train` (early stopping, progress),
:func:`~pyrovae.infer.encode_data`, :func:`~pyrovae.infer.normalized_expression` and
:func:`~pyrovae.infer.differential_expression`. Each result is returned and written into the AnnData with
:func:`~pyrovae.data.add_results` (``obsm``, ``layers``, ``uns``). The kinds (Gaussian, S-VAE, GMVAE, label
transfer) are the subclasses in :mod:`pyrovae.sc.kinds`; saving and loading is :mod:`pyrovae.sc.saving`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from pyrovae.data import CountData, add_results, raw_counts
from pyrovae.data.anndata_io import warn_if_view
from pyrovae.infer import (
    History,
    LogLikelihood,
    differential_expression,
    encode_data,
    log_likelihood,
    normalized_expression,
    train,
)
from pyrovae.pairs import make_pair
from pyrovae.sc.registration import DataRegistration, registration_of, setup_anndata

RESULTS_KEY = "pyrovae"


def default_epochs(num_cells: int) -> int:
    """scvi-tools' default number of epochs: about 20,000 cells' worth of steps x 400, at most 400."""
    return int(min(400, max(1, round(20_000 / max(num_cells, 1) * 400))))


class SingleCellModel:
    """A count VAE of one kind built from an AnnData registered with :func:`~pyrovae.sc.setup_anndata`.

    The number of genes, of batch levels and covariates (and, for label transfer, of labels) are read from the
    data, never given. The pair is :attr:`model` and :attr:`guide`, usable with the whole functional API.

    :param adata: an AnnData (in memory, sparse or dense, or opened with ``backed="r"``) set up with
        :func:`~pyrovae.sc.setup_anndata`.
    :param int latent_dim: the latent manifold's dimension (S^d in R^(d+1) for the spherical kind).
    :param hidden: the hidden widths from the data side (the decoder mirrors them).
    :param str likelihood: ``"nb"``, ``"zinb"``, ``"poisson"`` or ``"zip"`` (or another registered count
        likelihood), with ``likelihood_options`` such as ``{"dispersion": "gene-batch"}`` or
        ``{"library": "latent"}``.
    :param bool batch_norm, float dropout: as scVI's networks (defaults: on, 0.1).
    :param bool encode_covariates: the encoder also sees the batch and covariates (default, as scArches-style
        reference mapping needs); False: only the decoder does, scVI's default, which mixes batches more in the
        latent (see :func:`~pyrovae.pairs.make_pair`).
    """

    pair_kind = "vae"

    def __init__(self, adata, latent_dim: int = 10, hidden: Sequence[int] = (128,), likelihood: str = "nb", *,
                 likelihood_options: dict | None = None, batch_norm: bool = True, dropout: float = 0.1,
                 activation: str = "relu", name: str | None = None, encode_covariates: bool = True,
                 **kind_options) -> None:
        if not isinstance(likelihood, str):
            raise TypeError(f"{type(self).__name__} takes the likelihood by name ('nb', 'zinb', 'poisson', 'zip'), "
                            f"got {type(likelihood).__name__}; its options go in likelihood_options=")
        self.registration = registration_of(adata)
        self.adata = adata
        data = self._data(adata)
        options = dict(likelihood_options or {})
        kind_arguments = self._kind_arguments(data, kind_options)  # may choose the kind (the S-VAE's guide)
        self.model, self.guide = make_pair(
            self.pair_kind, data.num_genes, latent_dim, hidden, likelihood, likelihood_options=options or None,
            input_transform="log1p", latent_library=options.get("library") == "latent", batch_norm=batch_norm,
            dropout=dropout, activation=activation, name=name, categorical=data.categorical_sizes,
            continuous=data.num_continuous, encode_covariates=encode_covariates, **kind_arguments,
        )
        if not callable(getattr(self.model.likelihood, "proportions", None)):
            raise ValueError(f"{type(self).__name__} models UMI counts, so its likelihood is a count likelihood "
                             f"('nb', 'zinb', 'poisson' or 'zip'), got {likelihood!r}; for other data build the pair "
                             "with the functional API (pyrovae.VAE(..., likelihood=...) and a guide)")
        if options.get("library") == "latent":
            self.model.likelihood.fit_library_prior(data)
        self.gene_names = list(data.gene_names)
        self.history = History()
        self.is_trained = False  # set by train(); results of an untrained model warn (as scvi-tools' do)

    # -- what a kind adds ------------------------------------------------------------------------------------
    def _kind_arguments(self, data: CountData, options: dict) -> dict:
        """The :func:`~pyrovae.pairs.make_pair` arguments of this kind (its number of components, ...)."""
        if options:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(options)}")
        return {}

    def _training_data(self, data: CountData) -> CountData:
        return data

    def _start(self, data: CountData, **settings) -> None:
        """What happens before training on the training cells ``data`` (a kind's own start; nothing here)."""

    # -- data ------------------------------------------------------------------------------------------------
    @staticmethod
    def setup_anndata(adata, layer: str | None = None, batch_key: str | None = None, labels_key: str | None = None,
                      unlabeled_category: str | None = "Unknown", categorical_covariate_keys=(),
                      continuous_covariate_keys=()) -> DataRegistration:
        """:func:`pyrovae.sc.setup_anndata`, here as scvi-tools users call it."""
        return setup_anndata(adata, layer, batch_key, labels_key, unlabeled_category, categorical_covariate_keys,
                             continuous_covariate_keys)

    def _data(self, adata=None) -> CountData:
        """The counts of ``adata`` (default: the model's) read as registered, with its ``obs`` as it is now: a
        column added, a label renamed or a layer replaced since is seen. A backed AnnData's counts are read from
        its file once."""
        adata = self.adata if adata is None else adata
        self.registration.check_columns(adata)
        data = self.registration.count_data(adata, counts=self._backed_counts(adata))
        genes = getattr(self, "gene_names", None)
        if genes is not None and data.gene_names != genes:
            from pyrovae.sc.saving import gene_mismatch

            raise ValueError(gene_mismatch(data.gene_names, genes, "be used on it"))
        return data

    def _backed_counts(self, adata):
        """The counts of a backed AnnData, read once per AnnData and layer (None for one in memory: read on each
        call, cheap and never stale)."""
        if not getattr(adata, "isbacked", False):
            return None
        cached = getattr(self, "_backed", None)
        if cached is None or cached[0] is not adata or cached[1] != self.registration.layer:
            self._backed = (adata, self.registration.layer, raw_counts(adata, self.registration.layer))
        return self._backed[2]

    # -- training --------------------------------------------------------------------------------------------
    def train(self, epochs: int | None = None, *, batch_size: int = 128, lr: float = 1e-3, train_size: float = 1.0,
              early_stopping: bool = False, patience: int = 45, seed: int | None = 0, device=None,
              progress: bool = True, **options) -> History:
        """Train the pair on the model's AnnData with :func:`~pyrovae.infer.train` and return its history.

        :param int epochs: default scvi-tools' ``min(400, 20000 / cells x 400)``.
        :param float train_size: the share of cells trained on; the rest (seeded) validate every epoch.
        :param bool early_stopping: stop when the validation ELBO (the training ELBO when ``train_size=1``) has
            not improved for ``patience`` epochs, and keep the best epoch's parameters.
        :param options: more arguments of :func:`~pyrovae.infer.train` (``kl_warmup_epochs``, ``elbo``, ...).
            ``eval_size`` (2,048 by default) training cells are scored again at every epoch's end for the history's
            ``train_*`` columns: on a small data set that pass costs half an epoch, and ``eval_size=0`` skips it
            (scvi-tools' speed; early stopping then follows the validation cells, or the training loss).
        """
        data = self._training_data(self._data())
        self._check_library_sizes(data)
        epochs = default_epochs(len(data)) if epochs is None else epochs
        validation = None
        if not 0.0 < train_size <= 1.0:
            raise ValueError(f"train_size is the share of cells trained on, in (0, 1], got {train_size}")
        if train_size < 1.0:
            data, validation = data.split(train_size, seed=seed or 0)
            if len(validation) < 10:
                warnings.warn(f"train_size={train_size} leaves {len(validation)} of the {len(data) + len(validation)} "
                              "cells to validate on: the validation ELBO (and early stopping) would follow too few "
                              "cells to mean much; use a smaller train_size, or train_size=1.0", UserWarning,
                              stacklevel=2)
        self._start(data, batch_size=batch_size, lr=lr, seed=seed or 0, device=device, progress=progress)
        history = train(self.model, self.guide, data, epochs=epochs, batch_size=batch_size, lr=lr,
                        val_data=validation, patience=patience if early_stopping else None, seed=seed,
                        device=device, progress=progress, **options)
        offset = len(self.history)
        for record in history.records:
            self.history.records.append({**record, "epoch": record.get("epoch", 0) + offset})
        self.history.best_epoch = None if history.best_epoch is None else history.best_epoch + offset
        self.history.stopped_early = history.stopped_early
        self.is_trained = len(self.history) > 0  # epochs=0 trains nothing
        return history

    def _check_library_sizes(self, data: CountData) -> None:
        """Raise a ValueError naming the cells without any count when the likelihood scales by the library size."""
        if getattr(self.model.likelihood, "library", "none") == "none":
            return
        empty = np.flatnonzero(np.asarray(data.library_sizes) == 0)
        if empty.size:
            raise ValueError(f"{empty.size} cell(s) of the AnnData have no counts (first: "
                             f"{data.obs.index[empty[:5]].tolist()}), so their library size is 0, which the "
                             f"likelihood scales by; remove them first: scanpy.pp.filter_cells(adata, min_counts=1)")

    def _check_trained(self) -> None:
        """Warn when results are asked of a model that was never trained."""
        if not getattr(self, "is_trained", True):
            warnings.warn(f"{type(self).__name__} has not been trained: its results come from randomly initialised "
                          "weights. Call .train() first (or set model.is_trained = True if you trained its model and "
                          "guide yourself, e.g. with pyro.infer.SVI)", UserWarning, stacklevel=3)

    # -- results ---------------------------------------------------------------------------------------------
    def _adata(self, adata):
        return self.adata if adata is None else adata

    def get_latent_representation(self, adata=None, *, batch_size: int = 512, key: str = RESULTS_KEY) -> np.ndarray:
        """The latent location of every cell (the mean of q(z | x); the mean direction on the sphere), cells x
        latent size; also written to ``adata.obsm["X_<key>"]``."""
        self._check_trained()
        latent = encode_data(self.guide, self._data(adata), batch_size=batch_size).numpy()
        add_results(self._adata(adata), latent=latent, key=key)
        return latent

    def get_normalized_expression(self, adata=None, *, library_size: float = 1e4, num_samples: int = 1,
                                  transform_batch=None, seed: int | None = 0, key: str = RESULTS_KEY
                                  ) -> pd.DataFrame:
        """The posterior mean of each cell's expression at ``library_size`` counts
        (:func:`~pyrovae.infer.normalized_expression`), cells x genes; also written to
        ``adata.layers["<key>_normalized"]``. ``transform_batch``: decode every cell as if measured in that batch
        (a level of ``batch_key``) or averaged over a list of batches."""
        self._check_trained()
        frame = normalized_expression(self.model, self.guide, self._data(adata), library_size=library_size,
                                      num_samples=num_samples, transform_batch=_batch_levels(transform_batch),
                                      seed=seed)
        add_results(self._adata(adata), normalized=frame, key=key)
        return frame

    def get_marginal_ll(self, adata=None, *, num_samples: int = 100, proposal: str = "auto", batch_size: int = 256,
                        device=None, progress: bool = False, key: str = RESULTS_KEY) -> LogLikelihood:
        """Each cell's log p(x) by importance sampling (:func:`~pyrovae.infer.log_likelihood`; by default
        ``proposal="auto"``, the cheapest estimator that certifies), typically on held-out cells: the result holds the
        estimates with their certificates (``.mean``, ``.stderr``, ``.certified``, ``.summary()``); per cell also in
        ``adata.obs["<key>_log_likelihood"]`` and ``adata.obs["<key>_certified"]``. The label-transfer model scores
        log p(x), its labels unused. ``proposal="guide"`` is the estimator of scvi-tools' ``get_marginal_ll``."""
        self._check_trained()
        result = log_likelihood(self.model, self.guide, self._data(adata), num_samples=num_samples,
                                batch_size=batch_size, device=device, progress=progress, proposal=proposal)
        target = self._adata(adata)
        warn_if_view(target, stacklevel=3)
        target.obs[f"{key}_log_likelihood"] = result.per_datum.numpy()
        target.obs[f"{key}_certified"] = result.certified.numpy()
        return result

    def differential_expression(self, group1, group2=None, *, groupby: str | None = None, adata=None,
                                key: str = RESULTS_KEY, **options) -> pd.DataFrame:
        """Bayesian differential expression of ``group1`` against ``group2`` (default: the other cells) by
        :func:`~pyrovae.infer.differential_expression` (``mode``, ``delta``, ``num_samples``, ``fdr``, ``seed``
        in ``options``); groups are values of ``obs[groupby]`` (default: the labels), named as strings. The table is
        returned and kept in ``adata.uns["<key>_de"]["<group1> vs <group2>"]`` (``"<groupby>: <group1> vs <group2>"``
        for a ``groupby`` other than the labels' column), beside the earlier comparisons (groups given as cell masks
        are named "selected cells", numbered from the second on: "selected cells vs rest (2)")."""
        self._check_trained()
        data = self._data(adata)
        target = self._adata(adata)
        if (groupby is None and (_names_labels(group1) or _names_labels(group2))
                and self.registration.labels_key in target.obs.columns):
            groupby = self.registration.labels_key  # labels named: the column as it is now, new labels too
        if groupby is None and isinstance(group1, str):
            raise ValueError(f"group1={group1!r} names a group: pass groupby= (an obs column), or set the AnnData up "
                             "with labels_key=")
        table = differential_expression(self.model, self.guide, data, group1, group2, groupby=groupby, **options)
        comparison = f"{_group_name(group1, groupby)} vs {'rest' if group2 is None else _group_name(group2, groupby)}"
        if groupby is not None and groupby != self.registration.labels_key:  # "0 vs 1" of two clusterings: two keys
            comparison = f"{groupby}: {comparison}"
        tables = dict(target.uns.get(f"{key}_de", {}))
        comparison = comparison.replace("/", "_")  # '/' would nest the table in an .h5ad file
        base, number = comparison, 1
        while "selected cells" in base and comparison in tables:  # groups given as masks: each one kept, numbered
            number += 1
            comparison = f"{base} ({number})"
        tables[comparison] = table
        add_results(target, de=tables, key=key)
        return table

    # -- reference mapping -----------------------------------------------------------------------------------
    def map_query(self, query_adata, **options) -> SingleCellModel:
        """This model, frozen, extended to the new batches of ``query_adata`` and fitted to it: a new model on the
        query (:func:`pyrovae.sc.map_query`, whose arguments ``options`` are); this one is left as it was."""
        from pyrovae.sc.mapping import map_query

        return map_query(self, query_adata, **options)

    # -- saving ----------------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, *, overwrite: bool = False):
        """Save the model in ``folder`` (see :func:`pyrovae.sc.saving.save_model`); it loads with
        ``type(model).load(folder, adata)``."""
        from pyrovae.sc.saving import save_model

        return save_model(self, folder, overwrite=overwrite)

    @classmethod
    def load(cls, folder: str | os.PathLike, adata, *, device=None):
        """The model saved in ``folder``, on ``adata`` (genes checked by name and order; the saved registration is
        applied to it). See :func:`pyrovae.sc.saving.load_model`."""
        from pyrovae.sc.saving import load_model

        return load_model(cls, folder, adata, device=device)

    def __repr__(self) -> str:
        trained = f"trained {len(self.history)} epochs" if len(self.history) else "not trained"
        return (f"{type(self).__name__}({len(self.gene_names)} genes, likelihood "
                f"{self.model.pair_arguments['likelihood']!r}, {trained})")


def _batch_levels(batch):
    """``transform_batch`` as levels of ``batch_key``, which the registration keeps as strings: batches numbered in
    the AnnData (``obs["sample"] = 1, 2``) are named by their numbers, not taken as positions."""
    if batch is None or isinstance(batch, str):
        return batch
    if isinstance(batch, (list, tuple)):
        return [b if isinstance(b, str) else str(b) for b in batch]
    return str(batch)


def _names_labels(group) -> bool:
    """Whether a DE group is named by label (a string or a list of them), not given as a mask or indices."""
    return isinstance(group, str) or (isinstance(group, (list, tuple)) and bool(group)
                                      and all(isinstance(g, str) for g in group))


def _group_name(group, groupby: str | None) -> str:
    """A group's name in the DE tables' keys: its label (or labels, joined by '+'), or "selected cells" for a
    mask or indices (groups are labels when named as strings, or as any values with ``groupby``)."""
    if isinstance(group, str) or (groupby is not None and np.isscalar(group)):
        return str(group)
    if _names_labels(group) or (groupby is not None and isinstance(group, (list, tuple))):
        return "+".join(map(str, group))
    return "selected cells"


__all__ = ["RESULTS_KEY", "SingleCellModel", "default_epochs"]

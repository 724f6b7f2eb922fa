"""The single-cell model of each latent geometry, built from a registered AnnData.

* :class:`SingleCellVAE`: Gaussian latent (scVI's model; :class:`~pyrovae.models.VAE`);
* :class:`SingleCellSVAE`: latent on the sphere S^d with a von Mises-Fisher or Power Spherical guide
  (:class:`~pyrovae.models.SVAE`; Davidson et al. 2018, De Cao & Aziz 2020);
* :class:`SingleCellGMVAE`: a Gaussian-mixture prior with the component summed out exactly
  (:class:`~pyrovae.models.GMVAE`), whose components are clusters;
* :class:`LabelTransferGMVAE`: the same, semi-supervised (Kingma et al. 2014's M2), one component per label of
  the registered ``labels_key``: the cells of the unlabelled category get their type from q(y | x).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pyrovae.data import CountData, add_results
from pyrovae.infer import encode_data, predict_labels, pseudo_label_start
from pyrovae.infer.arguments import check_integer
from pyrovae.sc.model import RESULTS_KEY, SingleCellModel, default_epochs


class SingleCellVAE(SingleCellModel):
    """A count VAE with a Gaussian latent, as scVI (see :class:`~pyrovae.sc.model.SingleCellModel`)."""

    pair_kind = "vae"


class SingleCellSVAE(SingleCellModel):
    """A count VAE whose latent lies on the sphere S^``latent_dim``.

    :param str distribution: the guide's q(z | x): ``"vmf"`` (von Mises-Fisher) or ``"power"`` (Power Spherical).
    """

    pair_kind = "svae-vmf"
    DISTRIBUTIONS = {"vmf": "svae-vmf", "power": "svae-power"}

    def _kind_arguments(self, data: CountData, options: dict) -> dict:
        distribution = options.pop("distribution", "vmf")
        if distribution not in self.DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {sorted(self.DISTRIBUTIONS)}, got {distribution!r}")
        self.pair_kind = self.DISTRIBUTIONS[distribution]
        return super()._kind_arguments(data, options)


class SingleCellGMVAE(SingleCellModel):
    """A count VAE with a mixture of ``num_components`` Gaussians as prior; each cell's most probable component is
    its cluster (:meth:`get_cluster_assignments`).

    :param int num_components: the number of mixture components (clusters).
    :param bool feature_batch_norm: batch norm on the guide's features too (see
        :class:`~pyrovae.guides.GMVAEGuide`): for a reference that :func:`~pyrovae.sc.map_query` will map
        queries onto with ``batch_norm="query"``.
    """

    pair_kind = "gmvae"

    def _kind_arguments(self, data: CountData, options: dict) -> dict:
        num_components = options.pop("num_components", 10)
        feature = options.pop("feature_batch_norm", False)
        feature = {} if feature is False else {"feature_batch_norm": feature}
        return {"num_components": num_components, **feature, **super()._kind_arguments(data, options)}

    START_EPOCHS = 30

    def train(self, epochs: int | None = None, *, start_epochs: int | None = None, **options):
        """:meth:`SingleCellModel.train`, after ``start_epochs`` epochs from k-means pseudo-labels on principal
        components of the training cells' log-normalised counts (:func:`~pyrovae.infer.pseudo_label_start`; 0: a
        random start). From a random start the components often collapse onto one: on CellBench CEL-seq2's five
        cell lines (NB), 30 epochs of start lifted the clusters' ARI from 0.00 to 0.92 at as good an ELBO.

        :param int start_epochs: default 30 (at most ``epochs``) before a model's first training, none when it is
            trained further."""
        if start_epochs is None:
            planned = default_epochs(self.adata.n_obs) if epochs is None else epochs
            start_epochs = 0 if self.is_trained else min(self.START_EPOCHS, planned)
        check_integer("start_epochs", start_epochs, 0)
        self._start_epochs = start_epochs
        return super().train(epochs, **options)

    def _start(self, data: CountData, **settings) -> None:
        if getattr(self, "_start_epochs", 0):
            pseudo_label_start(self.model, self.guide, data, epochs=self._start_epochs, **settings)

    def get_cluster_assignments(self, adata=None, *, key: str = RESULTS_KEY) -> np.ndarray:
        """The most probable component of every cell under q(y | x); also written to ``adata.obs["<key>_cluster"]``
        (categorical)."""
        self._check_trained()
        clusters = encode_data(self.guide, self._data(adata), fn=self.guide.assign).numpy()
        add_results(self._adata(adata), clusters=clusters, key=key)
        return clusters


class LabelTransferGMVAE(SingleCellGMVAE):
    """A semi-supervised GMVAE for label transfer, scANVI's job: one component per label of the registered
    ``labels_key`` (the number is read from the data), trained with the labels of the labelled cells; the cells of
    the unlabelled category (``unlabeled_category`` of :func:`~pyrovae.sc.setup_anndata`) are classified by
    q(y | x) (:meth:`predict`).

    :param float classification_weight: the weight of log q(y | x) on labelled cells (the guide's default when
        None: half the number of genes).
    :param float dropout: of the hidden layers, 0.3 by default (scVI's 0.1 for the other kinds): with it the
        transferred labels of PBMC 3k reach a linear probe on principal components (see
        :class:`~pyrovae.guides.GMVAEGuide`).
    :param int classifier_hidden: a hidden layer of this width in q(y | x) (default None: linear in the guide's
        features; on PBMC 3k and CellBench a layer of 128 moved accuracy by less than the noise, BENCHMARKS.md).
    """

    def __init__(self, adata, *args, dropout: float = 0.3, **options) -> None:
        super().__init__(adata, *args, dropout=dropout, **options)

    def _kind_arguments(self, data: CountData, options: dict) -> dict:
        if self.registration.labels_key is None:
            raise ValueError("LabelTransferGMVAE needs labels: set the AnnData up with "
                             "pyrovae.sc.setup_anndata(adata, labels_key=..., unlabeled_category=...)")
        if "num_components" in options:
            raise TypeError("LabelTransferGMVAE has one component per label, read from the data; do not pass "
                            "num_components")
        weight = options.pop("classification_weight", None)
        classifier = options.pop("classifier_hidden", None)
        arguments = super()._kind_arguments(data, options)
        arguments.update(num_components=len(self.registration.label_names), classification_weight=weight)
        if classifier is not None:
            arguments["classifier_hidden"] = classifier
        return arguments

    def train(self, epochs: int | None = None, *, start_epochs: int = 0, **options):
        """:meth:`SingleCellModel.train` on the labelled and unlabelled cells (the labels are the start:
        ``start_epochs`` must be 0)."""
        if start_epochs:
            raise ValueError("LabelTransferGMVAE's components are its labels: it needs no pseudo-label start "
                             "(start_epochs=0)")
        return super().train(epochs, start_epochs=0, **options)

    def _training_data(self, data: CountData) -> CountData:
        foreign = self.registration.foreign_labels(self.adata)
        if foreign:
            raise ValueError(
                f"obs[{self.registration.labels_key!r}] holds labels {foreign[:5]} that are not among the labels "
                f"{self.registration.label_names[:10]} this model has one component each for: a label added or "
                "renamed since setup_anndata. Name cells of unknown type "
                f"{self.registration.unlabeled_category!r} (unlabeled_category), or set the AnnData up again for "
                "a new model"
            )
        return data.with_labels()  # the cells with a label are known, the unlabelled category is not

    def predict(self, adata=None, *, soft: bool = False, key: str = RESULTS_KEY):
        """The transferred label of every cell (a categorical Series), or with ``soft`` q(y | x) for each label
        (cells x labels, with columns ``label`` and ``probability`` first); written to ``adata.obs["<key>_label"]``
        and ``adata.obs["<key>_label_probability"]``."""
        self._check_trained()
        data = self._data(adata)
        frame = predict_labels(self.guide, data)
        if data.label_key is None:  # an AnnData without the labels column: name the components by their labels
            names = dict(zip(frame.columns[2:], self.registration.label_names))
            frame = frame.rename(columns=names)
            frame["label"] = pd.Categorical(frame["label"].astype(str).map(names),
                                            categories=self.registration.label_names)
        add_results(self._adata(adata), labels=frame, key=key)
        return frame if soft else pd.Series(frame["label"], index=frame.index, name="label")


__all__ = ["LabelTransferGMVAE", "SingleCellGMVAE", "SingleCellSVAE", "SingleCellVAE"]

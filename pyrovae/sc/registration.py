"""The registration of an AnnData: where the raw counts are and which ``obs`` columns are covariates and labels.

:func:`setup_anndata` is scvi-tools' ``setup_anndata`` for pyrovae: it checks the counts once (non-negative
integers, or an error naming ``layer=``), fixes the codes of the categorical covariates and of the labels, records
the registration in ``adata.uns["pyrovae_registration"]`` (a JSON string, so the AnnData still writes to
``.h5ad``) and returns it. A model built from the AnnData reads it there, takes every size from it (genes,
batches, covariates, labels), saves it with its weights, and applies it to the AnnData it is loaded with.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field

from pyrovae.data import CountData, from_anndata
from pyrovae.data.anndata_io import foreign_labels

UNS_KEY = "pyrovae_registration"


@dataclass(frozen=True)
class DataRegistration:
    """Where a model finds its data in an AnnData (see :func:`setup_anndata`).

    :param layer: the layer of raw counts (None: ``X``).
    :param batch_key: the ``obs`` column of the batch, the first categorical covariate.
    :param categorical_covariate_keys: further categorical covariates (plate, donor, ...).
    :param continuous_covariate_keys: continuous covariates (percent mitochondrial, ...).
    :param labels_key: the ``obs`` column of cell types (label transfer, DE groups).
    :param unlabeled_category: the value of ``labels_key`` marking a cell of unknown type.
    :param levels: the levels of each categorical covariate, in code order.
    :param label_names: the labels, in code order (the unlabelled category excluded).
    """

    layer: str | None = None
    batch_key: str | None = None
    categorical_covariate_keys: tuple[str, ...] = ()
    continuous_covariate_keys: tuple[str, ...] = ()
    labels_key: str | None = None
    unlabeled_category: str | None = "Unknown"
    levels: dict[str, list[str]] = field(default_factory=dict)
    label_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        record = asdict(self)
        record["categorical_covariate_keys"] = list(self.categorical_covariate_keys)
        record["continuous_covariate_keys"] = list(self.continuous_covariate_keys)
        return record

    @classmethod
    def from_dict(cls, record: dict) -> DataRegistration:
        known = {name for name in cls.__dataclass_fields__}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ValueError(f"a data registration with unknown entries {unknown}; it was written by another "
                             "version of pyrovae: set the AnnData up again with pyrovae.sc.setup_anndata")
        record = dict(record)
        for key in ("categorical_covariate_keys", "continuous_covariate_keys"):
            record[key] = tuple(record.get(key, ()))
        return cls(**record)

    def count_data(self, adata, counts=None) -> CountData:
        """The AnnData's counts and covariates as a :class:`~pyrovae.data.CountData`, coded as registered (a batch
        the registration does not know is an error that names it). ``counts``: the counts already read
        (:func:`~pyrovae.data.anndata_io.raw_counts`).

        A labels column holding labels the registration does not know (a query's new cell types) is not read, with
        a warning: the cells are read as of unknown type, which is all that latents, expression and predictions
        need (training on the labels refuses it: :meth:`foreign_labels`)."""
        labels_key = self.labels_key if self.labels_key in adata.obs.columns else None
        foreign = self.foreign_labels(adata)
        if foreign:
            warnings.warn(f"obs[{labels_key!r}] holds labels the model was not set up with ({foreign[:5]}; its "
                          f"labels: {self.label_names[:10]}): the column is not read for this AnnData, so its cells "
                          "are of unknown type here. Name cells of unknown type "
                          f"{self.unlabeled_category!r} (unlabeled_category) to keep the known labels",
                          UserWarning, stacklevel=4)
            labels_key = None
        return from_anndata(adata, self.layer, counts=counts, batch_key=self.batch_key,
                            categorical_covariate_keys=self.categorical_covariate_keys,
                            continuous_covariate_keys=self.continuous_covariate_keys, labels_key=labels_key,
                            unlabeled_category=self.unlabeled_category,
                            label_names=self.label_names if labels_key else None, levels=self.levels)

    def foreign_labels(self, adata) -> list[str]:
        """The values of the AnnData's labels column that are neither registered labels nor of unknown type
        (``unlabeled_category`` or missing), sorted; [] without a labels column."""
        if self.labels_key is None or self.labels_key not in adata.obs.columns:
            return []
        return foreign_labels(adata.obs[self.labels_key], self.label_names, self.unlabeled_category)

    def check_columns(self, adata) -> None:
        """Raise a ValueError naming the registered layer or ``obs`` columns the AnnData lacks."""
        if self.layer is not None and self.layer not in adata.layers:
            raise ValueError(f"the AnnData has no layer {self.layer!r}, where the model reads its raw counts "
                             f"(layers: {list(adata.layers)}); store them there: adata.layers[{self.layer!r}] = ...")
        keys = [self.batch_key, *self.categorical_covariate_keys, *self.continuous_covariate_keys]
        missing = [key for key in keys if key is not None and key not in adata.obs.columns]
        if missing:
            raise ValueError(f"the AnnData lacks the obs columns {missing} the model was set up with (columns: "
                             f"{list(adata.obs.columns)[:20]}); add them before using the model")


def setup_anndata(
    adata,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    unlabeled_category: str | None = "Unknown",
    categorical_covariate_keys=(),
    continuous_covariate_keys=(),
) -> DataRegistration:
    """Register ``adata`` for pyrovae's single-cell models, as scvi-tools' ``setup_anndata`` does.

    The counts in ``layer`` (or ``X``) are checked to be raw counts; the levels of ``batch_key`` and
    ``categorical_covariate_keys`` and the labels of ``labels_key`` (less ``unlabeled_category``, which marks
    the cells whose type is unknown) are fixed in code order. The registration is written to
    ``adata.uns["pyrovae_registration"]`` and returned.

    :raises ValueError: for counts that are not non-negative integers (naming ``layer=``), a missing layer or
        column, a continuous covariate that is not numeric, and a ``labels_key`` column without any label.
    """
    for key, value in (("layer", layer), ("batch_key", batch_key), ("labels_key", labels_key)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"setup_anndata: {key} must be a string or None, got {type(value).__name__}")
    categorical = (categorical_covariate_keys,) if isinstance(categorical_covariate_keys, str) else tuple(
        categorical_covariate_keys)
    continuous = (continuous_covariate_keys,) if isinstance(continuous_covariate_keys, str) else tuple(
        continuous_covariate_keys)
    named = [("labels_key", labels_key), ("batch_key", batch_key), *(("categorical_covariate_keys", key)
             for key in categorical), *(("continuous_covariate_keys", key) for key in continuous)]
    for argument, key in named:
        if key is not None and key not in adata.obs.columns:
            raise ValueError(f"setup_anndata: no obs column {key!r} for {argument} (columns: "
                             f"{list(adata.obs.columns)[:20]})")
    for key in (batch_key, *categorical):
        if key is not None:
            _warn_if_continuous(key, adata.obs[key])
    data = from_anndata(adata, layer, batch_key=batch_key, categorical_covariate_keys=categorical,
                        continuous_covariate_keys=continuous, labels_key=labels_key,
                        unlabeled_category=unlabeled_category)
    label_names = data.label_names
    if labels_key is not None and (not label_names or not bool((data.labels >= 0).any())):
        raise ValueError(f"setup_anndata: obs[{labels_key!r}] has no label (every cell is {unlabeled_category!r} or "
                         "missing); label at least some cells, or leave labels_key out")
    for index, key in enumerate(continuous):
        _warn_unless_scaled(key, data.cont[:, index].double())
    registration = DataRegistration(
        layer=layer, batch_key=batch_key, categorical_covariate_keys=tuple(k for k in categorical if k != batch_key),
        continuous_covariate_keys=continuous, labels_key=labels_key, unlabeled_category=unlabeled_category,
        levels={key: list(values) for key, values in data.levels.items()}, label_names=list(label_names),
    )
    adata.uns[UNS_KEY] = json.dumps(registration.to_dict())
    return registration


def _warn_if_continuous(key: str, values) -> None:
    """Warn about a categorical covariate (the batch) given as a column of non-integer numbers: each distinct value
    becomes a level of its own, which is rarely meant (a continuous covariate, such as percent mitochondrial)."""
    if getattr(values.dtype, "kind", "") != "f":
        return
    numbers = values.dropna().to_numpy()
    if (numbers != numbers.round()).any():
        warnings.warn(f"setup_anndata: the categorical covariate {key!r} holds non-integer numbers, read as "
                      f"{len(set(numbers.tolist()))} levels, one per distinct value; a continuous covariate goes in "
                      "continuous_covariate_keys", UserWarning, stacklevel=3)


def _warn_unless_scaled(key: str, values) -> None:
    """Warn about a continuous covariate far from unit scale: networks fit such an input poorly, and one on the
    scale of counts can make the first step diverge."""
    mean, spread = float(values.mean()), float(values.std()) if values.numel() > 1 else 0.0
    if abs(mean) > 3.0 or spread > 3.0:
        warnings.warn(f"setup_anndata: the continuous covariate {key!r} is far from unit scale (mean {mean:.3g}, "
                      f"standard deviation {spread:.3g}); the networks read it as it is, which slows or derails "
                      f"training. Standardise it first: x = adata.obs[{key!r}]; adata.obs[{key!r}] = (x - x.mean()) "
                      "/ x.std() (after a log for a count-like covariate)", UserWarning, stacklevel=3)


def registration_of(adata) -> DataRegistration:
    """The registration :func:`setup_anndata` recorded in ``adata``."""
    if not all(hasattr(adata, attribute) for attribute in ("X", "obs", "var", "uns")):
        raise TypeError(f"pyrovae's single-cell models take an anndata.AnnData, got {type(adata).__name__}")
    if UNS_KEY not in adata.uns:
        raise ValueError("the AnnData is not set up for pyrovae: call pyrovae.sc.setup_anndata(adata, "
                         "layer='counts', batch_key=..., labels_key=...) first (layer: where the raw counts are)")
    return DataRegistration.from_dict(json.loads(adata.uns[UNS_KEY]))


__all__ = ["DataRegistration", "registration_of", "setup_anndata"]

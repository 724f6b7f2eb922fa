"""The covariates and labels of :class:`~pyrovae.data.CountData`: which ``obs`` columns a model is conditioned on
(categorical codes and continuous values, checked once), and the label codes a semi-supervised GMVAE trains on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from pyrovae.data.checks import selection_indices
from pyrovae.optional import lazy_import

if TYPE_CHECKING:
    from pyrovae.data.count_data import CountData

pd = lazy_import("pandas")


class CountCovariates:
    """Covariates and labels of a :class:`~pyrovae.data.CountData` (its ``obs``, ``name``, ``label_key`` and
    ``_share``): see the parameters ``categorical_keys``, ``continuous_keys`` and ``levels`` there."""

    def _set_covariates(self, categorical_keys, continuous_keys, levels: dict) -> None:
        categorical_keys = [categorical_keys] if isinstance(categorical_keys, str) else list(categorical_keys)
        continuous_keys = [continuous_keys] if isinstance(continuous_keys, str) else list(continuous_keys)
        for key in categorical_keys + continuous_keys:
            if key not in self.obs.columns:
                raise ValueError(
                    f"{self.name}: no column {key!r} in the cell table (columns: {list(self.obs.columns)})"
                )
        self.categorical_keys, self.continuous_keys = tuple(categorical_keys), tuple(continuous_keys)
        self.levels: dict[str, list[str]] = {}
        codes = []
        for key in self.categorical_keys:
            values = self.obs[key]
            if values.isna().any():
                raise ValueError(f"{self.name}: the covariate {key!r} is missing for {int(values.isna().sum())} cells")
            known = [str(v) for v in levels[key]] if key in levels else sorted(map(str, values.unique()))
            code = pd.Categorical(values.astype(str), categories=known).codes
            if (code < 0).any():
                unseen = sorted(set(values.astype(str)) - set(known))[:5]
                raise ValueError(f"{self.name}: covariate {key!r} has levels {unseen} not among {known}")
            self.levels[key] = known
            codes.append(code.astype(np.int64))
        self._cat = np.stack(codes, 1) if codes else np.zeros((len(self.obs), 0), np.int64)
        for key in self.continuous_keys:
            if not pd.api.types.is_numeric_dtype(self.obs[key]):
                raise ValueError(f"{self.name}: the continuous covariate {key!r} is not numeric (dtype "
                                 f"{self.obs[key].dtype}, e.g. {self.obs[key].iloc[0]!r}); a column of levels is a "
                                 "categorical covariate: pass it in categorical_keys (categorical_covariate_keys "
                                 "in from_anndata)")
        cont = self.obs[list(self.continuous_keys)].to_numpy(dtype=np.float32) if continuous_keys else None
        if cont is not None and not np.isfinite(cont).all():
            bad = self.continuous_keys[int(np.flatnonzero(~np.isfinite(cont).all(0))[0])]
            raise ValueError(f"{self.name}: the continuous covariate {bad!r} has NaN or infinite values")
        self._cont = cont if cont is not None else np.zeros((len(self.obs), 0), np.float32)

    @property
    def has_covariates(self) -> bool:
        return bool(self.categorical_keys or self.continuous_keys)

    @property
    def categorical_sizes(self) -> tuple[int, ...]:
        """The number of levels of each categorical covariate (a model's ``categorical``)."""
        return tuple(len(self.levels[k]) for k in self.categorical_keys)

    @property
    def num_continuous(self) -> int:
        """The number of continuous covariates (a model's ``continuous``)."""
        return len(self.continuous_keys)

    @property
    def cat(self) -> torch.Tensor:
        """The categorical codes of every cell, ``(cells, len(categorical_keys))``."""
        return torch.from_numpy(self._cat)

    @property
    def cont(self) -> torch.Tensor:
        """The continuous covariates of every cell, ``(cells, len(continuous_keys))``."""
        return torch.from_numpy(self._cont)

    def code(self, key: str, level) -> int:
        """The integer code of ``level`` of the categorical covariate ``key`` (e.g. a batch's name)."""
        if key not in self.levels:
            raise ValueError(f"{self.name}: {key!r} is not a categorical covariate (those: {list(self.levels)})")
        known = self.levels[key]
        if str(level) not in known:
            raise ValueError(f"{self.name}: {key!r} has no level {level!r} (levels: {known})")
        return known.index(str(level))

    def with_covariates(self, categorical_keys=(), continuous_keys=(), levels: dict | None = None) -> CountData:
        """The same cells with other covariates (the counts are shared, not copied; labels batches carry are
        kept)."""
        data = self._share(self, self.counts, self.obs, self.var, categorical_keys, continuous_keys,
                                levels if levels is not None else self.levels)
        data._y = self._y
        return data

    def with_labels(self, known=None, codes=None) -> CountData:
        """The same cells whose batches also carry the label codes ``y`` (``label_names`` order), -1 for the cells
        not in ``known`` (a boolean mask or indices; default all): semi-supervised training of a GMVAE, whose
        components are then the labels (label transfer, :class:`~pyrovae.guides.GMVAEGuide`): build it with
        ``num_components=data.num_labels`` (:meth:`check_components` says so when they differ). Batches are
        ``(x, cat, cont, y)`` (empty ``cat``/``cont`` without covariates).

        :param codes: integer codes of every cell to use instead of the label column (-1: unknown), such as
            clusters used as pseudo-labels (:func:`~pyrovae.infer.pseudo_label_start`); the data returned then
            carry these codes as their labels, not the label column's.
        :raises ValueError: for indices outside the cells, a mask of another length, and an integer array of
            zeros and ones (a mask must be boolean: ``known.astype(bool)``), or known cells without a label.
        """
        pseudo = codes is not None
        if pseudo:
            codes = np.asarray(codes)
            if codes.shape != (len(self),) or not np.issubdtype(codes.dtype, np.integer) or (codes < -1).any():
                raise ValueError(f"{self.name}: codes must be {len(self)} integers (one per cell, -1: unknown), got "
                                 f"{codes.dtype} {codes.shape}")
            codes = codes.astype(np.int64)
        elif self.label_key is None:
            raise ValueError(f"{self.name} has no label column: pass label_key (labels_key in from_anndata), or "
                             "codes=")
        else:
            codes = pd.Categorical(self.obs[self.label_key]).codes.astype(np.int64)
        mask = codes >= 0  # default: the cells that have a label
        if known is not None:
            mask = np.zeros(len(self), dtype=bool)
            mask[selection_indices(known, len(self), "known")] = True
            if (codes[mask] < 0).any():
                raise ValueError(f"{self.name}: {int((codes[mask] < 0).sum())} cells in known= have no label in "
                                 f"{self.label_key!r}; give them one or leave them out of known=")
        data = self.with_covariates(self.categorical_keys, self.continuous_keys)
        data._y = np.where(mask & (codes >= 0), codes, -1)
        if pseudo:
            data.label_key = None  # its labels are the codes given, not the label column's
        return data

    @property
    def num_labels(self) -> int:
        """The number of distinct labels (a semi-supervised GMVAE's ``num_components``); 0 without labels."""
        return len(self.label_names)

    def check_components(self, num_components: int) -> None:
        """Raise a ValueError unless a GMVAE of ``num_components`` components fits the labels (those batches carry
        after :meth:`with_labels`, and those :func:`~pyrovae.infer.predict_labels` names): one component per label,
        in :attr:`label_names` order; codes given to :meth:`with_labels` must each name a component. Data without
        labels fit any number."""
        if self.label_key is not None and num_components != self.num_labels:
            raise ValueError(
                f"{self.name} carries {self.num_labels} labels ({self.label_names[:5]}) but the GMVAE has "
                f"{num_components} components; label transfer needs one component per label: build the model and "
                f"the guide with num_components=data.num_labels ({self.num_labels})"
            )
        if self._y is not None and self._y.size and int(self._y.max()) >= num_components:
            raise ValueError(f"{self.name} carries label codes up to {int(self._y.max())} but the GMVAE has "
                             f"{num_components} components (codes 0 to {num_components - 1})")

    @property
    def y(self) -> torch.Tensor | None:
        """The label codes batches carry (-1: unknown), or None (see :meth:`with_labels`)."""
        return None if self._y is None else torch.from_numpy(self._y)

    def without_covariates(self) -> CountData:
        """The same cells without covariates: batches are ``x`` alone (for a model that ignores them)."""
        return self.with_covariates((), ())

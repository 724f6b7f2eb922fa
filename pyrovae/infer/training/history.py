"""The record of a training run: one dictionary of metrics per epoch."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class History:
    """Per-epoch metrics of :func:`~pyrovae.infer.train`.

    Each record holds ``epoch``, ``loss`` (the optimised objective per datum, KL weight included),
    ``kl_weight``, ``seconds``, and the one-sample estimates per datum ``train_elbo``,
    ``train_reconstruction``, ``train_kl`` (on a fixed subset of the training data, KL weight 1) and,
    with validation data, ``val_elbo``, ``val_reconstruction``, ``val_kl``. ``history["val_elbo"]`` is
    the list of one metric over epochs, ``history[-1]`` (an integer or a slice) the records themselves; ``len``,
    iteration and ``"val_elbo" in history`` go over the records and the metrics they hold.
    """

    records: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def __getitem__(self, key: str | int | slice) -> list | dict:
        if isinstance(key, str):
            return [record.get(key) for record in self.records]
        if isinstance(key, slice):
            return self.records[key]
        try:
            position = operator.index(key)  # an int, or numpy's (history[np.argmax(history["val_elbo"])])
        except TypeError:
            position = None
        if position is None or isinstance(key, bool):
            raise TypeError(f"a History is read by a metric's name (history['val_elbo']) or by the position of an "
                            f"epoch's record (history[-1], the last), got {key!r}")
        return self.records[position]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)

    def __contains__(self, key: object) -> bool:
        """Whether some epoch's record holds the metric ``key``."""
        return any(key in record for record in self.records)

    @property
    def last(self) -> dict:
        return self.records[-1] if self.records else {}

    def to_dict(self) -> dict:
        return {"records": self.records, "best_epoch": self.best_epoch, "stopped_early": self.stopped_early}

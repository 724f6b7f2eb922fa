"""The record of a training run: one dictionary of metrics per epoch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class History:
    """Per-epoch metrics of :func:`~pyrovae.infer.train`.

    Each record holds ``epoch``, ``loss`` (the optimised objective per datum, KL weight included),
    ``kl_weight``, ``seconds``, and the one-sample estimates per datum ``train_elbo``,
    ``train_reconstruction``, ``train_kl`` (on a fixed subset of the training data, KL weight 1) and,
    with validation data, ``val_elbo``, ``val_reconstruction``, ``val_kl``. ``history["val_elbo"]`` is
    the list of one metric over epochs.
    """

    records: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def __getitem__(self, key: str) -> list:
        return [record.get(key) for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict:
        return self.records[-1] if self.records else {}

    def to_dict(self) -> dict:
        return {"records": self.records, "best_epoch": self.best_epoch, "stopped_early": self.stopped_early}

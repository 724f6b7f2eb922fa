"""Encoding a whole data set batch by batch, with the guide in evaluation mode."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyrovae.infer.data import as_batches, module_device
from pyrovae.infer.evaluation import evaluation_mode
from pyrovae.infer.latent import encode_batch, latent_location
from pyrovae.infer.settings import floating_dtype


@torch.no_grad()
def encode_data(
    guide,
    data,
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """``fn(x)`` (``fn(x, cat, cont)`` for data with covariates) for every batch of ``data``, concatenated on the
    CPU; by default the latent location of q(z | x)
    (:func:`~pyrovae.infer.latent.latent_location`: the mean, or the mean direction on the sphere). The guide is
    in evaluation mode meanwhile (no dropout; batch norm uses its running statistics), so the result does not
    depend on the batching.

    :param data: a tensor, :class:`~pyrovae.data.TensorData`, :class:`~pyrovae.data.CountData` or Dataset.
    :param fn: what to compute per batch, e.g. ``guide.assign`` for a GMVAE's clusters.
    :raises TypeError: when ``guide`` is a model (it decodes rather than encodes) or, without ``fn``, has no
        ``encode``.
    """
    has_encode = callable(getattr(guide, "encode", None))
    if not has_encode and (fn is None or callable(getattr(guide, "decode", None))):
        kind = "a model (it has decode(), not encode())" if callable(getattr(guide, "decode", None)) else (
            "not a guide with encode(x)")
        raise TypeError(
            f"encode_data takes the guide, the module whose encode(x) returns q(z | x) (e.g. NormalGuide, VMFGuide); "
            f"got {type(guide).__name__}, {kind}: call encode_data(guide, data)"
        )
    fn = fn or (lambda *args: latent_location(encode_batch(guide, *args)))
    device = torch.device(device) if device is not None else module_device(guide)
    batches = as_batches(data, batch_size, shuffle=False, device=device, default_batch_size=512,
                         dtype=floating_dtype(guide))
    with evaluation_mode(guide):
        return torch.cat([_tensor_of(fn(*args)).cpu() for args in batches])


def _tensor_of(value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"encode_data's fn must return a tensor for each batch (one row per datum), got "
                        f"{type(value).__name__}; e.g. fn=guide.assign, or fn=lambda x: guide.encode(x).mean")
    return value


__all__ = ["encode_data"]

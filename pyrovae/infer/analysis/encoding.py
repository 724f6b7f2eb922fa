"""Encoding: q(z | x) of a batch, where it puts its mass, and a whole data set encoded batch by batch with the guide
in evaluation mode.

The location of q(z | x) is where it puts its mass for any family: the mean for a Gaussian, the point of a
point mass, and on the sphere the **mean direction** (the mean of a vMF lies inside the ball, at A_m(kappa) times
the direction, and is no point of the latent space).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyrovae.distributions.sphere import SphericalDistribution
from pyrovae.infer.arguments import check_device, floating_dtype
from pyrovae.infer.batches import as_batches, module_device
from pyrovae.infer.evaluation import evaluation_mode


def latent_location(q) -> torch.Tensor:
    """The location of a latent distribution ``q``: mean direction on the sphere; for a flow (a
    ``TransformedDistribution``, e.g. :class:`~pyrovae.guides.FlowGuide`'s), its base's mean pushed through the
    flows (the mean itself has no closed form); else its mean."""
    spherical = spherical_base(q)
    if spherical is not None:
        return spherical.loc
    if isinstance(q, torch.distributions.TransformedDistribution) and not isinstance(q, torch.distributions.LogNormal):
        location = latent_location(q.base_dist)
        for transform in q.transforms:
            location = transform(location)
        return location
    return q.mean


def spherical_base(q) -> SphericalDistribution | None:
    """The spherical distribution under ``q``'s wrappers (``Independent`` and the like), or None."""
    while hasattr(q, "base_dist"):
        q = q.base_dist
    return q if isinstance(q, SphericalDistribution) else None


def encode_batch(guide, x: torch.Tensor, cat=None, cont=None, *labels):
    """q(z | x) of a batch's arguments ``(x, cat, cont, y)``: the covariates go to the guide where given, labels
    never (a guide encodes x, not y)."""
    return guide.encode(x) if cat is None and cont is None else guide.encode(x, cat, cont)


@torch.no_grad()
def locate(guide: Callable, x: torch.Tensor, cat=None, cont=None) -> torch.Tensor:
    """``latent_location(guide.encode(x))`` in evaluation mode: ``(batch, latent size)`` (``cat``, ``cont``: the
    covariates, for a guide that encodes them)."""
    with evaluation_mode(guide):
        return latent_location(encode_batch(guide, x, cat, cont))


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
    (:func:`latent_location`: the mean, or the mean direction on the sphere). The guide is
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
    device = check_device(device) if device is not None else module_device(guide)
    batches = as_batches(data, batch_size, shuffle=False, device=device, default_batch_size=512,
                         dtype=floating_dtype(guide))
    with evaluation_mode(guide):
        return torch.cat([_tensor_of(fn(*args)).cpu() for args in batches])


def _tensor_of(value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"encode_data's fn must return a tensor for each batch (one row per datum), got "
                        f"{type(value).__name__}; e.g. fn=guide.assign, or fn=lambda x: guide.encode(x).mean")
    return value


__all__ = ["encode_data", "latent_location", "locate"]

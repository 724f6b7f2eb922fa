"""What researchers do with a trained pair's latent space: locate, reconstruct, interpolate.

The location of q(z | x) is where it puts its mass for any family: the mean for a Gaussian, the point of a
point mass, and on the sphere the **mean direction** (the mean of a vMF lies inside the ball, at A_m(kappa) times
the direction, and is no point of the latent space). Interpolation follows the geometry: great circles on the
sphere (slerp), straight lines otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyrovae.distributions.sphere import SphericalDistribution, slerp
from pyrovae.infer.evaluation import evaluation_mode
from pyrovae.infer.settings import check_integer


def latent_location(q) -> torch.Tensor:
    """The location of a latent distribution ``q``: mean direction on the sphere; for a flow (a
    ``TransformedDistribution``, e.g. :class:`~pyrovae.guides.FlowGuide`'s), its base's mean pushed through the
    flows (the mean itself has no closed form); else its mean."""
    spherical = _spherical(q)
    if spherical is not None:
        return spherical.loc
    if isinstance(q, torch.distributions.TransformedDistribution) and not isinstance(q, torch.distributions.LogNormal):
        location = latent_location(q.base_dist)
        for transform in q.transforms:
            location = transform(location)
        return location
    return q.mean


def _spherical(q) -> SphericalDistribution | None:
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
def reconstruct(model, guide, x: torch.Tensor, library: torch.Tensor | None = None, cat=None,
                cont=None) -> torch.Tensor:
    """The decoder's mean at the latent location of each datum, in evaluation mode.

    :param library: library sizes for count likelihoods with an observed library (default: the rows' totals).
    :param cat: for a model with covariates, the data's codes (``cont``: their continuous covariates).
    """
    with evaluation_mode(model, guide):
        z = latent_location(encode_batch(guide, x, cat, cont))
        return _decode_mean(model, z, x.sum(-1) if library is None else library, cat, cont)


def _decode_mean(model, z: torch.Tensor, library: torch.Tensor | None, cat=None, cont=None) -> torch.Tensor:
    if getattr(model, "covariates", None):
        return model.decode(z, library if model.likelihood.needs_library else None, cat, cont).mean
    if getattr(model.likelihood, "needs_library", False):
        return model.decode(z, library).mean
    return model.decode(z).mean


def interpolation_path(start: torch.Tensor, end: torch.Tensor, steps: int, spherical: bool) -> torch.Tensor:
    """``steps`` latent points from ``start`` to ``end`` (``(..., latent size)`` each, the same shape): great circle
    on the sphere, straight line otherwise. On the sphere a zero vector has no direction and is refused."""
    check_integer("steps", steps, 2)
    if start.shape != end.shape:
        raise ValueError(f"the path's end points must have one shape, got {tuple(start.shape)} and {tuple(end.shape)}")
    if spherical:
        for name, point in (("start", start), ("end", end)):
            if not bool((torch.linalg.vector_norm(point, dim=-1) > 0).all()):
                raise ValueError(f"the {name} point of a path on the sphere is a zero vector, which has no direction; "
                                 "give unit vectors (latent_location of a spherical q gives its mean direction)")
        return slerp(start, end, steps)
    t = torch.linspace(0.0, 1.0, steps, dtype=start.dtype, device=start.device).reshape(-1, *[1] * start.dim())
    return (1 - t) * start + t * end


@torch.no_grad()
def interpolate(model, guide, x_start: torch.Tensor, x_end: torch.Tensor, steps: int = 10,
                library: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder means along the latent path between two data (``(D,)`` each): ``(path (steps, latent),
    decoded (steps, D))``. Spherical latents follow the great circle between the two mean directions. Refuses
    batched end points (one path per call: loop over the pairs, or call :func:`interpolation_path` on their
    :func:`locate` d codes) and ``steps`` below 2.

    :param library: the library size of the decoded profiles for count likelihoods (default: the mean of the
        two data's totals).
    """
    check_integer("steps", steps, 2)
    for name, point in (("x_start", x_start), ("x_end", x_end)):
        if not isinstance(point, torch.Tensor) or point.dim() != 1:
            shape = tuple(point.shape) if isinstance(point, torch.Tensor) else type(point).__name__
            raise ValueError(f"interpolate draws one path between two data, each a (D,) vector; {name} is {shape}. "
                             "For several pairs, call interpolate once per pair, or interpolation_path(locate(guide, "
                             "x_starts), locate(guide, x_ends), steps, spherical) for the latent paths")
    if x_start.shape != x_end.shape:
        raise ValueError(f"x_start and x_end must have one shape, got {tuple(x_start.shape)} and {tuple(x_end.shape)}")
    with evaluation_mode(model, guide):
        q = guide.encode(torch.stack([x_start, x_end]))
        ends = latent_location(q)
        path = interpolation_path(ends[0], ends[1], steps, _spherical(q) is not None)
        size = 0.5 * (x_start.sum() + x_end.sum()) if library is None else torch.as_tensor(library)
        return path, _decode_mean(model, path, size.to(path).expand(steps))


__all__ = ["interpolate", "interpolation_path", "latent_location", "locate", "reconstruct"]

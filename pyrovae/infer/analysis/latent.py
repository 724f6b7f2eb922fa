"""What researchers do with a trained pair's latent space: reconstruct and interpolate.

Both decode at the location of q(z | x) (:func:`~pyrovae.infer.analysis.encoding.latent_location`: the mean
direction on the sphere, the mean elsewhere). Interpolation follows the geometry: great circles on the sphere
(slerp), straight lines otherwise.
"""

from __future__ import annotations

import torch

from pyrovae.distributions.sphere import slerp
from pyrovae.infer.analysis.encoding import encode_batch, latent_location, spherical_base
from pyrovae.infer.arguments import check_integer
from pyrovae.infer.evaluation import evaluation_mode


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
        path = interpolation_path(ends[0], ends[1], steps, spherical_base(q) is not None)
        size = 0.5 * (x_start.sum() + x_end.sum()) if library is None else torch.as_tensor(library)
        return path, _decode_mean(model, path, size.to(path).expand(steps))


__all__ = ["interpolate", "interpolation_path", "reconstruct"]

"""Each latent family's parameters in unconstrained form and back, as :class:`~pyrovae.infer.RefinedProposal`
refines them: a location, a log scale, a Cholesky factor, a direction, a log concentration and a log radius; a
diagonal Gaussian as the full-covariance one it is, a law on the sphere as a projected normal with full covariance;
a spread kept resolvable in its dtype; locations moved to other starts."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import distributions as td

from pyrovae.distributions import MultivariateNormal, PowerSpherical, ProjectedNormal, VonMisesFisher


def _cholesky(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return params["tril"].tril(-1) + torch.diag_embed(params["log_diagonal"].exp())


def _direction(vector: torch.Tensor) -> torch.Tensor:
    return vector / torch.linalg.vector_norm(vector, dim=-1, keepdim=True).clamp(min=1e-12)


def unconstrained(fn) -> dict[str, torch.Tensor]:
    """The parameters of ``fn`` as unconstrained tensors (their detached values), for optimisation."""
    if isinstance(fn, td.Independent):
        return unconstrained(fn.base_dist)
    if isinstance(fn, td.LogNormal) or isinstance(fn, td.Normal):
        return {"loc": fn.loc, "log_scale": fn.scale.log()}
    if isinstance(fn, td.TransformedDistribution):
        return unconstrained(fn.base_dist)
    if isinstance(fn, td.MultivariateNormal):
        tril = fn.scale_tril
        return {"loc": fn.loc, "tril": tril.tril(-1),
                "log_diagonal": tril.diagonal(dim1=-2, dim2=-1).log()}
    if isinstance(fn, (VonMisesFisher, PowerSpherical)):
        return {"direction": fn.loc, "log_concentration": fn.concentration.log()}
    if isinstance(fn, ProjectedNormal):  # the direction moves to other starts; the radius keeps the spread's scale
        radius = torch.linalg.vector_norm(fn.loc, dim=-1)
        tril = fn.scale_tril
        return {"direction": fn.loc / radius.unsqueeze(-1), "log_radius": radius.log(), "tril": tril.tril(-1),
                "log_diagonal": tril.diagonal(dim1=-2, dim2=-1).log()}
    if isinstance(fn, dist.Delta):
        raise ValueError("a point mass (DeltaGuide) has no density and no spread to refine; refit a guide with a "
                         "density to the frozen model first, e.g. refit_guide(model, NormalGuide(x_dim, z_dim), data)")
    raise NotImplementedError(
        f"RefinedProposal does not know {type(fn).__name__}; supported: Normal, LogNormal, MultivariateNormal, "
        "VonMisesFisher, PowerSpherical, ProjectedNormal, and Independent or TransformedDistribution of those"
    )


def rebuilt(fn, params: dict[str, torch.Tensor]):
    """``fn`` 's family with the parameters ``params`` (from :func:`unconstrained`)."""
    if isinstance(fn, td.Independent):
        return type(fn)(rebuilt(fn.base_dist, params), fn.reinterpreted_batch_ndims)
    if isinstance(fn, td.LogNormal):
        return type(fn)(params["loc"], params["log_scale"].exp())
    if isinstance(fn, td.TransformedDistribution):
        return type(fn)(rebuilt(fn.base_dist, params), fn.transforms)
    if isinstance(fn, td.Normal):
        return type(fn)(params["loc"], params["log_scale"].exp())
    if isinstance(fn, td.MultivariateNormal):
        return type(fn)(params["loc"], scale_tril=_cholesky(params))
    if isinstance(fn, ProjectedNormal):
        loc = params["log_radius"].exp().unsqueeze(-1) * _direction(params["direction"])
        return type(fn)(loc, _cholesky(params))
    return type(fn)(_direction(params["direction"]), params["log_concentration"].exp())


def resolvable(params: dict[str, torch.Tensor]) -> None:
    """Widen, in place, a refined Gaussian's spread where it has fallen below what its dtype can resolve.

    The optimum of a near-flat or near-singular objective can leave a direction with a spread of ~0 (seen: a
    full-covariance refinement of a GMVAE on CellBench counts whose smallest standard deviation was 0 beside a largest
    of 12). A draw rounded to float32 then lies off that sliver, and the proposal's density at its own draw
    underflows to exp(-1e21): importance weights of +1e21. Each standard deviation is kept at least
    ``64 eps (|loc| + 1)`` (the draws' rounding, with room; for a projected normal, its Gaussian's mean's length) and,
    for a full covariance, at least 1e-4 times the largest (its Cholesky solve stays accurate in float32): the
    covariance gets ``delta I`` added, which only widens the proposal, and leaves every direction far above the floor
    as it was."""
    if "loc" in params:
        loc = params["loc"]
        resolution = 64 * torch.finfo(loc.dtype).eps * (loc.detach().abs().amax(-1, keepdim=True) + 1)
    elif "log_radius" in params:  # a projected normal: its draws are rounded on the scale of its mean's length
        radius = params["log_radius"].detach().exp().unsqueeze(-1)
        resolution = 64 * torch.finfo(radius.dtype).eps * (radius + 1)
    else:  # a vMF or Power Spherical: its concentration is refined on its own scale
        return
    if "log_scale" in params:
        params["log_scale"].copy_(torch.maximum(params["log_scale"], resolution.log()))
    elif "tril" in params:
        covariance = _cholesky(params).double()
        covariance = covariance @ covariance.mT
        trace = covariance.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)
        delta = 1e-8 * trace + resolution.double() ** 2
        eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
        wider = torch.linalg.cholesky(covariance + delta.unsqueeze(-1) * eye)
        params["tril"].copy_(wider.tril(-1).to(params["tril"].dtype))
        params["log_diagonal"].copy_(wider.diagonal(dim1=-2, dim2=-1).log().to(params["log_diagonal"].dtype))


def respread(params: dict[str, torch.Tensor], log_factor: torch.Tensor, index: int) -> dict[str, torch.Tensor]:
    """``params`` (from :func:`unconstrained`) with each datum's spread multiplied by ``exp(log_factor)``
    ``(N,)``, the data along dimension ``index`` of every parameter: a Gaussian's scale or Cholesky factor times the
    factor, a von Mises-Fisher or Power Spherical concentration over its square (an inverse variance), a projected
    normal's mean shortened by it (its direction's spread about the mode is about the Gaussian's over the mean's
    length, while that spread is well below the sphere's; a mean shortened far makes the law uniform)."""

    def shaped(value: torch.Tensor) -> torch.Tensor:
        return log_factor.reshape((1,) * index + (-1,) + (1,) * (value.dim() - index - 1)).to(value)

    out = dict(params)
    if "log_radius" in params:
        out["log_radius"] = params["log_radius"] - shaped(params["log_radius"])
    elif "log_concentration" in params:
        out["log_concentration"] = params["log_concentration"] - 2 * shaped(params["log_concentration"])
    elif "log_scale" in params:
        out["log_scale"] = params["log_scale"] + shaped(params["log_scale"])
    else:
        out["log_diagonal"] = params["log_diagonal"] + shaped(params["log_diagonal"])
        out["tril"] = params["tril"] * shaped(params["tril"]).exp()
    return out


def direction_slopes(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor | None]) -> torch.Tensor | None:
    """The derivative of an objective along each coordinate's spread, ``(..., d)`` like the location: by the log of a
    factor on the coordinate's scale (a diagonal Gaussian), or on its row of the Cholesky factor (a full covariance),
    from the objective's gradients ``grads`` in :func:`unconstrained`'s parameters; None for a family without a
    location in coordinates (the sphere's)."""
    if "loc" not in params:
        return None
    if "log_scale" in params:
        slope = grads.get("log_scale")
        return None if slope is None else slope.expand_as(params["loc"])
    diagonal, off = grads.get("log_diagonal"), grads.get("tril")
    if diagonal is None:
        return None
    return diagonal if off is None else diagonal + (params["tril"].tril(-1) * off).sum(-1)


def directions_respread(params: dict[str, torch.Tensor], log_factor: torch.Tensor) -> dict[str, torch.Tensor]:
    """``params`` of a Gaussian (from :func:`unconstrained`) with coordinate j's spread multiplied by
    ``exp(log_factor[..., j])`` (shaped like the location): a diagonal scale's entry, or row j of the Cholesky
    factor (the covariance D S D for D = diag(factor))."""
    out = dict(params)
    if "log_scale" in params:
        out["log_scale"] = params["log_scale"] + log_factor
    else:
        out["log_diagonal"] = params["log_diagonal"] + log_factor
        out["tril"] = params["tril"] * log_factor.exp().unsqueeze(-1)
    return out


def per_datum(params: dict[str, torch.Tensor], index: int | None, num_rows: int) -> bool:
    """Whether every parameter in ``params`` holds ``num_rows`` data along dimension ``index`` (one value per datum,
    not broadcast)."""
    return index is not None and all(v.dim() > index and v.shape[index] == num_rows for v in params.values())


def as_full_covariance(fn, name: str):
    """The full-covariance member of the family around ``fn``: a diagonal Gaussian ``Normal(loc, scale).to_event(1)``
    as the MultivariateNormal it is; a von Mises-Fisher law on S^(m-1) as the isotropic projected normal of about its
    spread, ``ProjectedNormal(sqrt(kappa) mu, I)`` (both fall as e^(-kappa theta^2 / 2) at an angle theta from the
    mode mu, for a large concentration kappa; a Power Spherical's (1 + cos theta)^kappa as e^(-kappa theta^2 / 4), so
    it takes ``sqrt(kappa / 2)``), whose Cholesky factor can then turn it anisotropic; a full-covariance or
    scalar Gaussian, or a projected normal, as it is. Any other family is refused (a LogNormal, a flow: there is no
    full-covariance member to fill in)."""
    if isinstance(fn, td.Independent) and isinstance(fn.base_dist, td.Normal) and fn.reinterpreted_batch_ndims == 1:
        return MultivariateNormal(fn.base_dist.loc, scale_tril=torch.diag_embed(fn.base_dist.scale))
    if type(fn) in (td.MultivariateNormal, dist.MultivariateNormal):  # the same law, drawn without copies
        return MultivariateNormal(fn.loc, scale_tril=fn._unbroadcasted_scale_tril)
    full = (td.MultivariateNormal, ProjectedNormal)
    if isinstance(fn, full) or (isinstance(fn, td.Independent) and isinstance(fn.base_dist, full)) or (
            isinstance(fn, td.Normal) and not fn.event_shape):
        return fn
    if isinstance(fn, (VonMisesFisher, PowerSpherical)):  # (1 + cos theta)^kappa ~ e^(-kappa theta^2 / 4)
        precision = fn.concentration / 2 if isinstance(fn, PowerSpherical) else fn.concentration
        # a concentration of 0 (the uniform law) keeps a direction to refine: a radius of 1e-3 is uniform to 1e-3
        return ProjectedNormal(precision.sqrt().clamp(min=1e-3).unsqueeze(-1) * fn.loc)
    if isinstance(fn, td.Independent) and isinstance(fn.base_dist, (VonMisesFisher, PowerSpherical)):
        return dist.Independent(as_full_covariance(fn.base_dist, name), fn.reinterpreted_batch_ndims)
    family = type(fn.base_dist if isinstance(fn, td.Independent) else fn).__name__
    raise ValueError(
        f"full_covariance=True refines a diagonal Gaussian q(z | x) as a full-covariance Gaussian (and a law on the "
        f"sphere as a projected normal with full covariance), but the guide's site {name!r} is a {family}, which has "
        "no full-covariance member to refine; use RefinedProposal(full_covariance=False), which refines that "
        "family's own parameters"
    )


def base_point(fn, point: torch.Tensor) -> torch.Tensor:
    """The location parameter of ``fn`` 's family that puts its mode near ``point`` (a value of the latent):
    the point itself, its log for a LogNormal, its preimage under a flow's transforms."""
    if isinstance(fn, td.Independent):
        return base_point(fn.base_dist, point)
    if isinstance(fn, td.LogNormal):
        return point.log()
    if isinstance(fn, td.TransformedDistribution):
        for transform in reversed(fn.transforms):
            point = transform.inv(point)
        return base_point(fn.base_dist, point)
    return point


def moved_to_starts(fn, values: dict[str, torch.Tensor], points: torch.Tensor, index: int | None,
                     num_starts: int, max_plate_nesting: int, label: torch.Tensor | None = None
                     ) -> dict[str, torch.Tensor]:
    """``values`` (the encoder's parameters on the batch repeated ``num_starts`` times) with the location of
    repeat m >= 1 moved to ``points[m - 1]`` ``(num_starts - 1, B, *event)``; unchanged where that cannot be done
    (a flow without an inverse). With one enumerated dimension (a GMVAE's q(z | x, y)) and the ``label``
    ``(num_starts - 1, B)`` each point was drawn with, only the q(z | x, y = label) of each start is moved: a
    point drawn from p(z | y) is a start for that y alone."""
    key = "direction" if "direction" in values else "loc"
    location = values[key]
    if index is None or location.dim() <= index or location.shape[index] % num_starts:
        return values
    batch_size = location.shape[index] // num_starts
    # the points in the repeated batch's layout (a conditional flow's transforms expect it); repeat 0 is a filler
    layout = torch.cat([points[:1], points]).flatten(0, 1)  # (M * B, *event)
    try:
        base = base_point(fn, layout).unflatten(0, (num_starts, batch_size))[1:]
    except (NotImplementedError, RuntimeError, ValueError):  # a transform without an inverse at these shapes
        return values
    lead, rest = location.shape[:index], location.shape[index + 1:]
    if tuple(base.shape[1:]) != (batch_size, *rest):
        return values
    moved = location.unflatten(index, (num_starts, batch_size)).movedim(index, 0).clone()  # (M, *lead, B, *rest)
    base = base.reshape(num_starts - 1, *(1,) * len(lead), batch_size, *rest).to(moved)
    enumerated = len(lead) - max_plate_nesting  # dimensions left of the samples plate: enumerated values
    if label is not None and enumerated == 1:
        values_of = torch.arange(lead[0], device=moved.device).reshape(1, -1, *(1,) * (len(lead) - 1), 1)
        chosen = values_of == label.reshape(num_starts - 1, 1, *(1,) * (len(lead) - 1), batch_size)
        moved[1:] = torch.where(chosen.reshape(chosen.shape + (1,) * len(rest)), base, moved[1:])
    else:
        moved[1:] = base
    return {**values, key: moved.movedim(0, index).flatten(index, index + 1)}


__all__ = ["as_full_covariance", "base_point", "direction_slopes", "directions_respread", "moved_to_starts",
           "per_datum", "rebuilt", "resolvable", "respread", "unconstrained"]

"""Shared pieces of the distributions on the unit sphere S^(m-1) in R^m: area, uniform tangent draws, and
the Householder reflection that carries the north pole e1 to a mean direction."""

from __future__ import annotations

import math
import warnings

import torch
from pyro.distributions import TorchDistribution, constraints

from pyrovae.distributions.shapes import expanded_batch_shape


def log_sphere_area(m: int) -> float:
    """log of the surface area of S^(m-1) in R^m: log(2 pi^(m/2) / Gamma(m/2))."""
    return math.log(2.0) + 0.5 * m * math.log(math.pi) - math.lgamma(0.5 * m)


def uniform_directions(shape: torch.Size, dim: int, dtype, device, generator=None) -> torch.Tensor:
    """Uniform draws on S^(dim-1), shape ``shape + (dim,)`` (normalised Gaussians; dim 1 gives +-1)."""
    x = torch.randn(*shape, dim, dtype=dtype, device=device, generator=generator)
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=torch.finfo(dtype).tiny)


def unexpanded(t: torch.Tensor) -> torch.Tensor:
    """``t`` without the copies of an ``expand``: every broadcast dimension (stride 0) cut to size 1.

    Functions of the concentration alone (Bessel normalisers) are computed on this and broadcast back, so
    drawing S samples for a batch of B data costs B evaluations, not S x B.
    """
    if not torch.jit.is_tracing():  # (entering catch_warnings resets which warnings were shown: only while tracing)
        return t[tuple(slice(0, 1) if stride == 0 and size > 1 else slice(None)
                       for stride, size in zip(t.stride(), t.shape))]
    with warnings.catch_warnings():  # traced sizes: the layout of an expand is the trace's structure, fixed per trace
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        index = tuple(slice(0, 1) if stride == 0 and size > 1 else slice(None)
                      for stride, size in zip(t.stride(), t.shape))
    return t[index]


def _off_sphere(x: torch.Tensor, what: str) -> str | None:
    """The message naming the first row of ``x`` that is not a unit vector (at the sphere constraint's tolerance,
    about 10 eps sqrt(m) in x's dtype), with its norm and the fix; None when every row is one."""
    if not x.is_floating_point() or x.numel() == 0:
        return None
    off = ~constraints.sphere.check(x)
    if not bool(off.any()):
        return None
    at = tuple(int(i) for i in off.nonzero()[0])
    norm = float(torch.linalg.norm(x[at], dim=-1)) if at else float(torch.linalg.norm(x, dim=-1))
    close = abs(norm - 1) < 1e-5 and x.dtype == torch.float64
    return (f"{what} must be unit vectors (the sphere S^{x.shape[-1] - 1}, their support), and "
            + (f"the one at index {at}" if at else "this one") + f" has norm {norm!r}; normalise in the dtype used: "
            "x / x.norm(dim=-1, keepdim=True)"
            + (" (a float32 unit vector cast to float64 is off by about 1e-7: normalise after the cast)" if close
               else ""))


def _bad_concentration(concentration: torch.Tensor, arg_constraints: dict, name: str) -> str | None:
    """The message naming the first concentration outside its constraint, with its value and the fix; None when
    every one is inside (or is NaN, which torch's own message names)."""
    constraint = arg_constraints["concentration"]
    off = ~constraint.check(concentration) & ~torch.isnan(concentration)
    if not bool(off.any()):
        return None
    at = tuple(int(i) for i in off.nonzero()[0])
    value = float(concentration[at])
    where = f" at index {at}" if at else ""
    if value == 0:
        return (f"{name}: the concentration must be positive, got 0{where}; a concentration of 0 is the uniform "
                "distribution on the sphere: use HypersphericalUniform(m) for it (PowerSpherical takes 0), and a "
                "floor for a learnt one (softplus(x) + 1e-3)")
    kind = "positive" if constraint is constraints.positive else "non-negative"
    return (f"{name}: the concentration must be {kind}, got {value:.7g}"
            f"{where}; a learnt one is usually softplus(x) (+ a floor)")


def row_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The dot products of the last dimension, as a product with a vector of ones: a BLAS matrix-vector product,
    where ``vecdot`` (a reduction over a short last dimension) is twice as slow on the CPU."""
    return (x * y) @ torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)


def tangent_gaussians(shape: torch.Size, m: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard normals ``g`` of shape ``shape + (m,)`` with first coordinate 0, and ``|g|^2 / 2``.

    ``g / |g|`` is a uniform direction in the tangent space of S^(m-1) at e1, and ``|g|^2 / 2`` is a
    Gamma((m-1)/2) variate independent of that direction: the Power Spherical sampler uses it as one of the two
    gammas of its Beta draw, and the von Mises-Fisher sampler as its gamma proposal's first variate.

    A draw of no direction, ``g = 0``, takes ``+-e2`` (and ``|g|^2 / 2 = 1/2``) instead, the sign that of the first
    normal drawn (independent of the others, and otherwise unused): ``torch.randn`` returns exactly 0.0 about once
    in 2.5e7 float32 draws, so on the circle (m = 2, one tangent coordinate) a sampler would put about one point in
    2.5e7 off the sphere, at ``w loc``. The direction stays uniform, and nothing more is drawn.
    """
    g = torch.randn(*shape, m, dtype=dtype, device=device)
    if m == 1:  # no tangent space
        g[..., 0] = 0.0
        return g, 0.5 * row_dot(g, g)
    sign = 1.0 - 2.0 * (g[..., 0] < 0).to(dtype)
    g[..., 0] = 0.0
    half_sq_norm = 0.5 * row_dot(g, g)
    no_direction = half_sq_norm == 0  # a select, not a branch: no host sync, nothing for a compiled step to break on
    g[..., 1] = torch.where(no_direction, sign, g[..., 1])
    return g, half_sq_norm + 0.5 * no_direction.to(dtype)


def rotate_from_north_pole(loc: torch.Tensor, w: torch.Tensor, one_minus_w: torch.Tensor, g: torch.Tensor,
                           half_sq_norm: torch.Tensor, one_plus_w: torch.Tensor | None = None) -> torch.Tensor:
    """The point ``y = w e1 + sqrt(1 - w^2) g / |g|`` carried by a reflection that sends e1 to ``loc``.

    ``w`` is the cosine to the mean direction and ``one_minus_w`` its complement computed without
    cancellation (what keeps samples accurate at high concentration; ``one_plus_w`` likewise near the antipode,
    default ``2 - one_minus_w``); ``g, half_sq_norm`` come from
    :func:`tangent_gaussians`. The single Householder reflection ``I - 2 u u^T / |u|^2`` with
    ``u = e1 - loc`` degenerates as ``loc`` nears e1 (|u| -> 0: the reflection axis, and the pathwise
    gradient, blow up). Here the hemisphere of ``loc`` picks one of two maps, each with ``|u|^2 >= 2``: for
    ``loc_1 < 0`` that reflection; for ``loc_1 >= 0`` first e1 -> -e1 (negate the first coordinate), then
    the reflection with ``u = e1 + loc`` that sends -e1 to ``loc`` (the identity at ``loc = e1``). Both send
    e1 to ``loc`` and the tangent law is rotation invariant, so the samples have the right distribution
    with bounded, finite gradients everywhere, ``loc = +-e1`` included.

    With ``u = e1 + s loc`` (s = +-1) and unit ``loc``, ``|u|^2 = 2 u_1``, so the reflection is
    ``z = a g - c s loc + (y_1 - c) e1`` with ``a = sqrt(1 - w^2) / |g|`` and ``c = y.u / u_1``: two passes
    over the (..., m) data besides the dot product ``g.loc``, which is what makes large m fast.
    """
    if one_plus_w is None:
        one_plus_w = 2.0 - one_minus_w
    # clamped above 0: at w = +-1 exactly (a float32 draw can land there) sqrt's derivative is infinite, and times
    # dw/dkappa = 0 it would make a NaN gradient; the clamp's is 0 there, and the value moves by 1e-19 at most
    sine = torch.sqrt((one_minus_w * one_plus_w).clamp(min=torch.finfo(one_minus_w.dtype).tiny))
    first = loc[..., 0]
    sign = 1 - 2 * (first < 0).to(loc.dtype)  # +-1 (an arithmetic select: torch.where is slow on the CPU)
    y_first = -sign * w
    u_first = 1.0 + sign * first  # >= 1
    a = sine * torch.rsqrt(2.0 * half_sq_norm).nan_to_num(posinf=0.0)  # g = 0 only when m = 1 (no tangent)
    c = (y_first * u_first + sign * a * row_dot(g, loc)) / u_first
    z = torch.addcmul(a.unsqueeze(-1) * g, (-c * sign).unsqueeze(-1), loc)
    z[..., 0] += y_first - c
    return z


def concentration_batch_shape(loc_shape, concentration_shape) -> torch.Size:
    """The batch shape of a spherical distribution with a mean direction of shape ``loc_shape = (..., m)`` and a
    concentration of shape ``concentration_shape``, and the rule that decides it.

    The concentration broadcasts with ``loc_shape[:-1]``, the batch shape of the mean directions, as in torch;
    but a concentration with at least as many dimensions as ``loc`` whose last one is 1, such as ``(n, 1)`` for
    ``loc`` of shape ``(n, m)`` (s-vae-pytorch's layout), has that last dimension aligned with ``loc``'s event
    dimension, and it is dropped: ``(n, 1)`` with ``(n, m)`` is a batch of ``n``, never the ``(n, n)`` that plain
    broadcasting would make. (For an outer product of concentrations and directions, give ``loc`` a leading
    dimension: ``loc[None]`` of shape ``(1, n, m)`` with ``(k, 1)`` is a batch of ``(k, n)``.)
    """
    loc_shape, concentration_shape = torch.Size(loc_shape), torch.Size(concentration_shape)
    if len(concentration_shape) >= len(loc_shape) and concentration_shape[-1:] == (1,):
        concentration_shape = concentration_shape[:-1]
    try:
        return torch.broadcast_shapes(loc_shape[:-1], concentration_shape)
    except RuntimeError:
        raise ValueError(
            f"a concentration of shape {tuple(concentration_shape)} does not broadcast with mean directions of shape "
            f"{tuple(loc_shape)} (batch shape {tuple(loc_shape[:-1])}): give one concentration per direction, of "
            f"shape {tuple(loc_shape[:-1])} or {tuple(loc_shape[:-1]) + (1,)}"
        ) from None


class SphericalDistribution(TorchDistribution):
    """Base of the distributions on S^(m-1) parameterised by a mean direction ``loc (..., m)`` and a
    concentration ``(...)``: shapes, broadcasting, ``dim`` and ``expand``. Subclasses add the law.

    The concentration may also be given as ``(..., 1)``, one per row of ``loc`` as s-vae-pytorch writes it; the
    trailing 1 is dropped (:func:`concentration_batch_shape` states the rule), so the batch shape is never the
    outer product of the two.
    """

    support = constraints.sphere
    has_rsample = True

    def __init__(self, loc: torch.Tensor, concentration: torch.Tensor, validate_args=None):
        if torch.jit.is_tracing():
            with warnings.catch_warnings():  # under torch.jit.trace sizes are traced values; m is fixed per trace
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                self._dim = int(loc.shape[-1]) if loc.dim() >= 1 else 0
        else:  # (catch_warnings resets which warnings were shown once: only while tracing)
            self._dim = int(loc.shape[-1]) if loc.dim() >= 1 else 0
        if not loc.dtype.is_floating_point:
            raise TypeError(f"loc must be a floating-point tensor, got {loc.dtype}; use loc.float() or loc.double()")
        if self._dim < 2:
            raise ValueError(f"loc must have shape (..., m) with m >= 2, got {tuple(loc.shape)}")
        if isinstance(concentration, torch.Tensor):
            concentration = concentration.to(dtype=loc.dtype, device=loc.device)
        else:
            concentration = torch.as_tensor(concentration, dtype=loc.dtype, device=loc.device)
        batch_shape = concentration_batch_shape(loc.shape, concentration.shape)
        if concentration.dim() > len(batch_shape):  # the (..., 1) layout
            concentration = concentration.squeeze(-1)
        self.loc = loc.expand(batch_shape + loc.shape[-1:])
        self.concentration = concentration.expand(batch_shape)
        try:
            super().__init__(batch_shape, loc.shape[-1:], validate_args=validate_args)
        except ValueError:  # torch's message prints the tensor: a location off the sphere is named with its norm
            name = type(self).__name__
            message = None if torch.jit.is_tracing() else (
                _off_sphere(loc, f"{name}: loc") or _bad_concentration(concentration, self.arg_constraints, name))
            if message is None:
                raise
            raise ValueError(message) from None
        if self._validate_args and not torch.jit.is_tracing() and not bool(torch.isfinite(concentration).all()):
            raise ValueError(
                f"{type(self).__name__}: the concentration must be finite, got {concentration.max().item()}; an "
                "infinite concentration is a point mass at loc (use pyro.distributions.Delta(loc, event_dim=1))"
            )

    def _validate_sample(self, value: torch.Tensor) -> None:
        try:
            super()._validate_sample(value)
        except ValueError:  # a point off the sphere (not another shape) is named with its norm and the fix
            message = (_off_sphere(value, f"{type(self).__name__}.log_prob: the points")
                       if not torch.jit.is_tracing() and isinstance(value, torch.Tensor) and value.dim() >= 1
                       and value.shape[-1:] == self.event_shape else None)
            if message is None:
                raise
            raise ValueError(message) from None

    @classmethod
    def infer_shapes(cls, loc, concentration=()) -> tuple[torch.Size, torch.Size]:
        """``(batch_shape, event_shape)`` of a distribution built from tensors of these shapes, by the rule of
        :func:`concentration_batch_shape`."""
        loc = torch.Size(loc)
        if len(loc) < 1:
            raise ValueError(f"loc must have shape (..., m), got {tuple(loc)}")
        return concentration_batch_shape(loc, concentration), loc[-1:]

    @property
    def dim(self) -> int:
        """The ambient dimension m (samples lie on S^(m-1) in R^m), a Python int."""
        return self._dim

    @property
    def mode(self) -> torch.Tensor:
        """The mean direction ``loc``, where the density is highest (every point, at concentration 0)."""
        return self.loc

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = expanded_batch_shape(self, batch_shape)
        new._dim = self._dim
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.concentration = self.concentration.expand(batch_shape)
        TorchDistribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


def _direction(vector: torch.Tensor, name: str) -> torch.Tensor:
    """``vector / |vector|`` along the last dimension, refusing a zero, infinite or NaN vector by its index."""
    norm = torch.linalg.vector_norm(vector, dim=-1, keepdim=True)
    bad = ~(torch.isfinite(norm) & (norm > 0)).squeeze(-1)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0]) if bad.dim() else ()
        raise ValueError(f"slerp: {name} at index {index} has norm {norm.squeeze(-1)[index].item()}; a direction must "
                         "be a non-zero, finite vector (a zero vector has no direction on the sphere)")
    return vector / norm


def slerp(start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` points along the great circle from ``start`` to ``end`` at constant angular speed (Shoemake 1985).

    :param start, end: directions ``(..., m)`` (normalised here): non-zero and finite, else a ``ValueError``
        naming the row (a zero vector has no direction).
    :param int steps: the number of points, at least 1.
    :returns: ``(steps, ..., m)`` unit vectors; nearly equal directions fall back to normalised linear interpolation
        and antipodal ones (no unique great circle) are an error.
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"slerp's steps is the number of points, an integer >= 1, got {steps!r}")
    steps = int(steps)
    start, end = _direction(start, "start"), _direction(end, "end")
    cosine = (start * end).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    if bool((cosine < -1 + 1e-6).any()):
        raise ValueError("slerp between antipodal directions is not unique; pick other end points")
    omega = torch.arccos(cosine)
    t = torch.linspace(0.0, 1.0, steps, dtype=start.dtype, device=start.device).reshape(-1, *[1] * start.dim())
    small = omega < 1e-4
    sin_omega = torch.where(small, torch.ones_like(omega), torch.sin(omega))
    weights_start = torch.where(small, 1 - t, torch.sin((1 - t) * omega) / sin_omega)
    weights_end = torch.where(small, t, torch.sin(t * omega) / sin_omega)
    path = weights_start * start + weights_end * end
    return path / torch.linalg.vector_norm(path, dim=-1, keepdim=True)

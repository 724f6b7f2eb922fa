"""The likelihood interface and the registry that maps names to likelihoods."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import constraints

_REGISTRY: dict[str, Callable[..., Likelihood]] = {}


class Likelihood(nn.Module):
    """The observation model p(x | z) of a decoder.

    A likelihood says how many decoder outputs it needs per feature (:attr:`num_outputs`) and turns
    the decoder's output ``(..., num_outputs * x_dim)`` into a distribution over ``x`` with event shape
    ``(x_dim,)``. It is an :class:`~torch.nn.Module` so that it can own learned parameters (a
    per-feature scale, a per-gene dispersion), which then train with the model.

    Subclasses set :attr:`num_outputs` and :attr:`support` and implement :meth:`forward`; they may
    override :meth:`setup` (called once with ``x_dim`` by the model) and :meth:`check_data`.
    """

    num_outputs: int = 1
    support: constraints.Constraint = constraints.real
    x_dim: int | None = None
    needs_library: bool = False  # count likelihoods scale their mean by the cell's library size
    library: str = "none"

    def setup(self, x_dim: int) -> None:
        """Bind the likelihood to ``x_dim`` features; create per-feature parameters here."""
        self.x_dim = int(x_dim)

    def split(self, outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split decoder output ``(..., num_outputs * x_dim)`` into ``num_outputs`` tensors ``(..., x_dim)``."""
        expected = self.num_outputs * self.x_dim
        if not torch.jit.is_tracing() and outputs.shape[-1] != expected:
            raise ValueError(
                f"{type(self).__name__} needs {self.num_outputs} decoder output(s) per feature, i.e. "
                f"{expected} for x_dim={self.x_dim}, but the decoder produced {outputs.shape[-1]}"
            )
        return outputs.chunk(self.num_outputs, dim=-1) if self.num_outputs > 1 else (outputs,)

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the problem when ``x`` is outside this likelihood's support."""

    def forward(self, outputs: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"x_dim={self.x_dim}"


def register_likelihood(name: str, *, overwrite: bool = False
                        ) -> Callable[[Callable[..., Likelihood]], Callable[..., Likelihood]]:
    """Decorator registering a likelihood class (or factory) under ``name`` for :func:`get_likelihood`.

    A name that is already registered (``"bernoulli"``, ``"nb"``, ... or one of your own) is refused with a
    ValueError, so that a new likelihood never silently replaces another in every model built by name afterwards;
    pass ``overwrite=True`` to replace it on purpose. Registering the same class again (a module reloaded in a
    notebook) is allowed.

    Example::

        @register_likelihood("laplace")
        class Laplace(Likelihood):
            ...
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_likelihood needs a non-empty string name, got {name!r}")

    def decorator(factory: Callable[..., Likelihood]) -> Callable[..., Likelihood]:
        if not callable(factory):
            raise TypeError(f"register_likelihood({name!r}) decorates a Likelihood class or factory, got "
                            f"{type(factory).__name__}")
        existing = _REGISTRY.get(name)
        if existing is not None and not overwrite and not _same_definition(existing, factory):
            raise ValueError(
                f"the likelihood name {name!r} is already registered ({_describe(existing)}); choose another name, "
                f"or pass register_likelihood({name!r}, overwrite=True) to replace it"
            )
        _REGISTRY[name] = factory
        return factory

    return decorator


def _same_definition(a, b) -> bool:
    """The same class or function defined again (its module reloaded)."""
    return all(getattr(a, attr, None) == getattr(b, attr, object()) for attr in ("__module__", "__qualname__"))


def _describe(factory) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"


def likelihood_names() -> list[str]:
    """The registered likelihood names."""
    return sorted(_REGISTRY)


def get_likelihood(spec: str | Likelihood, x_dim: int, **options) -> Likelihood:
    """A likelihood bound to ``x_dim`` features, from a registered name or an instance.

    :param spec: a name from :func:`likelihood_names` or a :class:`Likelihood` instance.
    :param int x_dim: the number of observed features.
    :param options: keyword arguments for the named likelihood's constructor.
    """
    if isinstance(spec, Likelihood):
        if options:
            raise ValueError("likelihood options are given to the constructor when passing a Likelihood instance")
        likelihood = spec
    elif isinstance(spec, str):
        try:
            factory = _REGISTRY[spec]
        except KeyError:
            raise ValueError(
                f"unknown likelihood {spec!r}; expected one of {likelihood_names()} or a Likelihood instance "
                "(register new ones with pyrovae.likelihoods.register_likelihood)"
            ) from None
        likelihood = factory(**options)
    else:
        raise TypeError(f"likelihood must be a name or a Likelihood instance, got {type(spec).__name__}")
    if likelihood.x_dim is not None and likelihood.x_dim != x_dim:
        raise ValueError(f"this likelihood instance is bound to x_dim={likelihood.x_dim}, not {x_dim}")
    if likelihood.x_dim is None:
        likelihood.setup(x_dim)
    return likelihood


def first_bad_index(mask: torch.Tensor) -> tuple[int, ...]:
    """The index of the first True entry of a boolean mask, as a tuple (for error messages)."""
    return tuple(int(i) for i in mask.nonzero()[0])

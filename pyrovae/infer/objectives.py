"""Training objectives: Pyro's ELBOs by name or instance, their traced (JIT) forms, and IWAE.

Every objective is called as ``objective(x, scales, *inputs)`` (``inputs``: the covariates ``cat, cont`` where the
data carry them) with ``scales = tensor([data_scale, kl_weight])``:
the ``"data"`` plate's sites are scaled by ``data_scale`` (data set size / batch size, as a subsampled
plate would) and the latent sites by ``kl_weight`` (KL warm-up, beta-VAE, or 0 for a plain
auto-encoder). Both travel as one tensor argument, so a traced objective is not traced again when
they change.

Why our own JIT: Pyro's ``JitTrace_ELBO`` looks parameters up by name in the global parameter store,
while pyrovae keeps parameters in the modules. We trace ``elbo.differentiable_loss`` over the
model and guide modules with :func:`torch.jit.trace` instead, once per batch shape; the random draws
are traced as random ops, so each call samples afresh.
"""

from __future__ import annotations

import math
import warnings

import pyro.infer as pinfer
import torch
from pyro.poutine.messenger import Messenger
from torch import nn

from pyrovae.infer.importance import DATA_PLATE, log_importance_weights

ELBO_NAMES = ("auto", "trace", "jit", "enum", "jit_enum", "meanfield", "iwae")


class ObjectiveScale(Messenger):
    """Scale the log-density of sites in the ``"data"`` plate by ``data_scale`` and of latent sites by
    ``latent_scale`` (both may be tensors)."""

    def __init__(self, data_scale, latent_scale) -> None:
        super().__init__()
        self.data_scale = data_scale
        self.latent_scale = latent_scale

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample":
            return
        if self.data_scale is not None and any(f.name == DATA_PLATE for f in msg["cond_indep_stack"]):
            msg["scale"] = msg["scale"] * self.data_scale
        if self.latent_scale is not None and not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.latent_scale


class _TraceableTrace_ELBO(pinfer.Trace_ELBO):
    """``Trace_ELBO`` whose loss value stays a tensor under ``torch.jit.trace``.

    Pyro's ``Trace_ELBO.differentiable_loss`` returns ``loss + (surrogate - float(surrogate))`` with the loss
    summed as Python floats; a trace freezes both floats at their values while tracing. For a guide with a
    non-reparameterised site (the GMVAE's y without enumeration) the traced value is then wrong on every later
    step, although its gradient is right. Here the value is the ELBO's own tensor, as in ``JitTrace_ELBO``.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = surrogate = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            _, surrogate_particle = self._differentiable_loss_particle(model_trace, guide_trace)
            elbo_particle = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
            loss = loss - elbo_particle.detach() / self.num_particles
            surrogate = surrogate + surrogate_particle / self.num_particles
        return loss + (surrogate - surrogate.detach())


class _ELBOObjective(nn.Module):
    """``elbo.differentiable_loss`` of the scaled model and guide."""

    def __init__(self, model, guide, elbo) -> None:
        super().__init__()
        self.model, self.guide, self.elbo = model, guide, elbo

    def forward(self, x: torch.Tensor, scales: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        scale = ObjectiveScale(scales[0], scales[1])
        return self.elbo.differentiable_loss(scale(self.model), scale(self.guide), x, *inputs)


class _RenyiObjective(nn.Module):
    """The variational Renyi bound of Li & Turner (2016), per datum:
    -sum_i 1/(1 - alpha) log mean_s w[s, i]^(1 - alpha). ``alpha = 0`` is the importance-weighted bound of
    Burda et al. (2016); ``alpha -> 1`` tends to the ELBO."""

    def __init__(self, model, guide, num_particles: int, max_plate_nesting: int, alpha: float = 0.0) -> None:
        super().__init__()
        self.model, self.guide = model, guide
        self.num_particles, self.max_plate_nesting, self.alpha = num_particles, max_plate_nesting, float(alpha)

    def forward(self, x: torch.Tensor, scales: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        scale = ObjectiveScale(None, scales[1])  # the data scale multiplies the bound, not the weights
        log_weights = log_importance_weights(
            scale(self.model), scale(self.guide), (x, *inputs), self.num_particles, self.max_plate_nesting
        )
        power = 1.0 - self.alpha
        bound = (torch.logsumexp(power * log_weights, 0) - math.log(self.num_particles)) / power
        return -bound.sum() * scales[0]


class _Traced(nn.Module):
    """A module traced with torch.jit.trace on first use for each input shape."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self._cache: dict = {}

    def forward(self, x: torch.Tensor, scales: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device, self.module.training,
               tuple((tuple(t.shape), t.dtype) for t in inputs))
        traced = self._cache.get(key)
        if traced is None:
            # tracing runs the objective once: its random draws must not shift the stream of the traced calls,
            # or a run resumed from a checkpoint (which traces again) would differ from an uninterrupted one
            devices = [x.device] if x.device.type == "cuda" else []
            with warnings.catch_warnings(), torch.random.fork_rng(devices=devices):
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(self.module, (x, scales, *inputs), check_trace=False)
            # the submodules inlined and the dead code dropped: what the trace recorded only to test it in Python
            # (argument validation, shape checks) no longer runs every step; 2% of an N-VAE or S-VAE step, and the
            # same losses and gradients to the last bit (tested)
            torch._C._jit_pass_inline(traced.graph)
            torch._C._jit_pass_dce(traced.graph)
            self._cache[key] = traced
        # the plain interpreter: the profiling executor runs the first calls unoptimised and later ones fused,
        # which differ in the last bits (so a resumed run would drift from an uninterrupted one), and on the
        # CPU it is slower, not faster, for these graphs (5.7 against 6.8 ms per step, benchmarks/svi_overhead.py)
        with torch.jit.optimized_execution(False):
            return traced(x, scales, *inputs)


def make_objective(
    elbo, model, guide, num_particles: int = 1, max_plate_nesting: int = 1
) -> tuple[nn.Module, str]:
    """The objective module for ``elbo`` (a name from :data:`ELBO_NAMES` or a Pyro ELBO instance) and its name.

    ``"auto"``: ``"enum"`` for guides that enumerate a discrete site (``guide.enumerates``), else ``"trace"``;
    ``"trace"``: :class:`~pyro.infer.Trace_ELBO`; ``"jit"``: its traced form; ``"enum"`` and ``"jit_enum"``:
    :class:`~pyro.infer.TraceEnum_ELBO` for enumerated discrete latents (sites marked
    ``infer={"enumerate": "parallel"}``); ``"meanfield"``: :class:`~pyro.infer.TraceMeanField_ELBO`
    (analytic KL where registered); ``"iwae"``: the per-datum importance-weighted bound with
    ``num_particles`` samples. A ``RenyiELBO(alpha)`` instance gives the variational Renyi bound per datum
    (``alpha=0``: the IWAE bound). Pyro's own ``RenyiELBO`` weighs the whole batch jointly, one weight per
    particle for all data at once, which is a looser bound for a batch of many data; pyrovae's weighs each
    datum, and the two agree for a batch of one (tested). ``pyro.infer.SVI`` with Pyro's class trains a pyrovae
    pair too.
    """
    options = dict(
        num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=max_plate_nesting
    )
    jit = False
    if isinstance(elbo, str):
        name = elbo
        if name == "auto":
            name = "enum" if getattr(guide, "enumerates", False) else "trace"
        if name == "iwae":
            if num_particles < 2:
                raise ValueError("the iwae objective needs num_particles >= 2 (it equals the ELBO for 1)")
            return _RenyiObjective(model, guide, num_particles, max_plate_nesting), name
        factories = {
            "trace": pinfer.Trace_ELBO,
            "jit": _TraceableTrace_ELBO,
            "enum": pinfer.TraceEnum_ELBO,
            "jit_enum": pinfer.TraceEnum_ELBO,
            "meanfield": pinfer.TraceMeanField_ELBO,
        }
        if name not in factories:
            raise ValueError(f"unknown elbo {name!r}; expected one of {ELBO_NAMES} or a pyro.infer ELBO instance")
        jit = name.startswith("jit")
        instance = factories[name](**options)
    elif isinstance(elbo, pinfer.RenyiELBO):
        if elbo.num_particles < 2:
            raise ValueError("a Renyi bound needs num_particles >= 2 (it equals the ELBO for 1)")
        nesting = elbo.max_plate_nesting if math.isfinite(elbo.max_plate_nesting) else max_plate_nesting
        objective = _RenyiObjective(model, guide, elbo.num_particles, nesting, elbo.alpha)
        return objective, "iwae" if elbo.alpha == 0 else f"renyi({elbo.alpha:g})"
    elif isinstance(elbo, pinfer.ELBO):
        jit_classes = {pinfer.JitTrace_ELBO: _TraceableTrace_ELBO, pinfer.JitTraceEnum_ELBO: pinfer.TraceEnum_ELBO,
                       pinfer.JitTraceMeanField_ELBO: pinfer.TraceMeanField_ELBO}
        jit = type(elbo) in jit_classes
        instance = jit_classes[type(elbo)](**_elbo_options(elbo)) if jit else elbo
        name = type(elbo).__name__
    else:
        raise TypeError(f"elbo must be a name or a pyro.infer ELBO instance, got {type(elbo).__name__}")
    objective = _ELBOObjective(model, guide, instance)
    return (_Traced(objective) if jit else objective), name


def _elbo_options(elbo: pinfer.ELBO) -> dict:
    return dict(
        num_particles=elbo.num_particles,
        max_plate_nesting=elbo.max_plate_nesting,
        vectorize_particles=elbo.vectorize_particles,
        strict_enumeration_warning=elbo.strict_enumeration_warning,
    )


def evaluation_elbo(num_particles: int = 1, max_plate_nesting: int = 1, enumerate: bool = False) -> pinfer.ELBO:
    """The untraced ELBO used for validation."""
    cls = pinfer.TraceEnum_ELBO if enumerate else pinfer.Trace_ELBO
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=max_plate_nesting)


__all__ = ["ELBO_NAMES", "ObjectiveScale", "make_objective", "evaluation_elbo"]

"""Training objectives: Pyro's ELBOs by name or instance, their traced (JIT) forms, and the importance-weighted
(IWAE) and Renyi bounds per datum.

Every objective is called as ``objective(x, scales, *inputs)`` (``inputs``: the covariates ``cat, cont`` where the
data carry them) with ``scales = tensor([data_scale, kl_weight])``:
the ``"data"`` plate's sites are scaled by ``data_scale`` (data set size / batch size, as a subsampled
plate would) and the latent sites by ``kl_weight`` (KL warm-up, beta-VAE, or 0 for a plain
auto-encoder). Both travel as one tensor argument, so a traced objective is not traced again when
they change.

Why our own JIT: Pyro's ``JitTrace_ELBO`` looks parameters up by name in the global parameter store,
while pyrovae keeps parameters in the modules. We trace ``elbo.differentiable_loss`` over the
model and guide modules with :func:`torch.jit.trace` instead, once per batch shape; the random draws
are traced as random ops, so each call samples afresh. ``pyro.param`` leaves that no module owns (plain Pyro
functions with ``pyro.param`` or ``pyro.module``) are inputs of the trace, as in ``JitTrace_ELBO``.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import pyro
import pyro.infer as pinfer
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyrovae.infer.contract import DATA_PLATE

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


def _data_dim(site: dict) -> int:
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE:
            return frame.dim
    raise ValueError(
        f"sample site {site['name']!r} lies outside pyro.plate({DATA_PLATE!r}); the importance-weighted bound is "
        f"per datum and needs every latent and observed site inside the {DATA_PLATE!r} plate (the model/guide "
        "contract); train a global latent with elbo='trace'"
    )


def _check_bound_sites(model_trace, guide_trace) -> None:
    """Refuse what the importance-weighted bound would get wrong in silence: a discrete guide site that is sampled
    (its gradient would need a score function the bound does not have) and a model site enumerated alone."""
    for name, site in guide_trace.nodes.items():
        if (site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
                and site["infer"].get("_enumerate_dim") is None and not getattr(site["fn"], "has_rsample", False)):
            raise ValueError(
                f"the guide draws site {name!r} from a {type(site['fn']).__name__} without reparameterisation: the "
                "importance-weighted bound differentiates through its draws, so q of that site would not train. "
                "Mark a discrete site infer={'enumerate': 'parallel'} (summed exactly), or train with "
                "elbo='trace' or 'enum' (score-function gradients)"
            )
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and site["infer"].get("enumerate") and name not in guide_trace.nodes:
            raise NotImplementedError(
                f"the model enumerates site {name!r}, which the guide does not sample; the importance-weighted "
                "bound sums enumerated sites of the guide only (enumerate it in the guide, as GMVAEGuide does)"
            )


def importance_weighted_bound(model, guide, args: tuple, num_particles: int, max_plate_nesting: int = 1,
                              alpha: float = 0.0, check: bool = True) -> torch.Tensor:
    """The variational Renyi bound of each datum (Li & Turner 2016; ``alpha = 0``: the importance-weighted bound
    of Burda et al. 2016), ``(batch,)``, differentiable in the model's and the guide's parameters.

    Without a discrete site, with K = ``num_particles`` draws z_k ~ q(z | x)::

        L(x) = 1 / (1 - alpha) * log (1/K) sum_k [p(x, z_k) / q(z_k | x)]^(1 - alpha)

    With guide sites enumerated in parallel (the GMVAE's component y: ``infer={"enumerate": "parallel"}``), y is
    summed exactly under q(y | x) and the importance weights run over z within each y (K draws z_{k,y} ~
    q(z | x, y) for every y)::

        L(x) = sum_y q(y | x) [L_K(x, y) - log q(y | x)],   L_K(x, y) the bound above on log p(x, y).

    This is a lower bound on log p(x) for 0 <= alpha < 1 (Jensen's inequality twice); for one draw it is the
    ``TraceEnum_ELBO``, it grows with K, and as K grows it tends to log p(x) - KL(q(y | x) || p(y | x)), which is
    log p(x) where q(y | x) is the exact posterior of y. Its gradient reaches q(y | x) exactly (no score function).
    (The stratified estimate sum_y p(x, y, z_y) / q(z_y | x, y) that :func:`~pyrovae.infer.log_likelihood` uses is
    tighter, but q(y | x) cancels from it: trained on it, the classifier head would never move.)

    Labelled data (GMVAEGuide with labels y, -1 where unknown) are handled by the guide: its q(y | x) is the point
    mass on a known label, so that datum's bound is L_K(x, y) + the guide's classification term (a
    ``pyro.factor``, whose value every observed guide site adds, as in Pyro's ELBOs).

    :param args: the model's and guide's arguments ``(x, ...)``.
    :param check: refuse a sampled discrete guide site (whose q would not train) and an enumerated model site that
        the guide does not sample.
    """
    samples = pyro.plate("_bound_samples", num_particles, dim=-(max_plate_nesting + 1))
    with samples, poutine.enum(first_available_dim=-(max_plate_nesting + 2)):
        guide_trace = poutine.trace(guide).get_trace(*args)
    with samples:
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    if check:
        _check_bound_sites(model_trace, guide_trace)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    # (log-density, sign, site) of every term; enumerated guide sites apart: their q(y | x) weighs the bounds of y
    terms, enumerated, observed = [], [], False
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if sign < 0 and site["infer"].get("_enumerate_dim") is not None:
                enumerated.append(site)
            else:
                terms.append((site["log_prob"], sign, site))
                observed |= sign > 0 and bool(site["is_observed"])
    if not observed:
        raise ValueError("the model has no observed site; call it with the data so that p(x | z) is scored")
    width = max([max_plate_nesting + 1] + [s["log_prob"].dim() for s in enumerated] + [t.dim() for t, _, _ in terms])

    def per_datum(log_prob: torch.Tensor, site: dict) -> torch.Tensor:
        """Summed over every plate but the samples' and the data's: ``(*enumerated, S|1, B|1)``."""
        log_prob = log_prob.reshape((1,) * (width - log_prob.dim()) + log_prob.shape)
        data_dim = _data_dim(site)
        other = [d for d in range(-max_plate_nesting, 0) if d != data_dim]
        return log_prob.sum(other) if other else log_prob

    log_weights = sum(sign * per_datum(log_prob, site) for log_prob, sign, site in terms)  # (*enum, S|1, B)
    log_weights = log_weights.expand(*log_weights.shape[:-2], num_particles, log_weights.shape[-1])
    power = 1.0 - alpha
    bound = (torch.logsumexp(power * log_weights, -2) - math.log(num_particles)) / power  # (*enum, B)
    if not enumerated:
        return bound
    # q(y | x) (unscaled: the weights of the sum over y) and its scaled log-density (the KL weight's entropy term)
    log_q = sum(per_datum(s["unscaled_log_prob"], s) for s in enumerated)  # (*enum, S|1, B)
    scaled_log_q = sum(per_datum(s["log_prob"], s) for s in enumerated)
    if check and log_q.shape[-2] > 1 and not torch.allclose(log_q, log_q[..., :1, :].expand_as(log_q)):
        raise NotImplementedError(
            "q of an enumerated guide site depends on a sampled latent; the importance-weighted bound sums "
            "enumerated sites that depend on the data only (such as the GMVAE's y); train with elbo='enum'"
        )
    log_q, scaled_log_q = log_q[..., 0, :], scaled_log_q[..., 0, :]
    log_q, scaled_log_q, bound = torch.broadcast_tensors(log_q, scaled_log_q, bound)
    weight = log_q.exp()
    # values of y that q rules out (a known label's point mass) add nothing, even where their bound is -inf
    possible = weight > 0
    summand = weight * (torch.where(possible, bound, 0.0) - torch.where(possible, scaled_log_q, 0.0))
    return summand.reshape(-1, summand.shape[-1]).sum(0)


class _RenyiObjective(nn.Module):
    """The variational Renyi bound of Li & Turner (2016) per datum, summed over the batch and negated
    (:func:`importance_weighted_bound`). ``alpha = 0`` is the importance-weighted bound of Burda et al. (2016);
    ``alpha -> 1`` tends to the ELBO."""

    def __init__(self, model, guide, num_particles: int, max_plate_nesting: int, alpha: float = 0.0) -> None:
        super().__init__()
        self.model, self.guide = model, guide
        self.num_particles, self.max_plate_nesting, self.alpha = num_particles, max_plate_nesting, float(alpha)
        self._checked = False

    def forward(self, x: torch.Tensor, scales: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        scale = ObjectiveScale(None, scales[1])  # the data scale multiplies the bound, not the weights
        bound = importance_weighted_bound(scale(self.model), scale(self.guide), (x, *inputs), self.num_particles,
                                          self.max_plate_nesting, self.alpha, check=not self._checked)
        self._checked = True
        return -bound.sum() * scales[0]


class _WithStoreParameters(nn.Module):
    """``module(x, scales, *inputs)`` called with the ``pyro.param`` leaves that no module owns appended to its
    arguments: traced so, those leaves are inputs of the trace (read afresh at every call) rather than constants
    frozen into it, which torch refuses for a tensor that requires a gradient."""

    def __init__(self, module: nn.Module, num_inputs: int) -> None:
        super().__init__()
        self.module, self.num_inputs = module, num_inputs

    def forward(self, x: torch.Tensor, scales: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return self.module(x, scales, *rest[: self.num_inputs])


def _store_parameter_names(module: nn.Module, args: tuple) -> list[str]:
    """The ``pyro.param`` sites one run of ``module(*args)`` reads whose leaves the module does not own (a plain
    Pyro function's ``pyro.param`` or ``pyro.module``), in a fixed order."""
    with poutine.block(), poutine.trace(param_only=True) as capture:
        module(*args)  # with gradients: an enumerated ELBO refuses a loss that has none
    owned = {id(p) for p in module.parameters()}
    return sorted(name for name, site in capture.trace.nodes.items() if id(site["value"].unconstrained()) not in owned)


@contextlib.contextmanager
def run_aside(module: nn.Module, device: torch.device):
    """Runs of ``module`` that leave no trace on training: tracing or capturing runs the objective, and its random
    draws must not shift the stream of the later calls (or a run resumed from a checkpoint, which traces again,
    would differ from an uninterrupted one), nor its batch-norm layers count the runs in their statistics."""
    buffers = [(b, b.clone()) for b in module.buffers()]
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            warnings.simplefilter("ignore")
            yield
    finally:
        with torch.no_grad():
            for buffer, value in buffers:
                buffer.copy_(value)


class _Traced(nn.Module):
    """A module traced with torch.jit.trace on first use for each input shape.

    ``pyro.param`` leaves outside the module (plain Pyro functions using ``pyro.param`` or ``pyro.module``) are
    passed to the trace as inputs, found by one untraced run, as Pyro's own ``JitTrace_ELBO`` does; each call
    reads them from the param store by name, so the trace follows the store's current values.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self._cache: dict = {}

    def forward(self, x: torch.Tensor, scales: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device, self.module.training,
               tuple((tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else t for t in inputs))
        entry = self._cache.get(key)
        store = pyro.get_param_store()
        if entry is not None and not all(name in store for name in entry[1]):  # the store was cleared: trace again
            entry = None
        if entry is None:
            with run_aside(self.module, x.device):
                names = _store_parameter_names(self.module, (x, scales, *inputs))
                leaves = tuple(store[name].unconstrained() for name in names)
                traced = torch.jit.trace(_WithStoreParameters(self.module, len(inputs)),
                                         (x, scales, *inputs, *leaves), check_trace=False)
            # the submodules inlined and the dead code dropped: what the trace recorded only to test it in Python
            # (argument validation, shape checks) no longer runs every step; 2% of an N-VAE or S-VAE step, and the
            # same losses and gradients to the last bit (tested)
            torch._C._jit_pass_inline(traced.graph)
            torch._C._jit_pass_dce(traced.graph)
            entry = self._cache[key] = (traced, names)
        traced, names = entry
        leaves = tuple(store[name].unconstrained() for name in names)
        # the plain interpreter: the profiling executor runs the first calls unoptimised and later ones fused,
        # which differ in the last bits (so a resumed run would drift from an uninterrupted one), and on the
        # CPU it is slower, not faster, for these graphs (5.7 against 6.8 ms per step, benchmarks/svi_overhead.py)
        with torch.jit.optimized_execution(False):
            return traced(x, scales, *inputs, *leaves)


def make_objective(
    elbo, model, guide, num_particles: int = 1, max_plate_nesting: int = 1, compile: bool = False
) -> tuple[nn.Module, str]:
    """The objective module for ``elbo`` (a name from :data:`ELBO_NAMES` or a Pyro ELBO instance) and its name.

    ``"auto"``: ``"enum"`` for guides that enumerate a discrete site (``guide.enumerates``), else ``"trace"``;
    ``"trace"``: :class:`~pyro.infer.Trace_ELBO`; ``"jit"``: its traced form; ``"enum"`` and ``"jit_enum"``:
    :class:`~pyro.infer.TraceEnum_ELBO` for enumerated discrete latents (sites marked
    ``infer={"enumerate": "parallel"}``); ``"meanfield"``: :class:`~pyro.infer.TraceMeanField_ELBO`
    (analytic KL where registered); ``"iwae"``: the per-datum importance-weighted bound with
    ``num_particles`` samples. A ``RenyiELBO(alpha)`` instance gives the variational Renyi bound per datum
    (``alpha=0``: the IWAE bound). Both sum an enumerated guide site (the GMVAE's y) exactly under q(y | x),
    with importance weights over z within each y, so that q(y | x) trains and known labels count (see
    :func:`importance_weighted_bound`); they refuse a discrete guide site that is sampled rather than
    enumerated (its q would get no gradient). Pyro's own ``RenyiELBO`` weighs the whole batch jointly, one weight per
    particle for all data at once, which is a looser bound for a batch of many data; pyrovae's weighs each
    datum, and the two agree for a batch of one (tested). ``pyro.infer.SVI`` with Pyro's class trains a pyrovae
    pair too.

    ``compile=True``: the objective and its gradients captured as one graph per batch shape and compiled with
    inductor (:class:`~pyrovae.infer.training.compiled.Compiled`); a ``"jit"`` name then compiles the untraced
    objective.
    """
    objective, name = _objective(elbo, model, guide, num_particles, max_plate_nesting)
    if compile:
        from pyrovae.infer.training.compiled import Compiled

        return Compiled(objective.module if isinstance(objective, _Traced) else objective), name
    return objective, name


def _objective(elbo, model, guide, num_particles: int, max_plate_nesting: int) -> tuple[nn.Module, str]:
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
    elif isinstance(elbo, type) and issubclass(elbo, pinfer.ELBO):
        raise TypeError(f"elbo must be a name or a pyro.infer ELBO instance, got the class {elbo.__name__}: call it, "
                        f"elbo={elbo.__name__}()")
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


__all__ = ["ELBO_NAMES", "ObjectiveScale", "evaluation_elbo", "importance_weighted_bound", "make_objective"]

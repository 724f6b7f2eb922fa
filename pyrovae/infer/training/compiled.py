"""A compiled objective: ``train(..., compile=True)`` and ``make_objective(..., compile=True)``.

TorchDynamo cannot follow Pyro's effect handlers without breaking the graph at every sample site (eleven graphs for
an N-VAE, and a step 1.7x slower than the traced one), so the objective is not compiled as Python. It is captured
instead, once per batch shape, as one graph of tensor operations: the loss *and its gradients* (the backward pass
of the run, with the exact derivatives that pyrovae's own autograd functions define: the von Mises-Fisher draw's
implicit gradient, the Bessel functions' derivatives), with ``make_fx``; inductor then compiles that graph, fusing
the many small operations of a distribution's density and sampler into a few kernels.

What keeps the capture honest: ``make_fx`` refuses to read a value out of a traced tensor, so a loop or a branch on
the data (the von Mises-Fisher rejection loop) cannot be frozen into the graph by mistake. The rejection loop is a
custom operator (``pyrovae::vmf_cosine``), one opaque call that runs afresh on every step, so the compiled sampler
is as exact as the eager one. Random draws use torch's generator (inductor's ``fallback_random``): a compiled step
draws the same numbers as an eager one and agrees with it to float rounding (tested), and a resumed run continues
the same stream.

Parameters, buffers and the ``pyro.param`` leaves no module owns are inputs of the graph, never constants: every
call reads their current values, and a batch-norm layer's running statistics are updated in place as in eager mode.
The cost is the compile time (2-17 s on a 2-core CPU for each batch shape and mode; ``compile_seconds``
adds it up), paid once per shape: an incomplete last batch compiles a second graph, unless batches are dropped
(``train`` drops them under ``compile=True`` unless told otherwise).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time

import pyro
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from pyrovae.distributions.vmf_cosine import fused_first_pass
from pyrovae.infer.training.objectives import _store_parameter_names, run_aside
from pyrovae.ops.capture import capture_mode, compile_function

_FLOAT_READERS = ("pyro.infer.trace_elbo", "pyro.infer.traceenum_elbo", "pyro.infer.trace_mean_field_elbo")


@contextlib.contextmanager
def _tensor_loss_values():
    """Pyro's ELBOs sum the loss *value* as Python floats (``torch_item``) next to the differentiable surrogate, and
    test it for NaN (``warn_if_nan``); a capture cannot read a float out of a traced tensor. While capturing, the
    value stays a detached tensor and the NaN test is left to the step (which skips a non-finite update). The
    gradient, the surrogate's, is untouched."""
    patched = []
    for name in _FLOAT_READERS:
        module = importlib.import_module(name)
        for attribute, stand_in in (("torch_item", _detached), ("warn_if_nan", _no_test)):
            if hasattr(module, attribute):
                patched.append((module, attribute, getattr(module, attribute)))
                setattr(module, attribute, stand_in)
    try:
        yield
    finally:
        for module, attribute, original in patched:
            setattr(module, attribute, original)


def _detached(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


def _no_test(value, *args, **kwargs):
    return value


class _WithGradients(torch.autograd.Function):
    """The compiled loss, whose backward hands the gradients the graph computed to the tensors they belong to
    (scaled by the incoming gradient), so ``loss.backward()`` accumulates them as an eager loss would."""

    @staticmethod
    def forward(ctx, loss, num_tensors: int, *tensors_and_grads):
        ctx.grads = tensors_and_grads[num_tensors:]
        return loss.detach().clone()

    @staticmethod
    def backward(ctx, grad_output):
        return (None, None, *(grad_output * g for g in ctx.grads), *(None for _ in ctx.grads))


class _Capture(nn.Module):
    """``module(x, scales, *inputs)`` and the gradients of the loss in the tensors that require them, as one
    function of (data, parameters, buffers, store leaves) for ``make_fx``."""

    def __init__(self, module: nn.Module, num_inputs: int, num_differentiated: int) -> None:
        super().__init__()
        self.module, self.num_inputs, self.num_differentiated = module, num_inputs, num_differentiated

    def forward(self, x, scales, *rest):
        inputs, tensors = rest[: self.num_inputs], rest[self.num_inputs:]
        differentiated = tensors[: self.num_differentiated]
        with torch.enable_grad(), pyro.validation_enabled(False):
            loss = self.module(x, scales, *inputs)
            grads = torch.autograd.grad(loss, differentiated, allow_unused=True)
        grads = tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, differentiated))
        return (loss.detach(), *grads)


def _culprit(traceback) -> str:
    """``file:line`` of the innermost frame outside torch in ``traceback``."""
    where = "an unknown place"
    while traceback is not None:
        path = traceback.tb_frame.f_code.co_filename
        if f"{os.sep}torch{os.sep}" not in path:
            where = f"{path}:{traceback.tb_lineno}"
        traceback = traceback.tb_next
    return where


def _data_dependent(node: torch.fx.Node) -> bool:
    """Whether a node of an operation tagged with a dynamic output shape really has one here: an index by integer
    tensors has the index's shape; by a boolean mask, the number of its true entries."""
    if node.target is not torch.ops.aten.index.Tensor:
        return True
    indices = node.args[1]
    return any(isinstance(i, torch.fx.Node) and getattr(i.meta.get("val"), "dtype", torch.bool) == torch.bool
               for i in indices)


def _refuse_data_dependent_shapes(graph: torch.fx.GraphModule) -> None:
    """A captured operation whose output shape depends on the values (``nonzero``, a boolean mask) would be frozen
    at the first batch's shape: refuse the capture, naming it, rather than compile a graph wrong for other data."""
    for node in graph.graph.nodes:
        tags = getattr(node.target, "tags", ())
        if node.op == "call_function" and torch.Tag.dynamic_output_shape in tags and _data_dependent(node):
            raise NotImplementedError(
                f"compile=True cannot capture {node.target}: its output's shape depends on the data, and a compiled "
                "graph's shapes are fixed; train this model with compile=False (or write that step with fixed "
                "shapes: torch.where instead of a boolean index)"
            )


class Compiled(nn.Module):
    """``module`` (an objective ``(x, scales, *inputs) -> loss``) captured with its gradients and compiled with
    inductor, once per batch shape, dtype, device, mode and set of trained tensors (see the module's documentation).

    :ivar compile_seconds: seconds spent capturing and compiling so far (the first call of each graph).
    :ivar num_graphs: graphs compiled so far.
    """

    def __init__(self, module: nn.Module, options: dict | None = None) -> None:
        super().__init__()
        self.module = module
        self.options = {"fallback_random": True, **(options or {})}
        self._cache: dict = {}
        self.compile_seconds, self.num_graphs = 0.0, 0

    def _tensors(self, store_names: list[str]) -> tuple[list, list]:
        """(trained, kept): the tensors the graph differentiates, and the other tensors it reads (frozen
        parameters, buffers), in a fixed order."""
        store = pyro.get_param_store()
        candidates = list(self.module.parameters()) + [store[name].unconstrained() for name in store_names]
        trained, seen = [], set()
        for t in candidates:
            if t.requires_grad and id(t) not in seen:
                trained.append(t)
                seen.add(id(t))
        kept = [t for t in list(self.module.parameters()) + list(self.module.buffers()) if id(t) not in seen]
        return trained, kept

    def forward(self, x: torch.Tensor, scales: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """The loss, whose ``backward()`` accumulates the graph's gradients into the trained tensors."""
        loss, trained, grads = self.gradients(x, scales, *inputs)
        return _WithGradients.apply(loss, len(trained), *trained, *grads)

    def gradients(self, x: torch.Tensor, scales: torch.Tensor,
                  *inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """(loss, trained tensors, their gradients) from one call of the compiled graph, without autograd: a
        training step sets the gradients itself (:class:`~pyrovae.infer.training.step.SVIStep` does), sparing the
        pass over every gradient that ``loss.backward()`` through :meth:`forward` makes."""
        store = pyro.get_param_store()
        key = (tuple(x.shape), x.dtype, x.device, self.module.training,
               tuple((tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else t for t in inputs),
               tuple(p.requires_grad for p in self.module.parameters()))
        entry = self._cache.get(key)
        if entry is not None and not all(name in store for name in entry[1]):  # the store was cleared: again
            entry = None
        if entry is None:
            started = time.perf_counter()
            try:
                with run_aside(self.module, x.device), _tensor_loss_values():
                    names = _store_parameter_names(self.module, (x, scales, *inputs))
                    trained, kept = self._tensors(names)
                    capture = _Capture(self.module, len(inputs), len(trained))
                    with capture_mode():
                        graph = make_fx(capture)(x, scales, *inputs, *trained, *kept)
            except RuntimeError as error:
                if "_local_scalar_dense" not in str(error):
                    raise
                raise NotImplementedError(
                    "compile=True cannot capture this objective: it reads the value of a tensor to decide what "
                    f"to do next (at {_culprit(error.__traceback__)}), which a graph cannot hold. Pyro's "
                    "TraceEnum_ELBO (the enumerated GMVAE) does so; train it with compile=False"
                ) from None
            _refuse_data_dependent_shapes(graph)
            compiled = compile_function(graph, dynamic=False, options=self.options)
            entry = self._cache[key] = [compiled, names, False]
            self.compile_seconds += time.perf_counter() - started
            self.num_graphs += 1
        compiled, names, warm = entry
        trained, kept = self._tensors(names)
        started = time.perf_counter()
        # the graph holds its own backward pass: nothing for autograd to record; the vMF sampler's rejection loop
        # (one opaque operator in the graph) runs its first pass as compiled kernels too
        with torch.no_grad(), fused_first_pass():
            loss, *grads = compiled(x, scales, *inputs, *trained, *kept)
        if not warm:  # inductor compiles on the first call
            self.compile_seconds += time.perf_counter() - started
            entry[2] = True
        return loss, trained, grads


__all__ = ["Compiled"]

"""train(compile=True): the loss and its gradients captured as one graph and compiled with inductor draw the same
numbers as the eager objective and agree with it to float rounding: on a Gaussian VAE, a hyperspherical VAE
(whose rejection loop stays one opaque operator), plain Pyro functions with store parameters, a count model with a
library size, an enumerated GMVAE and a batch-normalised encoder. Each compile takes seconds on a CPU: the default
suite compiles three graphs, the rest are marked slow."""

import pyro
import pytest
import torch
from pyrovae.guides import NormalGuide, VMFGuide
from pyrovae.models import SVAE, VAE

from pyrovae import make_pair
from pyrovae.data import two_groups
from pyrovae.infer import make_objective, train, trainable_parameters
from pyrovae.infer.training.compiled import Compiled
from tests.infer.guides_and_models import small_pair
from tests.infer.training.test_traced_plain_functions import module_guide


@pytest.fixture(autouse=True)
def clean_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def assert_same_step(model, guide, args, elbo="trace", leaves=None, rtol=1e-5, num_particles=1):
    """One call of the eager and the compiled objective from the same seed: the same loss and gradients."""
    eager, _ = make_objective(elbo, model, guide, num_particles)
    compiled, _ = make_objective(elbo, model, guide, num_particles, compile=True)
    assert isinstance(compiled, Compiled)
    tensors = leaves() if leaves else trainable_parameters(model, guide, args)[0]
    scales = torch.tensor([1.5, 0.7])
    results = []
    for objective in (eager, compiled, compiled):  # the second compiled call runs the cached graph
        pyro.set_rng_seed(3)
        loss = objective(*args[:1], scales, *args[1:])
        results.append((loss.detach(), torch.autograd.grad(loss, tensors)))
    pyro.set_rng_seed(3)  # the gradients a training step takes straight from the graph, without autograd
    loss, trained, grads = compiled.gradients(*args[:1], scales, *args[1:])
    by_tensor = {id(t): g for t, g in zip(trained, grads)}
    results.append((loss, [by_tensor[id(t)] for t in tensors]))
    (want, want_grads), *rest = results
    for got, got_grads in rest:
        torch.testing.assert_close(got, want, rtol=rtol, atol=1e-4)
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=rtol, atol=1e-5 * max(float(b.abs().max()), 1.0))
    assert compiled.num_graphs == 1 and compiled.compile_seconds > 0


def test_the_compiled_svae_step_equals_the_eager_one():
    torch.manual_seed(0)
    x = torch.rand(24, 12)
    assert_same_step(SVAE(12, 4, (8,), likelihood="gaussian"), VMFGuide(12, 4, (8,)), (x,))


_KEEPS_VALIDATION = """
import pyro, torch
from torch.distributions import Distribution
from pyrovae.distributions import VonMisesFisher
{}
assert Distribution._validate_args, "torch's distribution checks were turned off"
try:
    VonMisesFisher(torch.tensor([0.0, 2.0]), torch.tensor(1.0))
except ValueError:
    pass
else:
    raise AssertionError("an off-sphere location was not refused")
"""


@pytest.mark.parametrize("compiles", [
    "from pyrovae.infer import make_objective\nfrom tests.infer.guides_and_models import small_pair\n"
    "objective, _ = make_objective('trace', *small_pair(), 1, compile=True)\n"
    "objective.gradients(torch.rand(8, 15), torch.ones(2))",
    "from pyrovae.distributions.vmf_cosine import _compiled\n_compiled(torch.sin)",
], ids=["step", "sampler"])
def test_compiling_keeps_the_distributions_argument_checks_on(compiles):
    """The first torch.compile of a process turned torch.distributions' validation off for the rest of it, behind
    Pyro's back (torch._dynamo's one-time patching): a user's off-sphere location passed silently after a
    train(compile=True). Each in a fresh process, where that first compile is ours."""
    import subprocess
    import sys

    from tests.experiment_runs import ROOT

    subprocess.run([sys.executable, "-c", _KEEPS_VALIDATION.format(compiles)], check=True, timeout=600, cwd=ROOT)


def test_train_compiled_follows_the_eager_run():
    data = two_groups(num_per_group=48)
    runs = []
    for compile in (False, True):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide = small_pair()
        history = train(model, guide, data, epochs=3, batch_size=32, lr=1e-2, seed=0, compile=compile,
                        eval_size=0, progress=False)
        runs.append((history["loss"], [p.detach().clone() for m in (model, guide) for p in m.parameters()]))
    (eager_loss, eager_params), (compiled_loss, compiled_params) = runs
    torch.testing.assert_close(torch.tensor(compiled_loss), torch.tensor(eager_loss), rtol=1e-4, atol=1e-3)
    for a, b in zip(compiled_params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gradient_hooks_run_under_the_compiled_step():
    """The compiled step sets the graph's gradients itself, which skips gradient hooks: a parameter with one
    (here, one that zeroes the gradient) is trained through autograd instead, so the hook holds."""
    data = two_groups(num_per_group=32)
    torch.manual_seed(0)
    model, guide = small_pair()
    frozen = next(guide.parameters())
    before = frozen.detach().clone()
    calls = []
    frozen.register_hook(lambda grad: calls.append(1) or torch.zeros_like(grad))
    train(model, guide, data, epochs=1, batch_size=32, compile=True, eval_size=0, progress=False, seed=0)
    assert calls and torch.equal(frozen.detach(), before)


def test_compile_must_be_a_flag():
    model, guide = small_pair()
    with pytest.raises(TypeError, match="compile must be True or False"):
        train(model, guide, two_groups(num_per_group=8), epochs=1, compile="yes", progress=False)


@pytest.mark.slow
def test_the_compiled_step_reads_store_parameters_of_plain_functions():
    model, guide, leaves = module_guide()
    assert_same_step(model, guide, (two_groups(num_per_group=16).x,), leaves=leaves)


@pytest.mark.slow
def test_the_compiled_count_model_with_library_size_equals_the_eager_one():
    torch.manual_seed(0)
    model, guide = make_pair("vae", 30, 3, (16,), likelihood="nb")
    x = torch.poisson(torch.full((16, 30), 3.0))
    assert_same_step(model, guide, (x,))


def test_an_enumerated_gmvae_is_refused_with_the_reason():
    """Pyro's TraceEnum_ELBO decides on a tensor's value (which probabilities are zero): no graph can hold that."""
    torch.manual_seed(0)
    model, guide = make_pair("gmvae", 10, 2, (8,), num_components=3, likelihood="gaussian")
    objective, _ = make_objective("enum", model, guide, compile=True)
    with pytest.raises(NotImplementedError, match=r"reads the value of a tensor.*pyro.*util.py:\d+.*TraceEnum_ELBO"):
        objective(torch.randn(16, 10), torch.ones(2))


@pytest.mark.slow
def test_the_compiled_gmvae_under_the_importance_weighted_bound_equals_the_eager_one():
    torch.manual_seed(0)
    model, guide = make_pair("gmvae", 10, 2, (8,), num_components=3, likelihood="gaussian")
    assert_same_step(model, guide, (torch.randn(16, 10),), elbo="iwae", num_particles=4)


@pytest.mark.slow
def test_compiled_batch_norm_updates_its_running_statistics():
    torch.manual_seed(0)
    model, guide = VAE(10, 2, (8,), likelihood="gaussian"), NormalGuide(10, 2, (8,), batch_norm=True)
    x = torch.randn(16, 10) * 3 + 1
    compiled, _ = make_objective("trace", model, guide, compile=True)
    eager_guide = NormalGuide(10, 2, (8,), batch_norm=True)
    eager_guide.load_state_dict(guide.state_dict())
    eager, _ = make_objective("trace", model, eager_guide)
    for objective in (compiled, eager, compiled, eager):
        pyro.set_rng_seed(0)
        objective(x, torch.ones(2))
    compiled_stats = [b for b in guide.buffers() if b.is_floating_point()]
    eager_stats = [b for b in eager_guide.buffers() if b.is_floating_point()]
    assert compiled_stats and any(not torch.equal(b, torch.zeros_like(b)) for b in compiled_stats)
    for a, b in zip(compiled_stats, eager_stats):
        torch.testing.assert_close(a, b)


def test_a_shape_that_depends_on_the_data_is_refused_by_name():
    import pyro.distributions as dist

    def model(x):
        loc = pyro.param("loc", torch.zeros(x.shape[-1]))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            positive = x[x > 0]  # as many entries as the data have positive values
            pyro.factor("f", positive.sum() * 0 + (x - loc - z[:, None]).pow(2).sum(-1).neg())

    def guide(x):
        scale = pyro.param("scale", torch.ones(()), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.mean(-1), scale))

    objective, _ = make_objective("trace", model, guide, compile=True)
    with pytest.raises(NotImplementedError, match="aten.index.Tensor: its output's shape depends on the data"):
        objective(torch.randn(8, 5), torch.ones(2))


def test_a_resumed_compiled_run_equals_the_uninterrupted_one(tmp_path):
    """Capturing draws from a forked stream and the compiled graph draws from torch's generator, so a run resumed
    from its checkpoint (which compiles again) continues exactly where the interrupted one stopped."""
    from pyrovae.infer import load_checkpoint

    def run(epochs, path, model_seed):
        pyro.clear_param_store()
        torch.manual_seed(model_seed)  # a resumed run starts from differently initialised modules
        model, guide = small_pair()
        history = train(model, guide, two_groups(num_per_group=48), epochs=epochs, batch_size=32, checkpoint=path,
                        kl_warmup_epochs=2, progress=False, seed=7, compile=True, eval_size=0)
        return history["loss"], [p.detach().clone() for m in (model, guide) for p in m.parameters()]

    full_loss, full = run(4, tmp_path / "full.pt", 1)
    run(2, tmp_path / "resumed.pt", 1)  # interrupted after 2 epochs
    assert load_checkpoint(tmp_path / "resumed.pt")["epoch"] == 2
    resumed_loss, resumed = run(4, tmp_path / "resumed.pt", 3)
    assert resumed_loss == full_loss
    assert all(torch.equal(a, b) for a, b in zip(full, resumed))

"""Model, guide, training and log-likelihood on a GPU (skipped without CUDA)."""

import pytest
import torch
from pyrovae.guides import DeltaGuide, NormalGuide
from pyrovae.models import VAE

from pyrovae.infer import log_likelihood, train

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("elbo", ["trace", "jit", "iwae"])
def test_train_and_score_on_cuda(elbo, tmp_path):
    x = (torch.rand(256, 784, device="cuda") < 0.3).float()
    model, guide = VAE(784, 8, hidden=(64,)), NormalGuide(784, 8, hidden=(64,))
    history = train(model, guide, x, epochs=2, batch_size=64, elbo=elbo, num_particles=3 if elbo == "iwae" else 1,
                    val_data=x[:64], checkpoint=tmp_path / "c.pt", progress=False)
    assert next(model.parameters()).is_cuda and next(guide.parameters()).is_cuda
    assert history["loss"][-1] < history["loss"][0]
    result = log_likelihood(model, guide, x[:32], num_samples=50)
    assert result.per_datum.shape == (32,) and torch.isfinite(result.per_datum).all()
    assert model.sample(5).is_cuda


def test_cpu_data_moves_to_the_requested_device():
    model, guide = VAE(784, 4, hidden=(32,)), DeltaGuide(784, 4, hidden=(32,))
    x = (torch.rand(64, 784) < 0.5).float()
    train(model, guide, x, epochs=1, device="cuda", progress=False)
    assert next(model.parameters()).is_cuda


def test_cell_stream_batches_are_assembled_on_the_gpu(tmp_path):
    from pyrovae.data import CellStream, TahoeAtlas, write_tahoe_shards

    write_tahoe_shards(tmp_path, num_cells=600, num_shards=3, vocabulary_size=400, genes_per_cell=50)
    stream = CellStream(TahoeAtlas(tmp_path), batch_size=64, buffer_size=128, num_workers=1)
    batch = next(iter(stream.loader(pin_memory=True)))
    on_gpu = batch.to("cuda", non_blocking=True)
    assert on_gpu.counts.is_cuda and on_gpu.drug.is_cuda
    torch.testing.assert_close(on_gpu.counts.cpu(), batch.counts)
    model, guide = VAE(stream.num_genes, 4, (32,), likelihood="nb"), NormalGuide(stream.num_genes, 4, (32,),
                                                                                 input_transform="log1p")
    history = train(model, guide, stream, epochs=2, device="cuda", progress=False)
    assert next(model.parameters()).is_cuda and history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("kind", ["normal", "vmf"])
def test_the_compiled_step_on_cuda_equals_the_eager_one(kind):
    """inductor's CUDA kernels (Triton), the vMF rejection loop as one operator on the GPU, torch's CUDA generator."""
    import pyro
    from pyrovae.guides import VMFGuide
    from pyrovae.models import SVAE

    from pyrovae.infer import make_objective, trainable_parameters

    pyro.clear_param_store()
    torch.manual_seed(0)
    x = (torch.rand(64, 784, device="cuda") < 0.3).float()
    if kind == "vmf":
        model, guide = SVAE(784, 11, (256, 128)).cuda(), VMFGuide(784, 11, (256, 128)).cuda()
    else:
        model, guide = VAE(784, 10, (256, 128)).cuda(), NormalGuide(784, 10, (256, 128)).cuda()
    params, _ = trainable_parameters(model, guide, x)
    scales = torch.ones(2, device="cuda")
    results = []
    for compile in (False, True, True):
        objective, _ = make_objective("trace", model, guide, compile=compile)
        pyro.set_rng_seed(7)
        loss = objective(x, scales)
        results.append((loss.detach(), torch.autograd.grad(loss, params)))
    (want, want_grads), *rest = results
    for got, got_grads in rest:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * max(float(b.abs().max()), 1.0))

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

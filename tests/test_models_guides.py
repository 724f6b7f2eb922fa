"""Models, guides, trunks and the model/guide contract."""

import pyro.distributions as dist
import pytest
import torch
from pyrovae.guides import AmortizedGuide, DeltaGuide, NormalGuide
from pyrovae.models import VAE
from torch import nn

from pyrovae.data import TensorData
from pyrovae.infer import check_model_guide, log_likelihood, train
from pyrovae.nn import MLP, ConvDecoder, ConvEncoder


def binary(n=32, d=784):
    return (torch.rand(n, d) < 0.3).float()


def test_vae_shapes_decode_and_sample():
    model = VAE(784, 5, hidden=(32,))
    z = torch.randn(3, 7, 5)
    assert model.decode(z).batch_shape == (3, 7) and model.decode(z).event_shape == (784,)
    x, z = model.sample(10, return_latents=True)
    assert x.shape == (10, 784) and z.shape == (10, 5) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert model.sample(4, mean=True).shape == (4, 784)
    guide = NormalGuide(784, 5, hidden=(32,))
    q = guide.encode(binary(6))
    assert q.batch_shape == (6,) and q.event_shape == (5,) and (q.base_dist.scale > 0).all()


def test_conv_trunks_with_leading_dimensions():
    encoder, decoder = ConvEncoder(10), ConvDecoder(5, out_channels_per_pixel=2)
    assert encoder(torch.rand(2, 3, 784)).shape == (2, 3, 10)
    assert decoder(torch.randn(4, 6, 5)).shape == (4, 6, 2 * 784)
    model = VAE(784, 5, likelihood="gaussian", decoder=ConvDecoder(5))
    guide = NormalGuide(784, 5, encoder=ConvEncoder(10))
    history = train(model, guide, torch.rand(16, 784), epochs=1, batch_size=8, progress=False)
    assert len(history) == 1
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvEncoder(10, image_shape=(1, 30, 30))


@pytest.mark.parametrize("kernel_size", [3, 4, 5])
def test_conv_trunks_kernel_sizes_keep_the_image_shape(kernel_size):
    encoder = ConvEncoder(7, kernel_size=kernel_size)
    decoder = ConvDecoder(7, kernel_size=kernel_size)
    assert encoder.linear.in_features == 64 * 7 * 7
    assert decoder(encoder(torch.rand(3, 784))).shape == (3, 784)


def test_mlp_options():
    net = MLP(4, (8, 8), 3, activation="tanh", batch_norm=True, dropout=0.1)
    assert net(torch.randn(2, 5, 4)).shape == (2, 5, 3)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net.modules()) == 2
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(4, (8,), 3, activation="swishy")
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\)"):
        net(torch.randn(3, 5))


def test_guides_swap_on_one_model():
    x = binary(64)
    model = VAE(784, 4, hidden=(16,))
    for guide in (NormalGuide(784, 4, hidden=(16,)), DeltaGuide(784, 4, hidden=(16,))):
        history = train(model, guide, x, epochs=2, batch_size=32, progress=False)
        assert len(history) == 2


def test_plain_autoencoder_has_no_prior_term():
    x = torch.rand(32, 20)
    model, guide = VAE(20, 3, hidden=(8,), likelihood="gaussian"), DeltaGuide(20, 3, hidden=(8,))
    history = train(model, guide, x, epochs=1, kl_weight=0.0, progress=False)
    assert history["kl_weight"] == [0.0]


class LogNormalGuide(AmortizedGuide):
    def __init__(self):
        super().__init__()
        self.x_dim, self.z_dim = 784, 4
        self.net = nn.Linear(784, 4)

    def encode(self, x):
        return dist.LogNormal(self.net(x), 1.0).to_event(1)


def test_mismatched_pairs_fail_with_clear_errors():
    x = binary(8)
    model = VAE(784, 4, hidden=(16,))
    with pytest.raises(ValueError, match=r"support .*GreaterThan.* lives on .*Real"):
        check_model_guide(model, LogNormalGuide(), x)
    with pytest.raises(ValueError, match=r"event shape \(4,\)"):
        check_model_guide(model, NormalGuide(784, 6, hidden=(16,)), x)
    with pytest.raises(ValueError, match="support"):
        train(model, LogNormalGuide(), x, epochs=1, progress=False)


def test_bad_data_errors():
    model, guide = VAE(784, 4, hidden=(16,)), NormalGuide(784, 4, hidden=(16,))
    grey = torch.rand(8, 784)
    with pytest.raises(ValueError, match="0/1 data.*binarise"):
        train(model, guide, grey, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"expected data of shape \(batch, 784\), got \(8, 100\)"):
        train(model, guide, torch.zeros(8, 100), epochs=1, progress=False)
    x = binary(8)
    x[3, 17] = float("nan")
    with pytest.raises(ValueError, match="nan at row 3, column 17"):
        train(model, guide, x, epochs=1, progress=False)
    with pytest.raises(ValueError, match="nan at row 3"):
        log_likelihood(model, guide, x, num_samples=2)
    with pytest.raises(ValueError, match="unknown likelihood 'poison'"):
        VAE(784, 4, likelihood="poison")
    with pytest.raises(ValueError, match="unknown elbo"):
        train(model, guide, binary(8), elbo="elbow", progress=False)
    with pytest.raises(ValueError, match="expected a matrix"):
        TensorData(torch.zeros(3, 28, 28))


GUIDE_OPTIONS = ("hidden", "activation", "encoder", "input_transform", "latent_library", "batch_norm", "dropout")


def test_every_guide_takes_the_same_construction_arguments():
    import inspect

    from pyrovae.guides import GMVAEGuide, PowerSphericalGuide, VMFGuide

    for guide_class in (NormalGuide, DeltaGuide, VMFGuide, PowerSphericalGuide, GMVAEGuide):
        parameters = inspect.signature(guide_class).parameters
        assert set(GUIDE_OPTIONS) <= set(parameters), (guide_class.__name__, set(GUIDE_OPTIONS) - set(parameters))
    counts = torch.poisson(torch.full((8, 20), 3.0))
    for guide in (VMFGuide(20, 4, (16, 8), "tanh", input_transform="log1p", batch_norm=True, dropout=0.1),
                  DeltaGuide(20, 4, (16, 8), batch_norm=True, dropout=0.1),
                  GMVAEGuide(20, 3, 4, (16, 8), encoder=nn.Linear(20, 8))):
        assert guide.encode(counts).batch_shape == (8,)


def test_hidden_widths_are_listed_from_the_data_side_so_model_and_guide_mirror():
    from pyrovae import make_pair

    model, guide = VAE(30, 4, hidden=(16, 8)), NormalGuide(30, 4, hidden=(16, 8))
    decoder_widths = [(m.in_features, m.out_features) for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    encoder_widths = [(m.in_features, m.out_features) for m in guide.encoder.modules() if isinstance(m, nn.Linear)]
    assert encoder_widths == [(30, 16), (16, 8), (8, 8)]
    assert decoder_widths == [(4, 8), (8, 16), (16, 30)]
    svae, vmf = make_pair("svae-vmf", 30, 4, hidden=(16, 8))  # S^4 in R^5
    assert svae.z_dim == vmf.z_dim == 5
    with pytest.raises(ValueError, match="unknown pair"):
        make_pair("flow", 30, 4)
    with pytest.raises(ValueError, match="num_components"):
        make_pair("gmvae", 30, 4)


def test_importing_the_library_changes_no_matplotlib_backend_and_data_does_not_import_infer():
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import pyrovae.plots, pyrovae.data, sys; "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend(); "
            "assert 'pyrovae.infer' not in sys.modules, 'pyrovae.data imported pyrovae.infer'; "
            "import pyrovae; assert pyrovae.VAE is pyrovae.models.VAE and callable(pyrovae.train)")
    subprocess.run([sys.executable, "-c", code], check=True)

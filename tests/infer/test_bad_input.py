"""Bad input gets an error that names the problem and the fix, before any work is done (issue 14)."""

import sys
from pathlib import Path

import pyro.optim
import pytest
import torch
from pyrovae.guides import GMVAEGuide, NormalGuide, VMFGuide
from pyrovae.models import GMVAE, SVAE, VAE

from pyrovae.distributions import PowerSpherical, VonMisesFisher
from pyrovae.infer import TrainingDiverged, evaluate, log_likelihood, train
from pyrovae.infer.training.checkpoint import save_checkpoint
from tests.script_server import run_python

ROOT = Path(__file__).resolve().parents[2]


def binary(n=64, d=12, seed=0):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed)).round()


@pytest.mark.parametrize("entry", ["train", "log_likelihood", "evaluate"])
def test_every_entry_point_checks_the_pairing(entry):
    x = binary()
    run = {
        "train": lambda m, g: train(m, g, x, epochs=1, progress=False),
        "log_likelihood": lambda m, g: log_likelihood(m, g, x, num_samples=4, progress=False),
        "evaluate": lambda m, g: evaluate(m, g, x),
    }[entry]
    with pytest.raises(ValueError, match="Sphere"):
        run(SVAE(12, 3, (8,)), NormalGuide(12, 3, (8,)))
    with pytest.raises(ValueError, match="Sphere"):
        run(VAE(12, 3, (8,)), VMFGuide(12, 3, (8,)))
    with pytest.raises(ValueError, match="site 'y'.*upper_bound=3"):
        run(GMVAE(12, 2, 4, (8,)), GMVAEGuide(12, 2, (8,), num_components=3))
    with pytest.raises(ValueError, match="swapped order"):
        run(NormalGuide(12, 3, (8,)), VAE(12, 3, (8,)))


@pytest.mark.parametrize("option,value,message", [
    ("kl_weight", -1.0, "kl_weight must be a finite number >= 0"),
    ("patience", 0, "patience must be an integer >= 1 or None"),
    ("batch_size", 2.5, "batch_size must be a positive integer"),
    ("num_particles", 0, "num_particles must be an integer >= 1"),
    ("epochs", 1.5, "epochs must be an integer >= 0"),
    ("lr", float("inf"), "lr must be a finite number >= 0"),
    ("kl_warmup_epochs", float("nan"), "kl_warmup_epochs must be a finite number"),
])
def test_nonsense_settings_are_refused_with_their_name(option, value, message):
    with pytest.raises(ValueError, match=message):
        train(VAE(12, 3, (8,)), NormalGuide(12, 3, (8,)), binary(), progress=False, **{"epochs": 1, option: value})


def test_nonsense_scoring_settings_are_refused():
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        log_likelihood(VAE(12, 3, (8,)), NormalGuide(12, 3, (8,)), binary(), num_samples=2.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_named():
    with pytest.raises(ValueError, match="no CUDA device is available; use device='cpu'"):
        train(VAE(12, 3, (8,)), NormalGuide(12, 3, (8,)), binary(), epochs=1, device="cuda", progress=False)


@pytest.mark.parametrize("device, message", [("gpu", "'gpu' is not a device name: use 'cpu', 'cuda' or 'cuda:N'"),
                                             ("mps", "no 'mps' device; use device='cpu'")])
def test_a_device_this_machine_cannot_have_is_named(device, message):
    pair = VAE(12, 3, (8,)), NormalGuide(12, 3, (8,))
    with pytest.raises(ValueError, match=message):
        train(*pair, binary(), epochs=1, device=device, progress=False)
    with pytest.raises(ValueError, match=message):
        log_likelihood(*pair, binary(), num_samples=4, device=device, progress=False)


def test_a_nan_in_evaluation_only_stops_training():
    from pyro.infer.util import is_validation_enabled

    class NaNWhenEvaluated(VAE):  # NaN in the end-of-epoch scores only (they run unvalidated, in evaluation mode)
        def decode(self, z, library=None):
            poisoned = not self.training and not is_validation_enabled()
            return super().decode(z * float("nan") if poisoned else z)

    with pytest.raises(TrainingDiverged, match="val_elbo.* of epoch 1 is not finite"):
        train(NaNWhenEvaluated(12, 3, (8,)), NormalGuide(12, 3, (8,)), binary(), val_data=binary(seed=1), epochs=2,
              eval_size=0, progress=False)


def test_resuming_with_another_architecture_or_optimiser_is_refused(tmp_path):
    x, path = binary(), tmp_path / "run.pt"
    train(VAE(12, 3, (8,)), NormalGuide(12, 3, (8,)), x, epochs=1, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="another architecture: .*ReLU.*Tanh"):
        train(VAE(12, 3, (8,), activation="tanh"), NormalGuide(12, 3, (8,)), x, epochs=2, checkpoint=path,
              progress=False)
    with pytest.raises(ValueError, match="trained with Adam, not SGD"):
        train(VAE(12, 3, (8,)), NormalGuide(12, 3, (8,)), x, epochs=2, checkpoint=path, progress=False,
              optim=pyro.optim.SGD({"lr": 0.01}))


def test_a_killed_save_leaves_no_temporary_file_behind_after_the_next(tmp_path):
    path = tmp_path / "c.pt"
    (tmp_path / "c.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # what kill -9 mid-write leaves
    save_checkpoint({"a": 1}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_float64_data_with_a_float32_model_is_converted_with_a_word():
    x = binary().double()
    model, guide = VAE(12, 3, (8,)), NormalGuide(12, 3, (8,))
    with pytest.warns(UserWarning, match=r"data is torch.float64 but the model is torch.float32.*"
                                         r"model.to\(torch.float64\), guide.to\(torch.float64\)") as caught:
        history = train(model, guide, x, epochs=1, progress=False)
    assert len(history) == 1 and sum("converted" in str(w.message) for w in caught) == 1  # once per run
    with pytest.warns(UserWarning, match="float16 is converted up.*pass float32 data"):
        train(model, guide, x.half(), epochs=1, progress=False)
    with pytest.warns(UserWarning, match="converted"):
        assert torch.isfinite(log_likelihood(model, guide, x.numpy(), num_samples=4, progress=False).per_datum).all()


@pytest.mark.parametrize("family", [VonMisesFisher, PowerSpherical])
def test_an_infinite_concentration_is_refused(family):
    loc = torch.nn.functional.normalize(torch.randn(4), dim=-1)
    with pytest.raises(ValueError, match="concentration must be finite.*Delta"):
        family(loc, torch.tensor(float("inf")))


def test_scripts_refuse_a_missing_data_folder_and_an_unwritable_output_before_working(tmp_path):
    script = str(ROOT / "experiments" / "two_groups.py")
    missing = run_python([sys.executable, script, "--data-dir", str(tmp_path / "missing"), "--out",
                          str(tmp_path / "out")], timeout=120)
    assert missing.returncode != 0 and "--data-dir" in missing.stderr and "is not a folder" in missing.stderr
    unwritable = run_python([sys.executable, script, "--out", "/dev/null/results"], timeout=120)
    assert unwritable.returncode != 0 and "is not writable" in unwritable.stderr



def test_scores_name_mismatched_or_non_finite_inputs():
    """pyrovae.metrics (issue 24): mismatched lengths, NaN latents and impossible cluster counts are named, never
    scored silently (circular_correlation of a NaN angle was NaN, lisi of one cell inf)."""
    import numpy as np

    from pyrovae import metrics

    latent = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(ValueError, match=r"batch_asw: the inputs have different numbers of cells \(\{'latent': 10, "
                                         r"'batch': 9, 'labels': 10\}\)"):
        metrics.batch_asw(latent, np.zeros(9), np.zeros(10))
    poisoned = latent.copy()
    poisoned[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"latent has NaN or infinite values in 1 rows \(first: row 3\)"):
        metrics.clustering_scores(np.arange(10) % 2, np.arange(10) % 2, latent=poisoned)
    with pytest.raises(ValueError, match="num_clusters must be an integer in 1..10 .*got 11"):
        metrics.kmeans_clusters(latent, 11)
    with pytest.raises(ValueError, match="angles hold NaN"):
        metrics.circular_correlation([np.nan, 1.0, 2.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="latent has 1 rows; at least 2 are needed"):
        metrics.lisi(np.ones((1, 2)), [0])
    angles = np.linspace(0, 6, 20)
    assert metrics.circular_correlation(angles, -angles + 1.0) == pytest.approx(1.0)  # a reflection and rotation


def test_encode_and_decode_name_the_pair_when_the_width_is_wrong():
    for guide in (NormalGuide(6, 2), VMFGuide(6, 3), GMVAEGuide(6, 2, num_components=3)):
        with pytest.raises(ValueError, match=rf"{type(guide).__name__} expected data of shape \(batch, 6\), got "
                                             r"\(4, 5\): check x_dim"):
            guide.encode(torch.zeros(4, 5))
    for model, size in ((VAE(6, 2), 2), (SVAE(6, 3), 3)):
        with pytest.raises(ValueError, match=f"{type(model).__name__} decodes latents of {size} coordinates"):
            model.decode(torch.zeros(4, 5))


def test_a_guide_called_by_itself_checks_its_data_as_in_the_guide():
    """guide.encode(x), guide.assign(x) and guide.classify(x) are what a user calls to analyse a trained pair: they
    name a wrong dtype, an empty batch, a single datum without its batch dimension and negative counts as the guide
    does under SVI (deep torch errors before, and a 0-d tensor for the single datum)."""
    guide = GMVAEGuide(6, 2, (8,), num_components=3, input_transform="log1p")
    x = torch.ones(4, 6)
    for call in (guide.encode, guide.assign, guide.classify):
        with pytest.raises(TypeError, match="cast the data with x.to\\(torch.float32\\)"):
            call(x.double())
        with pytest.raises(ValueError, match="empty batch"):
            call(x[:0])
        with pytest.raises(ValueError, match="add a batch dimension with x.unsqueeze\\(0\\)"):
            call(x[0])
        with pytest.raises(ValueError, match="needs counts, and the data x hold -1.0 at row 0, column 0"):
            call(-x)


def test_the_clustering_of_a_guide_in_training_mode_is_its_evaluation_one_and_changes_nothing():
    """After train the guide is in training mode: assign and classify used to draw dropout masks (a third of the
    cells changed cluster between two calls) and to move batch norm's running statistics."""
    torch.manual_seed(0)
    guide = GMVAEGuide(6, 2, (16, 8), num_components=3, dropout=0.3, batch_norm=True)
    x = torch.rand(50, 6) * 5
    guide.train()
    before = {k: v.clone() for k, v in guide.state_dict().items()}
    probabilities = guide.classify(x)
    torch.testing.assert_close(guide.classify(x), probabilities, rtol=0, atol=0)
    assert torch.equal(guide.assign(x), probabilities.argmax(-1))
    assert guide.training  # left as it was
    for key, value in guide.state_dict().items():
        assert torch.equal(value, before[key]), key
    guide.eval()
    torch.testing.assert_close(guide.classify(x), probabilities, rtol=0, atol=0)
    guide.train()
    frozen = next(m for m in guide.modules() if isinstance(m, torch.nn.BatchNorm1d)).eval()  # the user's choice
    guide.assign(x)
    assert guide.training and not frozen.training  # each module back in its own mode


def test_a_batch_of_one_under_batch_norm_in_training_mode_is_named_with_the_fix():
    model, guide = VAE(6, 2, (8, 4), batch_norm=True), NormalGuide(6, 2, (8, 4), batch_norm=True)
    x = torch.randint(0, 2, (1, 6)).float()
    for module, call in ((guide, lambda: guide(x)), (model, lambda: model(x))):
        with pytest.raises(ValueError, match="a batch of one datum in training mode.*call .eval\\(\\)"):
            pyro.poutine.trace(call).get_trace()
        module.eval()
    pyro.poutine.trace(guide).get_trace(x)  # in evaluation mode a single datum is encoded by the running statistics
    model.train()
    model(torch.randint(0, 2, (2, 6)).float())  # two data: normalised


def test_a_column_of_library_sizes_generates_one_sample_each():
    from pyrovae import make_pair

    model, _ = make_pair("vae", 6, 2, (8,), "nb", input_transform="log1p")
    assert model.sample(3, library=torch.full((3, 1), 1000.0)).shape == (3, 6)  # (n, 1): the layout of a total
    assert model.sample(3, library=1000.0).shape == (3, 6)
    with pytest.raises(ValueError, match=r"a number or one per sample \(3,\), got a tensor of shape \(2,\)"):
        model.sample(3, library=torch.ones(2))


def test_a_pair_with_non_finite_parameters_is_named_before_any_work():
    """A pair that diverged under a loop of the user's own (Pyro's SVI on NaN data) is named, not failed on deep in
    a distribution's argument check."""
    x = binary()
    model, guide = VAE(12, 3, (8,)), NormalGuide(12, 3, (8,))
    with torch.no_grad():
        dict(guide.named_parameters())["encoder.layers.0.weight"][0, 0] = float("nan")
    for call in (lambda: train(model, guide, x, epochs=1, progress=False),
                 lambda: log_likelihood(model, guide, x, num_samples=4)):
        with pytest.raises(ValueError, match=r"the guide's parameter 'encoder.layers.0.weight' holds 1 non-finite "
                                             r"values.*Load the last good weights"):
            call()


def test_a_plain_guide_without_the_data_plate_is_told_where_the_plate_goes():
    import pyro
    import pyro.distributions as dist

    def guide(x):  # the data dimension folded into the event, instead of a plate
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 3), 1.0).to_event(2))

    with pytest.raises(ValueError, match=r"the guide.s events \(64, 3\) hold the prior's \(3,\) once per datum: "
                                         r"sample inside `with pyro.plate\(\"data\", len\(x\)\)`"):
        train(VAE(12, 3, (8,)), guide, binary(), epochs=1, progress=False)


def test_a_mixture_of_one_component_says_it_clusters_nothing():
    with pytest.warns(UserWarning, match="num_components=1 has a single Gaussian component"):
        GMVAE(6, 2, 1)
    with pytest.raises(ValueError, match="data is empty: it holds no datum"):
        train(VAE(6, 2), NormalGuide(6, 2), torch.zeros(0, 6), epochs=1, progress=False)


def test_a_spherical_guide_of_the_manifold_dimension_is_told_the_ambient_one():
    from pyrovae import make_pair

    model, _ = make_pair("svae-vmf", 6, 2)  # S^2 in R^3
    with pytest.raises(ValueError, match="take the ambient dimension m = d \\+ 1 of S\\^d; make_pair takes d"):
        train(model, VMFGuide(6, 2), torch.randint(0, 2, (10, 6)).float(), epochs=1, progress=False)

"""train's arguments checked before any work (issue 24): an lr that optim would ignore, a checkpoint of a run with
other settings, a learning rate that makes the loss explode, a seed that is not an integer."""

import pyro.optim
import pytest
import torch

from pyrovae.data import TensorData, two_groups
from pyrovae.infer import SVIStep, TrainingDiverged, load_checkpoint, train
from pyrovae.infer.arguments import ArgumentTypeError, learning_rate
from pyrovae.infer.batches import BatchSource
from tests.infer.guides_and_models import small_pair


def data(n=48):
    return two_groups(num_per_group=n // 2)


def fit(**options):
    torch.manual_seed(0)
    model, guide = small_pair()
    return train(model, guide, options.pop("x", data()), progress=False, eval_size=0, **options)


@pytest.mark.parametrize("optim", [pyro.optim.Adam({"lr": 0.01}), pyro.optim.ClippedAdam({"lr": 0.01}),
                                   pyro.optim.Adam({"betas": (0.9, 0.99)}),
                                   lambda params: torch.optim.SGD(params, lr=0.01)])
def test_an_lr_that_optim_would_ignore_is_refused_naming_both(optim):
    with pytest.raises(ValueError, match=r"optim=.*lr=0\.1.*(ignore|ignored)"):
        fit(optim=optim, lr=0.1, epochs=1)
    with pytest.raises(ValueError, match=r"lr=0\.1"):
        SVIStep(lambda *a: None, [torch.zeros(1, requires_grad=True)], optim=optim, lr=0.1)


def test_an_lr_that_agrees_with_optim_or_feeds_a_torch_class_is_used():
    assert learning_rate(pyro.optim.Adam({"lr": 0.01}), 0.01) == 0.01
    assert learning_rate(None, None) == 1e-3 and learning_rate(torch.optim.SGD, 0.2) == 0.2
    history = fit(optim=torch.optim.SGD, lr=0.05, epochs=1)
    assert len(history) == 1
    step = SVIStep(lambda *a: None, [torch.zeros(1, requires_grad=True)], optim=pyro.optim.Adam({"lr": 0.02}))
    assert step.optimizer.param_groups[0]["lr"] == 0.02


@pytest.mark.parametrize(
    "change, named",
    [
        ({"lr": 0.01}, r"optimiser lr=0\.001 there, 0\.01 here"),
        ({"optim": pyro.optim.Adam({"lr": 1e-3, "betas": (0.5, 0.9)})}, r"optimiser betas=\(0\.9, 0\.999\) there"),
        ({"batch_size": 16}, r"batch_size=32 there, 16 here"),
        ({"x": data(64)}, r"num_data=48 there, 64 here"),
        ({"x": TensorData(data().x.flip(0))}, r"data='[0-9a-f]+' there, '[0-9a-f]+' here"),
        ({"kl_weight": 0.5}, r"kl_weight=1\.0 there, 0\.5 here"),
        ({"elbo": "jit"}, r"elbo='trace' there, 'jit' here"),
        ({"seed": 1}, r"seed=0 there, 1 here"),
    ],
)
def test_a_checkpoint_of_a_run_with_other_settings_is_refused_naming_the_difference(tmp_path, change, named):
    path = tmp_path / "c.pt"
    settings = {"batch_size": 32, "seed": 0, "checkpoint": path}
    fit(epochs=1, **settings)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=named + r".*new checkpoint path"):
        fit(epochs=3, **{**settings, **change})
    assert path.read_bytes() == before
    assert len(fit(epochs=2, **settings)) == 2  # the same settings resume
    assert load_checkpoint(path)["epoch"] == 2


def test_data_with_a_random_transform_resume_and_leave_the_random_state_alone(tmp_path):
    """Dynamic binarisation draws new pixels at every read: the checkpoint's digest of the data is taken from the
    stored values (and the transform's name), so a run resumes whatever the global random state, and taking it
    draws nothing."""
    jittered = TensorData(data().x, transform=lambda x: x + 0.01 * torch.randn_like(x))
    digests = []
    for state in (1, 2):
        torch.manual_seed(state)
        source = BatchSource(jittered, 16, shuffle=True, device=torch.device("cpu"), seed=0)
        before = torch.get_rng_state()
        digests.append(source.fingerprint())
        assert torch.equal(torch.get_rng_state(), before)
    assert digests[0] == digests[1]
    plain = BatchSource(data(), 16, True, torch.device("cpu"), seed=0).fingerprint()
    assert plain != digests[0]  # the same values under a transform are other data
    path = tmp_path / "c.pt"
    fit(epochs=1, x=jittered, batch_size=16, checkpoint=path)
    torch.manual_seed(7)  # another process's random state: the resumed run is asked for the same data
    model, guide = small_pair()
    assert len(train(model, guide, jittered, epochs=2, batch_size=16, checkpoint=path, progress=False,
                     eval_size=0)) == 2


@pytest.mark.parametrize("lr", [3.0, 100.0])
def test_an_exploding_loss_stops_training_naming_the_learning_rate(tmp_path, lr):
    """lr=100 took the loss per datum from 42 to 1e17 (1e25 with smaller batches) without a word. One batch per
    epoch: the first epoch's loss is the first step's, so the explosion is seen in a later epoch."""
    path = tmp_path / "c.pt"
    with pytest.raises(TrainingDiverged, match=rf"rose from \S+ at the first step to \S+e\+\d+ in epoch \d+.*"
                                               rf"lr={lr:g}\b.*likely cause.*c\.pt holds the last finished epoch"):
        fit(epochs=6, lr=lr, batch_size=48, seed=0, checkpoint=path)
    assert load_checkpoint(path)["epoch"] >= 1  # the epochs before the explosion are kept


def test_an_ordinary_learning_rate_is_left_alone():
    history = fit(epochs=6, lr=1e-2, batch_size=16, seed=0)
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("seed", [1.5, "1", True, torch.tensor(1)])
def test_a_seed_that_is_not_an_integer_is_a_type_error(seed):
    with pytest.raises(TypeError, match="seed must be an integer"):
        fit(seed=seed, epochs=1)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_out_of_range_is_named(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0 and <= 4294967295"):
        fit(seed=seed, epochs=1)


def test_wrong_types_are_type_errors_that_still_read_as_value_errors():
    for options in ({"epochs": 2.5}, {"lr": "0.1"}, {"kl_weight": None}):
        with pytest.raises(ArgumentTypeError) as caught:
            fit(**options)
        assert isinstance(caught.value, TypeError) and isinstance(caught.value, ValueError)


def test_a_last_batch_of_one_under_batch_norm_is_dropped_or_refused():
    from pyrovae.guides import NormalGuide
    from pyrovae.models import VAE

    x = torch.randint(0, 2, (65, 6)).float()
    model, guide = VAE(6, 2, (8,), batch_norm=True), NormalGuide(6, 2, (8,), batch_norm=True)
    with pytest.warns(UserWarning, match="last batch of one datum.*drops it"):
        train(model, guide, x, epochs=2, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="last batch of one datum.*drop_last=True"):
        train(model, guide, x, epochs=1, batch_size=32, drop_last=False, progress=False)
    train(model, guide, x, epochs=1, batch_size=13, progress=False)  # 65 = 5 x 13: nothing to drop
    for mode in (True, False):  # the mode train will set, not the one the pair is in
        model.train(mode), guide.train(mode)
        with pytest.raises(ValueError, match="one datum, and batch normalisation cannot train.*batch_norm=False"):
            train(model, guide, x[:1], epochs=1, progress=False)
    train(model, NormalGuide(6, 2, (8,)), x[:1], epochs=1, freeze="model", progress=False)  # frozen: evaluation mode
    train(VAE(6, 2, (8,)), NormalGuide(6, 2, (8,)), x[:1], epochs=1, progress=False)  # without: it can


def test_a_checkpoint_of_a_guide_with_another_min_scale_is_refused(tmp_path):
    """min_scale is no weight and not in the guide's repr: kept among the checkpoint's settings, and compared."""
    from pyrovae.guides import NormalGuide

    path = tmp_path / "c.pt"
    fit(epochs=1, checkpoint=path)
    model, guide = small_pair()
    wider = NormalGuide(guide.x_dim, guide.z_dim, (6,), min_scale=0.5)
    assert repr(wider) == repr(guide)  # what the architecture check sees
    with pytest.raises(ValueError, match=r"guide\.min_scale=1e-05 there, 0\.5 here"):
        train(model, wider, data(), epochs=2, checkpoint=path, progress=False, eval_size=0)


def test_a_folder_as_the_checkpoint_is_named_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"is a folder; give a file: checkpoint='.*run\.pt'"):
        fit(epochs=1, checkpoint=tmp_path)
    assert list(tmp_path.parent.glob(tmp_path.name + "*")) == [tmp_path] and not list(tmp_path.iterdir())


@pytest.mark.parametrize("option, value, named", [
    ("elbo", pyro.infer.Trace_ELBO, r"got the class Trace_ELBO: call it, elbo=Trace_ELBO\(\)"),
    ("optim", torch.optim.Adam([torch.zeros(1, requires_grad=True)]),
     r"got a Adam already built on its parameters.*pass the class, optim=torch\.optim\.Adam"),
    ("restore_best", "yes", "restore_best must be True or False, got 'yes'"),
    ("resume", 1, "resume must be True or False, got 1"),
    ("drop_last", "no", "drop_last must be True, False or None"),
])
def test_a_class_for_an_instance_and_other_wrong_kinds_are_named_with_the_fix(option, value, named):
    with pytest.raises(TypeError, match=named):
        fit(epochs=1, **{option: value})


@pytest.mark.parametrize("x, named", [
    (torch.ones(15), r"got shape \(15,\) \(one datum: x\.unsqueeze\(0\); one feature per datum: x\.unsqueeze\(1\)\)"),
    (torch.ones(4, 3, 5), r"got shape \(4, 3, 5\) \(images or other arrays per datum: x\.flatten\(1\)\)"),
])
def test_data_of_the_wrong_rank_are_named_with_the_fix(x, named):
    with pytest.raises(ValueError, match=named):
        fit(x=x, epochs=1)


def test_complex_data_are_refused_not_cast():
    x = torch.complex(data().x, torch.ones_like(data().x))
    with pytest.raises(TypeError, match=r"complex data \(torch\.complex64\).*x\.real, x\.abs\(\)"):
        fit(x=x, epochs=1)
    with pytest.raises(TypeError, match="complex data"):
        fit(x=(x,), epochs=1)


def test_resuming_with_another_default_last_batch_says_why(tmp_path):
    """An eager run's checkpoint resumed under the JIT objective: drop_last differs only by the objective's
    default, which the refusal says."""
    fit(x=data(50), epochs=1, batch_size=16, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"drop_last=False there, True here.*drop_last was not given: compile=True "
                                         "and the JIT objectives drop"):
        fit(x=data(50), epochs=2, batch_size=16, checkpoint=tmp_path / "c.pt", elbo="jit")
    with pytest.raises(ValueError, match="elbo") as chosen:
        fit(x=data(50), epochs=2, batch_size=16, checkpoint=tmp_path / "c.pt", elbo="jit", drop_last=False)
    assert "drop_last was not given" not in str(chosen.value)

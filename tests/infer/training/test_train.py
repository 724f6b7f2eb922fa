"""The SVI loop: objectives, scaling, resume, NaN guard, freezing, warm-up, early stopping, data sources."""

import math

import pyro
import pyro.distributions as dist
import pyro.infer
import pyro.optim
import pytest
import torch
from pyrovae.guides import DeltaGuide, NormalGuide
from pyrovae.models import VAE
from torch.utils.data import DataLoader, TensorDataset

from pyrovae.data import TensorData, two_groups
from pyrovae.infer import SVIStep, TrainingDiverged, load_checkpoint, make_objective, train, trainable_parameters
from pyrovae.likelihoods import Gaussian
from tests.infer.guides_and_models import small_pair


def data(n=96):
    return two_groups(num_per_group=n // 2)


def parameters(*modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


@pytest.mark.parametrize(
    "elbo",
    ["trace", "jit", "meanfield", "iwae", pyro.infer.JitTrace_ELBO(), pyro.infer.Trace_ELBO(num_particles=3)],
)
def test_objectives_reduce_the_loss(elbo):
    model, guide = small_pair()
    history = train(model, guide, data(), epochs=25, batch_size=32, elbo=elbo, num_particles=4 if elbo == "iwae" else 1,
                    lr=1e-2, progress=False, seed=0)
    assert len(history) == 25
    assert history["loss"][-1] < history["loss"][0] - 5
    assert all(math.isfinite(v) for v in history["train_elbo"])


def test_objective_scaling_matches_the_hand_computed_loss():
    # With a point-mass guide and a fixed-scale Gaussian the objective is deterministic:
    # -(N/B) sum_i [log N(x_i | f(g(x_i)), s^2) + beta log N(g(x_i) | 0, I)]
    x = data().x[:8]
    model = VAE(15, 2, hidden=(5,), likelihood=Gaussian(scale=0.7))
    guide = DeltaGuide(15, 2, hidden=(5,))
    objective, _ = make_objective("trace", model, guide)
    data_scale, beta = 12.5, 0.3
    loss = objective(x, torch.tensor([data_scale, beta]))
    code = guide.encoder(x)
    reconstruction = dist.Normal(model.decoder(code), 0.7).log_prob(x).sum()
    prior = dist.Normal(0.0, 1.0).log_prob(code).sum()
    expected = -data_scale * (reconstruction + beta * prior)
    assert torch.allclose(loss, expected, rtol=1e-5)
    jitted, _ = make_objective("jit", model, guide)
    assert torch.allclose(jitted(x, torch.tensor([data_scale, beta])), expected, rtol=1e-5)


@pytest.mark.parametrize("elbo", ["trace", "jit"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, elbo):
    def run(epochs, path, model_seed):
        torch.manual_seed(model_seed)  # a resumed run starts from differently initialised modules
        model, guide = small_pair()
        history = train(model, guide, data(), epochs=epochs, batch_size=20, val_data=data(32), checkpoint=path,
                        kl_warmup_epochs=3, progress=False, seed=7, elbo=elbo)
        return history, parameters(model, guide)

    full_history, full = run(6, tmp_path / "full.pt", 1)
    run(3, tmp_path / "resumed.pt", 1)  # interrupted after 3 epochs
    assert load_checkpoint(tmp_path / "resumed.pt")["epoch"] == 3
    resumed_history, resumed = run(6, tmp_path / "resumed.pt", 3)
    assert all(torch.equal(a, b) for a, b in zip(full, resumed))
    for a, b in zip(full_history.records, resumed_history.records):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    if elbo == "trace":  # fewer epochs than the checkpoint holds: the run as it stands, said
        with pytest.warns(UserWarning, match="holds 6 epochs, more than epochs=4: the run is returned as it stands"):
            shorter, _ = run(4, tmp_path / "resumed.pt", 3)
        assert len(shorter.records) == 6


def test_checkpoint_from_another_setup_is_refused(tmp_path):
    model, guide = small_pair()
    train(model, guide, data(), epochs=1, checkpoint=tmp_path / "c.pt", progress=False)
    other = VAE(15, 3, hidden=(6,), likelihood="gaussian")
    with pytest.raises(ValueError, match="model of another architecture"):
        train(other, NormalGuide(15, 3, hidden=(6,)), data(), epochs=2, checkpoint=tmp_path / "c.pt", progress=False)
    (tmp_path / "bad.pt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="cannot be read"):
        train(model, guide, data(), epochs=2, checkpoint=tmp_path / "bad.pt", progress=False)
    saved = load_checkpoint(tmp_path / "c.pt")
    torch.save({"version": saved["version"], "modules": saved["modules"]}, tmp_path / "shaped.pt")  # shaped alike
    with pytest.raises(ValueError, match="lacks batches, best, epoch, history, optimizer, rng: it was not written by"):
        train(model, guide, data(), epochs=2, checkpoint=tmp_path / "shaped.pt", progress=False)


class ExplodingVAE(VAE):
    """Gives a NaN likelihood from its ``explode_at``-th call on."""

    def __init__(self, *args, explode_at=5, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.explode_at = 0, explode_at

    def decode(self, z):
        self.calls += 1
        out = self.decoder(z)
        if self.calls >= self.explode_at:
            out = out * math.nan
        return self.likelihood(out)


def test_nan_stops_training_and_keeps_the_last_good_state(tmp_path):
    model = ExplodingVAE(15, 2, hidden=(6,), likelihood="gaussian", explode_at=12)
    guide = NormalGuide(15, 2, hidden=(6,))
    snapshots = []
    original_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        result = original_step(self, *args, **kwargs)
        skipped = getattr(self, "found_inf", None)  # the fused Adam's device flag: this step was not applied
        if skipped is None or not bool(skipped):
            snapshots.append(parameters(model, guide))
        return result

    torch.optim.Adam.step = recording_step
    try:
        with pytest.raises(TrainingDiverged, match=r"at epoch \d+, step \d of 3 \(step \d+ of the run\); the step was "
                           r"not applied.*load_checkpoint\('.*c\.pt'\); model\.load_state_dict"):
            train(model, guide, data(), epochs=50, batch_size=32, eval_size=0, checkpoint=tmp_path / "c.pt",
                  progress=False)
    finally:
        torch.optim.Adam.step = original_step
    assert snapshots, "some steps succeeded before the NaN"
    assert all(torch.equal(a, b) for a, b in zip(parameters(model, guide), snapshots[-1]))
    assert all(torch.isfinite(p).all() for p in parameters(model, guide))
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == len(snapshots) // 3


def test_the_default_step_guards_on_the_device_and_skips_every_step_after_a_failure():
    """The fused Adam skips a non-finite step and all later ones on a device flag; the failure is read when asked."""
    model = ExplodingVAE(15, 2, hidden=(6,), likelihood="gaussian", explode_at=5)
    guide = NormalGuide(15, 2, hidden=(6,))
    objective, _ = make_objective("trace", model, guide)
    params, _ = trainable_parameters(model, guide, data()[:8])
    step = SVIStep(objective, params)
    assert step.deferred and not step.failed
    x, scales = data()[:16], torch.tensor([1.0, 1.0])
    states = []
    for _ in range(6):
        loss = step(x, scales)
        assert loss is not None
        states.append(parameters(model, guide))
    assert step.failed and step.first_failure == 3  # decode's 5th call (after the parameter search's) is NaN
    assert not torch.equal(states[1][0], states[2][0])  # good steps were applied
    assert all(torch.equal(a, b) for state in states[3:] for a, b in zip(state, states[2]))
    clipped = SVIStep(objective, params, optim=pyro.optim.ClippedAdam({"lr": 1e-3}))
    assert not clipped.deferred and clipped(x, scales) is None and clipped.failed  # synchronous: None at once


@pytest.mark.parametrize("frozen", ["model", "guide"])
def test_freezing_one_side(frozen):
    model, guide = small_pair()
    before = {"model": parameters(model), "guide": parameters(guide)}
    train(model, guide, data(), epochs=2, freeze=frozen, progress=False)
    after = {"model": parameters(model), "guide": parameters(guide)}
    other = "guide" if frozen == "model" else "model"
    assert all(torch.equal(a, b) for a, b in zip(before[frozen], after[frozen]))
    assert not all(torch.equal(a, b) for a, b in zip(before[other], after[other]))
    assert all(p.requires_grad for p in model.parameters())  # restored afterwards


def test_kl_warmup_ramps_the_weight():
    model, guide = small_pair()
    history = train(model, guide, data(), epochs=5, batch_size=32, kl_warmup_epochs=4, kl_weight=0.5, progress=False)
    assert history["kl_weight"] == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5])


def test_early_stopping_restores_the_best_epoch():
    model, guide = small_pair()
    history = train(model, guide, data(), epochs=30, lr=0.0, patience=2, val_data=data(32), progress=False, seed=3)
    assert history.stopped_early and len(history) < 30
    best = history.records[history.best_epoch - 1]["val_elbo"]
    assert best == max(history["val_elbo"])


def test_data_sources_and_pyro_optimisers():
    x = data().x
    sources = [
        x,
        x.numpy(),
        TensorData(x),
        TensorDataset(x, torch.zeros(len(x))),
        DataLoader(TensorDataset(x), batch_size=16, shuffle=True),
    ]
    for source in sources:
        model, guide = small_pair()
        history = train(model, guide, source, epochs=2, batch_size=16, optim=pyro.optim.ClippedAdam({"lr": 1e-2}),
                        progress=False)
        assert len(history) == 2 and math.isfinite(history["loss"][-1])


def test_plain_pyro_functions_with_param_store_parameters_train():
    pyro.clear_param_store()

    def model(x):
        loc = pyro.param("loc", torch.zeros(15))
        with pyro.plate("data", x.shape[-2]):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(x):
        pass

    train(model, guide, data(), epochs=40, lr=0.1, eval_size=0, progress=False)
    assert torch.allclose(pyro.param("loc").detach(), data().x.mean(0), atol=0.2)
    pyro.clear_param_store()


def test_batch_size_is_honoured_or_refused_for_every_kind_of_data():
    from pyrovae.data import as_source

    x = torch.rand(40, 15)
    assert as_source(x, 8).num_batches(0, False) == 5
    assert as_source(TensorDataset(x), 8).num_batches(0, False) == 5  # a Dataset is batched here
    loader = DataLoader(x, batch_size=10)
    assert as_source(loader).batch_size == 10 and as_source(loader, 10).num_batches(0, False) == 4
    with pytest.raises(ValueError, match="DataLoader with batch_size=10"):
        as_source(loader, 8)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            as_source(x, bad)
    model, guide = small_pair()
    with pytest.raises(ValueError, match="set the batch size on the DataLoader"):
        train(model, guide, loader, batch_size=8, epochs=1, progress=False)
    assert len(train(model, guide, loader, epochs=1, progress=False)) == 1


def test_default_batch_sizes_accept_dataloaders_everywhere_and_small_data_is_named():
    from pyrovae.infer import encode_data, evaluate, log_likelihood

    model, guide = small_pair()
    x = data().x
    loader = DataLoader(x, batch_size=32)
    assert log_likelihood(model, guide, loader, num_samples=4, progress=False).per_datum.shape == (len(x),)
    assert encode_data(guide, loader).shape == (len(x), 2)
    assert set(evaluate(model, guide, x)) == {"elbo", "reconstruction", "kl"}  # a tensor, not only batches
    history = train(model, guide, x, val_data=loader, epochs=1, progress=False)
    assert "val_elbo" in history.last
    with pytest.raises(ValueError, match="eval_batch_size=16 was asked for"):
        train(model, guide, x, val_data=loader, eval_batch_size=16, epochs=1, progress=False)
    with pytest.raises(ValueError, match="no full batch of 32 in 10 data"):
        train(model, guide, TensorDataset(x[:10]), batch_size=32, elbo="jit", epochs=1, progress=False)
    with pytest.raises(ValueError, match="learning-rate schedulers"):
        scheduler = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.01}, "gamma": 0.9})
        train(model, guide, x, optim=scheduler, epochs=1, progress=False)


def test_a_frozen_side_keeps_its_batch_norm_statistics():
    model = VAE(15, 2, hidden=(6,), likelihood="gaussian", batch_norm=True, dropout=0.2)
    guide = NormalGuide(15, 2, hidden=(6,), batch_norm=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, guide, data(), epochs=2, freeze="model", progress=False, seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_tracing_leaves_batch_norm_statistics_as_one_eager_step_does():
    """Tracing runs the objective (twice): its batch-norm updates must not count, or a traced run (and a resumed one,
    which traces again) drifts from an eager one."""
    x = torch.randn(16, 10, generator=torch.Generator().manual_seed(0)) * 3 + 1
    stats = {}
    for elbo in ("trace", "jit"):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide = VAE(10, 2, (8,), likelihood="gaussian"), NormalGuide(10, 2, (8,), batch_norm=True)
        objective, _ = make_objective(elbo, model, guide)
        pyro.set_rng_seed(0)
        objective(x, torch.ones(2))
        stats[elbo] = [b.clone() for b in guide.buffers()]
    for eager, traced in zip(stats["trace"], stats["jit"]):
        torch.testing.assert_close(traced, eager)
    assert int(stats["jit"][-1]) == 1  # num_batches_tracked: one step


def test_the_pairing_is_checked_once_not_every_epoch(monkeypatch):
    # train checks the model against the guide before the first step and with the first epoch's scores; the
    # later epochs' scores (train and validation) do not repeat it (17 ms an epoch on a small count model)
    import sys

    evaluation, training = (sys.modules[f"pyrovae.infer.{name}"] for name in ("evaluation", "training.train"))

    calls = []
    for module in (evaluation, training):
        checked = module.check_model_guide
        monkeypatch.setattr(module, "check_model_guide",
                            lambda *a, checked=checked, **k: calls.append(1) or checked(*a, **k))
    model, guide = small_pair()
    train(model, guide, data(), epochs=4, batch_size=32, val_data=data(32), progress=False, seed=0)
    assert len(calls) == 3  # before the first step, and the first epoch's train and validation scores


def _flip_first_float_of_each_tensor(path):
    """Damage a torch.save file in place as a failing disk does: the first float of every tensor record changed,
    the archive's structure and sizes untouched (torch.load reads it without a word)."""
    import struct
    import zipfile

    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        for record in archive.infolist():
            if "/data/" in record.filename and record.file_size >= 4:
                header = record.header_offset
                name_length, extra_length = struct.unpack("<HH", raw[header + 26:header + 30])
                start = header + 30 + name_length + extra_length
                raw[start:start + 4] = struct.pack("<f", 1000.0)
    path.write_bytes(bytes(raw))


def test_a_checkpoint_damaged_in_place_is_refused_not_resumed(tmp_path):
    model, guide = small_pair()
    path = tmp_path / "c.pt"
    train(model, guide, data(), epochs=1, checkpoint=path, progress=False)
    assert torch.load(path, weights_only=False)  # written with a checksum per record, read as usual
    _flip_first_float_of_each_tensor(path)
    assert torch.load(path, weights_only=False)["epoch"] == 1  # torch alone reads the damaged tensors without a word
    kept = parameters(model, guide)
    with pytest.raises(ValueError, match=r"c\.pt is damaged: its record .*/data/\d+ no longer matches the checksum.*"
                                         "delete it"):
        train(model, guide, data(), epochs=2, checkpoint=path, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(parameters(model, guide), kept))


@pytest.fixture
def checksums_off():
    """torch.save told to skip the CRC-32 of its records, as a user may have set it, for one test."""
    computed = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    yield
    torch.serialization.set_crc32_options(computed)


def test_checkpoints_keep_their_checksums_when_torch_is_told_to_skip_them(tmp_path, checksums_off):
    model, guide = small_pair()
    train(model, guide, data(), epochs=1, checkpoint=tmp_path / "c.pt", progress=False)
    assert torch.serialization.get_crc32_options() is False  # the user's choice left as it was
    torch.save(load_checkpoint(tmp_path / "c.pt"), tmp_path / "unchecked.pt")
    assert load_checkpoint(tmp_path / "unchecked.pt")["epoch"] == 1  # 0 for every record: nothing to check
    _flip_first_float_of_each_tensor(tmp_path / "c.pt")
    with pytest.raises(ValueError, match="is damaged"):
        load_checkpoint(tmp_path / "c.pt")


class ScaledVAE(VAE):
    """Sees its data times ``factor`` from its ``after``-th call on: a run whose loss grows a million-fold."""

    def __init__(self, *args, after=10**9, factor=1e4, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.after, self.factor = 0, after, factor

    def forward(self, x, *args):
        self.calls += 1
        return super().forward(x * self.factor if self.calls > self.after else x, *args)


def test_a_resumed_run_measures_divergence_from_the_first_step_of_the_run(tmp_path):
    """The million-fold rule reads the loss of the run's first step, which the checkpoint keeps: resumed after the
    first epochs, a run that diverges stops where the uninterrupted one stops."""
    def run(after, epochs, checkpoint=None):
        pyro.set_rng_seed(0)
        model = ScaledVAE(15, 2, hidden=(6,), likelihood="gaussian", after=after)
        return train(model, NormalGuide(15, 2, hidden=(6,)), data(), epochs=epochs, batch_size=32, eval_size=0,
                     seed=1, checkpoint=checkpoint, progress=False)

    with pytest.raises(TrainingDiverged, match="at the first step") as uninterrupted:
        run(after=6, epochs=4)  # 3 steps per epoch: epochs 1-2 as they are, then the data scaled
    run(after=10**9, epochs=2, checkpoint=tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt")["first_loss"] > 0
    with pytest.raises(TrainingDiverged, match="at the first step") as resumed:
        run(after=0, epochs=4, checkpoint=tmp_path / "c.pt")
    first = [str(e.value).split(" at the first step")[0].rsplit(" ", 1)[-1] for e in (uninterrupted, resumed)]
    assert first[0] == first[1]  # the same first step's loss in both messages


def test_a_history_answers_in_iteration_and_indexing_without_hanging():
    """It was read by metric name only, so `"loss" in history` and `for r in history` tried keys 0, 1, 2, ... for
    ever; now they go over the records."""
    from pyrovae.infer import History

    history = History(records=[{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 2.0, "val_elbo": -2.5}])
    assert "loss" in history and "val_elbo" in history and "train_elbo" not in history
    assert [r["epoch"] for r in history] == [1, 2] and list(history) == history.records
    assert history[-1] is history.records[-1] and history[:1] == history.records[:1]
    assert history["loss"] == [3.0, 2.0] and history["val_elbo"] == [None, -2.5]
    import numpy as np

    assert history[np.int64(1)] is history.records[1]  # history[np.argmax(...)]
    with pytest.raises(TypeError, match=r"read by a metric.s name .* or by the position of an epoch.s record"):
        history[1.5]
    assert "loss" not in History() and list(History()) == []

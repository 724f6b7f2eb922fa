"""log_likelihood_in_parts: a scoring in saved parts equals one uninterrupted call, resumes where it stopped, is
right against the exact marginal of probabilistic PCA, and refuses a folder of another scoring;
LogLikelihood.concat joins parts field by field."""

import json
import re
import warnings

import pytest
import torch

from pyrovae import make_pair
from pyrovae.infer import LogLikelihood, log_likelihood, log_likelihood_in_parts
from pyrovae.infer.estimation import parts as parts_module
from tests.infer.estimation.test_log_likelihood import exact_log_marginal, make_guide, make_model, ppca


def _quiet(fn, *args, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **options)


def _assert_same(a: LogLikelihood, b: LogLikelihood) -> None:
    for name in ("per_datum", "khat", "mean_log_weight", "ess", "checked", "draws", "num_modes"):
        left, right = getattr(a, name), getattr(b, name)
        assert (left is None) == (right is None), name
        if left is not None:
            assert torch.equal(left, right), name
    assert a.estimator == b.estimator and a.num_samples == b.num_samples and a.proposal == b.proposal


@pytest.mark.parametrize("proposal", ["guide", "auto"])
def test_parts_are_right_against_the_exact_marginal(tmp_path, proposal):
    W, mu, x = ppca(4)
    model, guide = make_model(W, mu), make_guide(W, mu, scale_factor=1.4, shift=0.2)
    result = _quiet(log_likelihood_in_parts, model, guide, x, tmp_path / "scores", part_size=15, num_samples=500,
                    proposal=proposal)
    exact = exact_log_marginal(W, mu, x)
    assert result.per_datum.shape == (40,) and sorted(p.name for p in (tmp_path / "scores").glob("part-*.pt")) == [
        "part-00000.pt", "part-00001.pt", "part-00002.pt"]
    assert abs(result.mean - exact.mean().item()) < 0.05
    if proposal == "auto":
        certified = result.certified
        assert certified.float().mean() >= 0.9
        assert ((result.per_datum - exact).abs()[certified] <= 3 * result.mc_stderr[certified] + 0.02).all()
        assert result.cost["guide"]["data"] == 40 and len(result.estimator) == 40


def test_each_part_scored_is_logged_and_a_part_read_is_not(tmp_path, caplog):
    """A long job's log says how far its scoring has come, without a progress bar."""
    W, mu, x = ppca(7)
    model, guide = make_model(W, mu), make_guide(W, mu)
    with caplog.at_level("INFO", logger="pyrovae.infer.estimation.parts"):
        _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path, part_size=8, num_samples=50)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "part 2 scored (4 data" in lines[2] and "certified" in lines[2]
    caplog.clear()
    with caplog.at_level("INFO", logger="pyrovae.infer.estimation.parts"):
        _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path, part_size=8, num_samples=50)
    assert not caplog.records  # every part read from its file


def test_an_interrupted_scoring_resumes_and_equals_one_uninterrupted(tmp_path, monkeypatch):
    W, mu, x = ppca(5)
    model, guide = make_model(W, mu), make_guide(W, mu, scale_factor=1.3)
    whole = _quiet(log_likelihood_in_parts, model, guide, x, tmp_path / "a", part_size=16, num_samples=200,
                   proposal="auto", ais_chains=8, ais_steps=5)
    calls = []
    real = parts_module.log_likelihood

    def interrupted(*args, **options):
        calls.append(len(args[2]))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is stopped while it scores the second part
        return real(*args, **options)

    monkeypatch.setattr(parts_module, "log_likelihood", interrupted)
    before = torch.random.get_rng_state()
    with pytest.raises(KeyboardInterrupt):
        _quiet(log_likelihood_in_parts, model, guide, x, tmp_path / "b", part_size=16, num_samples=200,
               proposal="auto", ais_chains=8, ais_steps=5)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global random state is left alone
    assert [p.name for p in (tmp_path / "b").glob("part-*.pt")] == ["part-00000.pt"]
    calls.clear()
    monkeypatch.setattr(parts_module, "log_likelihood", real)
    monkeypatch.setattr(parts_module, "log_likelihood", lambda *a, **o: calls.append(len(a[2])) or real(*a, **o))
    resumed = _quiet(log_likelihood_in_parts, model, guide, x, tmp_path / "b", part_size=16, num_samples=200,
                     proposal="auto", ais_chains=8, ais_steps=5)
    assert calls == [16, 8]  # the saved part is read, the other two are scored
    _assert_same(resumed, whole)
    assert resumed.cost["guide"]["data"] == 40


def test_a_folder_of_another_scoring_is_refused(tmp_path):
    W, mu, x = ppca(6)
    model, guide = make_model(W, mu), make_guide(W, mu)
    _quiet(log_likelihood_in_parts, model, guide, x, tmp_path, part_size=20, num_samples=50)
    with pytest.raises(ValueError, match=r"another scoring: the estimator's options: \{'num_samples': 50\} there"):
        log_likelihood_in_parts(model, guide, x, tmp_path, part_size=20, num_samples=60)
    with pytest.raises(ValueError, match=r"another scoring: part_size: 20 there, 10 now\. Score"):
        log_likelihood_in_parts(model, guide, x, tmp_path, part_size=10, num_samples=50)
    with pytest.raises(ValueError, match=r"of every datum\) differ; the number of data: 40 there, 30 now"):
        log_likelihood_in_parts(model, guide, x[:30], tmp_path, part_size=20, num_samples=50)
    with pytest.raises(ValueError, match=r"scoring: the data \(a digest of every datum\) differ\. "):
        log_likelihood_in_parts(model, guide, x.flip(0), tmp_path, part_size=20, num_samples=50)


def test_one_changed_datum_is_refused(tmp_path):
    """Every datum is digested: a change to one that the digest of 256 spread over the set does not read (every
    third of 1,200 here) is refused too, and a manifest written before that digest is upgraded, not refused."""
    W, mu, _ = ppca(6)
    x = torch.randn(1200, W.shape[0], generator=torch.Generator().manual_seed(0), dtype=W.dtype)
    model, guide = make_model(W, mu), make_guide(W, mu)
    _quiet(log_likelihood_in_parts, model, guide, x[:600], tmp_path, part_size=300, num_samples=21)
    changed = x[:600].clone()
    changed[1] += 1.0  # not among the 256 of the sampled digest (rows 0, 2, 5, ...)
    with pytest.raises(ValueError, match=r"scoring: the data \(a digest of every datum\) differ\. "):
        log_likelihood_in_parts(model, guide, changed, tmp_path, part_size=300, num_samples=21)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["all_data"]  # as written before every datum was digested
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    _quiet(log_likelihood_in_parts, model, guide, x[:600], tmp_path, part_size=300, num_samples=21)
    assert "all_data" in json.loads((tmp_path / "manifest.json").read_text())
    with pytest.raises(ValueError, match="by name"):
        log_likelihood_in_parts(model, guide, x, tmp_path / "other", proposal=object())
    with pytest.raises(ValueError, match="empty"):
        log_likelihood_in_parts(model, guide, x[:0], tmp_path / "empty")


def test_other_weights_are_refused_by_their_digest(tmp_path):
    """A model retrained (or another checkpoint loaded) must not reuse the parts of the old weights."""
    torch.manual_seed(0)
    model, guide = make_pair("vae", 12, 2, (8,), likelihood="gaussian")
    x = torch.randn(30, 12)
    first = _quiet(log_likelihood_in_parts, model, guide, x, tmp_path, part_size=10, num_samples=20)
    again = _quiet(log_likelihood_in_parts, model, guide, x, tmp_path, part_size=10, num_samples=20)
    _assert_same(first, again)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    with torch.no_grad():
        next(guide.parameters()).add_(1e-3)
    with pytest.raises(ValueError, match=r"scoring: the model's or guide's parameters .* differ\. Score"):
        log_likelihood_in_parts(model, guide, x, tmp_path, part_size=10, num_samples=20)
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest


def test_concat_joins_fields_and_adds_costs():
    W, mu, x = ppca(7)
    model, guide = make_model(W, mu), make_guide(W, mu, scale_factor=1.2)
    a = _quiet(log_likelihood, model, guide, x[:25], num_samples=200, proposal="auto", ais_chains=8, ais_steps=5)
    b = _quiet(log_likelihood, model, guide, x[25:], num_samples=200, proposal="auto", ais_chains=8, ais_steps=5)
    joined = LogLikelihood.concat([a, b])
    assert torch.equal(joined.per_datum, torch.cat([a.per_datum, b.per_datum]))
    assert joined.estimator == a.estimator + b.estimator
    assert torch.equal(joined.certified, torch.cat([a.certified, b.certified]))
    for stage in a.cost:
        assert joined.cost[stage]["data"] == a.cost[stage]["data"] + b.cost[stage]["data"]
        assert joined.cost[stage]["seconds"] == pytest.approx(a.cost[stage]["seconds"] + b.cost[stage]["seconds"])
    assert joined.mean == pytest.approx((25 * a.mean + 15 * b.mean) / 40)
    _assert_same(LogLikelihood.concat([a]), a)
    gaps = LogLikelihood.concat([LogLikelihood(a.per_datum, a.khat, 200, "auto", schedule_gap=g, acceptance=r)
                                 for g, r in ((0.1, 0.5), (None, None), (0.3, 0.9))])
    assert gaps.schedule_gap == pytest.approx(0.2) and gaps.acceptance == pytest.approx(0.7)


def test_concat_refuses_parts_of_different_estimators():
    W, mu, x = ppca(8)
    model, guide = make_model(W, mu), make_guide(W, mu)
    by_guide = _quiet(log_likelihood, model, guide, x[:10], num_samples=50)
    refined = _quiet(log_likelihood, model, guide, x[10:20], num_samples=50, proposal="refined")
    with pytest.raises(ValueError, match="differ in proposal"):
        LogLikelihood.concat([by_guide, refined])
    with pytest.raises(ValueError, match="differ in num_samples"):
        LogLikelihood.concat([by_guide, _quiet(log_likelihood, model, guide, x[10:], num_samples=60)])
    with pytest.raises(ValueError, match="non-empty list"):
        LogLikelihood.concat([])


def test_a_count_model_with_scalar_buffers_is_scored_in_parts(tmp_path):
    """The count likelihoods keep 0-dimensional buffers (the library prior), which the digest must read."""
    torch.manual_seed(1)
    model, guide = make_pair("vae", 30, 2, (8,), likelihood="nb", batch_norm=True)
    x = torch.poisson(torch.full((24, 30), 2.0))
    whole = _quiet(log_likelihood_in_parts, model, guide, x, tmp_path, part_size=10, num_samples=32)
    again = _quiet(log_likelihood_in_parts, model, guide, x, tmp_path, part_size=10, num_samples=32, device=None)
    _assert_same(whole, again)  # an option at its default is the option left out


def test_data_with_covariates_as_a_tuple_are_scored_as_their_count_data(tmp_path):
    """(x, cat, cont), what a CellStream's ``inputs`` gives, is taken by position as CountData is: the same parts."""
    from tests.data.test_count_data_covariates import batched_counts

    data = batched_counts(n=50)
    torch.manual_seed(2)
    model, guide = make_pair("vae", 30, 2, (8,), likelihood="nb", categorical=data.categorical_sizes,
                             continuous=data.num_continuous)
    arguments = data.batch(torch.arange(len(data)))
    as_tuple = _quiet(log_likelihood_in_parts, model, guide, arguments, tmp_path / "tuple", part_size=20,
                      num_samples=16)
    _assert_same(as_tuple, _quiet(log_likelihood_in_parts, model, guide, data, tmp_path / "count_data",
                                  part_size=20, num_samples=16))
    assert len(list((tmp_path / "tuple").glob("part-*.pt"))) == 3
    with pytest.raises(ValueError):  # a covariate per datum, or the tuple is not one row per datum
        log_likelihood_in_parts(model, guide, (arguments[0], arguments[1][:10], arguments[2]), tmp_path / "short")
    with pytest.raises(TypeError, match="every entry of"):
        log_likelihood_in_parts(model, guide, (arguments[0], arguments[1], None), tmp_path / "none")


def test_wrong_calls_are_refused_before_anything_is_written(tmp_path):
    W, mu, x = ppca(9)
    model, guide = make_model(W, mu), make_guide(W, mu)
    folder = tmp_path / "scores"
    with pytest.raises(TypeError, match="num_sample"):
        log_likelihood_in_parts(model, guide, x, folder, num_sample=50)
    with pytest.raises(ValueError, match="ais_chains"):
        log_likelihood_in_parts(model, guide, x, folder, proposal="refined", ais_chains=8)
    with pytest.raises(ValueError, match="proposal must be one of"):
        log_likelihood_in_parts(model, guide, x, folder, proposal="refind")
    with pytest.raises(TypeError, match="every entry of"):
        log_likelihood_in_parts(model, guide, (x, "labels"), folder)
    with pytest.raises(TypeError, match="by position"):
        log_likelihood_in_parts(model, guide, [x], folder)
    with pytest.raises(TypeError, match="by position"):
        log_likelihood_in_parts(model, guide, torch.utils.data.DataLoader(x, batch_size=8), folder)
    assert not folder.exists() or not any(folder.iterdir())
    folder.mkdir(exist_ok=True)
    (folder / "part-00000.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="no manifest.json"):
        log_likelihood_in_parts(model, guide, x, folder)


def test_concat_judges_every_ais_estimate_by_the_average_gap():
    """Each part checked the AIS schedule on its own simulated data; the joined estimate judges all its AIS
    estimates by the average gap, as one call would by its one check."""
    khat, ess = torch.tensor([0.2, 0.3, 0.9, 0.1]), torch.tensor([50.0, 40.0, 30.0, 60.0])

    def part(gap, checked):
        return LogLikelihood(torch.zeros(4), khat, 100, "auto", ess=ess, estimator=("ais", "ais", "ais", "guide"),
                             checked=torch.tensor(checked), schedule_gap=gap, draws=torch.full((4,), 128),
                             cost={"ais": {"data": 3, "seconds": 1.0, "schedule_gap": gap}})

    ais_sound = [True, True, False, False, True, True, False, False]
    too_far = LogLikelihood.concat([part(0.2, [True, True, False, False]), part(0.9, [False, False, False, False])])
    assert too_far.schedule_gap == pytest.approx(0.55) and too_far.cost["ais"]["schedule_gap"] == pytest.approx(0.55)
    assert not too_far.checked.any()  # 0.55 nats is beyond what "auto" accepts: no AIS estimate is certified
    close = LogLikelihood.concat([part(0.6, [False, False, False, False]), part(0.3, [True, True, False, False])])
    assert close.checked.tolist() == ais_sound and close.cost["ais"]["data"] == 6



def test_an_option_spelled_out_at_its_default_is_the_same_scoring(tmp_path):
    W, mu, x = ppca(6)
    model, guide = make_model(W, mu), make_guide(W, mu)
    first = _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path, part_size=10, num_samples=50)
    again = _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path, part_size=10, num_samples=50,
                   proposal="guide", batch_size=None)
    _assert_same(first, again)
    auto = _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path / "auto", part_size=10, num_samples=50,
                  proposal="auto", ais_chains=8, ais_steps=5)
    assert json.loads((tmp_path / "auto" / "manifest.json").read_text())["options"]["ais_chains"] == 8
    spelled = _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path / "spelled", part_size=10,
                     num_samples=50, proposal="auto")
    assert "ais_chains" not in json.loads((tmp_path / "spelled" / "manifest.json").read_text())["options"]
    _assert_same(spelled, _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path / "spelled", part_size=10,
                                 num_samples=50, proposal="auto", ais_chains=128, ais_steps=200))
    assert auto.num_samples == spelled.num_samples
    # a manifest written before defaults were left out (an old one, spelling them) still reads as this scoring
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["options"]["proposal"] = "guide"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    _assert_same(first, _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path, part_size=10, num_samples=50))


@pytest.mark.parametrize("option", [{"num_samples": 0}, {"batch_size": 0}, {"max_samples_per_chunk": 0},
                                    {"device": "cuda:99"}])
def test_a_wrong_option_writes_nothing(tmp_path, option):
    W, mu, x = ppca(6)
    with pytest.raises((ValueError, RuntimeError)):
        log_likelihood_in_parts(make_model(W, mu), make_guide(W, mu), x[:10], tmp_path / "f", **option)
    assert not (tmp_path / "f").exists()


def test_a_corrupt_part_is_named(tmp_path):
    W, mu, x = ppca(6)
    model, guide = make_model(W, mu), make_guide(W, mu)
    _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path, part_size=10, num_samples=50)
    (tmp_path / "part-00001.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="part part-00001.pt in .* cannot be read .*delete it") as error:
        _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path, part_size=10, num_samples=50)
    assert "weights_only" not in str(error.value)


def test_a_pair_without_parameters_to_digest_is_said(tmp_path):
    """Plain functions whose weights are captured tensors give the digest nothing: the folder says it cannot tell
    them apart (it would read another pair's parts as theirs)."""
    W, mu, x = ppca(6)
    with pytest.warns(UserWarning, match="cannot tell this pair from another"):
        log_likelihood_in_parts(make_model(W, mu), make_guide(W, mu), x[:10], tmp_path, num_samples=50)
    torch.manual_seed(0)
    model, guide = make_pair("vae", 12, 2, (8,), likelihood="gaussian")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*cannot tell this pair")
        log_likelihood_in_parts(model, guide, torch.randn(10, 12), tmp_path / "modules", num_samples=50)


def test_an_auto_scoring_of_an_earlier_version_is_refused_and_others_resume(tmp_path):
    """Parts of an earlier manifest version of proposal="auto" (stages certified at k-hat <= 0.7 whatever the draws,
    AIS with a fixed step) are another estimator's: refused, naming the version. Other proposals' parts hold the
    same estimates (certified when read): they resume, and the manifest is upgraded."""
    W, mu, x = ppca(6)
    model, guide = make_model(W, mu), make_guide(W, mu)
    for proposal, folder in (("auto", tmp_path / "auto"), ("guide", tmp_path / "guide")):
        options = dict(part_size=20, num_samples=50, proposal=proposal, ais_chains=8, ais_steps=5) \
            if proposal == "auto" else dict(part_size=20, num_samples=50)
        first = _quiet(log_likelihood_in_parts, model, guide, x[:20], folder, **options)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["version"] == 6
        for version in (2, None):  # version 1 wrote none
            manifest.pop("version", None)
            if version is not None:
                manifest["version"] = version
            (folder / "manifest.json").write_text(json.dumps(manifest))
            if proposal == "auto":
                with pytest.raises(ValueError, match=rf"'auto' scoring by an earlier pyrovae \(manifest version "
                                                     rf"{version or 1}: its stages certified at k-hat <= 0.7"):
                    _quiet(log_likelihood_in_parts, model, guide, x[:20], folder, **options)
            else:
                _assert_same(first, _quiet(log_likelihood_in_parts, model, guide, x[:20], folder, **options))
                assert json.loads((folder / "manifest.json").read_text())["version"] == 6
    manifest["version"] = 7
    (tmp_path / "guide" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="by a newer pyrovae"):
        _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path / "guide", part_size=20, num_samples=50)


def test_an_auto_scoring_of_version_3_is_refused_naming_why(tmp_path):
    """Version 4 changed what "auto" does for a latent on the sphere (refined as a projected normal, no longer in the
    guide's own family), version 5 every refinement (its start's spread calibrated): a version-3 folder is refused,
    for a guide on the sphere naming the first change, for a Gaussian guide the second."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((8, 12), 0.3))
    options = dict(part_size=4, num_samples=20, proposal="auto", ais_chains=8, ais_steps=3, refine_steps=3)
    for kind, why in (("vae", r"manifest version 3: its refinement started from the guide's spread, now calibrated"),
                      ("svae-vmf", r"manifest version 3: its refined stage kept a latent on the sphere in the "
                                   r"guide's own family, now refined as a projected normal"),
                      ("svae-power", r"manifest version 3: its refined stage kept a latent on the sphere")):
        model, guide = make_pair(kind, 12, 3, (8,))
        folder = tmp_path / kind
        _quiet(log_likelihood_in_parts, model, guide, x, folder, **options)
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**manifest, "version": 3}))
        with pytest.raises(ValueError, match=why):
            _quiet(log_likelihood_in_parts, model, guide, x, folder, **options)


@pytest.mark.parametrize("version, why", [
    (4, "its refinement started from the guide's"),
    (5, "its calibration of the starts' spread compared the factors on independent draws"),
])
def test_a_refined_scoring_of_version_4_or_5_is_refused_and_the_guides_resumes(tmp_path, version, why):
    """Version 5 calibrates the spread each refinement starts from, version 6 compares the factors on common draws
    and calibrates each latent site in turn: an earlier folder of any proposal that refines (auto,
    refined+defensive) would mix two estimators and is refused, naming the proposal and why; the guide's parts are
    this version's estimates, resume, and the manifest is upgraded."""
    torch.manual_seed(0)
    model, guide = make_pair("vae", 12, 3, (8,))
    x = torch.bernoulli(torch.full((8, 12), 0.3))
    for proposal in ("auto", "refined+defensive", "guide"):
        options = dict(part_size=4, num_samples=20, proposal=proposal)
        if proposal != "guide":
            options["refine_steps"] = 3
        if proposal == "auto":
            options.update(ais_chains=8, ais_steps=3)
        folder = tmp_path / proposal
        first = _quiet(log_likelihood_in_parts, model, guide, x, folder, **options)
        manifest = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
        if proposal == "guide":
            _assert_same(first, _quiet(log_likelihood_in_parts, model, guide, x, folder, **options))
            assert json.loads((folder / "manifest.json").read_text())["version"] == 6
        else:
            with pytest.raises(ValueError, match=rf"proposal='{re.escape(proposal)}' scoring by an earlier pyrovae "
                                                 rf"\(manifest version {version}: {re.escape(why)}"):
                _quiet(log_likelihood_in_parts, model, guide, x, folder, **options)


def test_a_part_damaged_in_place_is_named(tmp_path):
    """A part whose bytes changed on the disk (its archive intact) is refused by its checksums, not read as numbers."""
    from tests.infer.training.test_train import _flip_first_float_of_each_tensor

    W, mu, x = ppca(6)
    model, guide = make_model(W, mu), make_guide(W, mu)
    _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path, part_size=10, num_samples=50)
    _flip_first_float_of_each_tensor(tmp_path / "part-00001.pt")
    with pytest.raises(ValueError, match=r"part part-00001.pt in .* is damaged \(its record .* no longer matches the "
                                         "checksum.*delete it, and the next call scores that part again"):
        _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path, part_size=10, num_samples=50)
    (tmp_path / "part-00001.pt").unlink()
    again = _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path, part_size=10, num_samples=50)
    assert again.per_datum.isfinite().all()

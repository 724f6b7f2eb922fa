"""Each part read from a folder is checked datum by datum against the data it stands for: a part of other data
(copied from another scoring's folder, or saved by a pyrovae that hashed the data otherwise) is refused when read,
by name, instead of surfacing hours later when two scorings are compared."""

import dataclasses
import shutil
import warnings

import pytest
import torch

from pyrovae import make_pair
from pyrovae.infer import LogLikelihood, log_likelihood_in_parts
from tests.infer.estimation.test_log_likelihood import make_guide, make_model, ppca


def _quiet(fn, *args, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **options)


def test_a_part_of_other_data_is_refused_by_name(tmp_path):
    W, mu, x = ppca(6)
    model, guide = make_model(W, mu), make_guide(W, mu)
    for name, data in (("mine", x[:20]), ("other", x[20:40])):
        _quiet(log_likelihood_in_parts, model, guide, data, tmp_path / name, part_size=10, num_samples=50)
    shutil.copy(tmp_path / "other" / "part-00001.pt", tmp_path / "mine" / "part-00001.pt")
    with pytest.raises(ValueError, match=r"part part-00001.pt in .*mine holds the estimates of other data than its "
                                         r"place in these data \(10 of its 10 data differ\).*delete it"):
        _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path / "mine", part_size=10, num_samples=50)
    (tmp_path / "mine" / "part-00001.pt").unlink()  # the fix the message gives: that part is scored again
    again = _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path / "mine", part_size=10, num_samples=50)
    assert again.per_datum.shape == (20,)


def test_a_part_saved_before_estimates_kept_their_hashes_gets_them(tmp_path):
    W, mu, x = ppca(6)
    model, guide = make_model(W, mu), make_guide(W, mu)
    first = _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path, part_size=10, num_samples=50)
    path = tmp_path / "part-00000.pt"
    saved = torch.load(path, weights_only=True)
    torch.save({**saved, "fingerprint": None}, path)
    again = _quiet(log_likelihood_in_parts, model, guide, x[:20], tmp_path, part_size=10, num_samples=50)
    assert torch.equal(again.fingerprint, first.fingerprint) and torch.equal(again.per_datum, first.per_datum)


def test_data_converted_to_the_models_dtype_are_hashed_as_scored(tmp_path):
    """float64 data with a float32 model are scored (and hashed) in float32: a resumed scoring reads its parts."""
    torch.manual_seed(0)
    model, guide = make_pair("vae", 12, 2, (8,), likelihood="gaussian")
    x = torch.randn(16, 12, dtype=torch.float64)
    first = _quiet(log_likelihood_in_parts, model, guide, x, tmp_path, part_size=8, num_samples=20)
    again = _quiet(log_likelihood_in_parts, model, guide, x, tmp_path, part_size=8, num_samples=20)
    assert dataclasses.asdict(first).keys() == dataclasses.asdict(again).keys()
    assert torch.equal(first.per_datum, again.per_datum) and isinstance(again, LogLikelihood)


def test_data_drawn_afresh_at_each_read_resume_without_a_check(tmp_path):
    """Dynamic binarisation draws new pixels at every read: a part's data cannot be hashed again, and a resumed
    scoring reads its parts as saved (the check refused them all, 10 of 10 data differing)."""
    from pyrovae.data import TensorData

    torch.manual_seed(0)
    model, guide = make_pair("vae", 12, 2, (8,), likelihood="bernoulli")
    data = TensorData(torch.rand(20, 12), transform=torch.bernoulli)
    first = _quiet(log_likelihood_in_parts, model, guide, data, tmp_path, part_size=10, num_samples=10)
    again = _quiet(log_likelihood_in_parts, model, guide, data, tmp_path, part_size=10, num_samples=10)
    assert torch.equal(first.per_datum, again.per_datum)

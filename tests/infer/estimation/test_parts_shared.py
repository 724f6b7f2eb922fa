"""log_likelihood_in_parts shared between jobs: a part another job holds is left to it and read at the end (or
scored here if that job stops without it), and two processes started on one folder score each part once."""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pyrovae.infer import log_likelihood_in_parts
from pyrovae.infer.estimation import parts as parts_module
from pyrovae.infer.training.checkpoint import FileLock
from tests.infer.estimation.test_log_likelihood import make_guide, make_model, ppca
from tests.infer.estimation.test_parts import _assert_same, _quiet


def _which_parts(x, part_size):
    """A spy on the estimator that records which parts of ``x`` it scores."""
    scored, real = [], parts_module.log_likelihood

    def spy(model, guide, data, **options):
        starts = range(0, len(x), part_size)
        scored.append(next(i for i, start in enumerate(starts) if torch.equal(data, x[start:start + part_size])))
        return real(model, guide, data, **options)

    return scored, spy


@pytest.mark.parametrize("other_job_saves", [True, False])
def test_a_part_another_job_holds_is_skipped_then_read(tmp_path, monkeypatch, other_job_saves):
    """A part claimed by another job is left to it and read at the end; if that job stops without saving it,
    this one scores it. Either way the result is the one uninterrupted call's."""
    W, mu, x = ppca(7)
    model, guide = make_model(W, mu), make_guide(W, mu, scale_factor=1.3)
    options = dict(part_size=10, num_samples=100, proposal="guide")
    whole = _quiet(log_likelihood_in_parts, model, guide, x, tmp_path / "whole", **options)
    folder = tmp_path / "shared"
    scored, spy = _which_parts(x, 10)
    monkeypatch.setattr(parts_module, "log_likelihood", spy)
    folder.mkdir()
    other = FileLock(folder / "part-00001.pt")
    assert other.acquire(blocking=False)  # the other job is scoring part 1
    outcome = {}
    job = threading.Thread(target=lambda: outcome.update(result=_quiet(
        log_likelihood_in_parts, model, guide, x, folder, **options)))
    job.start()
    deadline = time.monotonic() + 60
    while len(scored) < 3 or not (folder / "part-00003.pt").exists():  # parts 0, 2 and 3, then it waits for 1
        assert job.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    assert scored == [0, 2, 3] and not (folder / "part-00001.pt").exists()
    if other_job_saves:
        shutil.copy(tmp_path / "whole" / "part-00001.pt", folder / "part-00001.pt")
    other.release()
    job.join(60)
    assert scored == ([0, 2, 3] if other_job_saves else [0, 2, 3, 1])
    _assert_same(outcome["result"], whole)


def test_two_processes_sharing_a_folder_score_each_part_once(tmp_path):
    """Two jobs started on one folder split its parts between them, and both return the whole scoring."""
    W, mu, x = ppca(8)
    whole = _quiet(log_likelihood_in_parts, make_model(W, mu), make_guide(W, mu, scale_factor=1.3), x,
                   tmp_path / "whole", part_size=5, num_samples=2000, proposal="guide")
    job = f"""
import sys, torch, warnings
warnings.simplefilter("ignore")
from pyrovae.infer import log_likelihood_in_parts
from pyrovae.infer.estimation import parts
from tests.infer.estimation.test_log_likelihood import make_guide, make_model, ppca
W, mu, x = ppca(8)
real, scored = parts.log_likelihood, []
def spy(model, guide, data, **options):
    scored.append(next(i for i in range(0, 40, 5) if torch.equal(data, x[i:i + 5])) // 5)
    return real(model, guide, data, **options)
parts.log_likelihood = spy
result = log_likelihood_in_parts(make_model(W, mu), make_guide(W, mu, scale_factor=1.3), x,
                                 {str(tmp_path / 'shared')!r}, part_size=5, num_samples=2000, proposal="guide")
torch.save({{"per_datum": result.per_datum, "scored": scored}}, sys.argv[1])
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[3]
    jobs = [subprocess.Popen([sys.executable, "-c", job, str(tmp_path / f"job{i}.pt")], cwd=root, env=env)
            for i in range(2)]
    assert [p.wait(300) for p in jobs] == [0, 0]
    results = [torch.load(tmp_path / f"job{i}.pt") for i in range(2)]
    first, second = (set(r["scored"]) for r in results)
    assert not first & second and first | second == set(range(8))  # every part scored once, by one of them
    for r in results:
        assert torch.equal(r["per_datum"], whole.per_datum)

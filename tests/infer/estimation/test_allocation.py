"""Freed memory kept while an estimator runs: fewer page faults for repeated large tensors, nesting from threads,
the user's malloc configuration left alone."""

from __future__ import annotations

import resource
import threading

import pytest
import torch

from pyrovae.infer.estimation import allocation
from pyrovae.infer.estimation.allocation import freed_memory_kept

glibc = pytest.mark.skipif(allocation._glibc() is None, reason="glibc's malloc only")


def _faults_of_repeated_tensors(repeats: int = 12) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        tensor = torch.empty(48 << 20, dtype=torch.uint8)  # 48 MB: above glibc's own mmap threshold
        tensor.fill_(1)
        del tensor
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc
def test_repeated_large_tensors_reuse_their_pages():
    """Outside, every 48 MB tensor is new pages (about 12,000 faults each); inside, only the first is."""
    outside = _faults_of_repeated_tensors()
    with freed_memory_kept():
        inside = _faults_of_repeated_tensors()
    assert outside > 8 * 12_000
    assert inside < outside / 4


@glibc
def test_nested_and_threaded_blocks_restore_once(monkeypatch):
    calls = []
    libc = allocation._glibc()

    class Recorder:
        def mallopt(self, parameter, value):
            calls.append(("mallopt", parameter, value))
            return libc.mallopt(parameter, value)

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return libc.malloc_trim(pad)

    monkeypatch.setattr(allocation, "_glibc", Recorder)
    inner_done = threading.Event()

    def worker():
        with freed_memory_kept():
            inner_done.set()

    with freed_memory_kept(), freed_memory_kept():
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert inner_done.is_set()
        assert calls == [("mallopt", -3, allocation.KEPT), ("mallopt", -1, allocation.KEPT)]
    assert calls[2:] == [("mallopt", -3, 32 << 20), ("mallopt", -1, 64 << 20), ("trim", 0)]
    assert allocation._depth == 0


def test_a_configured_malloc_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX_", "2")
    assert allocation._glibc() is None
    with freed_memory_kept():  # a no-op, and no error
        pass


def test_an_error_inside_still_restores(monkeypatch):
    with pytest.raises(RuntimeError, match="inside"), freed_memory_kept():
        raise RuntimeError("inside")
    assert allocation._depth == 0


@glibc
def test_the_estimators_run_inside():
    """log_likelihood's model runs inside the block; ais_log_likelihood and bdmc are wrapped in it too."""
    import pyro
    import pyro.distributions as dist

    from pyrovae.infer import ais_log_likelihood, bdmc, log_likelihood

    depths = []

    def model(x):
        depths.append(allocation._depth)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.7).to_event(1))

    log_likelihood(model, guide, torch.randn(4, 2), num_samples=20)
    assert depths and min(depths) == 1
    assert allocation._depth == 0
    for function in (ais_log_likelihood, bdmc):
        assert _decorated(function), function.__name__


def _decorated(function) -> bool:
    """Whether one of ``function``'s wrappers is a freed_memory_kept context."""
    while function is not None:
        for cell in getattr(function, "__closure__", None) or ():
            manager = cell.cell_contents
            if getattr(getattr(manager, "gen", None), "__name__", None) == "freed_memory_kept":
                return True
        function = getattr(function, "__wrapped__", None)
    return False

"""Nothing lost when two jobs share a file (issue 24): a sweep's results file shared by two objects or two processes
keeps both sides' results; writers of one checkpoint never remove each other's temporary files; a second live
training run on one checkpoint is refused before it touches anything."""

import multiprocessing
import os
import stat
import subprocess
import sys
import threading
import time

import pytest
import torch

from pyrovae.data import two_groups
from pyrovae.infer import load_checkpoint, save_checkpoint, train
from pyrovae.infer.training.checkpoint import CheckpointInUse, FileLock, atomic_write
from pyrovae.sweep import Sweep
from tests.infer.guides_and_models import small_pair

fork = multiprocessing.get_context("fork")


def test_two_sweep_objects_in_one_process_keep_both_sides_results(tmp_path):
    path = tmp_path / "grid.json"
    first, second = Sweep(path), Sweep(path)  # both read the (missing) file before either writes
    assert first.run("a", lambda: 1, verbose=False) == 1
    assert second.run("b", lambda: 2, verbose=False) == 2  # before: this write dropped "a"
    assert first.run("c", lambda: 3, verbose=False) == 3  # and this one dropped "b"
    assert Sweep(path).results == {"a": 1, "b": 2, "c": 3}
    calls = []
    assert second.run("a", lambda: calls.append(1), verbose=False) == 1 and not calls  # done by the other object


def test_a_run_stored_by_another_job_meanwhile_keeps_the_first_result(tmp_path):
    path = tmp_path / "grid.json"
    first, second = Sweep(path), Sweep(path)

    def slow():
        # a job that claims nothing (an older version) finishes k while this one computes it
        first._computed("k", lambda: "first", (), {}, False)
        return "second"

    assert second.run("k", slow, verbose=False) == "first"
    assert Sweep(path).results == {"k": "first"}


def _sweep_job(path, name, start, results):
    start.wait()
    sweep = Sweep(path)
    for i in range(12):
        sweep.run(f"{name}-{i}", lambda i=i: {"job": name, "i": i}, verbose=False)
        time.sleep(0.002 * (i % 3))
    results.put((name, sweep.run("shared", lambda: name, verbose=False)))


def test_two_sweep_processes_keep_every_result(tmp_path):
    path = tmp_path / "grid.json"
    start, results = fork.Barrier(2), fork.Queue()
    jobs = [fork.Process(target=_sweep_job, args=(path, name, start, results)) for name in ("p", "q")]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(30)
    assert [job.exitcode for job in jobs] == [0, 0]
    stored = Sweep(path).results
    assert set(stored) == {f"{n}-{i}" for n in "pq" for i in range(12)} | {"shared"}
    assert all(stored[f"{n}-{i}"] == {"job": n, "i": i} for n in "pq" for i in range(12))
    returned = dict(results.get(timeout=5) for _ in range(2))
    assert returned["p"] == returned["q"] == stored["shared"]  # both jobs return the one stored result
    assert not list(tmp_path.glob("*.tmp"))


def _write_many(path, count):
    for i in range(count):
        atomic_write(path, lambda stream, i=i: stream.write(f"{os.getpid()} {i}\n".encode() * 200))


def test_writers_of_one_file_never_remove_each_others_temporary_files(tmp_path):
    """Two processes and two threads save to one path at once: every save succeeds (before, a writer removed the
    other's temporary file as stale, and the other died with FileNotFoundError) and the file is always whole."""
    path = tmp_path / "c.pt"
    jobs = [fork.Process(target=_write_many, args=(path, 40)) for _ in range(2)]
    for job in jobs:
        job.start()
    errors = []

    def save_many():
        try:
            for i in range(20):
                save_checkpoint({"i": i, "w": torch.full((50,), float(i))}, tmp_path / "t.pt")
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=save_many) for _ in range(2)]
    for thread in threads:
        thread.start()
    for job in jobs:
        job.join(30)
    for thread in threads:
        thread.join(30)
    assert [job.exitcode for job in jobs] == [0, 0] and not errors
    lines = path.read_bytes().decode().splitlines()
    assert len(lines) == 200 and len(set(lines)) == 1  # one writer's whole file
    state = load_checkpoint(tmp_path / "t.pt")
    assert torch.equal(state["w"], torch.full((50,), float(state["i"])))
    assert not list(tmp_path.glob("*.tmp"))


def test_only_temporary_files_of_writers_that_are_gone_are_removed(tmp_path):
    path = tmp_path / "c.pt"
    host = atomic_write.__globals__["_writer"]().rpartition("~")[0]
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead = tmp_path / f"c.pt.{host}~{int(finished.stdout)}.abc.tmp"
    alive = tmp_path / f"c.pt.{host}~{os.getppid()}.abc.tmp"  # a live process of this host
    elsewhere = tmp_path / "c.pt.otherhost~1.abc.tmp"  # another host's: only by age
    old = tmp_path / "c.pt.otherhost~2.abc.tmp"  # another host's, two days old
    unnamed = tmp_path / "c.pt.x1y2z3.tmp"  # no writer's name: a leftover
    for file in (dead, alive, elsewhere, old, unnamed):
        file.write_bytes(b"partial")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    save_checkpoint({"a": 1}, path)
    assert alive.exists() and elsewhere.exists()
    assert not dead.exists() and not old.exists() and not unnamed.exists()
    assert load_checkpoint(path) == {"a": 1}


def _hold(lock_path, held, release):
    lock = FileLock(lock_path)
    lock.acquire()
    held.set()
    release.wait(30)
    lock.release()


@pytest.mark.parametrize("holder", ["process", "object"])
def test_a_second_live_training_run_on_one_checkpoint_is_refused(tmp_path, holder):
    path = tmp_path / "c.pt"
    model, guide = small_pair()
    train(model, guide, two_groups(num_per_group=16), epochs=1, checkpoint=path, progress=False, seed=0)
    before = path.read_bytes()
    if holder == "process":
        held, release = fork.Event(), fork.Event()
        job = fork.Process(target=_hold, args=(path, held, release))
        job.start()
        assert held.wait(30)
    else:
        lock = FileLock(path)
        assert lock.acquire(blocking=False)
    try:
        with pytest.raises(CheckpointInUse, match=r"c\.pt is in use by another training run \(pid \d+.*its own "
                                                  "checkpoint path"):
            train(model, guide, two_groups(num_per_group=16), epochs=3, checkpoint=path, progress=False, seed=0)
        assert path.read_bytes() == before  # the other run's last good state is untouched
    finally:
        if holder == "process":
            release.set()
            job.join(30)
        else:
            lock.release()
    history = train(model, guide, two_groups(num_per_group=16), epochs=2, checkpoint=path, progress=False, seed=0)
    assert len(history) == 2 and load_checkpoint(path)["epoch"] == 2  # resumed once the lock is free


def test_a_temporary_of_a_longer_name_is_not_taken_for_a_stale_one(tmp_path):
    """run.pt.v2's temporary starts with "run.pt.": a write of run.pt must leave it to its writer."""
    other = tmp_path / f"run.pt.v2.{os.uname().nodename}~{os.getpid()}.abcd1234.tmp"
    other.write_bytes(b"being written")
    old = tmp_path / "run.pt.abcd1234.tmp"  # an older version's unnamed leftover of run.pt itself
    old.write_bytes(b"left by a crash")
    atomic_write(tmp_path / "run.pt", lambda stream: stream.write(b"new"))
    assert other.exists() and not old.exists()


class _Crafted:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['PYROVAE_TEST_MARK']}",))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path, monkeypatch):
    mark = tmp_path / "ran"
    monkeypatch.setenv("PYROVAE_TEST_MARK", str(mark))
    torch.save({"version": 1, "payload": _Crafted()}, tmp_path / "crafted.pt")
    with pytest.raises(ValueError, match="crafted to run code is refused, never run"):
        load_checkpoint(tmp_path / "crafted.pt")
    model, guide = small_pair()
    with pytest.raises(ValueError, match="cannot be read"):
        train(model, guide, two_groups(64, seed=0).x, epochs=1, checkpoint=tmp_path / "crafted.pt", progress=False)
    assert not mark.exists()


def test_a_refused_resume_leaves_the_modules_as_they_were(tmp_path):
    """A checkpoint of other settings is refused before its weights are loaded: the caller's training is kept."""
    x = two_groups(64, seed=0).x
    model, guide = small_pair()
    train(model, guide, x, epochs=1, checkpoint=tmp_path / "old.pt", progress=False)
    model, guide = small_pair()
    train(model, guide, x, epochs=2, lr=1e-2, progress=False)
    before = [p.detach().clone() for p in [*model.parameters(), *guide.parameters()]]
    with pytest.raises(ValueError, match="other settings"):
        train(model, guide, x, epochs=3, lr=1e-2, checkpoint=tmp_path / "old.pt", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, [*model.parameters(), *guide.parameters()]))


def test_a_resume_on_other_data_or_other_early_stopping_is_refused(tmp_path):
    """Every datum is digested (a changed row that 64 evenly spaced ones miss is seen), and what early stopping
    compares (the validation data, patience, restore_best) is a setting like the others."""
    x = two_groups(300, seed=0).x
    model, guide = small_pair()
    train(model, guide, x, epochs=1, checkpoint=tmp_path / "run.pt", progress=False)
    changed = x.clone()
    changed[1] += 1.0
    with pytest.raises(ValueError, match="all_data="):
        train(model, guide, changed, epochs=2, checkpoint=tmp_path / "run.pt", progress=False)
    with pytest.raises(ValueError, match="val_data=None there"):
        train(model, guide, x, epochs=2, checkpoint=tmp_path / "run.pt", val_data=x[:50], progress=False)
    with pytest.raises(ValueError, match="patience=None there, 2 here"):
        train(model, guide, x, epochs=2, checkpoint=tmp_path / "run.pt", patience=2, progress=False)
    assert len(train(model, guide, x, epochs=2, checkpoint=tmp_path / "run.pt", progress=False)) == 2


def _run_keys(path, calls, keys):
    sweep = Sweep(path)
    for key in keys:
        sweep.run(key, _slow_result, calls, key, verbose=False)


def _slow_result(calls, key):
    with open(calls, "a") as stream:
        stream.write(key + "\n")
    time.sleep(0.5)
    return key.upper()


def test_two_jobs_on_one_sweep_run_each_key_once(tmp_path):
    """A key another job is running is waited for, not run again (and with checkpoint_path, not refused)."""
    path, calls = tmp_path / "grid.json", tmp_path / "calls.txt"
    jobs = [fork.Process(target=_run_keys, args=(path, calls, ["a", "b", "c"])) for _ in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(60)
    assert [job.exitcode for job in jobs] == [0, 0]
    assert sorted(calls.read_text().split()) == ["a", "b", "c"]
    assert Sweep(path).results == {"a": "A", "b": "B", "c": "C"}


def test_an_atomically_written_file_has_the_mode_of_a_plainly_written_one(tmp_path):
    """Not the private 0600 of the temporary file it was written to: a colleague reads metrics.json as any file."""
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    written = atomic_write(tmp_path / "metrics.json", lambda stream: stream.write("{}"), binary=False)
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    os.chmod(written, 0o600)  # a file made private on purpose stays so when written again
    atomic_write(written, lambda stream: stream.write("{}"), binary=False)
    assert stat.S_IMODE(written.stat().st_mode) == 0o600

"""The resumable sweep: finished runs are kept and never redone."""

import pytest
import torch

from pyrovae.sweep import Sweep


def test_sweep_keeps_finished_runs_and_never_redoes_them(tmp_path):
    calls = []

    def run(value):
        calls.append(value)
        return {"value": value}

    sweep = Sweep(tmp_path / "sweep.json")
    assert sweep.run("a", lambda: run(1), verbose=False) == {"value": 1}
    again = Sweep(tmp_path / "sweep.json")  # a new process reads the finished runs back
    assert "a" in again and again.run("a", lambda: run(2), verbose=False) == {"value": 1}
    assert again.run("b c/d", lambda: run(3), verbose=False) == {"value": 3}
    assert calls == [1, 3] and not list(tmp_path.glob("*.tmp"))
    assert again.checkpoint_path("b c/d") != again.checkpoint_path("b_c_d")  # keys that read alike
    with pytest.raises(TypeError, match="cannot be stored as JSON"):
        again.run("tensor", lambda: {"value": torch.ones(1)}, verbose=False)
    assert "tensor" not in again and again.run("c", run, 4, verbose=False) == {"value": 4}
    with pytest.raises(TypeError, match="keys are strings"):
        again.run(5, run, 5)



def test_results_of_other_settings_are_refused_naming_the_differences(tmp_path):
    """A rerun with another setting (hidden sizes, learning rate) must not be answered with the old results."""
    path = tmp_path / "runs.json"
    Sweep(path, settings={"hidden": [256, 128], "lr": 1e-3}).run("a", lambda: 1.0)
    assert Sweep(path, settings={"hidden": [256, 128], "lr": 1e-3}).run("a", lambda: 2.0) == 1.0
    with pytest.raises(ValueError, match=r"other settings: hidden \[256, 128\] there, \[32, 16\] now; give the "
                                         r"sweep another results file"):
        Sweep(path, settings={"hidden": (32, 16), "lr": 1e-3})
    with pytest.raises(ValueError, match="proposal None there, 'auto' now"):
        Sweep(path, settings={"hidden": [256, 128], "lr": 1e-3, "proposal": "auto"})
    with pytest.raises(ValueError, match="hidden"):  # a setting dropped from the sweep still differs...
        Sweep(path, settings={"lr": 1e-3})
    # ...unless named retired: one its results no longer depend on, which an older file may hold
    assert Sweep(path, settings={"lr": 1e-3}, retired=("hidden",))["a"] == 1.0


def test_a_sweep_written_without_settings_takes_them(tmp_path):
    path = tmp_path / "runs.json"
    Sweep(path).run("a", lambda: 1.0)  # an older sweep file
    assert Sweep(path, settings={"lr": 1e-3})["a"] == 1.0
    with pytest.raises(ValueError, match="lr 0.001 there, 0.01 now"):
        Sweep(path, settings={"lr": 1e-2})

"""pyrovae.experiment, the scripts' shared parts: the command line, --out held by one run, jobs in processes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_quick_replaces_only_the_settings_not_given_on_the_command_line():
    from pyrovae.experiment import experiment_parser

    parser = experiment_parser("demo", epochs=50, out="results/demo", quick={"num_samples": 10, "dims": [2]})
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--lr", type=float, default=1e-3)
    full = parser.parse_args([])
    assert (full.epochs, full.num_samples, full.dims) == (50, 500, [2, 5, 10])
    quick = parser.parse_args(["--quick", "--num-samples", "32"])
    assert (quick.epochs, quick.num_samples, quick.dims, quick.lr) == (1, 32, [2], 1e-3)
    assert (full.out, quick.out) == ("results/demo", "results/demo-quick")  # a check never lands in a run's folder
    assert parser.parse_args(["--quick", "--out", "elsewhere"]).out == "elsewhere"
    given = parser.parse_args(["--quick", "--num-samples", "500", "--epochs=50"])  # the defaults, given: kept
    assert (given.epochs, given.num_samples, given.dims) == (50, 500, [2])
    abbreviated = parser.parse_args(["--quick", "--num-s", "500", "--ep=50"])  # argparse's abbreviations count too
    assert (abbreviated.epochs, abbreviated.num_samples, abbreviated.dims) == (50, 500, [2])
    known, extras = parser.parse_known_args(["--quick", "--other", "3"])  # and so does parse_known_args
    assert (known.epochs, known.num_samples, extras) == (1, 10, ["--other", "3"])
    for wrong in (["--epochs", "-1"], ["--epochs", "0"], ["--seed", "-1"], ["--device", "gpu"]):
        with pytest.raises(SystemExit):
            parser.parse_args(wrong)
    assert experiment_parser("steps", epochs=0, out="o").parse_args(["--epochs", "0"]).epochs == 0  # 0: the script's


def test_refine_steps_are_refused_for_a_proposal_that_refines_nothing(capsys):
    from pyrovae.experiment import experiment_parser

    parser = experiment_parser("demo", epochs=5, out="results/demo")
    assert parser.parse_args(["--refine-steps", "7"]).refine_steps == 7  # the default proposal refines
    assert parser.parse_args(["--proposal", "auto", "--refine-steps", "7"]).refine_steps == 7
    assert parser.parse_args(["--proposal", "guide"]).refine_steps is None
    with pytest.raises(SystemExit):  # before any training: not a ValueError from log_likelihood an hour later
        parser.parse_args(["--proposal", "guide", "--refine-steps", "7"])
    assert "--proposal guide refines nothing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--refine-steps", "0"])


def test_an_out_path_that_is_a_file_is_named(tmp_path):
    from pyrovae.experiment import experiment_parser, setup

    (tmp_path / "afile").write_text("")
    args = experiment_parser("demo", epochs=1, out="o").parse_args(["--out", str(tmp_path / "afile")])
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        setup(args)


def test_a_second_run_on_an_out_in_use_stops_before_working(tmp_path):
    """Two runs of a script on one --out would mix their metrics and figures: the second stops, naming the first;
    once the first has ended the folder is free again."""
    from pyrovae.experiment import _HELD, experiment_parser, setup

    code = ("import sys, time\nfrom pathlib import Path\nfrom pyrovae.experiment import _hold\n"
            "_hold(Path(sys.argv[1]))\nprint('held', flush=True)\ntime.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = experiment_parser("demo", epochs=1, out="o").parse_args(["--out", str(tmp_path), "--device", "cpu"])
        with pytest.raises(SystemExit, match=r"is in use by another run \(.*pid \d+.*\); wait for it to finish"):
            setup(args)
    finally:
        holder.kill()
        holder.wait()
    setup(args)  # the holder's lock ended with it
    for lock in [lock for lock in _HELD if lock.path.parent == tmp_path]:
        lock.release()
        _HELD.remove(lock)


def test_one_process_holds_its_out_once_however_it_is_spelled(tmp_path, monkeypatch):
    from pyrovae.experiment import _HELD, _hold

    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    _hold(Path("out"))
    _hold(tmp_path / "out")  # the same folder: not "in use by another run"
    held = [lock for lock in _HELD if lock.path.parent == (tmp_path / "out").resolve()]
    assert len(held) == 1
    held[0].release()
    _HELD.remove(held[0])


def test_run_jobs_stops_the_others_when_one_fails_and_names_it(tmp_path):
    from pyrovae.experiment import run_jobs

    pid_file = tmp_path / "sleeper.pid"
    sleeper = [sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
               "time.sleep(60)"]
    failing = [sys.executable, "-c", "import time, sys; time.sleep(1.5); print('the reason'); sys.exit(3)"]
    jobs = {"sleeper": (sleeper, tmp_path / "sleeper.log", "the sleeper"),
            "failing": (failing, tmp_path / "logs" / "failing.log", "the failing job")}
    with pytest.raises(SystemExit, match=r"the failing job failed \(exit 3\); .*failing.log ends:\nthe reason"):
        run_jobs(jobs, at_once=2, device=torch.device("cpu"))
    with pytest.raises(ProcessLookupError):  # stopped, and waited for
        os.kill(int(pid_file.read_text()), 0)
    done = {"a": ([sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"], tmp_path / "a.log", "a")}
    run_jobs(done, at_once=1, device=torch.device("cpu"))
    assert (tmp_path / "a.log").read_text().strip() == str(os.cpu_count() or 1)  # the cores shared by 1 job


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_a_job_ends_when_its_parent_is_killed(tmp_path, how):
    """``kill -9`` of a script running jobs (svae_mnist --jobs, tahoe_plates --jobs) left them training for no one,
    holding their cells' claims; SIGTERM too. The job here is started through ``sh -c`` (a launcher between the
    two processes), and with SIGTERM the job does not watch: run_jobs itself stops it."""
    watch = "from pyrovae.experiment import _exit_with_parent\n_exit_with_parent()\n" if how == "kill -9" else ""
    job = (f"import os, time\n{watch}from pyrovae.experiment import PARENT\n"
           f"open({str(tmp_path / 'job')!r}, 'w').write(f'{{os.getpid()}} {{PARENT in os.environ}}')\n"
           "time.sleep(60)")
    launcher = ["sh", "-c", '"$0" -c "$1"; true', sys.executable, job]
    parent = (f"import sys, torch\nfrom pathlib import Path\nfrom pyrovae.experiment import run_jobs\n"
              f"run_jobs({{0: ({launcher!r}, Path({str(tmp_path / 'job.log')!r}), 'job')}}, 1, torch.device('cpu'))")
    runner = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (tmp_path / "job").exists() or not (tmp_path / "job").read_text():
        assert time.monotonic() < deadline and runner.poll() is None, (tmp_path / "job.log").read_text()
        time.sleep(0.2)
    pid, inherited = (tmp_path / "job").read_text().split()
    assert inherited == str(how != "kill -9")  # a watching job's own children (DataLoader workers) do not watch
    runner.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGTERM)
    runner.wait()
    deadline = time.monotonic() + 15
    status = Path(f"/proc/{pid}/status")
    while time.monotonic() < deadline:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return
        if status.exists() and "State:\tZ" in status.read_text():  # ended, not yet reaped by its new parent
            return
        time.sleep(0.2)
    os.kill(int(pid), signal.SIGKILL)
    pytest.fail("the job outlived its parent")


def test_help_shows_the_whole_description_and_whether_a_rerun_resumes():
    """--help showed the docstring's first line only: its notes on what differs from the notebook were hidden."""
    from pyrovae.experiment import experiment_parser

    doc = "First line.\n\nDiffers from the notebook: this,\nand that.\n"
    shown = experiment_parser(doc, epochs=1, out="o", resumable=True).format_help()
    assert "Differs from the notebook: this,\nand that." in shown and "Resumable: rerun the same command" in shown
    assert "Not resumable" in experiment_parser(doc, epochs=1, out="o").format_help()


@pytest.mark.parametrize("resumable", [True, False])
def test_ctrl_c_and_a_run_of_other_settings_end_with_a_message_not_a_traceback(tmp_path, resumable):
    code = ("import sys\nfrom pyrovae.experiment import experiment_parser, setup\n"
            "from pyrovae.infer.training.checkpoint import SettingsMismatch\n"
            f"args = experiment_parser('demo', epochs=1, out='o', resumable={resumable}).parse_args(sys.argv[2:])\n"
            "setup(args)\nraise (KeyboardInterrupt() if sys.argv[1] == 'stop' else\n"
            "       SettingsMismatch('the library says', 'lr 1 there, 2 here', ('OUT/ck.pt',)))")
    for how, expected in (("stop", "rerun the same command to go on" if resumable else "does not resume"),
                          ("other", "the run in --out was made with other settings (lr 1 there, 2 here): rerun with "
                                    "its settings to resume it, or give this run another --out (or delete OUT/ck.pt "
                                    "to start it again there)")):
        done = subprocess.run([sys.executable, "-c", code, how, "--out", str(tmp_path / how), "--device", "cpu"],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        # after Ctrl-C Python ends by SIGINT (-2), or with 1 where SIGINT is ignored (a background shell)
        assert done.returncode in ((1, -2) if how == "stop" else (1,)), done.returncode
        assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_metrics_record_the_versions_and_the_commit(tmp_path):
    import json

    import pyrovae
    from pyrovae.experiment import write_metrics

    versions = json.loads(write_metrics(tmp_path, {"a": 1}).read_text())["versions"]
    assert versions["pyrovae"] == pyrovae.__version__ and versions["torch"] == torch.__version__
    if (ROOT / ".git").exists():
        assert len(versions["commit"].split("+")[0]) == 40

"""What every experiment script shares: the common command line, the device, and metrics.json."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Hashable
from pathlib import Path

import pyro
import torch

from pyrovae.infer.estimation.log_likelihood import REFINED
from pyrovae.infer.training.files import atomic_write
from pyrovae.optional import require

logger = logging.getLogger(__name__)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The options with their defaults, and the script's description (its docstring) with its paragraphs kept."""


_RESUMABLE = {"run": False}  # whether the script parsed last resumes an interrupted run (setup's messages)


class ExperimentParser(argparse.ArgumentParser):
    """An argument parser with the options every experiment takes, ``--quick`` among them.

    ``--quick`` replaces the settings named in ``quick`` (a dict from option name to value) by tiny ones, so that
    the script runs end to end, evaluation and figures included, in about a minute on two cores, into
    ``<out>-quick``; an option given on the command line keeps the given value. ``resumable``: whether a rerun of
    an interrupted run resumes it (``--help`` says which, and so does the message after Ctrl-C).
    """

    def __init__(self, description: str, epochs: int, out: str, quick: dict | None = None,
                 proposal: bool = True, resumable: bool = False) -> None:
        epilog = ("Resumable: rerun the same command to go on from where an interrupted run stopped (finished work "
                  "is kept; other settings are refused: give them another --out)." if resumable else
                  "Not resumable: an interrupted run starts again when rerun.")
        super().__init__(description=description.strip(), epilog=epilog, formatter_class=_HelpFormatter)
        self.resumable = resumable
        self.quick_settings = {"epochs": 1, "out": f"{out}-quick", **(quick or {})}  # never into a real run's --out
        self.add_argument("--device", type=_device, default="auto",
                          help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
        self.add_argument("--seed", type=_seed, default=0, help="random seed")
        if epochs > 0:
            self.add_argument("--epochs", type=positive_int, default=epochs, help="training epochs")
        else:  # 0 means something of the script's own (mixture_1d: from --steps)
            self.add_argument("--epochs", type=non_negative_int, default=epochs,
                              help="training epochs (0: the script's own rule, see its description)")
        self.add_argument("--data-dir", default=None, help="data folder ($PYROVAE_DATA, else ../shared/data, when "
                                                           "not given)")
        self.add_argument("--out", default=out, help="folder for metrics.json and figures")
        self.add_argument("--no-progress", action="store_true", help="hide progress bars")
        if proposal:  # for the scripts that score a held-out log-likelihood by one estimator of the user's choice
            self.add_argument("--proposal", default="refined+defensive",
                              choices=["guide", "defensive", "refined", "refined+defensive", "auto"],
                              help="importance distribution of the held-out log-likelihood (pyrovae.infer.estimation; "
                                   "'auto': per datum the cheapest estimator that certifies)")
            self.add_argument("--refine-steps", type=positive_int, default=None,
                              help="optimisation steps of the refined proposals and of 'auto''s refined stage "
                                   "(default: 100; 12 per latent dimension for a full covariance, at least 100)")
        shown = ", ".join(f"--{k.replace('_', '-')} {_shown(v)}" for k, v in self.quick_settings.items())
        self.add_argument("--quick", action="store_true", help=f"tiny settings, about a minute on 2 cores: {shown}")

    def parse_known_args(self, args=None, namespace=None):  # parse_args calls it too
        parsed, extras = super().parse_known_args(args, namespace)
        _RESUMABLE["run"] = self.resumable
        if getattr(parsed, "refine_steps", None) and getattr(parsed, "proposal", "refined") not in REFINED:
            self.error(f"--refine-steps sets the steps of the refined proposals and of 'auto': --proposal "
                       f"{parsed.proposal} refines nothing (drop --refine-steps, or pick one that refines)")
        if parsed.quick:
            given = self._given(sys.argv[1:] if args is None else list(args))
            for name, value in self.quick_settings.items():
                if name not in given:
                    setattr(parsed, name, value)
        return parsed, extras

    def _given(self, argv: list[str]) -> set[str]:
        """The destinations of the options written on the command line ``argv`` (``--lr 0.1``, ``--lr=0.1``, or
        an abbreviation argparse reads as one option: ``--l 0.1``)."""
        given = set()
        for word in (word.split("=", 1)[0] for word in argv if word.startswith("-")):
            exact = [a for a in self._actions if word in a.option_strings]
            prefixed = [a for a in self._actions if any(o.startswith(word) for o in a.option_strings)]
            found = exact or (prefixed if self.allow_abbrev and word.startswith("--") and len(prefixed) == 1 else [])
            given.update(action.dest for action in found)
        return given


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _checked(kind, test, what: str):
    """An argparse ``type`` that reads ``kind`` and refuses a value failing ``test``, saying it must be ``what``."""
    def read(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value

    return read


positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _checked(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
non_negative_float = _checked(float, lambda v: v >= 0 and math.isfinite(v), "a non-negative number")
fraction = _checked(float, lambda v: 0 < v < 1, "a number between 0 and 1 (both excluded)")
dropout_rate = _checked(float, lambda v: 0 <= v < 1, "a number from 0 to 1 (1 excluded)")
_seed = _checked(int, lambda v: 0 <= v < 2**32, "an integer from 0 to 2**32 - 1")


def _device(text: str) -> str:
    if text != "auto":
        try:
            torch.device(text)
        except (RuntimeError, ValueError):
            message = f"{text!r} is not a device: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
            raise argparse.ArgumentTypeError(message) from None
    return text


def experiment_parser(description: str, epochs: int, out: str, quick: dict | None = None,
                      proposal: bool = True, resumable: bool = False) -> ExperimentParser:
    """An argument parser with the options every experiment takes (see :class:`ExperimentParser`); ``description``:
    the script's docstring, shown whole by ``--help``; ``proposal``: whether it offers ``--proposal`` (only scripts
    that score log p(x) by one estimator of the user's choice do); ``resumable``: whether a rerun resumes."""
    return ExperimentParser(description, epochs, out, quick, proposal, resumable)


def setup(args: argparse.Namespace) -> torch.device:
    """Seed everything, create the output folder, draw figures to files only (matplotlib's Agg backend), and
    return the device."""
    require("matplotlib").use("Agg")
    # the library's INFO messages (a sweep's kept runs) beside the script's own output
    logging.basicConfig(stream=sys.stdout, format="%(message)s")
    logging.getLogger("pyrovae").setLevel(logging.INFO)
    pyro.set_rng_seed(args.seed)
    if getattr(args, "data_dir", None) is not None and not Path(args.data_dir).is_dir():
        raise SystemExit(f"--data-dir {args.data_dir} is not a folder; give the folder that holds the data sets")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda was asked for but no CUDA device is available; use --device cpu")
    _check_writable(Path(args.out))
    _hold(Path(args.out))
    _exit_with_parent()
    _explain_exits()
    earlier = Path(args.out) / "metrics.json"
    if not _RESUMABLE["run"] and earlier.exists():
        written = time.strftime("%Y-%m-%d %H:%M", time.localtime(earlier.stat().st_mtime))
        logger.warning("--out %s holds an earlier run's results (metrics.json of %s): this run replaces the files it "
                       "writes, and those it does not write (figures of options not taken now) stay", args.out,
                       written)
    return device


def _explain_exits() -> None:
    """Once per process: after Ctrl-C, say whether a rerun resumes (:data:`_RESUMABLE`, of the script's parser),
    instead of a traceback; a run refused for its settings gets what differs and what to do from a script."""
    from pyrovae.infer.training.checkpoint import SettingsMismatch

    if getattr(sys.excepthook, "pyrovae", False):
        return
    shown = sys.excepthook

    def explain(kind, value, trace) -> None:  # an excepthook writes to stderr, as Python's own does
        script = Path(sys.argv[0]).name or "python"
        if issubclass(kind, KeyboardInterrupt):
            sys.stderr.write(f"\n{script}: interrupted; " + (
                "rerun the same command to go on from where it stopped (finished work is kept)\n" if _RESUMABLE["run"]
                else "this script does not resume: a rerun starts again\n"))
        elif issubclass(kind, SettingsMismatch) and value.differences:
            files = " and ".join(value.files)
            sys.stderr.write(f"{script}: the run in --out was made with other settings ({value.differences}): rerun "
                             "with its settings to resume it, or give this run another --out"
                             + (f" (or delete {files} to start it again there)" if files else "") + "\n")
        else:
            shown(kind, value, trace)
        sys.stderr.flush()

    explain.pyrovae = True
    sys.excepthook = explain


_HELD: list = []  # the lock on this process's --out, held until it ends


def _hold(out: Path) -> None:
    """Lock ``out`` for this run (the first process of a torchrun job only): a second run of a script on the same
    folder would mix its metrics and figures with this one's, so it stops before any work, naming this one."""
    from pyrovae.infer.training.files import FileLock  # pyrovae.infer is heavy: imported when used
    from pyrovae.process_group import rank  # torchrun's, before the process group is joined

    out = out.resolve()
    if rank() != 0 or any(lock.path.parent == out for lock in _HELD):
        return
    lock = FileLock(out / ".pyrovae-run")
    if not lock.acquire(blocking=False):
        raise SystemExit(f"--out {out} is in use by another run ({lock.holder()}); wait for it to finish (a "
                         "resumable script then resumes there), or give this run another --out")
    _HELD.append(lock)


RUN_OPTIONS = ("out", "no_progress", "device", "data_dir", "quick")  # how a run is made, not what it computes


def result_settings(args: argparse.Namespace, exclude=()) -> dict:
    """The options that a run's results depend on (every option but :data:`RUN_OPTIONS` and ``exclude``), for a
    :class:`~pyrovae.sweep.Sweep` to refuse results of other settings."""
    return {name: value for name, value in sorted(vars(args).items())
            if name not in RUN_OPTIONS and name not in set(exclude)}


def _check_writable(out: Path) -> None:
    """Fail now, not after hours of training, when results could not be written to ``out``."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out} is a file, not a folder; choose a folder for metrics.json and figures")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".pyrovae-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise SystemExit(f"--out {out} is not writable ({error.strerror}); choose another folder") from error


def _clean(value):
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_metrics(out: str | os.PathLike, metrics: dict, args: argparse.Namespace | None = None) -> Path:
    """Write ``metrics.json`` with the run's arguments, its command line and machine (non-finite floats as strings),
    atomically: a reader never sees half a file."""
    record = {
        "metrics": metrics,
        "arguments": vars(args) if args is not None else {},
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "pyro": pyro.__version__,
                    "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
        "versions": _versions(),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return atomic_write(Path(out) / "metrics.json", lambda stream: stream.write(json.dumps(_clean(record), indent=2)),
                        binary=False)


def _versions() -> dict:
    """pyrovae's version and, from a git checkout, its commit (``+dirty`` with uncommitted changes); torch's,
    Pyro's and those of the numerical libraries the script imported."""
    from pyrovae import __version__

    versions = {"pyrovae": __version__, "torch": torch.__version__, "pyro": pyro.__version__}
    for module, distribution in (("numpy", "numpy"), ("scipy", "scipy"), ("sklearn", "scikit-learn"),
                                 ("anndata", "anndata"), ("scanpy", "scanpy"), ("scvi", "scvi-tools")):
        if module in sys.modules:  # imported by the script
            try:
                versions[module] = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                pass
    checkout = Path(__file__).resolve().parents[1]  # pyrovae's own checkout, if this is one

    def git(*arguments) -> str:
        return subprocess.run(["git", "-C", str(checkout), *arguments], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:  # only pyrovae's own repository: an installed copy inside another project's repository has none
        if Path(git("rev-parse", "--show-toplevel")).resolve() == checkout:
            changed = git("status", "--porcelain", "--untracked-files=no")
            versions["commit"] = git("rev-parse", "HEAD") + ("+dirty" if changed else "")
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout (an installed wheel), or no git
    return versions


PARENT = "PYROVAE_PARENT_FD"  # set by run_jobs: a pipe's read end, whose write end only run_jobs' process holds


def _exit_with_parent() -> None:
    """In a job of :func:`run_jobs`: end this process (SIGTERM) once the process running the jobs is gone, however
    it went (``kill -9`` included), so that no orphan keeps training, or holds a cell's claim, for a run that no one
    reads. The job reads a pipe that its parent never writes to: the read ends when the parent's end is closed, by
    its exit. A launcher between the two (``sh -c``, ``srun``) passes the pipe on. The variable is taken out of the
    environment: this process's own children (DataLoader workers) do not watch."""
    found = os.environ.pop(PARENT, None)
    if found is None:
        return
    try:
        descriptor = int(found)
        os.fstat(descriptor)
    except (ValueError, OSError):  # not passed on to this process: nothing to watch
        return

    def watch() -> None:
        try:
            while os.read(descriptor, 1):
                pass
        except OSError:
            return
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_jobs(jobs: dict[Hashable, tuple[list[str], Path, str]], at_once: int, device: torch.device) -> None:
    """Run ``jobs`` (key -> (command line, log file, name shown)) in processes of their own, up to ``at_once`` at a
    time, each writing its output to its log. On the CPU each gets ``cores // at_once`` threads. When one fails,
    the others are stopped and a ``SystemExit`` names it with its log's last lines; the jobs of a script built on
    :func:`setup` end if this process is killed (each resumes from its own checkpoint on the next call)."""
    environment = {**os.environ, **({"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // at_once))}
                                    if device.type == "cpu" else {})}
    watched = os.name == "posix"  # the jobs watch a pipe of this process (pass_fds is POSIX's)
    if watched:
        read_end, write_end = os.pipe()  # neither is inherited but where passed: only this process writes
        environment[PARENT] = str(read_end)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main_thread else None  # SIGTERM: stop the jobs too
    waiting, running = list(jobs), {}
    try:
        while waiting or running:
            while waiting and len(running) < at_once:
                key = waiting.pop(0)
                command, log, shown = jobs[key]
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "w") as stream:
                    running[key] = (subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT,
                                                     env=environment, pass_fds=(read_end,) if watched else (),
                                                     start_new_session=watched),  # its group: a launcher's too
                                    time.perf_counter())
                logger.info("started %s (log: %s)", shown, log)
            failed = []
            for key, (process, started) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[key]
                _, log, shown = jobs[key]
                if process.returncode != 0:
                    tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
                    failed.append(f"{shown} failed (exit {process.returncode}); {log} ends:\n{tail}")
                else:
                    logger.info("finished %s in %.1f min", shown, (time.perf_counter() - started) / 60)
            if failed:
                raise SystemExit("\n".join(failed))
            time.sleep(0.5)
    finally:  # a failure, Ctrl-C or SIGTERM here: the others stop too, with what they started (sh -c's child)
        for process, _ in running.values():
            _signal_job(process, signal.SIGTERM, watched)
        for process, _ in running.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                _signal_job(process, signal.SIGKILL, watched)
                process.wait()
        if main_thread and previous is not None:  # None: a handler not set from Python, which cannot be restored
            signal.signal(signal.SIGTERM, previous)
        if watched:
            os.close(read_end)
            os.close(write_end)


def _signal_job(process: subprocess.Popen, signum: int, grouped: bool) -> None:
    """``signum`` to a job of :func:`run_jobs`: to its process group where it has one of its own."""
    try:
        if grouped:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
    except (ProcessLookupError, PermissionError):  # ended meanwhile
        pass


def _stop(signum, frame) -> None:
    """SIGTERM while :func:`run_jobs` waits: leave through its ``finally``, which stops the jobs."""
    raise SystemExit(128 + signum)

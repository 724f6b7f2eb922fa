"""Runs Python scripts as ``python script.py ...`` would, each in a process of its own, without paying for the
imports every time: a server process imports torch, Pyro, matplotlib and pyrovae once (and runs no tensor
operation, so that no OpenMP pool exists to be forked), then forks a child per script. The child sets the working
folder, environment, arguments, ``sys.path[0]`` and fresh random seeds of a new interpreter, runs the script as the
module ``__main__`` (``__file__`` absolute, as Python sets it) and shuts down as the interpreter does: threads
joined, atexit handlers run (``__main__`` still the script's), the script's globals cleared (their finalisers run:
a module-level ZipFile is closed), files flushed; a KeyboardInterrupt ends it by SIGINT.

An experiment's smoke test spent 5-7 of its seconds importing; the suite runs about fifty of them.

``run_python(argv, ...)`` takes the arguments of ``subprocess.run`` that the tests use and returns a
``subprocess.CompletedProcess``; a command that is not ``sys.executable script.py ...`` runs as a plain subprocess.
The server is started with the caller's environment, one for each set of the variables read at import time
(threads, ``MPLBACKEND``, ``PYTHON*``, ``*TORCH*``, ``KMP_*``, ``LD_*``, ``MPLCONFIGDIR``). What it cannot
give a child: a variable that the script itself sets before importing torch (torch was imported with the
server's), and a hash seed of its own (every child has the server's).
"""

import atexit
import builtins
import contextlib
import gc
import importlib
import importlib.machinery
import io
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from pathlib import Path

_PRELOADED = ("torch", "pyro", "numpy", "scipy.stats", "pandas", "matplotlib.pyplot", "pyrovae", "pyrovae.data",
              "pyrovae.experiment", "pyrovae.infer", "pyrovae.models", "pyrovae.guides", "pyrovae.plots",
              "pyrovae.sweep", "pyrovae.metrics")
_IMPORT_TIME = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "MPLBACKEND",
                "MPLCONFIGDIR")
_servers = {}  # one per environment read at import time


def _read_at_import(env: dict) -> tuple:
    return tuple(sorted((key, value) for key, value in env.items()
                        if key in _IMPORT_TIME or "TORCH" in key or key.startswith(("PYTHON", "KMP_", "LD_"))))


def run_python(argv, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True)``, forked from the
    server where ``argv`` is ``[sys.executable, script, ...]``."""
    argv = [str(a) for a in argv]
    env = dict(os.environ if env is None else env)
    if len(argv) < 2 or argv[0] != sys.executable or argv[1].startswith("-"):
        return subprocess.run(argv, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True)
    key = _read_at_import(env)
    server = _servers.get(key)
    if server is None or server.poll() is not None:
        server = _servers[key] = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                                  stdout=subprocess.PIPE, bufsize=0, env=env,
                                                  cwd=Path(__file__).parents[1])
        atexit.register(server.kill)
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        request = {"argv": argv[1:], "cwd": str(cwd or os.getcwd()), "env": env, "stdout": str(out),
                   "stderr": str(err)}
        pid = None
        try:
            server.stdin.write((json.dumps(request) + "\n").encode())
            pid = _reply(server, 300)["pid"]  # the first waits for the imports
            returncode = _reply(server, timeout)["returncode"]
        except subprocess.TimeoutExpired:
            if pid is None:
                _drop(key, pid)
                raise
            os.kill(pid, signal.SIGKILL)  # as subprocess.run does; the server answers for it and serves on
            try:
                _reply(server, 60)
            except BaseException:
                _drop(key, pid)
                raise
            raise subprocess.TimeoutExpired(argv, timeout, out.read_text(), err.read_text()) from None
        except BaseException:  # a reply left unread would answer the next request: the server goes
            _drop(key, pid)
            raise
        return subprocess.CompletedProcess(argv, returncode, out.read_text(), err.read_text())


def _drop(key: tuple, pid: int | None) -> None:
    """End the server of ``key`` and the script it runs (``pid``), if any."""
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server = _servers.pop(key)
    server.kill()
    server.wait()


def _reply(server: subprocess.Popen, timeout: float) -> dict:
    """The server's next line, read a byte at a time (nothing buffered past it, so that select sees the next)."""
    deadline, line = time.monotonic() + timeout, b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([server.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise subprocess.TimeoutExpired(server.args, timeout)
        byte = os.read(server.stdout.fileno(), 1)
        if not byte:
            raise RuntimeError("the script server ended: " + line.decode())
        line += byte
    return json.loads(line)


def _child(request: dict) -> None:
    """In the forked child: become ``python script.py ...`` and run it."""
    import random

    import numpy
    import torch

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 (fd 0 lives as long as the process)
    seed = int.from_bytes(os.urandom(8), "little")  # a new interpreter's streams are not the server's
    random.seed(seed)
    numpy.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    script = request["argv"][0]
    path = os.path.abspath(script)
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(path)
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=path, __cached__=None, __builtins__=builtins,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", path))
    sys.modules["__main__"] = main
    code, interrupted = 0, False
    try:
        with open(path, "rb") as source:
            compiled = compile(source.read(), path, "exec")
        exec(compiled, main.__dict__)
    except SystemExit as stop:
        code = stop.code
    except KeyboardInterrupt as error:
        _print_traceback(error)
        interrupted = True
    except BaseException as error:  # as the interpreter would: the traceback on stderr, status 1
        _print_traceback(error)
        code = 1
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    _shut_down(main, code or 0, interrupted)


def _print_traceback(error: BaseException) -> None:
    """The traceback from the script's first frame on, as Python prints it."""
    traceback.print_exception(type(error), error, error.__traceback__.tb_next)


def _shut_down(main: types.ModuleType, code: int, interrupted: bool) -> None:
    """The interpreter's shutdown, less tearing down the other modules (1.7 s with torch loaded): threads joined,
    atexit handlers run, the script's globals cleared and collected, every open file flushed."""
    threading._shutdown()
    atexit._run_exitfuncs()
    main.__dict__.clear()
    gc.collect()
    files = {io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom, io.FileIO}
    for thing in gc.get_objects():
        if type(thing) in files and not thing.closed and thing.writable():
            with contextlib.suppress(Exception):
                thing.flush()
    if interrupted:  # Python ends by the signal, so that the caller sees -SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


def _serve() -> None:
    for name in _PRELOADED:
        importlib.import_module(name)
    replies = os.fdopen(os.dup(1), "w")
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            replies.close()
            _child(request)
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


if __name__ == "__main__":
    _serve()

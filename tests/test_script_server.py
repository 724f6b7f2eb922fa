"""tests.script_server runs a script as ``python script.py`` does, in what the script or its caller can see."""

import os
import signal
import subprocess
import sys
import zipfile

import pytest

from tests.script_server import run_python

SCRIPTS = {
    "fails": "import sys\nprint('out')\nprint('err', file=sys.stderr)\nraise ValueError('boom')\n",
    "exits": "import sys\nsys.exit(3)\n",
    "says": "import sys\nsys.exit('a message')\n",
    "interrupted": "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n",
    # a class of __main__ pickled by a thread still running, and at exit
    "pickles": "import atexit, pickle, threading, time\nclass Foo:\n    x = 34\n"
               "def later():\n    time.sleep(0.2)\n    print('thread:', pickle.loads(pickle.dumps(Foo())).x)\n"
               "threading.Thread(target=later).start()\n"
               "atexit.register(lambda: print('atexit:', pickle.loads(pickle.dumps(Foo())).x))\n",
    # where it runs, and what it is called
    "where": "import os, sys\nprint(os.getcwd(), __file__, sys.argv, __name__, os.environ.get('SERVER_TEST'))\n",
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_a_script_ends_as_under_python(name, tmp_path):
    (tmp_path / "folder").mkdir()
    script = tmp_path / "folder" / f"{name}.py"
    script.write_text(SCRIPTS[name])
    argv = [sys.executable, f"{name}.py", "an argument"]  # relative to its working folder
    env = {**os.environ, "SERVER_TEST": "set"}  # the variables read at import time: the usual server
    real = subprocess.run(argv, cwd=script.parent, env=env, capture_output=True, text=True, timeout=60)
    served = run_python(argv, cwd=script.parent, env=env, timeout=60)
    assert (served.returncode, served.stdout, served.stderr) == (real.returncode, real.stdout, real.stderr)


def test_a_module_level_file_is_closed_at_exit(tmp_path):
    """The script's globals are finalised (a function keeps them in a reference cycle)."""
    script = tmp_path / "zips.py"
    script.write_text("import sys, zipfile\narchive = zipfile.ZipFile(sys.argv[1], 'w')\n"
                      "archive.writestr('a.txt', 'hello')\ndef helper():\n    return archive\n")
    assert run_python([sys.executable, str(script), str(tmp_path / "a.zip")]).returncode == 0
    assert zipfile.ZipFile(tmp_path / "a.zip").read("a.txt") == b"hello"


def test_a_call_interrupted_midway_leaves_the_next_right(tmp_path):
    (tmp_path / "slow.py").write_text("import time\ntime.sleep(30)\n")
    (tmp_path / "three.py").write_text("raise SystemExit(3)\n")

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.alarm(1)
        with pytest.raises(KeyboardInterrupt):
            run_python([sys.executable, str(tmp_path / "slow.py")], timeout=60)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert [run_python([sys.executable, str(tmp_path / "three.py")]).returncode for _ in range(2)] == [3, 3]
    with pytest.raises(subprocess.TimeoutExpired):
        run_python([sys.executable, str(tmp_path / "slow.py")], timeout=1)
    assert run_python([sys.executable, str(tmp_path / "three.py")]).returncode == 3

import os
from pathlib import Path

import pyro
import pytest
import torch

from pyrovae.data import find_dataset

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share the cores: one thread each, for their scripts too
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()  # values a test loaded or assigned never reach the next test's modules


@pytest.fixture(autouse=True)
def _mpmath_digits():
    """mpmath's working precision is global: a test that sets it (``mpmath.mp.dps = 60``) sets it for itself only.
    A module that wants its own for every test says so with a fixture (``mpmath.workdps``), never at import: a
    module-level setting held for whichever module was collected last (tests/ops/test_bessel.py's 40 digits for
    tests/distributions/test_concentration_gradients.py, whose references need 60 at kappa = 1e13)."""
    try:
        import mpmath
    except ImportError:  # only the tests that need it skip
        yield
        return
    digits = mpmath.mp.dps
    yield
    mpmath.mp.dps = digits


@pytest.fixture(autouse=True)
def _pyro_validation(request):
    """Pyro's validation (its distributions', inference's and handlers' flags) and torch's default validate_args,
    which its distributions read, are global: a test that leaves one off turns off the argument checks of every later
    test in its process. Two-worker runs failed three tests/distributions checks of off-sphere locations that way:
    the first ``torch.compile`` of a process turns torch's default off behind Pyro's back (torch._dynamo's one-time
    patching; pyrovae's compiles put it back, :func:`pyrovae.ops.capture.compile_function`). Whatever is left off
    is turned on again, and the test that left it fails, by name."""
    yield
    from pyro import infer, poutine
    from pyro.distributions import is_validation_enabled
    from torch.distributions import Distribution

    flags = (is_validation_enabled(), infer.is_validation_enabled(), poutine.util.is_validation_enabled(),
             Distribution._validate_args)
    if not all(flags):
        pyro.enable_validation(True)
        pytest.fail(f"{request.node.nodeid} left validation off (Pyro's distributions, inference, handlers; torch's "
                    f"default: {flags}); pyrovae.ops.capture.compile_function compiles without that")


# The files of long tests (experiment scripts, torchrun launches, AIS on the sphere), longest first: collected first,
# so that `make test`, which hands whole files to its two workers in collection order (`--dist loadfile
# --no-loadscope-reorder`), starts them first and fills in around them with the many short files. Ordered by their
# number of tests (xdist's default), these few-test files came last and one worker ended the run alone with one.
LONG_FILES = ("test_experiments.py", "test_experiments_single_cell.py", "test_experiments_tahoe.py",
              "infer/test_distributed.py", "infer/estimation/test_sphere_ais.py", "docs/test_tutorials.py",
              "sc/test_pbmc_quickstart.py")
TESTS = Path(__file__).resolve().parent


def _long_files_first(item) -> int:
    path = Path(item.path).resolve()
    name = path.relative_to(TESTS).as_posix() if path.is_relative_to(TESTS) else ""
    return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_long_files_first)  # stable: the order within a file, and among the other files, is kept
    skip_cuda = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


def require_dataset(name: str):
    """The folder of a real data set, or skip the test with the reason."""
    path = find_dataset(name)
    if path is None:
        pytest.skip(f"{name} not found (../shared/data/{name} or $PYROVAE_DATA/{name})")
    return path

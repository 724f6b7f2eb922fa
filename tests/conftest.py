import os
import warnings

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
    """Pyro's validation (its inference's, its handlers', and torch's default validate_args) is global: a test that
    leaves it off turns off the argument checks of every later test in its process (two-worker runs failed three
    tests/distributions checks of off-sphere locations that way, the culprit unknown). It is turned on again, and
    the test that left it off is named in a warning."""
    yield
    from pyro import infer, poutine
    from pyro.distributions import is_validation_enabled

    if not (is_validation_enabled() and infer.is_validation_enabled() and poutine.util.is_validation_enabled()):
        pyro.enable_validation(True)
        warnings.warn(f"{request.node.nodeid} left Pyro's validation off", UserWarning, stacklevel=1)


def pytest_collection_modifyitems(config, items):
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

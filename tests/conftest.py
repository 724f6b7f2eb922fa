import pyro
import pytest
import torch

from pyrovae.data import find_dataset


@pytest.fixture(autouse=True)
def _seed():
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()  # values a test loaded or assigned never reach the next test's modules


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

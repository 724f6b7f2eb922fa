"""Importing the library: no side effects on matplotlib, data free of inference, torch.compile unloaded."""


def test_importing_the_library_changes_no_matplotlib_backend_and_data_does_not_import_infer():
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import pyrovae.plots, pyrovae.data, sys; "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend(); "
            "assert 'pyrovae.infer' not in sys.modules, 'pyrovae.data imported pyrovae.infer'; "
            "import pyrovae; assert pyrovae.VAE is pyrovae.models.VAE and callable(pyrovae.train)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_library_leaves_torch_compile_unloaded():
    """torch._dynamo costs 1.3 s to import: only a compile (ours or the user's) loads it, and then the
    vMF's rejection loop is one opaque call through its custom operator (tests/models/test_svae.py)."""
    import subprocess
    import sys

    code = ("import sys, pyrovae, pyrovae.infer, pyrovae.models, pyrovae.guides, pyrovae.sc; "
            "loaded = 'torch._dynamo' in sys.modules; assert not loaded, 'import pyrovae loaded torch._dynamo'")
    subprocess.run([sys.executable, "-c", code], check=True)

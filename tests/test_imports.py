"""Importing the library: no side effects on matplotlib, and the data layer stays free of inference."""


def test_importing_the_library_changes_no_matplotlib_backend_and_data_does_not_import_infer():
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import pyrovae.plots, pyrovae.data, sys; "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend(); "
            "assert 'pyrovae.infer' not in sys.modules, 'pyrovae.data imported pyrovae.infer'; "
            "import pyrovae; assert pyrovae.VAE is pyrovae.models.VAE and callable(pyrovae.train)")
    subprocess.run([sys.executable, "-c", code], check=True)

"""The IDX format of MNIST and Fashion-MNIST: reader with integrity checks, and download into a cache.

IDX (LeCun et al.): two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
each dimension as a big-endian int32, then the data in C order. We check the magic number, the sizes
against the header, and the SHA-256 of the *decompressed* bytes against the official files (the
compressed files may be recompressed losslessly, so their own checksum proves nothing).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# SHA-256 of the decompressed official files.
OFFICIAL_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}


class IDXError(ValueError):
    """A file that is not valid IDX, or not the expected one."""


def parse_idx(raw: bytes, name: str = "IDX data", expected_sha256: str | None = None) -> np.ndarray:
    """Parse the decompressed bytes of an IDX file, checking header, size and (optionally) SHA-256."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IDXError(f"{name} is not an IDX file: it does not start with two zero bytes (magic number)")
    type_code, num_dims = raw[2], raw[3]
    if type_code not in _DTYPES:
        raise IDXError(f"{name}: unknown IDX type code 0x{type_code:02x} in the magic number")
    header_size = 4 + 4 * num_dims
    if len(raw) < header_size:
        raise IDXError(f"{name} is truncated inside its header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))
    dtype = np.dtype(_DTYPES[type_code])
    expected_size = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected_size:
        raise IDXError(
            f"{name} is {'truncated' if len(raw) < expected_size else 'too long'}: the header announces shape "
            f"{shape} ({expected_size} bytes in all) but the file holds {len(raw)} bytes; download it again"
        )
    if expected_sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected_sha256:
            raise IDXError(
                f"{name} is corrupt: SHA-256 of its decompressed bytes is {digest}, expected {expected_sha256}; "
                "download it again"
            )
    return np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)


def read_idx(path: str | os.PathLike, expected_sha256: str | None = None) -> np.ndarray:
    """Read an IDX file, gzip-compressed (``.gz``) or raw, with the checks of :func:`parse_idx`."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                raw = stream.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise IDXError(f"{path} cannot be read ({type(error).__name__}: {error}); download it again") from error
    return parse_idx(raw, str(path), expected_sha256)


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """``stem.gz`` or ``stem`` in ``directory`` (also the ``stem.idx3-ubyte`` spelling some mirrors use)."""
    for candidate in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def download_idx(dataset: str, stem: str, directory: Path, timeout: float = 60.0) -> Path:
    """Download ``stem.gz`` of ``dataset`` from the official mirrors into ``directory`` (atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{stem}.gz"
    errors = []
    for mirror in MIRRORS[dataset]:
        temporary = None
        try:
            with urllib.request.urlopen(mirror + target.name, timeout=timeout) as response:
                handle, temporary = tempfile.mkstemp(dir=directory, suffix=".part")
                with os.fdopen(handle, "wb") as stream:
                    shutil.copyfileobj(response, stream)
            with gzip.open(temporary, "rb") as stream:
                parse_idx(stream.read(), target.name, OFFICIAL_SHA256[dataset].get(stem))
            os.replace(temporary, target)
            return target
        except Exception as error:  # network errors, HTTP errors, corrupt downloads: try the next mirror
            errors.append(f"{mirror}: {error}")
            if temporary is not None and os.path.exists(temporary):
                os.unlink(temporary)
    raise OSError(f"could not download {target.name} of {dataset}: " + "; ".join(errors))

"""IDX reader integrity checks and the MNIST / Fashion-MNIST / digits loaders."""

import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch

from pyrovae.data import IDXError, binarize_split, load_digits, load_fashion_mnist, load_mnist, read_idx
from tests.conftest import require_dataset


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", n) for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def images():
    return np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)


def test_reads_raw_and_gzip_with_checksum(tmp_path, images):
    raw = idx_bytes(images)
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    with gzip.open(tmp_path / "a-idx3-ubyte.gz", "wb") as stream:
        stream.write(raw)
    digest = hashlib.sha256(raw).hexdigest()
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte", digest), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz", digest), images)


def test_corrupt_files_are_named(tmp_path, images):
    raw = idx_bytes(images)
    cases = {
        "magic": (b"\x01" + raw[1:], "magic number"),
        "type": (raw[:2] + b"\x07" + raw[3:], "type code"),
        "truncated": (raw[:-3], "truncated"),
        "long": (raw + b"\x00", "too long"),
        "header": (raw[:6], "truncated inside its header"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(IDXError, match=message):
            read_idx(tmp_path / name)
    (tmp_path / "ok").write_bytes(raw)
    with pytest.raises(IDXError, match="SHA-256"):
        read_idx(tmp_path / "ok", "0" * 64)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(IDXError, match="cannot be read"):
        read_idx(tmp_path / "bad.gz")


def test_missing_files_explain_where_they_were_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    from pyrovae.data import mnist

    monkeypatch.setattr(mnist, "find_dataset", lambda name, data_dir=None: None)
    with pytest.raises(FileNotFoundError, match="PYROVAE_DATA.*download=True"):
        load_mnist()
    with pytest.raises(ValueError, match="binarize must be one of"):
        load_mnist(binarize="sometimes")


@pytest.mark.data
def test_real_mnist():
    require_dataset("mnist")
    train, test = load_mnist()
    assert train.x.shape == (60000, 784) and test.x.shape == (10000, 784)
    assert train.x.min() == 0 and train.x.max() == 1
    assert torch.bincount(train.labels).tolist()[:3] == [5923, 6742, 5958]
    dynamic, static = load_mnist(binarize="dynamic")
    batch_a, batch_b = dynamic.batch(torch.arange(100)), dynamic.batch(torch.arange(100))
    assert set(batch_a.unique().tolist()) == {0.0, 1.0} and not torch.equal(batch_a, batch_b)
    assert torch.equal(static.x, load_mnist(binarize="dynamic")[1].x)  # the test set is fixed
    assert abs(static.x.mean() - test.x.mean()) < 0.005


@pytest.mark.data
def test_real_fashion_mnist():
    require_dataset("fashion-mnist")
    train, test = load_fashion_mnist(binarize="threshold")
    assert train.x.shape == (60000, 784) and len(test) == 10000
    assert torch.bincount(train.labels).tolist() == [6000] * 10


def test_digits_fallback():
    train, test = load_digits(binarize="static")
    assert len(train) + len(test) == 1797 and train.num_features == 64
    assert set(train.x.unique().tolist()) == {0.0, 1.0}


def test_binarize_split_from_one_grey_read():
    grey_train, grey_test = load_digits(seed=3)
    train, test = binarize_split(grey_train, grey_test, "dynamic", seed=5)
    assert torch.equal(train.x, grey_train.x) and train.transform is torch.bernoulli
    assert set(test.x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(test.x, binarize_split(grey_train, grey_test, "dynamic", seed=5)[1].x)
    # a draw per pixel with the grey level as probability: the binary test mean tracks the grey mean
    assert abs(test.x.mean() - grey_test.x.mean()) < 0.01
    static_train, static_test = binarize_split(grey_train, grey_test, "static", seed=5)
    assert static_train.transform is None and set(static_train.x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(static_test.x, test.x)  # the test draw is the same for both modes
    thresholded, _ = binarize_split(grey_train, grey_test, "threshold")
    assert torch.equal(thresholded.x, (grey_train.x > 0.5).float())
    assert binarize_split(grey_train, grey_test, None)[0] is grey_train
    with pytest.raises(ValueError, match="binarize must be one of"):
        binarize_split(grey_train, grey_test, "soft")

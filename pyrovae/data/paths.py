"""Where real data sets are looked for: ``PYROVAE_DATA``, ``../shared/data``, then a download cache."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for data sets, in order: ``data_dir``, ``$PYROVAE_DATA``, ``../shared/data`` beside the
    working directory and beside the repository, and the download cache."""
    roots = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    if os.environ.get("PYROVAE_DATA"):
        roots.append(Path(os.environ["PYROVAE_DATA"]))
    roots += [Path.cwd().parent / "shared" / "data", _REPO_ROOT.parent / "shared" / "data", cache_dir()]
    return list(dict.fromkeys(roots))


def cache_dir() -> Path:
    """The download cache: ``$XDG_CACHE_HOME/pyrovae`` (``~/.cache/pyrovae``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pyrovae"


def find_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first folder ``root/name`` that exists (or ``data_dir`` itself when it is that folder)."""
    if data_dir is not None and Path(data_dir).name == name and Path(data_dir).is_dir():
        return Path(data_dir)
    for root in data_roots(data_dir):
        if (root / name).is_dir():
            return root / name
    return None

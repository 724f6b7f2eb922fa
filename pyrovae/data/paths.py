"""Where real data sets are looked for: ``PYROVAE_DATA``, ``../shared/data``, then a download cache."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for data sets: an explicit ``data_dir`` alone (it must exist: a FileNotFoundError names
    it otherwise, so a typo never falls back to another copy); else, in order, ``$PYROVAE_DATA``,
    ``../shared/data`` beside the working directory and beside the repository, and the download cache."""
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"data_dir={str(data_dir)!r} is not a folder ({'a file' if folder.exists() else 'nothing'} is there); "
                "pass the folder that holds the data sets, or leave data_dir unset to search $PYROVAE_DATA, "
                "../shared/data and the cache"
            )
        return [folder]
    roots = []
    if os.environ.get("PYROVAE_DATA"):
        roots.append(Path(os.environ["PYROVAE_DATA"]))
    roots += [Path.cwd().parent / "shared" / "data", _REPO_ROOT.parent / "shared" / "data", cache_dir()]
    return list(dict.fromkeys(roots))


def cache_dir() -> Path:
    """The download cache: ``$XDG_CACHE_HOME/pyrovae`` (``~/.cache/pyrovae``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pyrovae"


def find_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first folder ``root/name`` of :func:`data_roots` that exists (or ``data_dir`` itself when it is that
    folder), None when there is none. An explicit ``data_dir`` is the only place looked in, and must exist."""
    roots = data_roots(data_dir)
    if data_dir is not None and roots[0].name == name:
        return roots[0]
    for root in roots:
        if (root / name).is_dir():
            return root / name
    return None

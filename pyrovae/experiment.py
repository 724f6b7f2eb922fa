"""What every experiment script shares: the common command line, the device, and metrics.json."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import matplotlib
import pyro
import torch


def experiment_parser(description: str, epochs: int, out: str) -> argparse.ArgumentParser:
    """An argument parser with the options every experiment takes."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--epochs", type=int, default=epochs, help="training epochs")
    parser.add_argument("--data-dir", default=None, help="data folder (default: $PYROVAE_DATA, ../shared/data)")
    parser.add_argument("--out", default=out, help="folder for metrics.json and figures")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def setup(args: argparse.Namespace) -> torch.device:
    """Seed everything, create the output folder, draw figures to files only (matplotlib's Agg backend), and
    return the device."""
    matplotlib.use("Agg")
    pyro.set_rng_seed(args.seed)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def _clean(value):
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_metrics(out: str | os.PathLike, metrics: dict, args: argparse.Namespace | None = None) -> Path:
    """Write ``metrics.json`` with the run's arguments and machine (non-finite floats as strings)."""
    record = {
        "metrics": metrics,
        "arguments": vars(args) if args is not None else {},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "pyro": pyro.__version__,
                    "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path = Path(out) / "metrics.json"
    path.write_text(json.dumps(_clean(record), indent=2))
    return path

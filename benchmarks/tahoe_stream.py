"""Streaming a Tahoe-schema atlas: read throughput, memory against atlas size, and data-parallel training.

On generated shards (62,710-gene vocabulary, about 2,000 genes detected per cell, panel of 2,000 HVG):

1. cells per second read, decoded, shuffled and batched by :class:`~pyrovae.data.CellStream` in the main process
   and with 1 and 2 DataLoader workers, against the notebook's way (baseline): a Python loop over rows that builds
   each cell's panel vector from its lists (measured on the first 2,000 cells);
2. peak RSS of a fresh process streaming an atlas of N cells vs one of 10 N cells (the larger atlas is the same
   shard files hard-linked ten times under other names: the same bytes on disk, ten times the cells to stream).
   Target: within 10%;
3. training throughput (cells per second, NB VAE on the panel, batch 256 per process): one process vs two DDP
   processes (gloo on the CPU, one thread each) under ``torchrun``; on a GPU, one process on it.

Prints a table and writes ``benchmarks/results/tahoe_stream.json``.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pyrovae.data import CellStream, TahoeAtlas, write_tahoe_shards

ROOT = Path(__file__).resolve().parents[1]


def _atlas(folder: Path, cells: int, shards: int, seed: int = 0) -> Path:
    if not (folder / "metadata" / "gene_metadata.parquet").exists():
        started = time.perf_counter()
        write_tahoe_shards(folder, num_cells=cells, num_shards=shards, seed=seed)
        print(f"generated {cells:,} cells in {shards} shards in {time.perf_counter() - started:.0f} s: {folder}")
    return folder


def _linked(source: Path, folder: Path, copies: int) -> Path:
    """``copies`` hard links of every shard of ``source`` (no extra disk), and its gene table."""
    if not folder.exists():
        (folder / "data").mkdir(parents=True)
        (folder / "metadata").mkdir()
        os.link(source / "metadata" / "gene_metadata.parquet", folder / "metadata" / "gene_metadata.parquet")
        for copy in range(copies):
            for shard in sorted((source / "data").glob("*.parquet")):
                os.link(shard, folder / "data" / f"copy{copy:02d}-{shard.name}")
    return folder


def _panel(atlas: TahoeAtlas, folder: Path) -> np.ndarray:
    cached = folder / "panel.npy"
    if not cached.exists():
        np.save(cached, atlas.highly_variable_genes(2000, num_cells=20_000))
    return np.load(cached)


def _stream_rate(atlas, panel, workers: int, max_cells: int | None = None) -> float:
    stream = CellStream(atlas, panel, batch_size=256, num_workers=workers, seed=0)
    started, cells = time.perf_counter(), 0
    for batch in stream.loader() if workers else stream:
        batch.counts  # the dense matrix a model gets  # noqa: B018
        cells += len(batch)
        if max_cells and cells >= max_cells:
            break
    return cells / (time.perf_counter() - started)


def _row_loop_rate(atlas: TahoeAtlas, panel: np.ndarray, num_cells: int = 2000) -> float:
    """The notebook's approach: one Python dict per row, one vector per cell."""
    position = {int(t): i for i, t in enumerate(atlas.vocabulary.token_ids[panel])}
    started, cells = time.perf_counter(), []
    table = pq.ParquetFile(atlas.shards[0].path).read_row_group(0, columns=["genes", "expressions", "drug"])
    for row in table.slice(0, num_cells).to_pylist():
        vector = np.zeros(len(panel), dtype=np.float32)
        for token, count in zip(row["genes"][1:], row["expressions"][1:]):
            if token in position:
                vector[position[token]] = count
        cells.append(vector)
    torch.from_numpy(np.stack(cells))
    return num_cells / (time.perf_counter() - started)


def _peak_rss_streaming(folder: Path, panel_file: Path) -> dict:
    """Stream every cell of the atlas in a fresh process; its peak RSS (MB) and rate."""
    code = (
        "import resource, sys, time, numpy as np\n"
        "from pyrovae.data import CellStream, TahoeAtlas\n"
        f"atlas = TahoeAtlas({str(folder)!r}); panel = np.load({str(panel_file)!r})\n"
        "stream = CellStream(atlas, panel, batch_size=256, seed=0)\n"
        "started, cells = time.perf_counter(), 0\n"
        "for batch in stream:\n    batch.counts; cells += len(batch)\n"
        "print(cells, cells / (time.perf_counter() - started), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    cells, rate, rss_kb = done.stdout.split()
    return {"cells": int(cells), "cells_per_s": float(rate), "peak_rss_mb": int(rss_kb) / 1024}


def _train_worker(folder: str, epochs: int) -> None:
    """Run under torchrun (or alone): train and print this run's cells per second (rank 0)."""
    from pyrovae.guides import NormalGuide
    from pyrovae.models import VAE

    from pyrovae.infer import train
    from pyrovae.infer.distributed import init_distributed, is_main_process, world_size

    init_distributed()
    atlas = TahoeAtlas(folder)
    stream = CellStream(atlas, np.load(Path(folder) / "panel.npy"), batch_size=256, seed=0)
    torch.manual_seed(0)
    model = VAE(stream.num_genes, 10, (256, 128), likelihood="nb")
    guide = NormalGuide(stream.num_genes, 10, (256, 128), input_transform="log1p")
    history = train(model, guide, stream, epochs=epochs, eval_size=0, seed=0, progress=False)
    if is_main_process():
        cells = len(stream) * stream.batch_size * world_size()
        seconds = history["seconds"][-1]  # the last epoch: start-up and first-touch costs excluded
        print(json.dumps({"cells_per_s": cells / seconds, "seconds_per_epoch": seconds, "processes": world_size(),
                          "device": str(next(model.parameters()).device)}))


def _train_rate(folder: Path, processes: int, epochs: int, threads: int) -> dict:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, *launcher, __file__, "--train-worker", str(folder), "--epochs",
                           str(epochs)], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(done.stdout[-2000:] + done.stderr[-4000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000, help="cells of the smaller atlas (the larger: 10x)")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--train-cells", type=int, default=20_000, help="cells of the atlas trained on")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (the last one is timed)")
    parser.add_argument("--work", default=str(ROOT / "results" / "bench_tahoe"), help="folder for generated shards")
    parser.add_argument("--train-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_worker:
        return _train_worker(args.train_worker, args.epochs)

    work = Path(args.work)
    small = _atlas(work / f"atlas_{args.cells}", args.cells, args.shards)
    large = _linked(small, work / f"atlas_{10 * args.cells}_linked", 10)
    atlas = TahoeAtlas(small)
    panel = _panel(atlas, small)
    np.save(large / "panel.npy", panel)
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpus": os.cpu_count(), "torch": torch.__version__}}

    baseline = _row_loop_rate(atlas, panel)
    rates = {workers: _stream_rate(atlas, panel, workers) for workers in (0, 1, 2)}
    results["read"] = {"row_loop_baseline": baseline, **{f"workers_{w}": r for w, r in rates.items()}}
    print(f"\nread + batch, cells/s (panel {len(panel)} genes, batch 256, {atlas.num_cells:,} cells)")
    print(f"  notebook row loop (baseline)  {baseline:>10,.0f}")
    for workers, rate in rates.items():
        print(f"  CellStream, {workers} workers{' (in process)' if not workers else '':<13}{rate:>10,.0f}   "
              f"x{rate / baseline:.0f} the baseline")

    memory = {label: _peak_rss_streaming(folder, small / "panel.npy") for label, folder in
              (("small", small), ("large", large))}
    ratio = memory["large"]["peak_rss_mb"] / memory["small"]["peak_rss_mb"]
    results["memory"] = {**memory, "ratio": ratio, "met": ratio <= 1.10}
    print("\npeak RSS streaming every cell once (fresh process, no workers)")
    for label in ("small", "large"):
        m = memory[label]
        print(f"  {m['cells']:>10,} cells: {m['peak_rss_mb']:>7.0f} MB  ({m['cells_per_s']:,.0f} cells/s)")
    print(f"  ratio {ratio:.3f} (target <= 1.10: {'met' if ratio <= 1.10 else 'not met'})")

    trained = _atlas(work / f"atlas_train_{args.train_cells}", args.train_cells, 8, seed=1)
    np.save(trained / "panel.npy", _panel(TahoeAtlas(trained), trained))
    threads = os.cpu_count() or 1
    single = _train_rate(trained, 1, args.epochs, threads)
    results["train"] = {"one_process": single}
    print(f"\ntraining, NB VAE on {len(panel)} genes, batch 256 per process ({args.train_cells:,} cells)")
    print(f"  one process ({threads} threads, {single['device']}) {single['cells_per_s']:>10,.0f} cells/s")
    if not torch.cuda.is_available():
        two = _train_rate(trained, 2, args.epochs, max(1, threads // 2))
        results["train"]["two_ddp_processes"] = two
        print(f"  two DDP processes (gloo, {max(1, threads // 2)} thread each) {two['cells_per_s']:>10,.0f} cells/s   "
              f"x{two['cells_per_s'] / single['cells_per_s']:.2f} one process")
    out = ROOT / "benchmarks" / "results" / "tahoe_stream.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\n{out}")


if __name__ == "__main__":
    main()

"""Streaming a Tahoe-schema atlas: read throughput, memory against atlas size, and data-parallel training.

On generated shards (62,710-gene vocabulary, about 2,000 genes detected per cell, panel of 2,000 HVG):

1. cells per second read, decoded, shuffled and batched (dense counts) by :class:`~pyrovae.data.CellStream` in the
   main process, with 1 and 2 DataLoader workers, and in two processes at once (ranks 0 and 1 of two, as under
   ``torchrun``), against the notebook's way (baseline): a Python loop over rows that builds each cell's panel
   vector from its lists (measured on the first 2,000 cells); and against the same cells copied once to an AnnData
   CSR of the panel (``.h5ad`` and ``.zarr``), read the way annbatch reads them: chunks of contiguous rows in a
   random order, a few dozen chunks at a time shuffled together into batches, by hand and by the library's
   :class:`~pyrovae.data.AnnDataStream`;
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

from pyrovae.data import AnnDataStream, CellStream, TahoeAtlas, write_tahoe_shards

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


def _stream_rate(atlas, panel, workers: int, max_cells: int | None = None, rank: int = 0, world_size: int = 1,
                 **options) -> float:
    stream = CellStream(atlas, panel, batch_size=256, num_workers=workers, seed=0, rank=rank, world_size=world_size,
                        **options)
    started, cells = time.perf_counter(), 0
    for batch in stream.loader() if workers else stream:
        batch.counts  # the dense matrix a model gets  # noqa: B018
        cells += len(batch)
        if max_cells and cells >= max_cells:
            break
    return cells / (time.perf_counter() - started)


def _two_process_rate(folder: Path) -> float:
    """Cells per second of two processes streaming at once, each its own half of the shards (ranks 0 and 1)."""
    code = (
        "import sys, time, numpy as np\n"
        "from pyrovae.data import TahoeAtlas\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from tahoe_stream import _stream_rate\n"
        f"atlas = TahoeAtlas({str(folder)!r}); panel = np.load({str(folder / 'panel.npy')!r})\n"
        "started = time.perf_counter()\n"
        "rate = _stream_rate(atlas, panel, 0, rank=int(sys.argv[1]), world_size=2)\n"
        "print(rate * (time.perf_counter() - started), time.perf_counter() - started)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    runs = [subprocess.Popen([sys.executable, "-c", code, str(rank)], stdout=subprocess.PIPE, text=True, env=env)
            for rank in (0, 1)]
    results = [[float(x) for x in run.communicate()[0].split()] for run in runs]
    return sum(cells for cells, _ in results) / max(seconds for _, seconds in results)


def _anndata_copy(atlas: TahoeAtlas, panel: np.ndarray, folder: Path) -> dict[str, Path]:
    """The atlas's cells on the panel, written once as an AnnData CSR (.h5ad and .zarr) with library and labels."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    paths = {"h5ad": folder / "panel_copy.h5ad", "zarr": folder / "panel_copy.zarr"}
    if not all(path.exists() for path in paths.values()):
        blocks = [block for shard in range(len(atlas.shards)) for block in atlas.read(shard, panel)]
        categories = atlas.categories
        obs = pd.DataFrame({"library": np.concatenate([b.library for b in blocks]),
                            **{name: pd.Categorical.from_codes(np.concatenate([b.labels[name] for b in blocks]),
                                                               categories[name]) for name in categories}})
        obs.index = obs.index.astype(str)
        adata = ad.AnnData(sp.vstack([b.counts for b in blocks], format="csr"), obs=obs)
        adata.write_h5ad(paths["h5ad"])
        adata.write_zarr(paths["zarr"])
    return paths


def _anndata_rate(path: Path, chunk_size: int = 512, preload_chunks: int = 32, batch_size: int = 256) -> float:
    """annbatch's way over a CSR AnnData on disk: contiguous chunks of rows in a random order, ``preload_chunks`` of
    them read and shuffled together, then cut into batches with their library sizes and labels (dense counts)."""
    import anndata as ad
    import h5py
    import scipy.sparse as sp
    import zarr

    started = time.perf_counter()
    store = h5py.File(path, "r") if path.suffix == ".h5ad" else zarr.open(path, mode="r")
    matrix = ad.io.sparse_dataset(store["X"])
    obs = ad.io.read_elem(store["obs"])
    library, labels = obs["library"].to_numpy(), {c: obs[c].cat.codes.to_numpy() for c in ("drug", "plate")}
    rng = np.random.default_rng(0)
    chunks = rng.permutation(np.arange(0, matrix.shape[0], chunk_size))
    cells = 0
    for first in range(0, len(chunks), preload_chunks):
        starts = chunks[first:first + preload_chunks]
        counts = sp.vstack([matrix[s:s + chunk_size] for s in starts], format="csr")
        rows = np.concatenate([np.arange(s, min(s + chunk_size, matrix.shape[0])) for s in starts])
        order = rng.permutation(len(rows))
        for start in range(0, len(order), batch_size):
            take = order[start:start + batch_size]
            batch = (torch.from_numpy(counts[take].toarray()), torch.from_numpy(library[rows[take]]),
                     {name: torch.from_numpy(codes[rows[take]]) for name, codes in labels.items()})
            cells += len(batch[0])
    return cells / (time.perf_counter() - started)


def _anndata_stream_rate(path: Path) -> float:
    """The same copy read by the library's :class:`~pyrovae.data.AnnDataStream` (chunks of 512 rows, 32 at a time,
    in process), each batch's dense counts assembled as the other readers do."""
    started, cells = time.perf_counter(), 0
    stream = AnnDataStream(path, 256, labels=("drug", "plate"), library_key="library")
    for batch in stream:
        cells += len(batch.counts)
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
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of the read measurements")
    parser.add_argument("--read-only", action="store_true", help="measure reading only (no memory or training)")
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

    copies = _anndata_copy(atlas, panel, small)
    baseline = _row_loop_rate(atlas, panel)
    rounds: dict[str, list[float]] = {}
    for _ in range(args.rounds):  # alternated, so that a busy spell of the machine hits every reader alike
        for workers in (0, 1, 2):
            rounds.setdefault(f"workers_{workers}", []).append(_stream_rate(atlas, panel, workers))
        rounds.setdefault("one_read_thread", []).append(_stream_rate(atlas, panel, 0, read_threads=1))
        rounds.setdefault("two_processes", []).append(_two_process_rate(small))
        for layout, path in copies.items():
            rounds.setdefault(f"anndata_{layout}", []).append(_anndata_rate(path))
            rounds.setdefault(f"anndata_stream_{layout}", []).append(_anndata_stream_rate(path))
    rates = {name: float(np.median(values)) for name, values in rounds.items()}
    results["read"] = {"row_loop_baseline": baseline, **rates, "rounds": rounds}
    print(f"\nread + batch, cells/s, median of {args.rounds} alternated rounds (panel {len(panel)} genes, batch 256, "
          f"{atlas.num_cells:,} cells)")
    print(f"  notebook row loop (baseline)                  {baseline:>10,.0f}")
    names = {"workers_0": "CellStream, in process", "one_read_thread": "CellStream, in process, 1 read thread",
             "workers_1": "CellStream, 1 DataLoader worker",
             "workers_2": "CellStream, 2 DataLoader workers", "two_processes": "CellStream, two processes (ranks)",
             "anndata_h5ad": "AnnData CSR copy (.h5ad), annbatch's way",
             "anndata_zarr": "AnnData CSR copy (.zarr), annbatch's way",
             "anndata_stream_h5ad": "AnnDataStream over the .h5ad copy",
             "anndata_stream_zarr": "AnnDataStream over the .zarr copy"}
    for name, rate in rates.items():
        print(f"  {names[name]:<45} {rate:>10,.0f}   x{rate / baseline:.0f} the baseline, "
              f"x{rate / rates['workers_0']:.2f} in process")

    out = ROOT / "benchmarks" / "results" / "tahoe_stream.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.read_only:
        out.write_text(json.dumps(results, indent=2))
        return print(f"\n{out}")
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
    out.write_text(json.dumps(results, indent=2))
    print(f"\n{out}")


if __name__ == "__main__":
    main()

"""The stream feeding an NB VAE on a GPU: cells per second of training, and how busy the GPU is.

Generates a Tahoe-schema atlas (``--cells`` cells in ``--shards`` shards, 62,710-gene vocabulary), chooses a 2,000-gene
panel, and trains an NB VAE (2,000-256-128 / 128-256-2,000, latent 10, observed library size) on CUDA from a
``CellStream`` with ``--workers`` DataLoader workers, pinned batches of ``--batch-size``: the epochs' cells per second
(the first epoch, which traces the objective, left out) and the GPU's utilisation sampled every 50 ms by NVML during
the timed epochs. The same epochs with the cells already on the GPU (a tensor) give the trainer's own speed: the
stream keeps up when the two are close.

The reader alone (every batch formed, received, pinned and copied to the device, nothing trained) comes first: when it
is no faster than the stream feeding the trainer, the reader is the limit; ``--reader-only`` stops there.

    python benchmarks/gpu_stream.py [--cells 200000] [--workers 8] [--batch-size 1024] [--epochs 3] [--atlas DIR]
"""

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import torch

from pyrovae import make_pair
from pyrovae.data import CellStream, TahoeAtlas, write_tahoe_shards
from pyrovae.infer import train

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--cells", type=int, default=200_000)
parser.add_argument("--shards", type=int, default=16)
parser.add_argument("--workers", type=int, default=8)
parser.add_argument("--batch-size", type=int, default=1024)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--compile", action="store_true", help="train(compile=True)")
parser.add_argument("--device", default="cuda", help="'cpu' only to try the script out")
parser.add_argument("--atlas", default=None, help="an atlas folder to reuse (generated there when missing)")
parser.add_argument("--reader-only", action="store_true", help="only the reader alone, no training")
parser.add_argument("--pin", choices=["both", "yes", "no"], default="both", help="the reader alone: pinned, not, both")
args = parser.parse_args()
device = torch.device(args.device)


class Utilisation:
    """GPU utilisation (%) sampled by NVML in a thread."""

    def __init__(self, period: float = 0.05) -> None:
        self.samples, self.running, self.period = [], False, period
        if device.type == "cuda":
            import pynvml

            pynvml.nvmlInit()
            self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)

    def __enter__(self):
        if device.type != "cuda":
            return self
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            time.sleep(self.period)

    def __exit__(self, *exc) -> None:
        if self.running:
            self.running = False
            self.thread.join()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_alone(stream: CellStream, pin_memory: bool) -> tuple[float, float, float, float, float]:
    """The reader alone: every batch of an epoch formed in the workers, received, (pinned,) and copied to the device,
    with nothing else running (the second of two epochs). Returns the epoch's cells per second, the seconds to its
    first batch (starting the workers, opening the shards), the cells per second after it (the steady rate), and the
    share of the epoch's wall time the main process and the average worker were busy on a CPU."""
    for epoch in range(2):
        stream.set_epoch(epoch)
        started, cells, main_started = time.perf_counter(), 0, time.process_time()
        batches = iter(stream.loader(pin_memory=pin_memory))
        workers = [w.pid for w in getattr(batches, "_workers", [])]
        workers_started = {pid: cpu_seconds(pid) for pid in workers}
        for batch in batches:
            batch = batch.to(device, non_blocking=True)
            if not cells:
                first, first_cells = time.perf_counter() - started, len(batch)
            cells += len(batch)
            workers_now = {pid: cpu_seconds(pid) for pid in workers}  # before the workers exit
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        main_busy = (time.process_time() - main_started) / seconds
        worker_busy = (sum(workers_now[pid] - workers_started[pid] for pid in workers) / max(len(workers), 1)
                       / seconds) if workers else 0.0
    return cells / seconds, first, (cells - first_cells) / (seconds - first), main_busy, worker_busy


with tempfile.TemporaryDirectory() as work:
    started = time.perf_counter()
    folder = Path(args.atlas) if args.atlas else Path(work) / "atlas"
    if not (folder / "metadata" / "gene_metadata.parquet").exists():
        write_tahoe_shards(folder, args.cells, args.shards, seed=0)
    atlas = TahoeAtlas(folder)
    panel = atlas.highly_variable_genes(2000, num_cells=20_000)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"atlas of {atlas.num_cells:,} cells in {len(atlas.shards)} shards, panel of {len(panel)} genes "
          f"({time.perf_counter() - started:.0f} s); {name}, torch {torch.__version__}")
    stream = CellStream(atlas, panel, batch_size=args.batch_size, num_workers=args.workers, seed=0)
    for pin in {"both": (True, False), "yes": (True,), "no": (False,)}[args.pin]:
        speed, first, steady, main_busy, worker_busy = read_alone(stream, pin)
        print(f"{'reader alone' + (', pinned' if pin else ''):<20} {speed:>12,.0f} cells/s "
              f"({args.workers} workers, {len(atlas.shards)} shards): first batch after {first:.2f} s, "
              f"{steady:,.0f} cells/s after it; CPU busy: main process {main_busy:.0%}, each worker {worker_busy:.0%}")
    if args.reader_only:
        raise SystemExit(0)
    results = {}
    for source in ("stream", "tensor on the GPU"):
        torch.manual_seed(0)
        model, guide = make_pair("vae", len(panel), 10, (256, 128), "nb", input_transform="log1p")
        if source == "stream":
            data = stream
        else:  # the same number of cells, already on the GPU: the trainer alone
            data = torch.cat([batch.counts for _, batch in zip(range(len(stream)), stream.loader())]).to(device)
        with Utilisation() as gpu:
            history = train(model, guide, data, epochs=args.epochs, batch_size=None if source == "stream" else
                            args.batch_size, device=device, eval_size=0, progress=False, compile=args.compile,
                            elbo="jit")
        timed = history.records[1:]
        seconds = sum(record["seconds"] for record in timed)
        cells = (len(data) if source != "stream" else stream.num_cells) * len(timed)
        busy = gpu.samples[len(gpu.samples) * 1 // max(args.epochs, 1):]  # the timed epochs, roughly
        results[source] = cells / seconds
        print(f"{source:<20} {cells / seconds:>12,.0f} cells/s   GPU busy {sum(busy) / max(len(busy), 1):5.1f}% "
              f"(median epoch {sorted(r['seconds'] for r in timed)[len(timed) // 2]:.2f} s)")
    print(f"stream / trainer alone: {results['stream'] / results['tensor on the GPU']:.2f}")

"""iLISI and batch ASW of an atlas-sized latent, against scikit-learn's exact computations.

A simulated integrated latent (float32, as an encoder gives it): ``--types`` cell types with centres N(0, 4^2 I) in
``--dims`` dimensions, each cell its type's centre plus its batch's shift (N(0, 0.3^2 I), one of ``--batches``)
plus N(0, I) noise.

1. The whole atlas (``--cells``, default a million): seconds of LISI / iLISI with approximate neighbours and of
   ``batch_asw`` (exact), once each.
2. What the index costs in accuracy, on 2,000 random cells of the atlas against brute force (torch, float64):
   the recall of their 90 nearest neighbours, and their LISI from the index against their exact LISI.
3. Side by side on ``--compare`` cells (median of ``--rounds`` alternated rounds): iLISI with exact neighbours
   and batch ASW with scikit-learn's ``silhouette_samples`` (the baselines) against pyrovae's.

    python benchmarks/integration_scores.py [--cells 1000000] [--compare 20000] [--rounds 3]
"""

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.metrics import silhouette_samples

from pyrovae import metrics
from pyrovae._distances import approximate_neighbors

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--cells", type=int, default=1_000_000)
parser.add_argument("--compare", type=int, default=20_000)
parser.add_argument("--dims", type=int, default=20)
parser.add_argument("--batches", type=int, default=10)
parser.add_argument("--types", type=int, default=50)
parser.add_argument("--rounds", type=int, default=3)
args = parser.parse_args()

rng = np.random.default_rng(0)
types, batch = rng.integers(0, args.types, args.cells), rng.integers(0, args.batches, args.cells)
centres, shifts = 4.0 * rng.normal(size=(args.types, args.dims)), 0.3 * rng.normal(size=(args.batches, args.dims))
latent = (centres[types] + shifts[batch] + rng.normal(size=(args.cells, args.dims))).astype(np.float32)
print(f"{args.cells:,} cells x {args.dims} dims, {args.batches} batches, {args.types} types; torch "
      f"{torch.__version__}, {torch.get_num_threads()} threads")


def timed(call):
    started = time.perf_counter()
    value = call()
    return value, time.perf_counter() - started


print("\n1. the whole atlas")
values, seconds = timed(lambda: metrics.lisi(latent, batch, exact=False))
print(f"   ilisi      {(np.median(values) - 1) / (args.batches - 1):.4f}  {seconds:8.1f} s  (approximate neighbours)")
value, seconds = timed(lambda: metrics.batch_asw(latent, batch, types))
print(f"   batch_asw  {value:.4f}  {seconds:8.1f} s")

print("\n2. the index's accuracy, on 2,000 random cells of the atlas against brute force")
queries = np.sort(rng.choice(args.cells, 2000, replace=False))
x = torch.from_numpy(latent)
distances, exact = torch.cdist(x[queries].double(), x.double()).topk(91, largest=False)
exact_lisi = 1.0 / metrics._simpson_index(distances[:, 1:].numpy(), batch[exact[:, 1:].numpy()], args.batches, 30)
where = {int(q): i for i, q in enumerate(queries)}
recall = []
for rows, _, indices in approximate_neighbors(latent, 90):
    for row, found in zip(rows, indices):
        if int(row) in where:
            recall.append(len(set(found.tolist()) & set(exact[where[int(row)], 1:].tolist())) / 90)
print(f"   recall of the 90 nearest neighbours: mean {np.mean(recall):.4f}, 5th percentile "
      f"{np.percentile(recall, 5):.3f}")
difference = values[queries] - exact_lisi
scaled = [(np.median(v) - 1) / (args.batches - 1) for v in (values[queries], exact_lisi)]
print(f"   LISI of these cells, index - exact: mean {difference.mean():+.4f}, mean |.| {np.abs(difference).mean():.4f} "
      f"(LISI {exact_lisi.mean():.3f} on average); their iLISI {scaled[0]:.4f} against {scaled[1]:.4f}")
subset = np.sort(rng.choice(args.cells, min(args.compare, args.cells), replace=False))
small = latent[subset], batch[subset], types[subset]


def sklearn_batch_asw(latent, batch, labels):
    return float(np.mean([np.mean(1 - np.abs(silhouette_samples(latent[labels == c], batch[labels == c])))
                          for c in np.unique(labels)]))


print(f"\n3. side by side on {len(subset):,} cells, median of {args.rounds} alternated rounds")
pairs = {
    "ilisi, exact neighbours (index)": (lambda: metrics.ilisi(small[0], small[1], exact=True),
                                        lambda: metrics.ilisi(small[0], small[1], exact=False)),
    "batch_asw (sklearn silhouettes)": (lambda: sklearn_batch_asw(*small), lambda: metrics.batch_asw(*small)),
}
print(f"   {'score (baseline)':<34}{'baseline s':>11}{'pyrovae s':>11}{'speed-up':>10}{'difference':>12}")
for name, (baseline, ours) in pairs.items():
    times = {"baseline": [], "ours": []}
    for _ in range(args.rounds):
        base_value, seconds = timed(baseline)
        times["baseline"].append(seconds)
        our_value, seconds = timed(ours)
        times["ours"].append(seconds)
    base, mine = statistics.median(times["baseline"]), statistics.median(times["ours"])
    print(f"   {name:<34}{base:>11.2f}{mine:>11.2f}{base / mine:>9.1f}x{abs(base_value - our_value):>12.2e}")

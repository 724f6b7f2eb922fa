"""Trains a count VAE on generated Tahoe shards, with the plate as a covariate of the decoder, or (``--in-memory N``)
a Bernoulli VAE on N generated binary rows held in memory; run alone or under torchrun by
tests/infer/test_distributed.py.

Every rank saves its parameters, its loss curve and the cells it read in the first epoch (in memory: the indices
of every batch it read, in order) to ``OUT/rank{r}.pt``. Several runs separated by ``+`` train one after the other
in the same processes (a launch costs seconds of imports).
"""

import argparse
import os
import sys

import torch
from pyrovae.guides import NormalGuide
from pyrovae.models import VAE

from pyrovae.data import CellStream, TahoeAtlas, TensorData
from pyrovae.infer import train
from pyrovae.infer.distributed import rank

parser = argparse.ArgumentParser()
parser.add_argument("shards")
parser.add_argument("out")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--checkpoint", default=None)
parser.add_argument("--compile", action="store_true")
parser.add_argument("--in-memory", type=int, default=None, help="train on this many binary rows held in memory")
parser.add_argument("--patience", type=int, default=None, help="in memory: early stopping on 200 validation rows")


class Recorded(TensorData):
    """TensorData that keeps the indices of every batch read from it."""

    def __init__(self, x):
        super().__init__(x)
        self.reads = []

    def batch(self, indices, device):
        self.reads.append(indices.clone())
        return super().batch(indices, device)


def train_in_memory(args) -> None:
    generator = torch.Generator().manual_seed(7)  # rows of two latent factors: something to learn
    factors, loadings = torch.randn(args.in_memory, 2, generator=generator), torch.randn(2, 30, generator=generator)
    rows = torch.bernoulli(torch.sigmoid(3 * factors @ loadings), generator=generator)
    data = Recorded(rows)
    torch.manual_seed(0)
    model, guide = VAE(30, 4, [32], likelihood="bernoulli"), NormalGuide(30, 4, [32])
    stopping = {} if args.patience is None else {"val_data": rows[:200], "patience": args.patience, "eval_size": 64}
    history = train(model, guide, data, epochs=args.epochs, batch_size=args.batch_size, lr=3e-3, seed=0,
                    progress=False, compile=args.compile, **({"eval_size": 0} | stopping))
    os.makedirs(args.out, exist_ok=True)
    torch.save({"model": model.state_dict(), "guide": guide.state_dict(), "loss": history["loss"],
                "reads": data.reads, "records": history.records}, os.path.join(args.out, f"rank{rank()}.pt"))


def train_on_the_atlas(args) -> None:
    atlas = TahoeAtlas(args.shards)
    # built before train joins the process group, as in the tutorial: the stream takes its rank from torchrun
    stream = CellStream(atlas, batch_size=args.batch_size, buffer_size=256, seed=3, covariates=("plate",))
    stream.set_epoch(0)
    first_epoch_cells = torch.cat([batch.ids for _, batch in zip(range(len(stream)), stream.loader())])

    torch.manual_seed(0)  # the same initial parameters in every run (DDP broadcasts rank 0's anyway)
    model = VAE(stream.num_genes, 4, [32], likelihood="nb", categorical=stream.categorical_sizes)
    guide = NormalGuide(stream.num_genes, 4, [32], input_transform="log1p")
    history = train(model, guide, stream, epochs=args.epochs, lr=3e-3, seed=0, eval_size=0, progress=False,
                    checkpoint=args.checkpoint, compile=args.compile)
    os.makedirs(args.out, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "guide": guide.state_dict(),
            "loss": history["loss"],
            "cells": first_epoch_cells,
            "num_cells": stream.num_cells,
        },
        os.path.join(args.out, f"rank{rank()}.pt"),
    )


torch.set_num_threads(1)
words = sys.argv[1:]
while words:
    end = words.index("+") if "+" in words else len(words)
    args = parser.parse_args(words[:end])
    words = words[end + 1:]
    (train_on_the_atlas if args.in_memory is None else train_in_memory)(args)
# no destroy_process_group here: the group train joined is left at exit by pyrovae.infer.distributed

"""A simulated atlas in the Tahoe-100M parquet schema, with structure to find: cell lines and drugs shift
gene expression, counts are negative binomial, and shards are grouped by plate as in the real data."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyrovae.optional import lazy_import

pa = lazy_import("pyarrow")
pq = lazy_import("pyarrow.parquet")

MARKER_TOKEN_OFFSET = 3  # the marker's token lies just outside the gene vocabulary, like Tahoe's special tokens
MARKER_VALUE = -2.0
GENERATOR_VERSION = 2  # 2: each plate's drugs dealt without repeats (1 could hold the control twice and no drug_5)


@dataclass(frozen=True)
class SyntheticAtlas:
    """What :func:`write_tahoe_shards` wrote: the folder, the shard files and the simulation's truth."""

    folder: Path
    shards: list[Path]
    num_cells: int
    expressed_tokens: np.ndarray  # token ids that can have counts, (num_expressed,)
    cell_lines: list[str]
    drugs: list[str]


def _expected_detected(library: float, proportions: np.ndarray, inverse_dispersion: np.ndarray) -> float:
    """Expected number of genes with a non-zero NB count in a cell of this library size."""
    mean = library * proportions
    return float((1 - np.exp(-inverse_dispersion * np.log1p(mean / inverse_dispersion))).sum())


def _deal_drugs(rng: np.random.Generator, num_drugs: int, num_plates: int) -> list[np.ndarray]:
    """Each plate's drugs: the control (0) and ``min(num_drugs // 2, num_drugs - 1)`` of the others, dealt in turn
    from one random order of them, so that every drug is on some plate when the plates have room for all."""
    treated = 1 + rng.permutation(num_drugs - 1)
    per_plate = min(num_drugs // 2, num_drugs - 1)
    return [np.concatenate([[0], treated[(plate * per_plate + np.arange(per_plate)) % len(treated)]]).astype(np.int64)
            for plate in range(num_plates)]


def write_tahoe_shards(
    folder: str | os.PathLike,
    num_cells: int = 20_000,
    num_shards: int = 8,
    vocabulary_size: int = 62_710,
    genes_per_cell: int = 2_000,
    num_expressed: int | None = None,
    num_cell_lines: int = 5,
    num_drugs: int = 6,
    num_plates: int = 4,
    rows_per_group: int = 4096,
    seed: int = 0,
    plate_effect: float = 0.0,
) -> SyntheticAtlas:
    """Write ``num_shards`` parquet shards and ``metadata/gene_metadata.parquet`` under ``folder``.

    Cell c of line l treated with drug d has NB counts with mean library_c x softmax(base + line_l + drug_d) over
    ``num_expressed`` genes (default 3 x ``genes_per_cell``, a random subset of the vocabulary; the rest are never
    expressed), inverse dispersion per gene log-normal around 3. Cell-line effects are N(0, 1) log-fold changes on
    20% of the genes, drug effects N(0, 0.7) on 5% ("DMSO_TF", the control, has none); library sizes are
    log-normal, their median chosen so that about ``genes_per_cell`` genes are detected per cell. Every plate
    holds all cell lines, the control and ``num_drugs // 2`` of the other drugs, dealt in turn from a random order
    (every drug is on some plate when ``num_plates * (num_drugs // 2) >= num_drugs - 1``); shard s holds plate
    ``s * num_plates // num_shards``. Rows start
    with the marker (token ``vocabulary_size + 3``, expression -2), then the expressed genes by token id.
    ``plate_effect`` > 0 adds a batch effect: each plate's N(0, plate_effect) log-fold changes on 10% of the genes
    (drawn from their own generator: the default, 0, writes the same atlas as before the option existed).
    """
    if num_shards < 1 or num_cells < num_shards:
        raise ValueError(f"need at least one cell per shard, got {num_cells} cells for {num_shards} shards")
    for name, value in {"num_cell_lines": num_cell_lines, "num_drugs": num_drugs, "num_plates": num_plates}.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1 (num_drugs counts the control), got {value}")
    if not (np.isfinite(plate_effect) and plate_effect >= 0):
        raise ValueError(f"plate_effect must be a finite number >= 0 (a scale of log-fold changes), got {plate_effect}")
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    tokens = np.arange(vocabulary_size, dtype=np.int64)
    pq.write_table(
        pa.table({
            "gene_symbol": [f"GENE{t}" for t in tokens],
            "ensembl_id": [f"ENSG{t:011d}" for t in tokens],
            "token_id": tokens,
        }),
        folder / "metadata" / "gene_metadata.parquet",
    )
    num_expressed = min(vocabulary_size, num_expressed or 3 * genes_per_cell)
    expressed = np.sort(rng.choice(vocabulary_size, num_expressed, replace=False))
    base = rng.normal(0.0, 1.5, num_expressed)
    inverse_dispersion = np.exp(rng.normal(np.log(3.0), 0.5, num_expressed))
    line_effects = rng.normal(0.0, 1.0, (num_cell_lines, num_expressed)) * (rng.random((num_cell_lines,
                                                                                          num_expressed)) < 0.2)
    drug_effects = rng.normal(0.0, 0.7, (num_drugs, num_expressed)) * (rng.random((num_drugs, num_expressed)) < 0.05)
    drug_effects[0] = 0.0
    cell_lines = [f"CVCL_{1000 + i}" for i in range(num_cell_lines)]
    drugs = ["DMSO_TF"] + [f"drug_{i}" for i in range(1, num_drugs)]
    mechanisms = ["control"] + [f"moa_{i % 3}" for i in range(1, num_drugs)]
    proportions = np.exp(base - base.max())
    proportions /= proportions.sum()
    target = min(genes_per_cell, 0.9 * num_expressed)
    low, high = 1.0, 1e7
    for _ in range(60):  # bisection on the median library size for the detection rate
        middle = np.sqrt(low * high)
        low, high = (middle, high) if _expected_detected(middle, proportions, inverse_dispersion) < target else (
            low, middle)
    median_library = np.sqrt(low * high)
    plate_rng = np.random.default_rng([seed, 1])
    plate_effects = plate_effect * plate_rng.normal(0.0, 1.0, (num_plates, num_expressed)) * (
        plate_rng.random((num_plates, num_expressed)) < 0.1)
    plate_drugs = _deal_drugs(rng, num_drugs, num_plates)

    sizes = np.full(num_shards, num_cells // num_shards)
    sizes[: num_cells % num_shards] += 1
    paths = []
    for shard, size in enumerate(sizes):
        plate = shard * num_plates // num_shards
        line = rng.integers(num_cell_lines, size=size)
        drug = rng.choice(plate_drugs[plate], size=size)
        library = median_library * np.exp(rng.normal(0.0, 0.4, size))
        rows, columns, values = [], [], []
        for start in range(0, size, 2048):  # dense (chunk, num_expressed) at a time
            chunk = slice(start, min(start + 2048, size))
            logits = base + line_effects[line[chunk]] + drug_effects[drug[chunk]] + plate_effects[plate]
            mean = np.exp(logits - logits.max(axis=1, keepdims=True))
            mean *= (library[chunk] / mean.sum(axis=1))[:, None]
            counts = rng.poisson(rng.gamma(inverse_dispersion, mean / inverse_dispersion))
            r, c = np.nonzero(counts)
            rows.append(r + start)
            columns.append(c)
            values.append(counts[r, c])
        rows, columns, values = np.concatenate(rows), np.concatenate(columns), np.concatenate(values)
        lengths = np.bincount(rows, minlength=size) + 1
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        gene_values = np.empty(offsets[-1], dtype=np.int64)
        count_values = np.empty(offsets[-1], dtype=np.float32)
        gene_values[offsets[:-1]] = vocabulary_size + MARKER_TOKEN_OFFSET
        count_values[offsets[:-1]] = MARKER_VALUE
        body = np.ones(offsets[-1], dtype=bool)
        body[offsets[:-1]] = False
        gene_values[body] = expressed[columns]
        count_values[body] = values
        plate_name = f"plate{plate + 1}"
        sub_library = rng.integers(1, 4, size=size)
        table = pa.table({
            "genes": pa.ListArray.from_arrays(pa.array(offsets), pa.array(gene_values)),
            "expressions": pa.ListArray.from_arrays(pa.array(offsets), pa.array(count_values)),
            "drug": pa.array([drugs[d] for d in drug]).dictionary_encode(),
            "sample": pa.array([f"smp_{plate_name}_{drugs[d]}" for d in drug]).dictionary_encode(),
            "BARCODE_SUB_LIB_ID": pa.array([f"{plate_name}_{s}" for s in sub_library]).dictionary_encode(),
            "cell_line_id": pa.array([cell_lines[c] for c in line]).dictionary_encode(),
            "moa-fine": pa.array([mechanisms[d] for d in drug]).dictionary_encode(),
            "plate": pa.array([plate_name] * size).dictionary_encode(),
        })
        path = folder / "data" / f"train-{shard:05d}-of-{num_shards:05d}.parquet"
        pq.write_table(table, path, row_group_size=rows_per_group)
        paths.append(path)
    return SyntheticAtlas(folder, paths, int(num_cells), expressed, cell_lines, drugs)


__all__ = ["GENERATOR_VERSION", "SyntheticAtlas", "write_tahoe_shards"]

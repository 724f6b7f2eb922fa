"""The simulated Tahoe-schema atlas (``write_tahoe_shards``): which drugs each plate holds, and the plate effect."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from pyrovae.data import TahoeAtlas, write_tahoe_shards


@pytest.mark.parametrize(("drugs", "plates", "seed"), [(6, 4, 0), (6, 4, 1), (5, 2, 2), (7, 3, 0), (2, 3, 0)])
def test_every_plate_holds_the_control_once_and_every_drug_is_on_a_plate(tmp_path, drugs, plates, seed):
    # the simulator once set each plate's first drawn drug to the control: a plate that had drawn it held it
    # twice and one drug fewer, and seed 0 of the defaults put drug_5 on no plate
    write_tahoe_shards(tmp_path, num_cells=40 * plates, num_shards=plates, vocabulary_size=60, genes_per_cell=6,
                       num_drugs=drugs, num_plates=plates, seed=seed)
    on_plate = {}
    for path in sorted((tmp_path / "data").glob("*.parquet")):
        table = pq.read_table(path, columns=["plate", "drug"]).to_pydict()
        for plate, drug in zip(table["plate"], table["drug"]):
            on_plate.setdefault(plate, set()).add(drug)
    assert sorted(on_plate) == [f"plate{p + 1}" for p in range(plates)]
    treated = drugs // 2
    for held in on_plate.values():  # 40 cells of 1 + treated drugs: each drug drawn (a miss has odds < 1e-5)
        assert "DMSO_TF" in held and len(held) == 1 + treated
    assert set().union(*on_plate.values()) == {"DMSO_TF", *(f"drug_{i}" for i in range(1, drugs))}
    with pytest.raises(ValueError, match="num_drugs must be at least 1"):
        write_tahoe_shards(tmp_path / "bad", num_cells=4, num_shards=1, vocabulary_size=50, genes_per_cell=5,
                           num_drugs=0)


def test_a_plate_effect_moves_the_plates_apart(tmp_path):
    def plate_means(effect):
        folder = tmp_path / f"effect{effect}"
        write_tahoe_shards(folder, num_cells=1200, num_shards=4, vocabulary_size=300, genes_per_cell=60,
                           num_plates=2, seed=3, plate_effect=effect)
        blocks = [b for shard in range(4) for b in TahoeAtlas(folder).read(shard, np.arange(300), 600)]
        counts = np.vstack([b.counts.toarray() for b in blocks])
        labels = {k: np.concatenate([b.labels[k] for b in blocks]) for k in ("drug", "cell_line", "plate")}
        plate = labels["plate"]
        proportions = counts / counts.sum(1, keepdims=True)
        means = np.stack([proportions[plate == p].mean(0) for p in (0, 1)])
        return labels, np.log(means[:, means.min(0) > 1e-3])

    plain_labels, plain = plate_means(0.0)
    shifted_labels, shifted = plate_means(2.0)
    first = slice(0, 300)  # the first shard's labels are drawn before any count: the same cells there
    for key in plain_labels:
        np.testing.assert_array_equal(plain_labels[key][first], shifted_labels[key][first])
    between_plain = np.abs(plain[0] - plain[1])
    between_shifted = np.abs(shifted[0] - shifted[1])
    top = 5  # about half the genes a plate effect reaches here
    assert np.sort(between_shifted)[-top:].mean() > 2.5 * np.sort(between_plain)[-top:].mean()
    with pytest.raises(ValueError, match="plate_effect must be a finite number >= 0"):
        write_tahoe_shards(tmp_path / "bad", num_cells=10, num_shards=1, vocabulary_size=50, genes_per_cell=5,
                           plate_effect=-1.0)

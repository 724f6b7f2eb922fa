"""The Tahoe-schema atlas that test_tahoe.py and test_stream_training.py read (six shards of 1,200 cells, three
plates), written once per module; test_cell_stream.py keeps a smaller one of its own."""

import pytest

from pyrovae.data import TahoeAtlas, write_tahoe_shards


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tahoe")
    write_tahoe_shards(folder, num_cells=1200, num_shards=6, vocabulary_size=500, genes_per_cell=60, num_plates=3,
                       rows_per_group=128, seed=1)
    return folder


@pytest.fixture(scope="module")
def atlas(atlas_dir):
    return TahoeAtlas(atlas_dir)

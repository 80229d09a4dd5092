"""captum_nave.data: sharding rule, DataLoader workers keep dataset order."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from captum_nave.data import IndexedDataset, iterate_items, loader_kwargs, shard_indices


def slow_for_small(i: int) -> np.ndarray:
    """Earlier items take longer, so workers finish them out of order."""
    time.sleep(0.05 * (6 - i) if i < 6 else 0)
    return np.full((2, 3), i, dtype=np.uint8)


def test_shard_indices_partition_the_dataset():
    shards = [shard_indices(11, 3, s) for s in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert shard_indices(5) == [0, 1, 2, 3, 4]
    assert shard_indices(1, 4, 3) == []
    with pytest.raises(ValueError, match=r"num_shards: expected an int >= 1, got 0"):
        shard_indices(5, 0, 0)
    with pytest.raises(ValueError, match=r"shard_index: expected an int in \[0, 2\], got 3"):
        shard_indices(5, 3, 3)
    assert shard_indices(5, np.int64(2), np.int64(1)) == [1, 3]  # numpy integers, as elsewhere


@pytest.mark.parametrize("workers", [0, 2])
def test_items_come_in_shard_order_whatever_the_workers(workers):
    ds = IndexedDataset(list(range(8)), load=slow_for_small)
    got = list(iterate_items(ds, shard_indices(8, 2, 0), workers=workers))
    assert [i for i, _ in got] == [0, 2, 4, 6]
    assert all(int(img[0, 0]) == i and img.shape == (2, 3) for i, img in got)
    batches = list(iterate_items(ds, [7, 1, 5], batch_size=2, workers=workers))
    assert [[i for i, _ in b] for b in batches] == [[7, 1], [5]]
    assert list(iterate_items(ds, [], workers=workers)) == []


def test_loader_options():
    assert loader_kwargs(0, "cpu") == {"num_workers": 0, "pin_memory": False}
    assert loader_kwargs(3, torch.device("cuda", 1)) == {"num_workers": 3, "pin_memory": True, "prefetch_factor": 2}
    with pytest.raises(ValueError, match="workers: expected an int >= 0, got -1"):
        loader_kwargs(-1, None)
    ds = IndexedDataset(["a", "b"])  # no load: the sources themselves
    assert ds[1] == (1, "b") and len(ds) == 2


def fails_on_three(i: int) -> int:
    if i == 3:
        raise ValueError(f"image {i}: the annotation says 10x10 but the file is 12x10")
    return i


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loading_error_keeps_its_type_and_message(workers):
    """Not DataLoader's 'Caught ValueError in DataLoader worker process 0' wrapper."""
    ds = IndexedDataset(list(range(6)), load=fails_on_three)
    got = []
    with pytest.raises(ValueError) as info:
        for i, _ in iterate_items(ds, range(6), workers=workers):
            got.append(i)
    assert str(info.value) == "image 3: the annotation says 10x10 but the file is 12x10"
    assert got == [0, 1, 2]  # everything before the bad image was handed over, in order

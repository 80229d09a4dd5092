"""ConceptClusters under torch.distributed: 2 gloo processes equal one process.

The distributed fit is one global mini-batch k-means whose global batch ``t`` is the
union of the ranks' ``t``-th batches in rank order. Every case below fits the same
data once with 2 ranks and once in this process over the concatenated global batches
and compares the results. The model runs in float64, so the two fits differ only in
the order of the float64 sums (all-reduced partial sums instead of one sum over the
batch): relative differences are about (pixels per batch) * 2**-53 < 1e-12; the
tolerances below (1e-9) leave a margin and are still 7 orders of magnitude below any
real difference (a different seeding or a skipped update changes centroids by > 1e-2).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from captum_nave import ConceptClusters, LayerClusterExplainer
from captum_nave import distributed as cnd
from spawn import run_ranks
from synthetic import shapes_dataset

K = 4
RTOL, ATOL = 1e-9, 1e-12


class TinyNet(nn.Module):
    """Two conv stages at 1/2 and 1/4 resolution (the second is interpolated to the grid)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(6, 10, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage2(self.stage1(x)).mean((2, 3))


def tiny_explainer() -> LayerClusterExplainer:
    """The same float64 network in every process (weights from a fixed seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        net = TinyNet().double().eval()
    return LayerClusterExplainer(net, ["stage1", "stage2"])


def images() -> torch.Tensor:
    return shapes_dataset(13, 32, seed=5)[0].double()


# rank 0 / rank 1 slices of each global batch: [0:5], [5:11], [11:13] (rank 1 has two batches only)
RANK_SLICES = {0: [(0, 3), (5, 8), (11, 13)], 1: [(3, 5), (8, 11)]}
GLOBAL_SLICES = [(0, 5), (5, 11), (11, 13)]


def concepts(**kw) -> ConceptClusters:
    params = dict(n_clusters=K, random_state=0, n_init=2, n_epochs=2)
    params.update(kw)
    return ConceptClusters(tiny_explainer(), **params)


def state(cc: ConceptClusters, x: torch.Tensor) -> dict:
    return {
        "centers": cc.cluster_centers_.clone(), "counts": cc.counts_.clone(), "inertia": cc.inertia_,
        "n_steps": cc.n_steps_, "world_size": cc.world_size_, "predict": cc.predict(x),
        "transform": cc.transform(x[:3]),
    }


def _fit_worker(rank: int, world: int, tmp: str) -> dict:
    x = images()
    out: dict = {}

    # uneven batches: rank 1 runs out one batch earlier and contributes nothing then
    cc = concepts().fit([x[a:b] for a, b in RANK_SLICES[rank]])
    out["uneven"] = state(cc, x)

    # save writes once (rank 0); the other rank returns without writing
    import captum_nave.concepts as concepts_mod

    writes = []
    real_savez = concepts_mod.np.savez

    def counting_savez(*a, **k):
        writes.append(rank)
        return real_savez(*a, **k)

    concepts_mod.np.savez = counting_savez
    try:
        cc.save(f"{tmp}/concepts.npz")
    finally:
        concepts_mod.np.savez = real_savez
    cnd.barrier()
    out["writes"] = len(writes)
    out["loaded"] = ConceptClusters.load(f"{tmp}/concepts.npz", tiny_explainer()).cluster_centers_

    # a rank without any data: the fit is rank 0's data alone
    cc = concepts().fit([x[a:b] for a, b in GLOBAL_SLICES] if rank == 0 else [])
    out["idle_rank"] = state(cc, x)

    # the documented set-up: DataLoader + DistributedSampler, (images, labels) batches
    ds = TensorDataset(x, torch.zeros(len(x)))
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
    cc = concepts(n_epochs=1).fit(DataLoader(ds, batch_size=2, sampler=sampler))
    out["sampler"] = state(cc, x)
    out["sampler_indices"] = list(sampler)

    # partial_fit is a collective too; None = no images from this rank for this batch
    cc = concepts()
    for batch in [x[a:b] for a, b in RANK_SLICES[rank]] + ([None] if rank == 1 else []):
        cc.partial_fit(batch)
    out["partial"] = state(cc, x)

    # errors reach every rank instead of leaving one waiting: a bad item on rank 1 ...
    bad = [x[:2], "not an image"] if rank == 1 else [x[2:4], x[4:6], x[6:8]]
    try:
        concepts().fit(bad)
    except Exception as exc:  # noqa: BLE001 - the type is the point of the check
        out["bad_item"] = (type(exc).__name__, str(exc))
    # ... and a seeding failure on rank 0 (first global batch too small for K)
    try:
        concepts(n_clusters=1000).fit([x[:1]])
    except Exception as exc:  # noqa: BLE001
        out["bad_seed"] = (type(exc).__name__, str(exc))
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist-concepts")
    return run_ranks(_fit_worker, 2, tmp, str(tmp)), tmp


def assert_same_fit(got: dict, ref: ConceptClusters, x: torch.Tensor) -> None:
    torch.testing.assert_close(got["centers"], ref.cluster_centers_, rtol=RTOL, atol=ATOL)
    assert torch.equal(got["counts"], ref.counts_)  # integer-valued float64 counts: exact
    assert got["inertia"] == pytest.approx(ref.inertia_, rel=RTOL)
    assert got["n_steps"] == ref.n_steps_
    assert torch.equal(got["predict"], ref.predict(x))
    torch.testing.assert_close(got["transform"], ref.transform(x[:3]), rtol=RTOL, atol=1e-10)


def test_distributed_fit_equals_single_process_over_the_same_global_batches(two_ranks):
    results, _ = two_ranks
    x = images()
    ref = concepts().fit([x[a:b] for a, b in GLOBAL_SLICES])
    assert ref.n_steps_ == 6  # 3 global batches x 2 epochs
    for r in (0, 1):
        assert results[r]["uneven"]["world_size"] == 2
        assert_same_fit(results[r]["uneven"], ref, x)
    # every rank holds bit-identical centroids (same all-reduced statistics, same arithmetic)
    assert torch.equal(results[0]["uneven"]["centers"], results[1]["uneven"]["centers"])
    # the distributed fit is not what either rank would get alone
    alone = concepts().fit([x[a:b] for a, b in RANK_SLICES[0]])
    assert (alone.cluster_centers_ - ref.cluster_centers_).abs().max() > 1e-3


def test_save_writes_once_on_rank_zero(two_ranks):
    results, tmp = two_ranks
    assert [results[0]["writes"], results[1]["writes"]] == [1, 0]
    for r in (0, 1):
        torch.testing.assert_close(results[r]["loaded"], results[0]["uneven"]["centers"].float())
    assert sorted(p.name for p in tmp.iterdir() if p.suffix in (".npz", ".tmp")) == ["concepts.npz"]


def test_rank_without_data_contributes_nothing(two_ranks):
    results, _ = two_ranks
    x = images()
    ref = concepts().fit([x[a:b] for a, b in GLOBAL_SLICES])
    for r in (0, 1):
        assert_same_fit(results[r]["idle_rank"], ref, x)


def test_distributed_sampler_loader_equals_its_global_batches(two_ranks):
    results, _ = two_ranks
    x = images()
    idx = [results[r]["sampler_indices"] for r in (0, 1)]  # r::2, padded to equal length
    assert idx[0] == list(range(0, 13, 2)) and idx[1] == list(range(1, 13, 2)) + [0]
    batches = [torch.cat([x[idx[r][s : s + 2]] for r in (0, 1)]) for s in range(0, 7, 2)]
    ref = concepts(n_epochs=1).fit(batches)
    for r in (0, 1):
        assert_same_fit(results[r]["sampler"], ref, x)


def test_partial_fit_is_a_collective_with_none_for_no_images(two_ranks):
    results, _ = two_ranks
    x = images()
    ref = concepts()
    for a, b in GLOBAL_SLICES:
        ref.partial_fit(x[a:b])
    for r in (0, 1):
        assert_same_fit(results[r]["partial"], ref, x)


def test_errors_reach_every_rank(two_ranks):
    results, _ = two_ranks
    # rank 1 raised the error itself; rank 0 learns which rank failed and why
    assert results[1]["bad_item"][0] == "TypeError"
    assert results[0]["bad_item"][0] == "RemoteError"
    assert "rank 1 failed: TypeError: data: expected batches of image tensors" in results[0]["bad_item"][1]
    # the seeding runs on rank 0; its error is raised there and reported on rank 1
    assert results[0]["bad_seed"][0] == "ValueError"
    assert "fewer than n_clusters=1000" in results[0]["bad_seed"][1]
    assert results[1]["bad_seed"][0] == "RemoteError"
    assert "rank 0 failed: ValueError: n_clusters: the first batch has" in results[1]["bad_seed"][1]


def test_single_process_parameters():
    """Without a process group, 'auto' and False fit locally; True is refused with a clear error."""
    x = images()
    a = concepts(n_epochs=1).fit([x[:5]])
    b = concepts(n_epochs=1, distributed=False).fit([x[:5]])
    assert torch.equal(a.cluster_centers_, b.cluster_centers_) and a.world_size_ == 1
    with pytest.raises(RuntimeError, match="distributed: True requires an initialised torch.distributed"):
        concepts(distributed=True).fit([x[:5]])
    with pytest.raises(ValueError, match="distributed: expected 'auto', True or False, got 'yes'"):
        concepts(distributed="yes").fit([x[:5]])
    with pytest.raises(TypeError, match="images: expected a Tensor"):
        concepts().partial_fit(None)
    assert concepts(distributed=False).get_params()["distributed"] is False

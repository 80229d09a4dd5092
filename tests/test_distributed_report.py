"""The HTML report under torch.distributed: 2 gloo processes give the single-process data.

Each rank computes the per-image results of its images (i % 2 == rank); the parts are
merged in image order on every rank, the CorLoc section follows on the merged maps,
and rank 0 writes the file. 5 images, so the ranks have 3 and 2.

The reference runs in this process with one thread, as the workers do. Integer
results (targets, NAVE maps of every seed, CorLoc selections) must be identical; the
float maps may differ by float32 reassociation between batch sizes 5 and 3/2 in the
convolutions (relative ~1e-6 over a few hundred terms), so they are compared with
rtol = 1e-4 against a real difference of order 1 (a map of another image).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from captum_nave.evaluation import CorLocProtocol
from captum_nave.report import build_report, collect_report
from spawn import run_ranks
from synthetic import shapes_dataset

N = 5
RTOL, ATOL = 1e-4, 1e-6


def model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None, num_classes=10).eval()


def inputs():
    x, _, _, boxes = shapes_dataset(N, 48, seed=11)
    per_image = [b[None].numpy().astype(np.float64) for b in boxes]
    per_image[3] = np.zeros((0, 4))  # one image without a box
    return x, per_image


def report_kwargs():
    x, boxes = inputs()
    return dict(
        images=x, models={"resnet18": model()}, image_names=[f"img{i}" for i in range(N)],
        methods=("nave", "gradcam", "ig", "lrp"), n_clusters=3, seeds=(0, 1), target=[1, 2, 3, 4, 5],
        method_options={"ig": {"n_steps": 4}}, boxes=boxes, corloc_protocol=CorLocProtocol(min_area=16, border=2),
    )


def _report_worker(rank: int, world: int, out: str) -> dict:
    import os

    from captum_nave.report.shards import _cpu

    data = collect_report(**report_kwargs())
    replaced = []
    real_replace = os.replace

    def counting_replace(a, b):
        replaced.append(str(b))
        return real_replace(a, b)

    os.replace = counting_replace
    try:
        kw = report_kwargs()
        kw.update(methods=("nave",), seeds=(0,), importance=False, boxes=None)
        path = build_report(out_path=out, **kw)
    finally:
        os.replace = real_replace
    return {"runs": _cpu(data.runs), "corloc": data.corloc, "names": data.image_names, "config": data.config,
            "images": data.images, "writes": replaced, "path": str(path), "exists": os.path.exists(out)}


@pytest.fixture(scope="module")
def reference():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return collect_report(**report_kwargs())
    finally:
        torch.set_num_threads(threads)


def test_two_ranks_give_the_single_process_report(reference, tmp_path):
    out = tmp_path / "report.html"
    res = run_ranks(_report_worker, 2, tmp_path, str(out))
    ref = reference.runs[0]
    for r in (0, 1):
        got = res[r]["runs"][0]
        assert res[r]["names"] == reference.image_names
        assert torch.equal(res[r]["images"], reference.images)
        assert torch.equal(got.targets, ref.targets) and got.target_names == ref.target_names
        torch.testing.assert_close(got.target_probs, ref.target_probs, rtol=RTOL, atol=ATOL)
        assert torch.equal(got.seed_maps, ref.seed_maps)  # every seed's NAVE map of every image
        assert torch.equal(got.nave.segments, ref.nave.segments)
        torch.testing.assert_close(got.nave.centroids, ref.nave.centroids, rtol=RTOL, atol=ATOL)
        assert got.stability == pytest.approx(ref.stability)
        assert list(got.attributions) == ["gradcam", "ig", "lrp"]
        for m, a in got.attributions.items():
            torch.testing.assert_close(a.maps, ref.attributions[m].maps, rtol=RTOL, atol=ATOL)
            assert torch.equal(a.target, ref.attributions[m].target)
            rows, ref_rows = got.relevance[m].rows, ref.relevance[m].rows
            assert [(x["image"], x["image_name"], x["segment"], x["pixels"]) for x in rows] == [
                (x["image"], x["image_name"], x["segment"], x["pixels"]) for x in ref_rows
            ]
            np.testing.assert_allclose([x["absolute_share"] for x in rows], [x["absolute_share"] for x in ref_rows],
                                       rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(got.importance, ref.importance, rtol=RTOL, atol=1e-5)
        # faithfulness follows on the merged maps (every rank, all images): the same AUCs as one process; the
        # maps agree to RTOL only, so a near-tie between two pixels may swap places in the ranking: a swap moves
        # one pixel (of 48x48) from one step to the next, hence the absolute tolerance 1e-3
        fa, fr = got.faithfulness.rows(per_image=True), ref.faithfulness.rows(per_image=True)
        assert [(x["method"], x["ranking"], x["image_name"]) for x in fa] == [
            (x["method"], x["ranking"], x["image_name"]) for x in fr]
        for key in ("deletion_auc", "insertion_auc"):
            np.testing.assert_allclose([x[key] for x in fa], [x[key] for x in fr], rtol=0, atol=1e-3)
        # the CorLoc section runs on the merged maps: the same selections
        c, rc = res[r]["corloc"], reference.corloc
        assert c.image_indices == rc.image_indices == [0, 1, 2, 4]
        for method in rc.selections:
            assert [{s: v[s].to_dict() for s in v} for v in c.selections[method]] == [
                {s: v[s].to_dict() for s in v} for v in rc.selections[method]
            ]
        assert res[r]["config"]["processes"].startswith("2 (torchrun")
    # the file is written once, by rank 0; both ranks return its path after it exists
    assert res[0]["writes"] == [str(out)] and res[1]["writes"] == []
    assert res[0]["exists"] and res[1]["exists"] and res[1]["path"] == str(out)


def test_merge_refuses_shared_nave_and_checks_the_parts():
    from captum_nave.report.shards import merge_model_runs

    data = collect_report(**dict(report_kwargs(), methods=("nave",), seeds=(0,), importance=False, boxes=None,
                                 method_options={"nave": {"shared": True}}))
    run = data.runs[0]
    with pytest.raises(ValueError, match=r"shared=True\); such a report cannot be split over processes"):
        merge_model_runs([([0, 1, 2, 3, 4], run)], N)
    with pytest.raises(ValueError, match=r"expected the images 0..5 once each"):
        merge_model_runs([([0, 1, 2, 3, 4], run)], 6)

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
from torch import Tensor

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

    import captum_nave.evaluation.faithfulness as faith

    seen = []  # images given to the faithfulness measures on this rank (by the builder)
    real = (faith.faithfulness_audit, faith.randomisation_check)

    def audit(model, inputs, *a, **k):
        seen.append(("audit", len(inputs)))
        return real[0](model, inputs, *a, **k)

    def check(model, inputs, *a, **k):
        seen.append(("randomisation", len(inputs)))
        return real[1](model, inputs, *a, **k)

    faith.faithfulness_audit, faith.randomisation_check = audit, check
    try:
        data = collect_report(**report_kwargs())
    finally:
        faith.faithfulness_audit, faith.randomisation_check = real
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
            "images": data.images, "writes": replaced, "path": str(path), "exists": os.path.exists(out), "seen": seen}


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
        # faithfulness follows on the merged maps (each rank its images, merged): the same AUCs as one process
        # (exactness of the split itself: test_split_faithfulness_equals_one_process); the maps agree to RTOL only, so a near-tie between two pixels may swap places in the ranking: a swap moves
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
    # the faithfulness measures were split like the run: rank 0 had images 0, 2, 4 and rank 1 images 1, 3
    assert res[0]["seen"] == [("audit", 3), ("randomisation", 3)]
    assert res[1]["seen"] == [("audit", 2), ("randomisation", 2)]
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


# --------------------------------------------------------------------------- faithfulness split over the ranks
# The split is tested on its own: the same merged run (computed once, here) goes to one process and to 2 ranks,
# and the measures run on a float64 copy of the model, so the only differences left are the batch compositions
# of the forward passes (perturbed copies of other images in a batch, 3 or 2 images instead of 5): float64 rounding
# over accumulation lengths of at most 3*3*512 = 4608 terms per layer (relative ~1e-12), hence rtol 1e-9.
FAITH_OPTIONS = {"n_steps": 5, "slic_segments": 12, "randomisation_stages": 2}
F64_RTOL, F64_ATOL = 1e-9, 1e-12


def _faithfulness(data, indices, on_error="raise"):
    """``_add_faithfulness`` on a copy of the run (float64 model); returns (run, images forwarded, warnings)."""
    import copy

    from captum_nave.models import normalize
    from captum_nave.report.faithfulness import check_faithfulness_options
    from captum_nave.report.model_run import _add_faithfulness

    run = copy.deepcopy(data["run"])
    net = model().double()
    forwarded = [0]  # images through the model (and its randomised copies: deepcopy keeps the hook)
    net.register_forward_pre_hook(lambda mod, args: forwarded.__setitem__(0, forwarded[0] + args[0].shape[0]))
    warnings_out = []
    _add_faithfulness(
        run, net, normalize(data["images"], run.info).double(), data["images"], list(data["names"]),
        n_clusters=3, seed=0, opts={"ig": {"n_steps": 4}}, boxes=inputs()[1],
        faith_opts=check_faithfulness_options(FAITH_OPTIONS), on_error=on_error, warnings_out=warnings_out,
        indices=indices,
    )
    return run, forwarded[0], warnings_out


@pytest.fixture(scope="module")
def faith_reference():
    """The merged run (no faithfulness) and the single-process faithfulness of it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = collect_report(**dict(report_kwargs(), faithfulness=False, lens=False))
        parts = {"run": data.runs[0], "images": data.images, "names": data.image_names}
        run, forwarded, _ = _faithfulness(parts, None)
        return parts, run, forwarded
    finally:
        torch.set_num_threads(threads)


def _faithfulness_worker(rank: int, world: int, data: dict) -> dict:
    """The split measures of this rank, then the error cases (one spawn for both tests)."""
    from captum_nave.data import shard_indices
    from captum_nave.report.shards import _cpu

    run, forwarded, _ = _faithfulness(data, shard_indices(N, world, rank))
    return {"audit": _cpu(run.faithfulness), "randomisation": _cpu(run.randomisation), "forwarded": forwarded,
            "timings": {k: run.timings[k] for k in ("faithfulness curves", "randomisation")},
            "errors": _error_cases(rank, world, data)}


@pytest.fixture(scope="module")
def split_results(faith_reference, tmp_path_factory):
    return run_ranks(_faithfulness_worker, 2, tmp_path_factory.mktemp("split"), faith_reference[0])


def assert_same_faithfulness(audit, sanity, ref_audit, ref_sanity, rtol=F64_RTOL, atol=F64_ATOL):
    """Every curve (per image), AUC, unit, localisation value and randomisation similarity agrees."""
    close = dict(rtol=rtol, atol=atol, equal_nan=True)
    assert list(audit.curves) == list(ref_audit.curves) and len(ref_audit.curves) == 4 * 4 * 2 + 2  # (3 maps + random) x 4 rankings x 2 modes + importance
    for key, ref in ref_audit.curves.items():
        got = audit.curves[key]
        assert (got.mode, got.order, got.ranking, got.baseline, got.output) == (
            ref.mode, ref.order, ref.ranking, ref.baseline, ref.output), key
        for f in ("scores", "fractions", "unit_fractions"):
            torch.testing.assert_close(getattr(got, f), getattr(ref, f), **close, msg=f"{key} {f}")
        for f in ("n_points", "n_units", "target"):
            assert torch.equal(getattr(got, f), getattr(ref, f)), (key, f)
        assert sorted(got.config) == sorted(ref.config)
        for k, v in ref.config.items():
            if isinstance(v, Tensor):  # unit scores (N, K)
                torch.testing.assert_close(got.config[k], v, **close)
            else:
                assert got.config[k] == v, (key, k)
        torch.testing.assert_close(got.auc(), ref.auc(), rtol=rtol, atol=atol)
    assert sorted(audit.units) == sorted(ref_audit.units) == ["grid", "segments", "slic"]
    for k, v in ref_audit.units.items():
        assert torch.equal(audit.units[k], v), k
    assert list(audit.localisation) == list(ref_audit.localisation) and "random" in ref_audit.localisation
    for m, d in ref_audit.localisation.items():
        for k, v in d.items():
            torch.testing.assert_close(audit.localisation[m][k], v, **close)
    assert torch.equal(audit.target, ref_audit.target)
    assert audit.image_names == ref_audit.image_names and audit.config == ref_audit.config
    assert (sanity.stages, sanity.randomised, sanity.methods) == (ref_sanity.stages, ref_sanity.randomised,
                                                                  ref_sanity.methods)
    assert sorted(ref_sanity.ari) == ["nave"] and sorted(ref_sanity.spearman) == ["gradcam", "ig", "lrp"]
    for field in ("spearman", "ssim", "ari"):
        for m, v in getattr(ref_sanity, field).items():
            assert v.shape == (2, N)  # (stages, images)
            torch.testing.assert_close(getattr(sanity, field)[m], v, rtol=rtol, atol=atol, msg=f"{field} {m}")
    assert torch.equal(sanity.target, ref_sanity.target)


def test_split_faithfulness_equals_one_process(faith_reference, split_results):
    _, ref, ref_forwarded = faith_reference
    res = split_results
    for r in (0, 1):
        assert_same_faithfulness(res[r]["audit"], res[r]["randomisation"], ref.faithfulness, ref.randomisation)
        # timings: the slowest rank's
        assert res[r]["timings"] == {k: max(res[0]["timings"][k], res[1]["timings"][k]) for k in res[0]["timings"]}
    # each rank forwarded only its images: together exactly what one process forwards (no image twice)
    assert 0 < res[0]["forwarded"] < ref_forwarded and 0 < res[1]["forwarded"] < ref_forwarded
    assert res[0]["forwarded"] + res[1]["forwarded"] == ref_forwarded


def _rows_of(audit, sanity, rows):
    """The result a part with the images ``rows`` computes alone: the rows, curves trimmed to the part's widths."""
    from dataclasses import replace

    def trim(t):  # drop the NaN columns every row of the part has (one batch pads to its longest row only)
        keep = (~torch.isnan(t)).any(0).nonzero().max() + 1
        return t[:, :keep]

    curves = {}
    for key, c in audit.curves.items():
        config = dict(c.config)
        if "unit_scores" in config:
            config["unit_scores"] = trim(config["unit_scores"][rows])
        curves[key] = replace(c, scores=trim(c.scores[rows]), fractions=trim(c.fractions[rows]),
                              unit_fractions=trim(c.unit_fractions[rows]), n_points=c.n_points[rows],
                              n_units=c.n_units[rows], target=c.target[rows], config=config)
    part_audit = replace(
        audit, curves=curves, units={k: v[rows] for k, v in audit.units.items()}, target=audit.target[rows],
        localisation={m: {k: v[rows] for k, v in d.items()} for m, d in audit.localisation.items()},
        image_names=[audit.image_names[i] for i in rows])
    part_sanity = replace(sanity, spearman={m: v[:, rows] for m, v in sanity.spearman.items()},
                          ssim={m: v[:, rows] for m, v in sanity.ssim.items()},
                          ari={m: v[:, rows] for m, v in sanity.ari.items()}, target=sanity.target[rows])
    return part_audit, part_sanity


def test_merge_faithfulness_of_hand_made_parts(faith_reference, monkeypatch):
    from captum_nave import distributed as dist_utils
    from captum_nave.report.shards import gather_faithfulness, merge_faithfulness

    _, ref, _ = faith_reference
    a, s = ref.faithfulness, ref.randomisation
    first, second = [4, 1, 3], [2, 0]  # out of image order
    p1 = _rows_of(a, s, first) + ({"faithfulness curves": 1.0, "randomisation": 3.0},)
    p2 = _rows_of(a, s, second) + ({"faithfulness curves": 2.0, "randomisation": 0.5},)
    # SLIC finds 1 superpixel in images 0-3 and 3 in image 4: the second part's SLIC curves are shorter (padding)
    assert a.curves[("gradcam", "slic", "deletion")].n_points.tolist() == [2, 2, 2, 2, 4]
    assert p2[0].curves[("gradcam", "slic", "deletion")].scores.shape[1] == 2
    audit, sanity, timings = merge_faithfulness([(first, p1), (second, p2)], N)
    assert_same_faithfulness(audit, sanity, a, s, rtol=0, atol=0)  # data moved, not computed: exact
    assert timings == {"faithfulness curves": 2.0, "randomisation": 3.0}
    # gathered from 3 ranks, one of them without images (compute is never called there)
    gathered = [(second, p2, None), ([], None, None), (first, p1, None)]
    monkeypatch.setattr(dist_utils, "all_gather_object", lambda obj: gathered)
    monkeypatch.setattr(dist_utils, "check_all_ok", lambda error: None)
    called = []
    result, error = gather_faithfulness(lambda: called.append(1), [], N)
    assert called == [] and error is None
    assert_same_faithfulness(result[0], result[1], a, s, rtol=0, atol=0)
    # a recorded error on any rank: every rank returns the first failed rank's text
    gathered[1:] = [([], None, "ValueError: boom"), (first, None, "TypeError: later")]
    assert gather_faithfulness(lambda: p2, second, N) == (None, "ValueError: boom")
    with pytest.raises(ValueError, match=r"expected the images 0..4 once each"):
        merge_faithfulness([(first, p1), (first, p1)], N)
    with pytest.raises(ValueError, match=r"expected the same audit settings in every part"):
        merge_faithfulness([(first, p1), (second, (replace_config(p2[0]), p2[1], {}))], N)
    with pytest.raises(ValueError, match=r"a randomisation result in every part or in none"):
        merge_faithfulness([(first, p1), (second, (p2[0], None, {}))], N)


def replace_config(audit):
    from dataclasses import replace

    return replace(audit, config=dict(audit.config, n_steps=99))


def _error_cases(rank: int, world: int, data: dict) -> dict:
    import captum_nave.report.faithfulness as report_faith
    from captum_nave.data import shard_indices

    out, real = {}, report_faith.collect_faithfulness
    for case, exc in (("record", ValueError("boom\nsecond line")), ("raise", ValueError("boom")),
                      ("record-other", KeyError("bug"))):
        def collect(*a, **k):  # rank 1's images fail; rank 0's would succeed (never merged)
            if rank == 1:
                raise exc
            return "unused", None, {}

        report_faith.collect_faithfulness = collect
        try:
            run, _, warned = _faithfulness(data, shard_indices(N, world, rank), on_error=case.split("-")[0])
            out[case] = (run.errors, run.faithfulness, warned)
        except Exception as e:  # noqa: BLE001 - compared below
            out[case] = (type(e).__name__, str(e))
    report_faith.collect_faithfulness = real
    return out


def test_split_faithfulness_errors_like_one_process(faith_reference, split_results, monkeypatch):
    import captum_nave.report.faithfulness as report_faith

    data = faith_reference[0]
    text = "report: the faithfulness measures failed on model 'resnet18': ValueError: boom"

    def collect(*a, **k):
        raise ValueError("boom\nsecond line")

    with monkeypatch.context() as m:  # one process
        m.setattr(report_faith, "collect_faithfulness", collect)
        with pytest.warns(RuntimeWarning, match="faithfulness measures failed"):
            run, _, warned = _faithfulness(data, None, on_error="record")
        assert (run.errors, run.faithfulness, warned) == ({"faithfulness": "ValueError: boom"}, None, [text])
        with pytest.raises(ValueError, match="boom"):
            _faithfulness(data, None, on_error="raise")
    res = [r["errors"] for r in split_results]
    for r in (0, 1):  # on_error="record": every rank records the same error, as one process does
        assert res[r]["record"] == ({"faithfulness": "ValueError: boom"}, None, [text])
    assert res[1]["raise"] == ("ValueError", "boom")  # "raise": the failing rank raises its error, the other
    assert res[0]["raise"] == ("RemoteError", "rank 1 failed: ValueError: boom")  # a RemoteError naming it
    assert res[1]["record-other"] == ("KeyError", "'bug'")  # an error "record" does not record: raised everywhere
    assert res[0]["record-other"][0] == "RemoteError"

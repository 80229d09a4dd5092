"""The CorLoc protocol on hand-made label maps whose answers are computed by hand,
and against an independent brute-force re-implementation."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from captum_nave.evaluation import (
    CorLocProtocol,
    box_iou,
    corloc,
    extract_components,
    inner_box,
    outer_box,
    select_component,
)

NO_FILTER = CorLocProtocol(min_area=0, border=0)


# --------------------------------------------------------------------------- references
def ref_iou(a, b):
    """Plain float64 IoU of two boxes, continuous coordinates."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def ref_components(labels, min_area, border, connectivity=4):
    """Breadth-first flood fill, then Algorithm 2 / 3 written from the paper's pseudocode."""
    h, w = labels.shape
    seen = np.zeros_like(labels, dtype=bool)
    steps = [(1, 0), (-1, 0), (0, 1), (0, -1)]
    if connectivity == 8:
        steps += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    found = []
    for y in range(h):
        for x in range(w):
            if seen[y, x]:
                continue
            c = labels[y, x]
            pix, q = [], deque([(y, x)])
            seen[y, x] = True
            while q:
                cy, cx = q.popleft()
                pix.append((cy, cx))
                for dy, dx in steps:
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and labels[ny, nx] == c:
                        seen[ny, nx] = True
                        q.append((ny, nx))
            found.append((int(c), min(pix), pix))
    found.sort(key=lambda t: (t[0], t[1]))  # cluster id, then raster order of the first pixel
    out = []
    for c, _, pix in found:
        if len(pix) <= min_area:
            continue
        mask = np.zeros((h, w), dtype=bool)
        for p in pix:
            mask[p] = True
        if border:
            mask[:border, :] = False
            mask[-border:, :] = False
            mask[:, :border] = False
            mask[:, -border:] = False
        coord = mask.nonzero()
        if coord[0].size == 0:
            continue
        xmin, xmax = coord[1].min(), coord[1].max()
        ymin, ymax = coord[0].min(), coord[0].max()
        xs, ys = np.median(coord[1]), np.median(coord[0])
        xd = min(abs(xs - xmin), abs(xs - xmax))
        yd = min(abs(ys - ymin), abs(ys - ymax))
        inner = [np.clip(xs - xd, 0, w), np.clip(ys - yd, 0, h), np.clip(xs + xd, 0, w), np.clip(ys + yd, 0, h)]
        out.append((c, len(pix), [xmin, ymin, xmax, ymax], inner))
    return out


# --------------------------------------------------------------------------- IoU
def test_box_iou_matches_plain_float64_reference():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 50, (7, 2))
    a = np.concatenate([a, a + rng.uniform(0, 30, (7, 2))], 1)
    b = rng.uniform(0, 50, (5, 2))
    b = np.concatenate([b, b + rng.uniform(0, 30, (5, 2))], 1)
    got = box_iou(a, b)
    want = np.array([[ref_iou(x, y) for y in b] for x in a])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_box_iou_is_continuous_without_plus_one():
    # [0, 10] x [0, 10] vs [5, 15] x [0, 10]: 50 / 150 in continuous coordinates
    # (a "+1" convention would give 66 / 176).
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10])[0, 0] == pytest.approx(1 / 3, abs=1e-15)
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10])[0, 0] == 0.0  # touching: no overlap


# --------------------------------------------------------------------------- threshold
def _band_map():
    # cluster 1: rows 0..5, cols 0..10 -> outer box (0, 0, 10, 5), area 50 in continuous coordinates
    lab = np.zeros((20, 20), dtype=np.int64)
    lab[0:6, 0:11] = 1
    return lab


def test_iou_exactly_at_threshold_counts_as_correct():
    sel = NO_FILTER.evaluate(_band_map(), [[0, 0, 10, 10]])
    for s in ("inner", "outer"):
        assert sel[s].cluster == 1
        assert sel[s].outer_box == (0.0, 0.0, 10.0, 5.0)
        assert sel[s].iou == 0.5  # exactly 50 / 100
        assert sel[s].correct


def test_iou_just_below_threshold_is_a_miss():
    sel = NO_FILTER.evaluate(_band_map(), [[0, 0, 10, 10.01]])
    assert sel["outer"].iou < 0.5
    assert not sel["outer"].correct
    strict = CorLocProtocol(min_area=0, border=0, iou_threshold=0.49)
    assert strict.evaluate(_band_map(), [[0, 0, 10, 10.01]])["outer"].correct


# --------------------------------------------------------------------------- boxes
def test_inner_box_on_l_shape_by_hand():
    # vertical bar x in {0, 1}, y in 0..9 (20 px) + horizontal bar y in {8, 9}, x in 2..9 (16 px).
    # x: 10 zeros, 10 ones, 2..9 twice -> 36 values, 18th and 19th are 1 -> median 1, xd = min(1, 8) = 1
    # y: 0..7 twice (16), 8 ten times, 9 ten times -> 18th/19th are 8 -> median 8, yd = min(8, 1) = 1
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:10, 0:2] = True
    mask[8:10, 2:10] = True
    ys, xs = np.nonzero(mask)
    assert xs.size == 36
    np.testing.assert_array_equal(inner_box(ys, xs, 10, 10), [0.0, 7.0, 2.0, 9.0])
    np.testing.assert_array_equal(outer_box(ys, xs), [0.0, 0.0, 9.0, 9.0])


def test_inner_box_even_count_uses_mean_of_middle_values():
    # 4 pixels in one row x = 3..6: numpy median 4.5, xd = min(1.5, 1.5) = 1.5
    ys = np.array([2, 2, 2, 2])
    xs = np.array([3, 4, 5, 6])
    np.testing.assert_array_equal(inner_box(ys, xs, 10, 10), [3.0, 2.0, 6.0, 2.0])


def test_inner_strategy_reports_outer_iou_with_the_matched_gt():
    # 60x60 image. Cluster 1: a 20x20 block (x, y in 0..19) plus a 1-px tail along y=0, x in 20..59.
    # x median: 440 values, 220th/221st are 10 and 11 -> 10.5, xd = min(10.5, 48.5) -> [0, 21]
    # y median: y=0 sixty times, then 20 each -> 220th is 8, 221st is 9 -> 8.5, yd = min(8.5, 10.5) -> [0, 17]
    lab = np.zeros((60, 60), dtype=np.int64)
    lab[0:20, 0:20] = 1
    lab[0, 20:60] = 1
    gt = [[0, 0, 20, 20], [0, 0, 59, 19]]  # GT 2 is exactly the outer box of cluster 1
    comps = extract_components(lab, min_area=0, border=0)
    c1 = [c for c in comps if c.cluster == 1][0]
    np.testing.assert_array_equal(c1.inner_box, [0.0, 0.0, 21.0, 17.0])
    np.testing.assert_array_equal(c1.outer_box, [0.0, 0.0, 59.0, 19.0])
    inner = select_component(comps, gt, "inner")
    # inner box vs GT 1: 340 / (357 + 400 - 340); vs GT 2: 357 / 1121 -> GT 1 is matched
    assert inner.cluster == 1 and inner.gt_index == 0
    assert inner.selection_iou == pytest.approx(340 / 417, abs=1e-12)
    # reported: the OUTER box with the matched GT (1), not the best GT (2, IoU 1.0)
    assert inner.iou == pytest.approx(380 / 1141, abs=1e-12)
    assert not inner.correct
    outer = select_component(comps, gt, "outer")
    assert outer.cluster == 1 and outer.gt_index == 1 and outer.iou == 1.0 and outer.correct


# --------------------------------------------------------------------------- filters
def test_min_area_784_dropped_785_kept_by_default():
    lab = np.zeros((200, 200), dtype=np.int64)
    lab[50:78, 50:78] = 1  # 28 * 28 = 784
    lab[120:148, 120:148] = 2
    lab[148, 120] = 2  # 785
    comps = extract_components(lab)
    assert [(c.cluster, c.area) for c in comps] == [(0, 200 * 200 - 784 - 785), (2, 785)]


def test_area_is_measured_before_the_border_is_zeroed():
    lab = np.zeros((100, 100), dtype=np.int64)
    lab[0:20, 50:90] = 1  # 800 px; a 14-px border leaves rows 14..19 and cols 50..85
    comps = {c.cluster: c for c in extract_components(lab)}
    assert comps[1].area == 800 and comps[1].pixels == 6 * 36  # rows 14..19, cols 50..85
    np.testing.assert_array_equal(comps[1].outer_box, [50, 14, 85, 19])  # x clipped at 100 - 14 - 1


def test_border_removal_and_components_inside_the_border_dropped():
    lab = np.zeros((30, 30), dtype=np.int64)
    lab[0:10, :] = 1  # touches three image sides
    lab[27:30, :] = 2  # entirely inside a 3-px border -> empty -> dropped
    comps = extract_components(lab, min_area=0, border=3)
    assert [c.cluster for c in comps] == [0, 1]
    c1 = comps[1]
    np.testing.assert_array_equal(c1.outer_box, [3, 3, 26, 9])
    assert c1.pixels == 7 * 24
    # paper default border 14 on a 100x100 map: a band in rows 0..13 disappears
    lab = np.zeros((100, 100), dtype=np.int64)
    lab[0:14, :] = 1
    assert [c.cluster for c in extract_components(lab, min_area=0)] == [0]


def test_four_connectivity_splits_diagonal_neighbours():
    lab = np.zeros((6, 6), dtype=np.int64)
    lab[0:3, 0:3] = 1
    lab[3:6, 3:6] = 1  # touches the first block only at a corner
    four = [c for c in extract_components(lab, min_area=0, border=0) if c.cluster == 1]
    eight = [c for c in extract_components(lab, min_area=0, border=0, connectivity=8) if c.cluster == 1]
    assert len(four) == 2 and len(eight) == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_components_match_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    # blocky random map (4 clusters) so that components of many sizes appear
    lab = np.kron(rng.integers(0, 4, (8, 10)), np.ones((5, 5), dtype=np.int64))
    lab[rng.random(lab.shape) < 0.05] = 3
    for min_area, border, conn in [(0, 0, 4), (20, 2, 4), (30, 4, 8)]:
        got = extract_components(lab, min_area=min_area, border=border, connectivity=conn)
        want = ref_components(lab, min_area, border, conn)
        assert len(got) == len(want)
        for g, (c, area, ob, ib) in zip(got, want):
            assert g.cluster == c and g.area == area
            np.testing.assert_allclose(g.outer_box, ob, atol=0)
            np.testing.assert_allclose(g.inner_box, ib, atol=1e-12)


# --------------------------------------------------------------------------- selection
def test_ties_go_to_lowest_cluster_then_first_gt():
    lab = np.zeros((30, 40), dtype=np.int64)
    lab[10:21, 5:16] = 2  # outer (5, 10, 15, 20)
    lab[10:21, 20:31] = 1  # outer (20, 10, 30, 20)
    gt = [[10, 10, 25, 20]]  # overlaps both by 5 x 10 -> both IoU = 50 / 200
    comps = extract_components(lab, min_area=0, border=0)
    ious = box_iou(np.stack([c.outer_box for c in comps]), gt)[:, 0]
    assert sorted(ious)[-1] == sorted(ious)[-2]  # a genuine tie
    assert select_component(comps, gt, "outer").cluster == 1  # lower id wins, not left-most
    # one component matching two GT boxes equally -> the first GT box
    sel = select_component(comps, [[5, 10, 15, 20], [5, 10, 15, 20]], "outer")
    assert sel.cluster == 2 and sel.gt_index == 0 and sel.iou == 1.0


def test_no_surviving_component_is_a_miss():
    lab = np.arange(100 * 100).reshape(100, 100) % 7  # only tiny components
    sel = CorLocProtocol().evaluate(lab, [[10, 10, 50, 50]])
    for s in sel.values():
        assert s.component == -1 and s.n_components == 0 and s.iou == 0.0 and not s.correct


def test_labels_are_resized_nearest_to_the_image_size():
    grid = torch.tensor([[0, 1], [2, 3]])  # a 2x2 grid, e.g. a ViT patch grid
    sel = NO_FILTER.evaluate(grid, [[10, 0, 20, 10]], image_size=(20, 20))
    assert sel["outer"].cluster == 1
    assert sel["outer"].outer_box == (10.0, 0.0, 19.0, 9.0)
    assert sel["outer"].iou == pytest.approx(81 / 100)


def test_corloc_fraction():
    assert corloc([True, False, True, True]) == 0.75
    assert np.isnan(corloc([]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_area": -1}, "min_area"),
        ({"border": 1.5}, "border"),
        ({"iou_threshold": 0.0}, "iou_threshold"),
        ({"connectivity": 6}, "connectivity"),
    ],
)
def test_protocol_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CorLocProtocol(**kwargs)


def test_bad_inputs_name_the_parameter():
    with pytest.raises(ValueError, match="strategy"):
        NO_FILTER.evaluate(_band_map(), [[0, 0, 1, 1]], strategies=["middle"])
    with pytest.raises(ValueError, match="gt_boxes"):
        NO_FILTER.evaluate(_band_map(), [[0, 0, 1]])
    with pytest.raises(ValueError, match="gt_boxes"):
        select_component([], np.zeros((0, 4)))
    with pytest.raises(ValueError, match="labels"):
        NO_FILTER.evaluate(np.zeros((2, 3, 4)), [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="labels"):
        NO_FILTER.evaluate(np.full((4, 4), 0.5), [[0, 0, 1, 1]])
    with pytest.raises(TypeError, match="labels"):
        NO_FILTER.evaluate([[0, 1]], [[0, 0, 1, 1]])

"""The CorLoc protocol on hand-made label maps whose answers are computed by hand,
against an independent brute-force re-implementation, against a plain
re-implementation of the authors' script (``tests/corloc_authors.py``) on
generated cases, and against the selections of captum-nave 0.1 (``"clean"``)."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
from corloc_authors import authors_iou, authors_reference, generate_cases, nearest_floor, render

from captum_nave.evaluation import (
    CorLocProtocol,
    as_protocol,
    authors_box_iou,
    box_iou,
    corloc,
    extract_components,
    inner_box,
    outer_box,
    select_component,
)

NO_FILTER = CorLocProtocol(min_area=0, border=0)
NO_FILTER_CLEAN = CorLocProtocol(min_area=0, border=0, conventions="clean")
GOLDEN = Path(__file__).parent / "data" / "corloc_clean_v0_1.json"


# --------------------------------------------------------------------------- references
def ref_iou(a, b):
    """Plain float64 IoU of two boxes, continuous coordinates."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def ref_components(labels, min_area, border, connectivity=4, truncate=False):
    """Breadth-first flood fill, then Algorithm 2 / 3 written from the paper's pseudocode
    (``truncate``: the authors' ``int(np.median(...))``)."""
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
        if truncate:
            xs, ys = int(xs), int(ys)
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


def test_iou_exactly_at_threshold_is_a_miss_for_the_authors_inner_strategy_only():
    # issue 12, deviation 2: the authors' script counts ``iou > .5`` (inner) and ``>= 0.5`` (outer).
    # Cluster 1's outer box (0, 0, 10, 5) is half of the GT box (0, 0, 10, 10): IoU 50 / 100, also
    # in float32 with eps (heights 5 and 10 absorb the 1e-7; so does the union 100).
    sel = NO_FILTER.evaluate(_band_map(), [[0, 0, 10, 10]])
    for s in ("inner", "outer"):
        assert sel[s].cluster == 1
        assert sel[s].outer_box == (0.0, 0.0, 10.0, 5.0)
        assert sel[s].iou == 0.5
    assert not sel["inner"].correct and sel["outer"].correct
    # y median of rows 0..5 (11 px each) is 2.5: the authors' int() makes it 2, yd = min(2, 3) = 2
    assert sel["inner"].selection_box == (0.0, 0.0, 10.0, 4.0)
    clean = NO_FILTER_CLEAN.evaluate(_band_map(), [[0, 0, 10, 10]])
    for s in ("inner", "outer"):
        assert clean[s].iou == 0.5 and clean[s].correct  # 0.1 counted both as hits
    assert clean["inner"].selection_box == (0.0, 0.0, 10.0, 5.0)  # 2.5 +- 2.5


def test_iou_just_below_threshold_is_a_miss():
    sel = NO_FILTER.evaluate(_band_map(), [[0, 0, 10, 10.01]])
    assert sel["outer"].iou < 0.5
    assert not sel["outer"].correct
    strict = CorLocProtocol(min_area=0, border=0, iou_threshold=0.49)
    assert strict.evaluate(_band_map(), [[0, 0, 10, 10.01]])["outer"].correct


# --------------------------------------------------------------------------- boxes
@pytest.mark.parametrize("conventions", ["authors", "clean"])
def test_inner_box_on_l_shape_by_hand(conventions):
    # vertical bar x in {0, 1}, y in 0..9 (20 px) + horizontal bar y in {8, 9}, x in 2..9 (16 px).
    # x: 10 zeros, 10 ones, 2..9 twice -> 36 values, 18th and 19th are 1 -> median 1, xd = min(1, 8) = 1
    # y: 0..7 twice (16), 8 ten times, 9 ten times -> 18th/19th are 8 -> median 8, yd = min(8, 1) = 1
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:10, 0:2] = True
    mask[8:10, 2:10] = True
    ys, xs = np.nonzero(mask)
    assert xs.size == 36
    # integer medians: both conventions agree
    np.testing.assert_array_equal(inner_box(ys, xs, 10, 10, conventions=conventions), [0.0, 7.0, 2.0, 9.0])
    np.testing.assert_array_equal(outer_box(ys, xs), [0.0, 0.0, 9.0, 9.0])


def test_inner_box_even_count():
    # 4 pixels in one row x = 3..6: numpy median 4.5
    ys = np.array([2, 2, 2, 2])
    xs = np.array([3, 4, 5, 6])
    # clean: xd = min(1.5, 1.5) = 1.5 -> [3, 6]
    np.testing.assert_array_equal(inner_box(ys, xs, 10, 10, conventions="clean"), [3.0, 2.0, 6.0, 2.0])
    # authors: int(4.5) = 4, xd = min(1, 2) = 1 -> [3, 5]
    np.testing.assert_array_equal(inner_box(ys, xs, 10, 10), [3.0, 2.0, 5.0, 2.0])
    with pytest.raises(ValueError, match="conventions"):
        inner_box(ys, xs, 10, 10, conventions="paper")


def test_issue_example_single_cluster_64x64_median_truncated():
    # issue 12, deviation 1: one cluster on 64x64 with the paper's constants. The 14-px border leaves
    # pixels 14..49 on both axes (36 values, 36 times each): median 31.5.
    # authors: int -> 31, half-width min(31 - 14, 49 - 31) = 17 -> [14, 14, 48, 48]
    # clean:   31.5 +- min(17.5, 17.5)                          -> [14, 14, 49, 49]
    lab = np.zeros((64, 64), dtype=np.int64)
    (comp,) = extract_components(lab)
    np.testing.assert_array_equal(comp.inner_box, [14, 14, 48, 48])
    np.testing.assert_array_equal(comp.outer_box, [14, 14, 49, 49])
    (comp,) = extract_components(lab, conventions="clean")
    np.testing.assert_array_equal(comp.inner_box, [14, 14, 49, 49])
    # what the selection sees: inner box vs GT (14, 14, 49, 49): 34*34 / 35*35 for the authors
    sel = CorLocProtocol().evaluate(lab, [[14, 14, 49, 49]])["inner"]
    assert sel.selection_iou == pytest.approx(34 * 34 / (35 * 35), rel=2**-23)  # float32 rounding
    assert CorLocProtocol(conventions="clean").evaluate(lab, [[14, 14, 49, 49]])["inner"].selection_iou == 1.0


def test_issue_example_ties_first_ground_truth_box_wins():
    # issue 12, deviation 3, on a 352x288 image with a 16-px patch grid (22 x 18 cells).
    # B (cluster 0): a 5x5-cell square at cells rows 9..13, cols 2..6 plus a 1-cell arm along row 13,
    #   cols 7..12. Pixels: 6400 + 1536 = 7936. Outer box (32, 144, 207, 223).
    #   x: medians by counting columns (80 px each for x 32..111, 16 px each for x 112..207): the
    #   3968th/3969th values are both 81 -> xs = 81, xd = min(49, 126) = 49 -> [32, 130];
    #   y: rows 144..207 have 80 px, rows 208..223 have 176 -> median 193.5 -> 193, yd = min(49, 30) = 30
    #   -> [163, 223]. Inner box (32, 163, 130, 223): 98 x 60.
    # A (cluster 2): a 5x5-cell square, pixels x 208..287, y 48..127: medians 247.5 / 87.5 -> 247 / 87,
    #   half-widths 39 -> inner box (208, 48, 286, 126): 78 x 78. Outer box (208, 48, 287, 127).
    # Background (cluster 3) is component 2.
    # GT 0 = A's inner box stretched to 78 x 104, GT 1 = B's inner box stretched to 98 x 80: both
    # inner boxes have IoU 3/4 exactly (6084 / 8112 and 5880 / 7840; the eps vanishes in float32).
    grid = np.full((18, 22), 3)
    grid[3:8, 13:18] = 2
    grid[9:14, 2:7] = 0
    grid[13, 7:13] = 0
    gt = [[208, 35, 286, 139], [32, 153, 130, 233]]
    protocol = CorLocProtocol()  # the paper's constants, 784 and 14
    comps = protocol.components(torch.from_numpy(grid), image_size=(288, 352))
    assert [c.cluster for c in comps] == [0, 2, 3]
    np.testing.assert_array_equal(comps[0].inner_box, [32, 163, 130, 223])
    np.testing.assert_array_equal(comps[1].inner_box, [208, 48, 286, 126])
    ious = authors_box_iou(gt, [c.inner_box for c in comps])
    assert ious[0, 1] == ious[1, 0] == 0.75 and ious.max() == 0.75
    # authors: row-major over (n_gt, n_components): GT 0 first -> A; outer IoU
    # 78 * 79 / (6241 + 8112 - 6162) = 6162 / 8191 = 0.752 -> hit
    sel = protocol.evaluate(torch.from_numpy(grid), gt, image_size=(288, 352))["inner"]
    assert (sel.component, sel.cluster, sel.gt_index) == (1, 2, 0)
    assert sel.iou == pytest.approx(6162 / 8191, rel=2**-23) and sel.correct
    # the clean tie rule on the same candidates: first component -> B with GT 1; outer IoU
    # 98 * 70 / (175 * 79 + 7840 - 6860) = 6860 / 14805 = 0.463 -> miss
    clean = select_component(comps, gt, "inner", conventions="clean")
    assert (clean.component, clean.gt_index) == (0, 1)
    assert clean.iou == pytest.approx(6860 / 14805, abs=1e-15) and not clean.correct


def test_authors_iou_eps_lowers_an_exact_half_between_one_pixel_high_boxes():
    # A 2-row bar has an outer box of height 1: (0, 4, 10, 5) vs GT (0, 4, 20, 5) is 10 / 20 exactly,
    # but the script's eps makes the union 20 + ~3e-6 in float32 -> below 0.5 -> a miss (>= 0.5).
    lab = np.zeros((10, 30), dtype=np.int64)
    lab[4:6, 0:11] = 1
    gt = [[0, 4, 20, 5]]
    sel = NO_FILTER.evaluate(lab, gt)["outer"]
    assert sel.cluster == 1 and sel.outer_box == (0.0, 4.0, 10.0, 5.0)
    assert 0.4999 < sel.iou < 0.5 and not sel.correct
    clean = NO_FILTER_CLEAN.evaluate(lab, gt)["outer"]
    assert clean.iou == 0.5 and clean.correct


def _lost_bbox_iou_torch(box1, box2, eps=1e-7):
    """LOST's ``bbox_iou`` (x1y1x2y2 branch) transcribed, run by torch on int64 tensors."""
    box2 = box2.T
    b1_x1, b1_y1, b1_x2, b1_y2 = box1[0], box1[1], box1[2], box1[3]
    b2_x1, b2_y1, b2_x2, b2_y2 = box2[0], box2[1], box2[2], box2[3]
    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * (
        torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)
    ).clamp(0)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1 + eps
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    return inter / union


def test_authors_box_iou_is_bit_identical_to_the_scripts_torch_int64_computation():
    rng = np.random.default_rng(5)
    xy = rng.integers(-5, 400, size=(300, 2))
    wh = rng.integers(0, 60, size=(300, 2))
    wh[::7, 1] = 1  # 1-px-high boxes, where the eps shows
    wh[::11, 1] = 0
    boxes = np.concatenate([xy, xy + wh], 1)
    # tiny boxes, where the eps added to the union shows: 1x1, 1x2, 2x1 overlapping by one pixel
    tiny = np.array([[0, 0, 1, 1], [0, 0, 1, 2], [0, 0, 2, 1], [0, 0, 2, 2], [1, 1, 2, 2], [0, 0, 0, 1]])
    a, b = np.concatenate([boxes[:40], tiny]), np.concatenate([boxes[40:], tiny])
    want = np.stack([_lost_bbox_iou_torch(torch.from_numpy(x), torch.from_numpy(b)).numpy() for x in a])
    assert want.dtype == np.float32
    got = authors_box_iou(a, b)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[:, :5], np.stack([authors_iou(x, b[:5]) for x in a]))


# 60x60 image. Cluster 1: a 20x20 block (x, y in 0..19) plus a 1-px tail along y=0, x in 20..59.
# x median: 440 values, 220th/221st are 10 and 11 -> 10.5; y median: y=0 sixty times, then 20 each
# -> 220th is 8, 221st is 9 -> 8.5.
#   clean:   xd = min(10.5, 48.5) -> [0, 21]; yd = min(8.5, 10.5) -> [0, 17]; box 21 x 17 = 357
#            vs GT 1 (0, 0, 20, 20): 340 / (357 + 400 - 340) = 340 / 417
#   authors: 10 and 8: xd = min(10, 49) -> [0, 20]; yd = min(8, 11) -> [0, 16]; box 20 x 16 = 320
#            vs GT 1: 320 / 400
@pytest.mark.parametrize(
    "conventions, inner, selection_iou",
    [("clean", [0, 0, 21, 17], 340 / 417), ("authors", [0, 0, 20, 16], 320 / 400)],
)
def test_inner_strategy_reports_outer_iou_with_the_matched_gt(conventions, inner, selection_iou):
    lab = np.zeros((60, 60), dtype=np.int64)
    lab[0:20, 0:20] = 1
    lab[0, 20:60] = 1
    gt = [[0, 0, 20, 20], [0, 0, 59, 19]]  # GT 2 is exactly the outer box of cluster 1
    comps = extract_components(lab, min_area=0, border=0, conventions=conventions)
    c1 = [c for c in comps if c.cluster == 1][0]
    np.testing.assert_array_equal(c1.inner_box, inner)
    np.testing.assert_array_equal(c1.outer_box, [0.0, 0.0, 59.0, 19.0])
    sel = select_component(comps, gt, "inner", conventions=conventions)
    assert sel.cluster == 1 and sel.gt_index == 0  # vs GT 2 the inner box scores far less
    # float32 for the authors: one rounding of the quotient (the eps vanishes at these sizes)
    tol = 2**-23 if conventions == "authors" else 1e-15
    assert sel.selection_iou == pytest.approx(selection_iou, rel=tol)
    # reported: the OUTER box with the matched GT (1), not the best GT (2, IoU 1.0)
    assert sel.iou == pytest.approx(380 / 1141, rel=tol)
    assert not sel.correct
    outer = select_component(comps, gt, "outer", conventions=conventions)
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
        for conventions in ("authors", "clean"):
            got = extract_components(lab, min_area=min_area, border=border, connectivity=conn,
                                     conventions=conventions)
            want = ref_components(lab, min_area, border, conn, truncate=conventions == "authors")
            assert len(got) == len(want)
            for g, (c, area, ob, ib) in zip(got, want):
                assert g.cluster == c and g.area == area
                np.testing.assert_allclose(g.outer_box, ob, atol=0)
                np.testing.assert_allclose(g.inner_box, ib, atol=1e-12)


# --------------------------------------------------------------------------- selection
@pytest.mark.parametrize("conventions", ["authors", "clean"])
def test_outer_ties_go_to_lowest_cluster_then_first_gt(conventions):
    lab = np.zeros((30, 40), dtype=np.int64)
    lab[10:21, 5:16] = 2  # outer (5, 10, 15, 20)
    lab[10:21, 20:31] = 1  # outer (20, 10, 30, 20)
    gt = [[10, 10, 25, 20]]  # overlaps both by 5 x 10 -> both IoU = 50 / 200
    comps = extract_components(lab, min_area=0, border=0)
    ious = box_iou(np.stack([c.outer_box for c in comps]), gt)[:, 0]
    assert sorted(ious)[-1] == sorted(ious)[-2]  # a genuine tie
    assert select_component(comps, gt, "outer", conventions=conventions).cluster == 1  # lower id, not left-most
    # one component matching two GT boxes equally -> the first GT box
    sel = select_component(comps, [[5, 10, 15, 20], [5, 10, 15, 20]], "outer", conventions=conventions)
    assert sel.cluster == 2 and sel.gt_index == 0 and sel.iou == 1.0


@pytest.mark.parametrize("conventions", ["authors", "clean"])
def test_no_surviving_component_is_a_miss(conventions):
    lab = np.arange(100 * 100).reshape(100, 100) % 7  # only tiny components
    sel = CorLocProtocol(conventions=conventions).evaluate(lab, [[10, 10, 50, 50]])
    for s in sel.values():
        assert s.component == -1 and s.n_components == 0 and s.iou == 0.0 and not s.correct


@pytest.mark.parametrize("conventions", ["authors", "clean"])
def test_ground_truth_boxes_leaving_the_image_are_used_as_they_are(conventions):
    # a VOC box with xmin = 0 in the XML becomes x_min = -1, one past the right edge x_max = W + 3:
    # the authors' script keeps both as they are. 40x30 map; cluster 1 covers columns 0..19 and rows
    # 0..9: outer box (0, 0, 19, 9), 171 px^2; GT (-1, 0, 43, 9), 396 px^2 -> IoU 171 / 396 = 19 / 44.
    # (The background's outer box (0, 0, 39, 29) scores 351 / 1176.) Clipped to the image the GT
    # would be (0, 0, 40, 9) and the IoU 171 / 360.
    lab = np.zeros((30, 40), dtype=np.int64)
    lab[0:10, 0:20] = 1
    protocol = NO_FILTER if conventions == "authors" else NO_FILTER_CLEAN
    got = protocol.evaluate(lab, [[-1, 0, 43, 9]])["outer"]
    assert got.cluster == 1 and got.gt_index == 0
    assert got.iou == pytest.approx(19 / 44, rel=2**-23)  # float32 for the authors: one rounding


# --------------------------------------------------------------------------- references
def _check_against_authors(case, got, ref):
    for s in ("inner", "outer"):
        g, r = got[s], ref[s]
        where = f"{s} strategy, case {case}"
        assert g.n_components == r["n_components"], where
        assert g.component == r["component"], where
        assert g.gt_index == r["gt_index"], where
        assert g.iou == r["iou"], where  # the same float32 values, not merely close
        assert g.correct == r["correct"], where
        if r["component"] >= 0:
            assert list(g.outer_box) == r["outer_box"], where
            if s == "inner":
                assert list(g.selection_box) == r["inner_box"], where


@pytest.mark.parametrize("seed", [11, 12])
def test_authors_conventions_equal_a_plain_port_of_the_authors_script(seed):
    # label maps from grids resized by integer and non-integer factors, painted objects, 2-row bars
    # (eps), mirrored twins and duplicated GT boxes (ties), GT boxes at IoU exactly 0.5 with an
    # outer box, boxes leaving the image, nothing surviving; the paper's constants on maps >= 150 px
    cases = generate_cases(seed=seed, n=350)
    n_hits = {"inner": 0, "outer": 0}
    for case in cases:
        gt = np.asarray(case["gt"])
        p = CorLocProtocol(min_area=case["min_area"], border=case["border"])
        got = p.evaluate(render(case), gt)
        _check_against_authors(case, got, authors_reference(render(case), gt, case["min_area"], case["border"]))
        for s in n_hits:
            n_hits[s] += got[s].correct
    assert 0.3 * len(cases) < min(n_hits.values()) and max(n_hits.values()) < 0.95 * len(cases)


def test_authors_conventions_on_label_maps_resized_from_a_patch_grid():
    # the runner's path: labels on the model's patch grid, resized NEAREST to the padded image size
    rng = np.random.default_rng(3)
    for _ in range(60):
        p = int(rng.choice([14, 16]))
        gh, gw = (int(v) for v in rng.integers(8, 20, size=2))
        grid = rng.integers(0, 4, size=(gh, gw))
        h, w = gh * p, gw * p
        img_h, img_w = h - int(rng.integers(0, p)), w - int(rng.integers(0, p))  # not patch multiples
        x0, y0 = (int(v) for v in rng.integers(0, [img_w // 2, img_h // 2]))
        gt = np.array([[x0, y0, int(rng.integers(x0 + 8, img_w + 1)), int(rng.integers(y0 + 8, img_h + 1))]])
        got = CorLocProtocol().evaluate(torch.from_numpy(grid), gt, image_size=(h, w))
        lab = nearest_floor(grid, (h, w))  # cv2.INTER_NEAREST, as the script (integer factor)
        _check_against_authors((gh, gw, p), got, authors_reference(lab, gt, 784, 14))


def test_clean_conventions_reproduce_the_selections_of_version_0_1():
    # captured from captum-nave 0.1 before issue 12 changed the default (tests/data/corloc_clean_v0_1.json)
    doc = json.loads(GOLDEN.read_text())
    assert len(doc["cases"]) == 280
    differ = 0
    for item in doc["cases"]:
        case, want = item["case"], item["clean_v0_1"]
        gt = np.asarray(case["gt"], dtype=np.float64)
        lab = render(case)
        got = CorLocProtocol(min_area=case["min_area"], border=case["border"], conventions="clean").evaluate(lab, gt)
        for s in ("inner", "outer"):
            d = got[s].to_dict()
            assert {k: d[k] for k in want[s]} == want[s], (s, case)
        authors = CorLocProtocol(min_area=case["min_area"], border=case["border"]).evaluate(lab, gt)
        differ += any(authors[s].correct != got[s].correct for s in ("inner", "outer"))
    assert differ >= 20  # the cases do tell the two conventions apart


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
        ({"conventions": "paper"}, "conventions"),
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


def test_as_protocol():
    assert as_protocol(None) == CorLocProtocol()
    assert as_protocol("clean") == CorLocProtocol(conventions="clean")
    assert as_protocol(NO_FILTER) is NO_FILTER
    assert CorLocProtocol().to_dict() == {"min_area": 784, "border": 14, "iou_threshold": 0.5,
                                          "connectivity": 4, "conventions": "authors"}
    with pytest.raises(ValueError, match="protocol.*'authors', 'clean'.*'paper'"):
        as_protocol("paper")
    with pytest.raises(TypeError, match="protocol"):
        as_protocol(3)

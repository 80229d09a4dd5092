"""Label maps: nearest resize at non-integer factors, against hand-computed maps."""

import numpy as np
import pytest
import torch
from torch import nn

from captum_nave import ConceptClusters, LayerClusterExplainer
from captum_nave.evaluation.corloc import CorLocProtocol
from captum_nave.segments import relabel_by_area, resize_labels

# A 2x3 grid resized to 5x7. Pixel centres are aligned ("nearest-exact"): output row y
# takes source row floor((y + 0.5) * 2 / 5), i.e. rows 0,0,1,1,1 (plain "nearest",
# floor(y * 2 / 5), would give 0,0,0,1,1); output column x takes floor((x + 0.5) * 3 / 7),
# i.e. columns 0,0,1,1,1,2,2 (plain "nearest": 0,0,0,1,1,2,2).
GRID = torch.tensor([[0, 1, 2], [3, 4, 5]])
UP_5x7 = torch.tensor([
    [0, 0, 1, 1, 1, 2, 2],
    [0, 0, 1, 1, 1, 2, 2],
    [3, 3, 4, 4, 4, 5, 5],
    [3, 3, 4, 4, 4, 5, 5],
    [3, 3, 4, 4, 4, 5, 5],
])
# 7x5 (ids 0..34, row-major) down to 3x2: rows floor((y + 0.5) * 7 / 3) = 1, 3, 5 and
# columns floor((x + 0.5) * 5 / 2) = 1, 3 ("nearest": rows 0, 2, 4 and columns 0, 2).
DOWN_3x2 = torch.tensor([[6, 8], [16, 18], [26, 28]])


def test_resize_at_non_integer_factors_matches_the_hand_computed_maps():
    assert torch.equal(resize_labels(GRID, (5, 7)), UP_5x7)
    assert torch.equal(resize_labels(GRID[None], (5, 7)), UP_5x7[None])
    assert torch.equal(resize_labels(GRID[None, None].repeat(2, 1, 1, 1), (5, 7)), UP_5x7.expand(2, 1, 5, 7))
    assert torch.equal(resize_labels(torch.arange(35).reshape(7, 5), (3, 2)), DOWN_3x2)
    # large ids survive (float64 carries them exactly), integer factors repeat cells
    big = GRID * 10**12
    assert torch.equal(resize_labels(big, (5, 7)), UP_5x7 * 10**12)
    assert torch.equal(resize_labels(GRID, (4, 6)), GRID.repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_resize_refuses_float_labels():
    with pytest.raises(TypeError, match="labels: expected an integer tensor"):
        resize_labels(GRID.float(), (5, 7))


class SixDirections(nn.Module):
    """Its 'grid' layer is a fixed 2x3 map whose six pixels point in six directions."""

    def __init__(self):
        super().__init__()
        self.grid = nn.Identity()

    def forward(self, x):
        g = torch.eye(6).reshape(6, 2, 3).unsqueeze(0).expand(x.shape[0], -1, -1, -1) * (1 + x.mean())
        return self.grid(g).mean((2, 3))


def test_nave_segments_at_an_odd_input_size_follow_the_hand_computed_map():
    """Every grid pixel is its own segment (K = 6 distinct directions), so the segment
    map of a 5x7 input must be the grid's ids spread as in UP_5x7."""
    ex = LayerClusterExplainer(SixDirections(), ["grid"])
    res = ex.explain(torch.rand(1, 3, 5, 7), n_clusters=6, random_state=0)
    g = res.grid_labels[0]
    assert res.grid == (2, 3) and g.unique().numel() == 6
    assert torch.equal(res.segments[0, 0], g.reshape(-1)[UP_5x7])
    cc = ConceptClusters(ex, 6, random_state=0).fit(torch.rand(2, 3, 5, 7))
    ids = cc.transform(torch.rand(1, 3, 5, 7)).argmin(1)[0]  # (2, 3) concept ids on the grid
    assert torch.equal(cc.predict(torch.rand(1, 3, 5, 7))[0, 0], ids.reshape(-1)[UP_5x7])


def test_corloc_boxes_use_the_same_resize():
    """A 2x3 grid evaluated on a 5x7 image: id 4 covers rows 2-4 and columns 2-4."""
    sel = CorLocProtocol(min_area=0, border=0).evaluate(GRID.numpy(), [[2, 2, 5, 5]], image_size=(5, 7))
    assert sel["outer"].cluster == 4 and sel["outer"].outer_box == (2.0, 2.0, 4.0, 4.0)


def test_relabel_by_area_orders_by_decreasing_area_then_id():
    labels = torch.tensor([[[7, 7, 3], [3, 9, 9]], [[1, 1, 1], [5, 5, 2]]])
    assert torch.equal(relabel_by_area(labels), torch.tensor([[[1, 1, 0], [0, 2, 2]], [[0, 0, 0], [1, 1, 2]]]))
    shared = relabel_by_area(labels, per_image=False)  # 1: 3 px, then 3, 5, 7, 9: 2 px each, then 2
    assert torch.equal(shared, torch.tensor([[[3, 3, 1], [1, 4, 4]], [[0, 0, 0], [2, 2, 5]]]))
    assert np.array_equal(relabel_by_area(labels[:0]).shape, (0, 2, 3))

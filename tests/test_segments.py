"""Label renumbering by area against a plain reference."""

import pytest
import torch

from captum_nave.segments import relabel_by_area


def reference_relabel(labels: torch.Tensor) -> torch.Tensor:
    """Plain Python: new id = rank of the old id by (decreasing area, increasing id)."""
    values = labels.flatten().tolist()
    area = {}
    for v in values:
        area[v] = area.get(v, 0) + 1
    order = sorted(area, key=lambda v: (-area[v], v))
    rank = {v: i for i, v in enumerate(order)}
    return torch.tensor([rank[v] for v in values]).reshape(labels.shape)


@pytest.mark.parametrize("low,high", [(0, 5), (-3, 4), (7, 12), (-(2**40), 2**40)])
def test_relabel_by_area_equals_reference(low, high):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (3, 9, 11), generator=g)
    table = torch.sort(torch.randint(low, high, (6,), generator=g)).values  # ids in any range, ties possible
    labels = table[ids]
    labels[1, :3] = table[0]  # unequal areas
    for i in range(3):
        assert torch.equal(relabel_by_area(labels[i : i + 1])[0], reference_relabel(labels[i]))
    assert torch.equal(relabel_by_area(labels, per_image=False), reference_relabel(labels))
    per = relabel_by_area(labels)
    assert torch.equal(per, torch.stack([reference_relabel(l) for l in labels]))

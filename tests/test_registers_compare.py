"""compare_registers end to end: consistency with the measures, export, figure, model safety."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch

from captum_nave.evaluation.corloc import CorLocProtocol
from captum_nave.registers.compare import MEASURES, compare_registers
from captum_nave.registers.stats import mcnemar_test

from test_registers_models import HAND_LAYOUT, hand_vit, tiny_timm
from test_registers_norms import plant


@pytest.fixture(scope="module")
def pair():
    plain = tiny_timm(img_size=48, depth=3, seed=0)
    regs = tiny_timm(img_size=48, depth=3, seed=1, reg_tokens=4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 48, 48, generator=g)
    boxes = [[[4.0, 4.0, 30.0, 30.0]], [[10.0, 0.0, 47.0, 40.0]], [[0.0, 0.0, 20.0, 47.0]],
             [[8.0, 8.0, 40.0, 40.0]], [[20.0, 20.0, 47.0, 47.0]]]
    proto = CorLocProtocol(min_area=20, border=0)
    h = plant(plain.blocks[1], [1 + 7, 1 + 20])  # two high-norm patches in the plain model
    try:
        res = compare_registers(plain, regs, x, n_clusters=3, boxes=boxes, corloc_protocol=proto, n_boot=300)
    finally:
        h.remove()
    return plain, regs, x, boxes, proto, res


def test_per_image_values_are_consistent(pair):
    plain, regs, x, boxes, proto, res = pair
    pa, pb = res.per_image["mass_patches"], res.per_image["mass_registers"]
    total_a = res.per_image["mass_cls"][0] + res.per_image["mass_registers"][0] + pa[0]
    total_b = res.per_image["mass_cls"][1] + pb[1] + pa[1]
    np.testing.assert_allclose(total_a, 1.0, atol=1e-5)
    np.testing.assert_allclose(total_b, 1.0, atol=1e-5)
    np.testing.assert_array_equal(pb[0], 0.0)  # no registers in model A
    assert (pb[1] > 0).all()
    # the planted tokens: 2 of 36 patches from block 1 on, in model A only
    np.testing.assert_allclose(res.per_image["outlier_fraction"][0], 2 / 36)
    np.testing.assert_array_equal(res.per_image["first_outlier_layer"][0], 1.0)
    assert np.isnan(res.per_image["first_outlier_layer"][1]).all()
    assert res.outliers[0].outlier_indices(0, 2) == (7, 20)
    # outlier patches entering the last block receive the attention mass on those tokens
    att = res.stats[0].attention_at(-1).mean(dim=1)
    np.testing.assert_allclose(res.per_image["mass_outlier_patches"][0], (att[:, 1 + 7] + att[:, 1 + 20]).numpy(), rtol=1e-6)
    # aggregates are NaN-aware means with bootstrap CIs of b - a
    row = res.row("mass_registers")
    assert row.mean_a == 0.0 and row.mean_b == pytest.approx(float(pb[1].mean()))
    assert row.diff.mean_diff == pytest.approx(float((pb[1] - pb[0]).mean()))
    assert row.diff.low <= row.diff.mean_diff <= row.diff.high
    assert res.set_level["cka_patches_vs_attn"][0] == pytest.approx(res.row("cka_patches_vs_attn").mean_a)
    assert np.isnan(res.set_level["cka_registers_vs_attn"][0]) and not np.isnan(res.set_level["cka_registers_vs_attn"][1])
    assert res.register_high_share[0] is None and res.register_high_share[1].shape == (3, 4)
    assert res.cls_layer_cosine[1].shape == (3,) and res.cls_layer_cosine[1][-1] == pytest.approx(1.0)


def test_corloc_and_mcnemar_use_the_evaluation_protocol(pair):
    plain, regs, x, boxes, proto, res = pair
    for k in range(2):
        want = [proto.evaluate(res.nave[k].segments[i, 0], boxes[i], strategies=("inner",))["inner"].correct for i in range(5)]
        np.testing.assert_array_equal(res.corloc.hits_a if k == 0 else res.corloc.hits_b, want)
    assert res.corloc.mcnemar == mcnemar_test(res.corloc.hits_a, res.corloc.hits_b)
    assert res.corloc.corloc_a == pytest.approx(np.mean(res.corloc.hits_a))
    np.testing.assert_array_equal(res.per_image["corloc_hit"][0], res.corloc.hits_a.astype(float))


def test_markdown_and_csv(pair, tmp_path):
    *_, res = pair
    md = res.to_markdown()
    assert "| mass_registers |" in md and "ari_between_models" in md and "McNemar exact binomial" in md
    assert md.count("\n| ") >= len(res.aggregated)
    path = res.to_csv(tmp_path / "per_image.csv")
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 5 * (2 * len(MEASURES) + 2)
    r = [r for r in rows if r["image"] == "3" and r["model"] == "with registers" and r["measure"] == "mass_registers"][0]
    assert float(r["value"]) == pytest.approx(res.per_image["mass_registers"][1][3])
    between = [r for r in rows if r["model"] == "between" and r["measure"] == "ari_between_models"]
    np.testing.assert_allclose([float(r["value"]) for r in between], res.pair["ari_between_models"])
    agg = list(csv.DictReader(open(res.to_csv(tmp_path / "agg.csv", which="aggregated"))))
    assert [a["measure"] for a in agg] == [r.measure for r in res.aggregated]
    with pytest.raises(ValueError, match="which"):
        res.to_csv(tmp_path / "x.csv", which="all")


def test_figure_renders_headless_with_seven_titled_columns(pair):
    *_, res = pair
    fig, axes = res.plot([0, 3])
    assert axes.shape == (2, 7)
    titles = [ax.get_title() for ax in axes.ravel()]
    assert all(titles) and titles[1] == "NAVE without registers #0" and titles[6] == "CLS attn with registers #0"
    assert titles[7:] == [t.replace("#0", "#3") for t in titles[:7]]
    # every panel shows the data of its image, model and measure
    from captum_nave.visualization import overlay_segments

    for r, i in enumerate((0, 3)):
        shown = [ax.get_images()[-1].get_array() for ax in axes[r]]
        img = res.display[i].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(shown[0], img)
        for k in range(2):
            np.testing.assert_array_equal(shown[1 + k], overlay_segments(res.display[i], res.nave[k].segments[i, 0], alpha=0.55))
            st, n_pre = res.stats[k], res.stats[k].layout.num_prefix_tokens
            h, w = st.grid
            norms = st.block_norms[i, res.layer[k], n_pre:].reshape(h, w)  # patch tokens, row-major
            np.testing.assert_array_equal(shown[3 + k], norms.numpy())
            cls_row = st.attention_at(res.layer[k])[i].mean(0)[n_pre:].reshape(h, w)  # heads averaged
            np.testing.assert_allclose(shown[5 + k], cls_row.numpy(), rtol=1e-6)
            # the maps are drawn over the image, on its full extent
            assert axes[r, 3 + k].get_images()[0].get_extent() == [-0.5, 47.5, 47.5, -0.5]
        assert not np.array_equal(shown[1], shown[2]) and not np.array_equal(shown[3], shown[4])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"
    from matplotlib.figure import Figure

    fig2 = Figure()
    given = fig2.subplots(1, 7)
    f, ax = res.plot([1], plt_fig_axis=(fig2, given))
    assert f is fig2 and ax.shape == (1, 7) and ax[0, 3].get_title().startswith("norm")
    with pytest.raises(ValueError, match="plt_fig_axis"):
        res.plot([0, 1], plt_fig_axis=(fig2, given))
    with pytest.raises(ValueError, match="images"):
        res.plot([9])


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(m.training) for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [getattr(m, "fused_attn", None) for m in model.modules()],
    )


def _assert_unchanged(model, snap):
    state, modes, grads, flags = snap
    now = model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in state.items())
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads
    assert [getattr(m, "fused_attn", None) for m in model.modules()] == flags
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_models_unchanged_also_after_failure():
    a = tiny_timm(img_size=32, depth=2)
    b = hand_vit(depth=2)
    a.blocks[0].requires_grad_(False)
    b.layers[1].train()  # a mixed-mode model stays mixed
    snaps = (_snapshot(a), _snapshot(b))
    with pytest.warns(RuntimeWarning, match="training mode"):
        compare_registers(a, b, torch.randn(2, 3, 32, 32), layout_b=HAND_LAYOUT, n_clusters=2, n_boot=50,
                          attention_method="auto")
    _assert_unchanged(a, snaps[0])
    _assert_unchanged(b, snaps[1])
    # failure inside the forward pass of the eager path (timm rejects a 40x40 input)
    with pytest.raises(Exception):
        compare_registers(a, a, torch.randn(1, 3, 40, 40), attention_method="eager", n_boot=10)
    _assert_unchanged(a, snaps[0])
    # failure raised by a measurement hook (wrong layout)
    bad = HAND_LAYOUT.with_overrides(num_heads=5)
    with pytest.warns(RuntimeWarning, match="training mode"), pytest.raises(ValueError, match="num_heads"):
        compare_registers(b, b, torch.randn(1, 3, 32, 32), layout_a=bad, layout_b=bad, n_boot=10)
    _assert_unchanged(b, snaps[1])


def test_different_patch_sizes_and_no_cls_model():
    a = tiny_timm(img_size=48, patch_size=8, depth=2, class_token=False, global_pool="avg")
    b = tiny_timm(img_size=48, patch_size=16, depth=2, reg_tokens=2)
    res = compare_registers(a, b, torch.randn(3, 3, 48, 48), n_clusters=2, n_boot=50, names=("gap", "reg"))
    assert res.stats[0].grid == (6, 6) and res.stats[1].grid == (3, 3)
    assert res.config["attention_query"] == ("mean_patches", "cls")
    assert np.isnan(res.per_image["mass_cls"][0]).all() and np.isnan(res.per_image["cos_patches_attn"][0]).all()
    assert not np.isnan(res.per_image["cos_patches_attn"][1]).any()
    assert res.pair["ari_between_models"].shape == (3,)
    fig, axes = res.plot([0])
    assert axes.shape == (1, 7)


def test_hand_described_pair_and_bad_arguments():
    a, b = hand_vit(seed=0), hand_vit(seed=1)
    x = torch.randn(2, 3, 32, 32)
    res = compare_registers(a, b, x, layout_a=HAND_LAYOUT, layout_b=HAND_LAYOUT, n_clusters=2, n_boot=50)
    assert res.layer == (2, 2) and res.stats[0].layout is HAND_LAYOUT
    assert (res.per_image["mass_registers"][0] > 0).all()
    with pytest.raises(ValueError, match="model: cannot read the token layout"):
        compare_registers(a, b, x)
    with pytest.raises(ValueError, match="seeds"):
        compare_registers(a, b, x, layout_a=HAND_LAYOUT, layout_b=HAND_LAYOUT, seeds=(1, 1))
    with pytest.raises(ValueError, match="boxes"):
        compare_registers(a, b, x, layout_a=HAND_LAYOUT, layout_b=HAND_LAYOUT, boxes=[[[0, 0, 1, 1]]])
    with pytest.raises(ValueError, match="images_b"):
        compare_registers(a, b, x, images_b=x[:1], layout_a=HAND_LAYOUT, layout_b=HAND_LAYOUT)
    with pytest.raises(TypeError, match="model_b"):
        compare_registers(a, "vit", x)

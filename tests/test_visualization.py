"""Tests of captum_nave.visualization: palette, boundaries and the structure of every figure.

Figures are rendered headless and saved as PNG in the test's temporary folder.
"""

from __future__ import annotations

from itertools import combinations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from captum_nave.visualization import (
    OKABE_ITO,
    TOL_MUTED,
    concept_top_images,
    overlay_segments,
    plot_concept_gallery,
    plot_segment_relevance,
    plot_segments,
    plot_side_by_side,
    plot_stability,
    segment_boundaries,
    segment_colors,
    stability_ari,
    stability_image,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _save(fig, path):
    fig.savefig(path, dpi=40)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    return path


@pytest.fixture(autouse=True)
def _no_windows(monkeypatch):
    import matplotlib.pyplot as plt

    def fail(*a, **k):  # pragma: no cover - only reached on a bug
        raise AssertionError("plt.show() called without show=True")

    monkeypatch.setattr(plt, "show", fail)
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before  # figures are not registered with pyplot


def _blocks(h=12, w=16):
    """Label map with 4 quadrant segments 0..3."""
    lab = np.zeros((h, w), dtype=np.int64)
    lab[: h // 2, w // 2 :] = 1
    lab[h // 2 :, : w // 2] = 2
    lab[h // 2 :, w // 2 :] = 3
    return lab


# --------------------------------------------------------------------------- palette
def test_palette_is_okabe_ito_then_tol_and_stable():
    c = segment_colors(17)
    np.testing.assert_allclose(c[:8], np.array(OKABE_ITO))
    np.testing.assert_allclose(c[8:17], np.array(TOL_MUTED))
    # id i keeps its colour whatever n is
    np.testing.assert_allclose(segment_colors(40)[:17], c)
    np.testing.assert_allclose(segment_colors(3), c[:3])
    big = segment_colors(40)
    dists = [np.linalg.norm(big[i] - big[j]) for i, j in combinations(range(40), 2)]
    assert min(dists) > 0.05  # all distinct
    assert min(np.linalg.norm(c[i] - c[j]) for i, j in combinations(range(17), 2)) > 0.15
    assert ((big >= 0) & (big <= 1)).all()
    with pytest.raises(ValueError, match="n: expected an int >= 0, got -1"):
        segment_colors(-1)


# --------------------------------------------------------------------------- boundaries
def test_boundaries_on_a_hand_made_map():
    lab = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]])
    expected = np.array([[0, 1, 1], [1, 1, 1], [1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(segment_boundaries(lab), expected)
    np.testing.assert_array_equal(segment_boundaries(torch.from_numpy(lab)[None]), expected)
    assert not segment_boundaries(np.zeros((4, 5), dtype=np.int64)).any()


def test_boundaries_match_a_plain_loop():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 3, size=(9, 11))
    ref = np.zeros(lab.shape, dtype=bool)
    for y in range(lab.shape[0]):
        for x in range(lab.shape[1]):
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < lab.shape[0] and 0 <= xx < lab.shape[1] and lab[yy, xx] != lab[y, x]:
                    ref[y, x] = True
    np.testing.assert_array_equal(segment_boundaries(lab), ref)


def test_overlay_colours_and_errors():
    grey = np.full((3, 12, 16), 0.5)
    lab = _blocks()
    out = overlay_segments(grey, lab, alpha=0.4, boundaries=False)
    cols = segment_colors(4)
    for k in range(4):
        np.testing.assert_allclose(out[lab == k], np.broadcast_to(0.6 * 0.5 + 0.4 * cols[k], ((lab == k).sum(), 3)))
    out = overlay_segments(grey, lab, alpha=0.4)
    np.testing.assert_allclose(out[segment_boundaries(lab)], 1.0)
    with pytest.raises(ValueError, match=r"image: expected values in \[0, 1\]"):
        overlay_segments(grey * 255, lab)
    with pytest.raises(ValueError, match="segments: expected the image's spatial size"):
        overlay_segments(grey, lab[:-1])
    with pytest.raises(TypeError, match="segments: expected integer"):
        overlay_segments(grey, lab.astype(float))


# --------------------------------------------------------------------------- figures
def test_plot_segments_legend_and_pixels(tmp_path):
    img = torch.rand(3, 12, 16)
    lab = _blocks()
    lab[lab == 1] = 5  # present ids: 0, 2, 3, 5
    fig, ax = plot_segments(img, torch.from_numpy(lab)[None], title="t")
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["segment 0", "segment 2", "segment 3", "segment 5"]
    colours = [h.get_facecolor()[:3] for h in ax.get_legend().legend_handles]
    # each swatch has the colour its segment takes on a neutral grey area of the image
    grey = overlay_segments(np.full((12, 16, 3), 0.5), lab, boundaries=False)
    np.testing.assert_allclose(colours, [grey[lab == k][0] for k in (0, 2, 3, 5)])
    assert not np.allclose(colours, segment_colors(6)[[0, 2, 3, 5]])
    fig_a, ax_a = plot_segments(img, lab, alpha=0.8)
    grey_a = overlay_segments(np.full((12, 16, 3), 0.5), lab, alpha=0.8, boundaries=False)
    np.testing.assert_allclose([h.get_facecolor()[:3] for h in ax_a.get_legend().legend_handles],
                               [grey_a[lab == k][0] for k in (0, 2, 3, 5)])
    assert ax.get_title() == "t"
    shown = ax.get_images()[0].get_array()
    np.testing.assert_allclose(shown, overlay_segments(img, lab))
    _save(fig, tmp_path / "segments.png")

    fig, ax = plot_segments(img, lab, segment_names={0: "sky", 5: "cat"}, legend=True)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sky", "segment 2", "segment 3", "cat"]
    fig2, ax2 = plot_segments(img, lab, legend=False, plt_fig_axis=(fig, ax))
    assert fig2 is fig and ax2 is ax


def test_side_by_side_structure_and_shared_colours(tmp_path):
    n, h, w = 2, 12, 16
    images = torch.full((n, 3, h, w), 0.5)
    a = torch.from_numpy(_blocks(h, w))[None, None].repeat(n, 1, 1, 1)
    b = torch.flip(a, dims=[-1])  # other layout, same ids
    gc = torch.rand(n, 1, h, w)
    ig = torch.randn(n, 1, h, w)
    panels = {"modelA": {"nave": a, "gradcam": gc, "ig": ig}, "modelB": {"nave": b, "ig": ig}}
    fig, axes = plot_side_by_side(images, panels, image_names=["cat", "cup"])
    assert axes.shape == (n * 2, 4)
    assert [ax.get_title() for ax in axes[0]] == ["Image", "NAVE", "Grad-CAM", "IG"]
    assert all(ax.get_title() == "" for ax in axes[1:].ravel())
    assert [axes[r, 0].get_ylabel() for r in range(4)] == ["cat\nmodelA", "cat\nmodelB", "cup\nmodelA", "cup\nmodelB"]
    assert [t.get_text() for t in axes[1, 2].texts] == ["n/a"]  # modelB has no Grad-CAM
    # the same id gets the same colour in panels with different layouts
    interior = ~segment_boundaries(a[0, 0].numpy()) & ~segment_boundaries(b[0, 0].numpy())
    pa, pb = axes[0, 1].get_images()[0].get_array(), axes[1, 1].get_images()[0].get_array()
    for k in range(4):
        ma, mb = (a[0, 0].numpy() == k) & interior, (b[0, 0].numpy() == k) & interior
        np.testing.assert_allclose(pa[ma], pb[mb][: ma.sum()])
        np.testing.assert_allclose(pa[ma][0], 0.55 * 0.5 + 0.45 * segment_colors(4)[k])
    # heatmaps: sequential for non-negative, diverging and symmetric for signed maps
    im_gc = axes[0, 2].get_images()[-1]
    assert im_gc.get_cmap().name == "viridis"
    assert im_gc.get_clim() == pytest.approx((0.0, np.percentile(gc[0].numpy(), 99)))
    im_ig = axes[0, 3].get_images()[-1]
    lim = np.percentile(np.abs(ig[0].numpy()), 99)
    assert im_ig.get_cmap().name == "RdBu_r" and im_ig.get_clim() == pytest.approx((-lim, lim))
    _save(fig, tmp_path / "side_rows.png")

    fig, axes = plot_side_by_side(images, panels, models_as="columns")
    assert axes.shape == (n, 1 + 2 * 3)
    assert axes[0, 1].get_title() == "modelA\nNAVE" and axes[0, 6].get_title() == "modelB\nIG"
    _save(fig, tmp_path / "side_cols.png")

    with pytest.raises(ValueError, match="models_as"):
        plot_side_by_side(images, panels, models_as="diagonal")
    with pytest.raises(ValueError, match=r"panels\['modelA'\]\['ig'\]: expected spatial size"):
        plot_side_by_side(images, {"modelA": {"ig": ig[..., :-1]}})
    with pytest.raises(ValueError, match=r"plt_fig_axis: expected 4 axes \(2 x 2\), got 14"):
        plot_side_by_side(images, {"m": {"ig": ig}}, plt_fig_axis=(fig, axes))


def test_segment_relevance_bars(tmp_path):
    rel = torch.tensor([0.5, 0.3, -0.1, 0.3])
    fig, ax = plot_segment_relevance(rel, segment_ids=[0, 2, 3, 7], title="r")
    bars = ax.patches
    assert len(bars) == 4
    assert [b.get_height() for b in bars] == pytest.approx(rel.tolist())
    np.testing.assert_allclose([b.get_facecolor()[:3] for b in bars], segment_colors(8)[[0, 2, 3, 7]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2", "3", "7"]
    _save(fig, tmp_path / "relevance.png")
    fig, ax = plot_segment_relevance([0.5, 0.5], area_share=[0.9, 0.1])
    assert len(ax.patches) == 4 and len(ax.get_legend().get_texts()) == 2
    with pytest.raises(ValueError, match=r"area_share: expected shape \(2,\)"):
        plot_segment_relevance([0.5, 0.5], area_share=[1.0])


# --------------------------------------------------------------------------- stability
def test_stability_identical_and_permuted_maps(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((3, 12, 16))
    lab = _blocks()
    maps = np.stack([lab, lab, lab])[:, None]
    assert stability_ari(maps) == pytest.approx(1.0)
    perm = np.array([2, 0, 3, 1])
    assert stability_ari(np.stack([lab, perm[lab]])) == pytest.approx(1.0)
    noise = rng.integers(0, 4, size=(3, 12, 16))
    assert stability_ari(noise) < 0.1

    stab = stability_image(img, maps)
    hwc = img.transpose(1, 2, 0)
    for k in range(4):
        np.testing.assert_allclose(stab[lab == k], np.broadcast_to(hwc[lab == k].mean(0), ((lab == k).sum(), 3)))
    # two different partitions: the pixelwise average of their segment-mean images
    other = np.zeros_like(lab)
    other[:, 8:] = 1
    means = lambda l: np.stack([hwc[l == l[y, x]].mean(0) for y in range(12) for x in range(16)]).reshape(12, 16, 3)
    np.testing.assert_allclose(stability_image(img, np.stack([lab, other])), (means(lab) + means(other)) / 2)

    fig, axes = plot_stability(torch.from_numpy(img).float(), torch.from_numpy(maps))
    assert axes.shape == (3,)
    assert "ARI = 1.000" in fig._suptitle.get_text() and "3 seeds" in fig._suptitle.get_text()
    np.testing.assert_allclose(axes[2].get_images()[0].get_array(), stab, atol=1e-6)
    _save(fig, tmp_path / "stability.png")
    with pytest.raises(ValueError, match="at least 2 seeds"):
        stability_ari(maps[:1])


# --------------------------------------------------------------------------- concepts
def test_concept_gallery(tmp_path):
    h, w = 8, 8
    maps = np.zeros((3, 1, h, w), dtype=np.int64)
    maps[0, 0, :, :2] = 1  # concept 1 covers 25% of image 0
    maps[1, 0, :, :6] = 1  # 75% of image 1
    maps[2, 0, :4] = 2  # concept 2 only in image 2 (50%)
    top = concept_top_images(maps, n_top=2)
    assert top == {0: [(0, 0.75), (2, 0.5)], 1: [(1, 0.75), (0, 0.25)], 2: [(2, 0.5)]}
    images = torch.rand(3, 3, h, w)
    fig, axes = plot_concept_gallery(images, torch.from_numpy(maps), n_top=2)
    assert axes.shape == (3, 2)
    assert [axes[r, 0].get_ylabel() for r in range(3)] == ["concept 0", "concept 1", "concept 2"]
    assert axes[1, 0].get_title() == "image 1: 75%"
    assert not axes[2, 1].axison and axes[2, 0].axison  # concept 2 appears in one image only
    shown = axes[1, 0].get_images()[0].get_array()
    img1 = images[1].permute(1, 2, 0).numpy()
    inside = (maps[1, 0] == 1) & ~segment_boundaries(maps[1, 0] == 1)
    outside = (maps[1, 0] != 1) & ~segment_boundaries((maps[1, 0] == 1).astype(np.int64))
    np.testing.assert_allclose(shown[inside], img1[inside], atol=1e-6)
    np.testing.assert_allclose(shown[outside], img1[outside] * 0.25, atol=1e-6)
    _save(fig, tmp_path / "gallery.png")
    with pytest.raises(ValueError, match="concept_maps: expected shape"):
        plot_concept_gallery(images, maps[:2])

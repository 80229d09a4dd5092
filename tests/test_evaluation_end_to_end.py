"""End to end: a synthetic box dataset in VOC layout, a tiny CNN trained in the test.

Images (56-96 px, varying sizes) show one shape (disc, square or triangle) filled
with a checkerboard texture on a smooth multi-colour background with striped
distractor patches. A 5-layer CNN is trained for a few seconds (80 Adam steps) to
segment the shape. NAVE (K = 5, paper protocol with min_area / border scaled to the small
images) on its features must localise the shape far more often than the same
network at its random initialisation and than SLIC with the same selection.
The same label maps are scored with the authors' conventions (default) and the
clean ones; every authors' selection equals a plain port of the authors' script.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from corloc_authors import authors_reference

from captum_nave.evaluation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CorLocProtocol,
    GridSegmenter,
    NaveSegmenter,
    SlicSegmenter,
    load_image,
    read_records,
    read_voc,
    run_corloc,
)


def _smooth(rng, h, w):
    cells = int(rng.integers(2, 5))
    g = torch.from_numpy(rng.random((cells + 1, cells + 1, 3))).permute(2, 0, 1)[None].float()
    up = nn.functional.interpolate(g, size=(h, w), mode="bilinear", align_corners=True)
    return up[0].permute(1, 2, 0).numpy()


def make_image(rng, h, w):
    """(image uint8 (h, w, 3), object mask (h, w), box [x0, y0, x1, y1) 0-based exclusive)."""
    img = _smooth(rng, h, w)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(2):  # striped distractors
        ph, pw = (int(v) for v in rng.integers(12, 30, size=2))
        y0, x0 = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
        period, ang = int(rng.integers(3, 6)), rng.random() * np.pi
        stripes = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period) > 0
        c1, c2 = rng.random(3), rng.random(3)
        m = (yy >= y0) & (yy < y0 + ph) & (xx >= x0) & (xx < x0 + pw)
        img[m] = np.where(stripes[m][:, None], c1, c2)
    size = int(rng.integers(min(h, w) // 3, min(h, w) // 2 + 4))
    y0, x0 = int(rng.integers(0, h - size)), int(rng.integers(0, w - size))
    cy, cx = y0 + (size - 1) / 2, x0 + (size - 1) / 2
    kind = int(rng.integers(3))
    if kind == 0:
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size / 2) ** 2
    elif kind == 1:
        m = (yy >= y0) & (yy < y0 + size) & (xx >= x0) & (xx < x0 + size)
    else:
        m = (yy >= y0) & (yy < y0 + size) & (np.abs(xx - cx) <= (yy - y0) / 2)
    period = int(rng.integers(2, 4))
    checker = ((yy // period + xx // period) % 2) == 0
    c1, c2 = rng.random(3), rng.random(3)
    img[m] = np.where(checker[m][:, None], c1, c2)
    img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)
    ys, xs = np.nonzero(m)
    return (img * 255).astype(np.uint8), m, [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def write_voc(root: Path, n: int, seed: int) -> Path:
    """VOCdevkit/VOC2007 layout with 1-based inclusive XML boxes."""
    base = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(56, 97, size=2))
        img, _, (x0, y0, x1, y1) = make_image(rng, h, w)
        iid = f"{i:06d}"
        ids.append(iid)
        Image.fromarray(img).save(base / "JPEGImages" / f"{iid}.png")  # lossless textures
        (base / "Annotations" / f"{iid}.xml").write_text(
            f"<annotation><filename>{iid}.png</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size><object><name>shape</name>"
            f"<difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>"
        )
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return base


class ShapeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(i, o, **kw):
            return nn.Sequential(nn.Conv2d(i, o, 3, bias=False, **kw), nn.BatchNorm2d(o), nn.ReLU())

        self.b1 = nn.Sequential(block(3, 12, padding=1), block(12, 12, padding=1, stride=2))
        self.b2 = nn.Sequential(block(12, 24, padding=1), block(24, 24, padding=1, stride=2))
        self.b3 = block(24, 24, padding=2, dilation=2)
        self.head = nn.Conv2d(24, 1, 1)

    def forward(self, x):
        y = self.head(self.b3(self.b2(self.b1(x))))
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def train_segmenter(net: nn.Module, steps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    losses = []
    for _ in range(steps):
        batch = [make_image(rng, 48, 48) for _ in range(8)]
        x = torch.stack([torch.from_numpy(b[0]).permute(2, 0, 1).float() / 255 for b in batch])
        m = torch.stack([torch.from_numpy(b[1]).float() for b in batch])[:, None]
        loss = nn.functional.binary_cross_entropy_with_logits(net((x - mean) / std), m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval()
    return float(np.mean(losses[-10:]))


class Cached:
    """A segmenter whose label maps are computed once and kept (to score them twice)."""

    def __init__(self, inner):
        self.inner = inner
        self.labels = {}

    def __call__(self, image):
        key = image.tobytes()
        if key not in self.labels:
            self.labels[key] = np.asarray(self.inner(image))
        return self.labels[key]

    def config(self):
        return self.inner.config()


def test_trained_cnn_beats_random_init_and_slic(tmp_path):
    torch.manual_seed(0)
    write_voc(tmp_path, n=32, seed=1)
    data = read_voc(tmp_path / "VOCdevkit")
    assert len(data) == 32 and data.n_skipped == 0

    trained = ShapeNet()
    random_init = ShapeNet()
    random_init.load_state_dict(trained.state_dict())
    random_init.eval()
    final_loss = train_segmenter(trained, steps=80, seed=2)
    assert final_loss < 0.3  # it learned the shapes (a constant predictor scores ~0.4)

    # the paper's constants, scaled to ~10x smaller images (784 px -> 16 px, 14 px -> 2 px)
    protocol = CorLocProtocol(min_area=16, border=2)
    methods = {
        "trained CNN": Cached(NaveSegmenter(trained, ["b3"], n_clusters=5, random_state=0)),
        "random-init CNN": Cached(NaveSegmenter(random_init, ["b3"], n_clusters=5, random_state=0)),
        "SLIC": Cached(SlicSegmenter(n_segments=5)),
        "grid 3x3": Cached(GridSegmenter(3, 3)),
    }
    summary = run_corloc(data, methods, tmp_path / "out", protocol=protocol, fsync=False)
    clean = run_corloc(data, methods, tmp_path / "clean", fsync=False,
                       protocol=CorLocProtocol(min_area=16, border=2, conventions="clean"))
    print("\n" + summary.to_markdown() + "\n" + clean.to_markdown())
    for s in ("inner", "outer"):
        t = summary.corloc("trained CNN", s)
        assert t >= 0.6, summary.to_markdown()
        assert t - summary.corloc("random-init CNN", s) >= 0.3, summary.to_markdown()
        assert t - summary.corloc("SLIC", s) >= 0.3, summary.to_markdown()
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| trained CNN |" in md and "protocol 'authors'" in md
    assert "protocol 'clean'" in (tmp_path / "clean" / "summary.md").read_text()

    # every image's selection with the default protocol is the authors' script's
    images = {r.image_id: load_image(r) for r in data}
    for name, seg in methods.items():
        recs = read_records(tmp_path / "out" / "records" / f"{name.replace(' ', '_')}.shard-0-of-1.jsonl")
        assert len(recs) == len(data)
        for r, rec in zip(recs, data):
            ref = authors_reference(seg(images[rec.image_id]), rec.boxes.astype(np.int64), 16, 2)
            for st in ("inner", "outer"):
                got = (r[st]["component"], r[st]["gt_index"], r[st]["iou"], r[st]["correct"])
                want = (ref[st]["component"], ref[st]["gt_index"], ref[st]["iou"], ref[st]["correct"])
                assert got == want, (name, rec.image_id, st)

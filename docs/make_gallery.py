"""Regenerate the README gallery figures of the report / tutorials (run from the repo root).

    python docs/make_gallery.py docs/figures
"""
import base64, os, subprocess, sys, tempfile
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import nbformat
import torch
from nbclient import NotebookClient

out = Path(sys.argv[1] if len(sys.argv) > 1 else "gallery")
out.mkdir(parents=True, exist_ok=True)
repo = Path.cwd()

# 1. the HTML report of the four scikit-image photos on the offline model + a browser screenshot
from captum_nave.models import load_model, sample_images
from captum_nave.report import collect_report, render_report
from captum_nave.visualization import plot_side_by_side, plot_stability

model, info = load_model()
data = collect_report(sample_images(), {"efficientnet_lite0": (model, info)}, size=224, seeds=(0, 1, 2, 3, 4),
                      method_options={"ig": {"n_steps": 32, "internal_batch_size": 16}},
                      title="captum-nave report: scikit-image photos, EfficientNet-Lite0 (ImageNet)")
html = out / "report_example.html"
html.write_text(render_report(data), encoding="utf-8")
run = data.runs[0]
# LRP with the default composite for CNNs (flat / z+ / epsilon), named in the column title
composite = run.attributions["lrp"].options["composite"]
assert composite == "epsilon-plus-flat", composite
titles = {"lrp": f"LRP ({composite})"}
panels = {"nave": run.nave.segments, **{titles.get(m, m): r.maps for m, r in run.attributions.items()}}
fig, _ = plot_side_by_side(data.images, {"efficientnet_lite0": panels}, image_names=data.image_names)
fig.savefig(out / "side_by_side.png", dpi=100)
fig, _ = plot_stability(data.images[0], run.seed_maps[:, 0])
fig.savefig(out / "stability_chelsea.png", dpi=100)
with tempfile.TemporaryDirectory() as d:
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={d}",
                    f"--screenshot={out / 'report_screenshot.png'}", "--window-size=1280,2400", html.resolve().as_uri()],
                   check=True, capture_output=True, timeout=300)

# README sizes: 75 % of the figure, the top of the report page; 256-colour palettes
from PIL import Image

for name, crop, size in [("side_by_side.png", None, (900, 720)), ("report_screenshot.png", (0, 0, 1280, 1500), (700, 820))]:
    im = Image.open(out / name).convert("RGB")
    im = (im.crop(crop) if crop else im).resize(size, Image.LANCZOS)
    im.quantize(colors=256, method=Image.MEDIANCUT, dither=Image.NONE).save(out / name, optimize=True)

# 2. figures of the tutorials (executed here, outputs extracted)
for name, keep in [("03_registers.ipynb", {0: "registers.png"}),
                   ("04_concepts_clever_hans.ipynb", {1: "clever_hans_watermark_concept.png"}),
                   ("05_corloc.ipynb", {0: "corloc_overlays.png"})]:
    nb = nbformat.read(repo / "tutorials" / name, as_version=4)
    with tempfile.TemporaryDirectory() as d:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": d}}).execute()
    images = [o["data"]["image/png"] for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    for i, fname in keep.items():
        (out / fname).write_bytes(base64.b64decode(images[i]))
for p in sorted(out.iterdir()):
    print(p)

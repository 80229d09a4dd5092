"""Faithfulness table of NAVE, Grad-CAM, IG and LRP on the four scikit-image photos.

Offline EfficientNet-Lite0 (real ImageNet weights), 224 x 224, each photo's predicted
class. Deletion / insertion AUCs (probability of the class, blurred baseline, 20 pixel
steps; NAVE segments K = 5 ranked by each map's relevance mass and by segment
importance; 50 SLIC superpixels; a 4 x 4 grid; a random map as reference) and the
cascading model-randomisation check over all 12 stages.

Run ``python benchmarks/faithfulness_photos.py [OUT.md]``; it prints the tables (and
writes them to OUT.md, default ``benchmarks/faithfulness_photos.md``).
"""

from __future__ import annotations

import os
import platform
import sys
import time

import torch


def main(argv: list) -> int:
    from captum_nave import LayerClusterExplainer
    from captum_nave.attribution import attribute, segment_importance
    from captum_nave.evaluation.faithfulness import faithfulness_audit, randomisation_check
    from captum_nave.models import imagenet_class_name, load_model, preprocess, sample_images, resize_images

    out = argv[0] if argv else os.path.join(os.path.dirname(__file__), "faithfulness_photos.md")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, info = load_model()
    photos = sample_images()
    names = list(photos)
    x = torch.cat([preprocess(p, info) for p in photos.values()])
    x01 = torch.cat([resize_images(p, tuple(info["input_size"])) for p in photos.values()])
    with torch.no_grad():
        target = model(x).argmax(1)
    seg = LayerClusterExplainer(model, info["default_layers"]).attribute(x, n_clusters=5, random_state=0)
    opts = {"gradcam": {}, "ig": {"n_steps": 32, "internal_batch_size": 16}, "lrp": {}}
    maps = {m: attribute(m, model, x, target, **o).maps for m, o in opts.items()}
    imp = segment_importance(model, x, seg, target)
    audit = faithfulness_audit(
        model, x, maps, target, segments=seg, segment_scores={"segment_importance": imp}, images=x01,
        image_names=names, model_name=info["name"], progress=sys.stderr.isatty(),
    )
    t_audit = time.perf_counter() - t0
    t1 = time.perf_counter()
    sanity = randomisation_check(
        model, x, target, methods=["nave", "gradcam", "ig", "lrp"],
        method_options={"nave": {"layers": info["default_layers"]}, **{k: v for k, v in opts.items() if v}},
        progress=sys.stderr.isatty(),
    )
    t_rand = time.perf_counter() - t1

    lines = [
        "# Faithfulness on the scikit-image photos (offline EfficientNet-Lite0)",
        "",
        "Images (predicted class): " + ", ".join(
            f"{n} ({imagenet_class_name(int(t))})" for n, t in zip(names, target)),
        "",
        "Deletion / insertion: probability of the predicted class while the highest-ranked pixels or units are "
        "replaced by the blurred image (deletion, lower AUC is better) or put back into it (insertion, higher "
        "is better); mean over the 4 photos. `segment_importance` ranks NAVE segments by the drop of the class "
        "score when each is ablated.",
        "",
        audit.to_markdown(),
        "",
        "Cascading model randomisation (Adebayo et al. 2018), mean over the photos: similarity of each method's "
        "map to the trained model's map after the top modules are re-initialised (down to the named one). "
        "Spearman of |map| and SSIM for Grad-CAM / IG / LRP, ARI of the segments for NAVE.",
        "",
        "| method | measure | " + " | ".join(sanity.stages) + " |",
        "|---|---|" + "---|" * len(sanity.stages),
    ]
    for m in sanity.methods:
        for key, vals in sanity.similarity(m).items():
            lines.append(f"| {m} | {key} | " + " | ".join(f"{float(v):.3f}" for v in vals.mean(dim=1)) + " |")
    lines += [
        "",
        f"Timings on {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads: "
        f"maps + audit {t_audit:.0f} s, randomisation ({len(sanity.stages)} stages x 4 methods) {t_rand:.0f} s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

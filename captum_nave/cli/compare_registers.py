"""``captum-nave compare-registers``: compare a ViT without and with registers on images."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Sequence, Tuple

from ._models import MODEL_HELP

NAME = "compare-registers"

_EPILOG = """\
Example:
  captum-nave compare-registers --model-a vit_small_patch14_dinov2.lvd142m \\
      --model-b vit_small_patch14_reg4_dinov2.lvd142m --size 224 --out cmp cat.jpg dog.jpg

Writes OUT/summary.md (aggregated measures with bootstrap CIs), OUT/per_image.csv,
OUT/aggregated.csv and OUT/figure.png (image | NAVE A | NAVE B | norm A | norm B |
CLS attention A | CLS attention B). With --boxes FILE (JSON mapping each image file name
to a list of [x_min, y_min, x_max, y_max] boxes in original image pixels) CorLoc of both
models and McNemar's test are added.

When a model has a classifier head, the class-embedding lens (every block's tokens
projected through the final norm and the head onto the classes) adds the lens_*
measures to the tables, OUT/lens_layers.csv (per block: share of patch tokens, CLS
and register tokens whose top class is the predicted one), OUT/lens_segments.csv
(per image and NAVE segment: the first block from which at least half of its tokens
have the predicted class on top, -1 for never) and OUT/lens.png (identifiability per
block | segment x block | the last block's tokens on the first image, one row per
model). --no-lens leaves it out.
"""


def register(subparsers: Any) -> None:
    """Add the ``compare-registers`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        NAME,
        help="compare a ViT without registers with one with registers (norms, attention, NAVE)",
        description=(
            "Measure high-norm outlier tokens, CLS attention (entropy, mass on registers / "
            "patches / outliers), the CLS decomposition (patch vs register vs skip), NAVE "
            "agreement with its seed noise floor and optionally CorLoc, for two ViTs on the "
            "same images, with paired bootstrap confidence intervals."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--model-a", required=True, help="model without registers: " + MODEL_HELP)
    p.add_argument("--model-b", required=True, help="model with registers (same forms as --model-a)")
    p.add_argument("--name-a", default=None, help="display name of model A (default: its name)")
    p.add_argument("--name-b", default=None, help="display name of model B (default: its name)")
    p.add_argument("--out", default="compare-registers", help="output folder (default: ./compare-registers)")
    p.add_argument(
        "--size", type=int, default=None,
        help="square input size for both models (default: each model's training size); "
        "must be a multiple of both patch sizes",
    )
    p.add_argument("--no-pretrained", action="store_true", help="random weights (no download)")
    p.add_argument("--n-clusters", type=int, default=5, help="NAVE K (default: 5)")
    p.add_argument("--layer", type=int, default=-1, help="block index to measure (default: -1, the last)")
    p.add_argument("--outlier-k", type=float, default=5.0, help="robust outlier rule: median + k * 1.4826 * MAD (default: 5)")
    p.add_argument("--outlier-threshold", type=float, default=None, help="fixed norm threshold instead of the robust rule")
    p.add_argument("--boxes", default=None, help="JSON file: {image file name: [[x0, y0, x1, y1], ...]}")
    p.add_argument("--corloc-strategy", choices=("inner", "outer"), default="inner")
    p.add_argument("--corloc-protocol", choices=("authors", "clean"), default="authors",
                   help="CorLoc conventions: authors (default; the authors' evaluation script exactly) or clean "
                   "(float conventions of captum-nave 0.1)")
    p.add_argument("--corloc-min-area", type=int, default=None, help="CorLoc min component area (default: paper's 784)")
    p.add_argument("--corloc-border", type=int, default=None, help="CorLoc border width (default: paper's 14)")
    p.add_argument("--figure-rows", type=int, default=4, help="images shown in the figure (default: 4)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-lens", action="store_true", help="leave out the class-embedding lens")
    p.set_defaults(func=run, check=check)


def _fail(msg: str) -> None:
    from captum_nave.cli.common import fail

    fail(msg)


def check(args: argparse.Namespace) -> None:
    """Every check that needs no model (run before torch is imported)."""
    from captum_nave.cli.common import check_out_dir

    if args.n_clusters < 2:
        _fail(f"--n-clusters: expected an int >= 2, got {args.n_clusters}")
    if args.figure_rows < 1:
        _fail(f"--figure-rows: expected an int >= 1, got {args.figure_rows}")
    for img in args.images:
        if not os.path.isfile(img):
            _fail(f"IMAGE: file {img!r} does not exist")
    check_out_dir(args.out)


def _transform_box(box: Sequence[float], hw: Tuple[int, int], target: Tuple[int, int]) -> List[float]:
    """Map a box from original image pixels to the resize + centre-crop of ``resize_images``."""
    h, w = hw
    th, tw = target
    s = max(th / h, tw / w)
    rh, rw = max(th, round(h * s)), max(tw, round(w * s))
    top, left = (rh - th) // 2, (rw - tw) // 2
    x0, y0, x1, y1 = (float(v) for v in box)
    out = [x0 * s - left, y0 * s - top, x1 * s - left, y1 * s - top]
    return [min(max(out[0], 0.0), tw - 1.0), min(max(out[1], 0.0), th - 1.0),
            min(max(out[2], 0.0), tw - 1.0), min(max(out[3], 0.0), th - 1.0)]


def _read_boxes(path: str, images: Sequence[str]) -> Dict[str, List[List[float]]]:
    import numpy as np

    if not os.path.isfile(path):
        _fail(f"--boxes: file {path!r} does not exist")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        _fail(f"--boxes: cannot read {path!r} as JSON ({exc})")
    if not isinstance(data, dict):
        _fail(f"--boxes: expected a JSON object mapping image file names to boxes, got {type(data).__name__}")
    out: Dict[str, List[List[float]]] = {}
    for img in images:
        key = img if img in data else os.path.basename(img)
        if key not in data:
            _fail(f"--boxes: no boxes for image {img!r} in {path!r}")
        boxes = data[key]
        arr = np.asarray(boxes, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 4 or arr.shape[0] == 0:
            _fail(f"--boxes: expected a non-empty list of [x0, y0, x1, y1] for {key!r}, got {boxes!r}")
        out[img] = arr.tolist()
    return out


def _write_lens(res: Any, out: str, image_names: List[str]) -> List[str]:
    """lens_layers.csv, lens_segments.csv and lens.png of a register comparison."""
    from captum_nave.evaluation.faithfulness.audit import write_csv
    from captum_nave.files import save_figure
    from captum_nave.lens.plots import plot_lens_overview
    from captum_nave.lens.summary import LAYER_COLUMNS, SEGMENT_COLUMNS, layer_rows, segment_rows
    from captum_nave.visualization._base import _new_figure

    present = [(name, lens, nave) for name, lens, nave in zip(res.names, res.lens, res.nave) if lens is not None]
    layers = [r for name, lens, _ in present for r in layer_rows(lens, name)]
    segs = [r for name, lens, nave in present
            for r in segment_rows(lens, nave.segments, model=name, image_names=image_names)]
    paths = [write_csv(os.path.join(out, "lens_layers.csv"), LAYER_COLUMNS, layers),
             write_csv(os.path.join(out, "lens_segments.csv"), SEGMENT_COLUMNS, segs)]
    fig, axes = _new_figure(len(present), 3, (13.0, 3.6 * len(present)), False)
    for r, (name, lens, nave) in enumerate(present):
        plot_lens_overview(lens, res.display[0], nave.segments, 0, name=name, plt_fig_axis=(fig, axes[r]))
    return paths + [save_figure(fig, os.path.join(out, "lens.png"), dpi=110)]


def run(args: argparse.Namespace) -> int:
    """Run the comparison and write the summary, tables and figure."""
    import torch

    from captum_nave.cli._models import check_input_size, load_model_cli
    from captum_nave.files import save_figure, write_text
    from captum_nave.models import load_image, normalize, resize_images
    from captum_nave.registers.compare import compare_registers
    from captum_nave.registers.layout import vit_adapter

    device = args.device or "cpu"
    torch.manual_seed(args.seed)
    pretrained = not args.no_pretrained
    model_a, info_a = load_model_cli(args.model_a, pretrained=pretrained, device=device, flag="--model-a")
    model_b, info_b = load_model_cli(args.model_b, pretrained=pretrained, device=device, flag="--model-b")
    layouts = []
    for flag, name, m in (("--model-a", args.model_a, model_a), ("--model-b", args.model_b, model_b)):
        try:
            layouts.append(vit_adapter(m).layout)
        except ValueError:
            _fail(f"{flag}: {name!r} is not a ViT with a readable token layout")
    sizes = []
    for flag, name, m, info, lay in (("--model-a", args.model_a, model_a, info_a, layouts[0]),
                                     ("--model-b", args.model_b, model_b, info_b, layouts[1])):
        size = (args.size, args.size) if args.size is not None else tuple(info["input_size"])
        ph, pw = lay.patch_size or (1, 1)
        if size[0] % ph or size[1] % pw:
            _fail(f"--size: {size[0]}x{size[1]} is not a multiple of the patch size {ph}x{pw} of {flag}")
        check_input_size(m, size, name)
        sizes.append(size)

    raw = [load_image(p) for p in args.images]
    xs = []
    for size, info in zip(sizes, (info_a, info_b)):
        xs.append(torch.cat([normalize(resize_images(r, size), info) for r in raw]).to(device))
    display = torch.cat([resize_images(r, sizes[0]) for r in raw])

    boxes = None
    protocol = None
    if args.boxes is not None:
        table = _read_boxes(args.boxes, args.images)
        boxes = [
            [_transform_box(b, tuple(r.shape[-2:]), sizes[0]) for b in table[p]]  # type: ignore[arg-type]
            for p, r in zip(args.images, raw)
        ]
        from captum_nave.evaluation.corloc import CorLocProtocol

        kw: Dict[str, Any] = {"conventions": args.corloc_protocol}
        if args.corloc_min_area is not None:
            kw["min_area"] = args.corloc_min_area
        if args.corloc_border is not None:
            kw["border"] = args.corloc_border
        protocol = CorLocProtocol(**kw)

    res = compare_registers(
        model_a, model_b, xs[0], images_b=xs[1], layout_a=layouts[0], layout_b=layouts[1],
        names=(args.name_a or args.model_a, args.name_b or args.model_b),
        layer=args.layer, n_clusters=args.n_clusters, seeds=(args.seed, args.seed + 1),
        outlier_method="fixed" if args.outlier_threshold is not None else "robust",
        outlier_k=args.outlier_k, outlier_threshold=args.outlier_threshold,
        boxes=boxes, corloc_strategy=args.corloc_strategy, corloc_protocol=protocol,
        random_state=args.seed, batch_size=args.batch_size, display_images=display, lens=not args.no_lens,
    )
    os.makedirs(args.out, exist_ok=True)
    paths = []
    paths.append(write_text(os.path.join(args.out, "summary.md"), res.to_markdown()))
    paths.append(res.to_csv(os.path.join(args.out, "per_image.csv")))
    paths.append(res.to_csv(os.path.join(args.out, "aggregated.csv"), which="aggregated"))
    fig, _ = res.plot(list(range(min(args.figure_rows, res.n_images))))
    paths.append(save_figure(fig, os.path.join(args.out, "figure.png"), dpi=120, bbox_inches="tight"))
    if any(lens is not None for lens in res.lens):
        paths += _write_lens(res, args.out, [os.path.splitext(os.path.basename(p))[0] for p in args.images])
    for p in paths:
        sys.stdout.write(p + "\n")
    return 0

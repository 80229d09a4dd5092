"""``captum-nave report``: one self-contained HTML audit report for images x models."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, Dict, List, NoReturn, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

from ._models import MODEL_HELP

NAME = "report"

_EPILOG = """\
Example:
  captum-nave report                                   # scikit-image photos, offline model
  captum-nave report cat.jpg dog.png --methods nave,gradcam,ig,lrp -k 5 --out audit.html
  captum-nave report *.jpg --model efficientnet_lite0 --model tv:resnet50 --seeds 0 1 2 3
  captum-nave report img.png --model vit_small_patch14_dinov2.lvd142m \\
      --model vit_small_patch14_reg4_dinov2.lvd142m --register-pair \\
      vit_small_patch14_dinov2.lvd142m vit_small_patch14_reg4_dinov2.lvd142m --size 518
  captum-nave report photos/*.jpg --boxes boxes.json --out audit.html

Writes ONE HTML file (default: report.html; missing folders are created) and prints
its path. Folders given as IMAGE are read non-recursively; images in them that cannot
be read (over Pillow's decompression-bomb limit, damaged, a mode without a faithful
conversion) are skipped, counted and listed in the report's configuration; a named
file that cannot be read is an error. The file is
self-contained: figures are embedded, there is no JavaScript and nothing is loaded
from the network. Sections: side-by-side grids (NAVE | Grad-CAM | IG | LRP) per
model, per-segment relevance tables, faithfulness (deletion / insertion AUCs per
method with pixels, NAVE segments, SLIC and a grid as units, and the cascading
model-randomisation check; --no-faithfulness leaves it out), stability across the
k-means --seeds, the class-embedding lens for ViTs with a classifier head
(--no-lens leaves it out), a
register comparison (--register-pair A B, two of the --model names), a CorLoc
table (--boxes), and a reproducibility section (configuration, package versions,
model weight hashes, seeds, timings).

--boxes FILE is JSON mapping an image (its path as given, its file name or its
name without extension) to a list of [x_min, y_min, x_max, y_max] boxes in pixels
of the original image, e.g. {"cat.jpg": [[12, 30, 200, 180]]}.
The default model, efficientnet_lite0, is ImageNet-trained and needs no network
access; other timm / torchvision ('tv:NAME') names download their weights.
"""


def register(subparsers: Any) -> None:
    """Add the ``report`` subcommand to ``subparsers``."""
    from captum_nave.cli.compare import add_lrp_arguments

    p = subparsers.add_parser(
        NAME,
        help="write one self-contained HTML audit report (NAVE beside Grad-CAM / IG / LRP, stability, registers, CorLoc)",
        description=(
            "Explain images with NAVE and pixel attribution methods on one or more models and "
            "write a single self-contained HTML report that can be handed over: side-by-side "
            "grids, per-segment relevance, stability across seeds, optional register comparison "
            "and CorLoc, and everything needed to reproduce the run. With no IMAGE, uses the "
            "photos bundled with scikit-image."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR",
                   help="image files and/or folders of images (default: scikit-image sample photos)")
    p.add_argument(
        "--model", action="append", default=None, metavar="NAME",
        help="model to explain; repeat for several (default: efficientnet_lite0, offline): " + MODEL_HELP,
    )
    p.add_argument("--no-pretrained", action="store_true", help="random weights of the same architectures")
    p.add_argument(
        "--layers", nargs="+", default=None, metavar="L",
        help="NAVE layers for every model (default: each model's default layers)",
    )
    p.add_argument(
        "--methods", default="nave,gradcam,ig,lrp", metavar="M[,M...]",
        help="comma-separated methods; nave is always included (default: nave,gradcam,ig,lrp)",
    )
    p.add_argument("-k", "--n-clusters", type=int, default=5, metavar="K", help="number of NAVE segments (default: 5)")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None, metavar="S",
        help="k-means seeds for the stability section (default: --seed, --seed+1, --seed+2)",
    )
    p.add_argument("--size", type=int, default=None, help="image size in pixels (default: the first model's, 224)")
    p.add_argument("--target", default="auto", metavar="CLASS|auto",
                   help="class to explain: an index, an ImageNet class name (\"tabby cat\"), or auto (the prediction; default)")
    p.add_argument("--ig-steps", type=int, default=32, metavar="N", help="Integrated Gradients steps (default: 32)")
    p.add_argument("--internal-batch-size", type=int, default=16, metavar="B", help="IG path points per forward pass (default: 16)")
    add_lrp_arguments(p)
    p.add_argument(
        "--register-pair", nargs=2, default=None, metavar=("A", "B"),
        help="compare ViT A (without registers) with ViT B (with registers); both must be --model names",
    )
    p.add_argument("--boxes", default=None, metavar="FILE", help="JSON ground-truth boxes per image: adds the CorLoc section")
    p.add_argument("--protocol", choices=("authors", "clean"), default="authors",
                   help="CorLoc conventions: authors (default; the authors' evaluation script exactly) or clean "
                   "(float conventions of captum-nave 0.1)")
    p.add_argument("--min-area", type=int, default=None, metavar="PX", help="CorLoc minimum component area (default: the paper's 784)")
    p.add_argument("--border", type=int, default=None, metavar="PX", help="CorLoc border removed from components (default: the paper's 14)")
    p.add_argument("--no-faithfulness", action="store_true",
                   help="leave out the Faithfulness section (deletion / insertion AUCs, model randomisation)")
    p.add_argument("--faithfulness-steps", type=int, default=20, metavar="N",
                   help="deletion / insertion steps per curve (default: 20)")
    p.add_argument("--randomisation-stages", type=int, default=4, metavar="N",
                   help="stages of the cascading model-randomisation check, spread from the classifier to the "
                   "input (default: 4; 0 skips the check)")
    p.add_argument("--no-lens", action="store_true",
                   help="leave out the class-embedding lens section (ViTs with a classifier head)")
    p.add_argument("--title", default="captum-nave report", help="report title")
    p.add_argument(
        "--keep-going", action="store_true",
        help="record a method that fails on a model in the report instead of stopping",
    )
    p.add_argument("--out", default="report.html", metavar="FILE", help="output HTML file (default: report.html)")
    p.set_defaults(func=run, check=check)


def _fail(msg: str) -> NoReturn:
    from captum_nave.cli.common import fail

    fail(msg)


def _methods(text: str) -> List[str]:
    from captum_nave.attribution import available_methods

    items = [m.strip().lower() for m in str(text).split(",") if m.strip()]
    known = ["nave"] + available_methods()
    bad = [m for m in items if m not in known]
    if not items or bad:
        _fail(f"--methods: expected a comma-separated list of {', '.join(known)}, got {text!r}")
    return (["nave"] if "nave" not in items else []) + items


def read_boxes(path: str, image_paths: Sequence[str]) -> List["np.ndarray"]:
    """Boxes of every image from a JSON file (see the command's help).

    An image matches a key equal to its path as given, its file name, or its file name
    without extension. Images without a key get no box.

    Returns
    -------
    list of ndarray of shape (M, 4), one per image
    """
    import numpy as np

    if not os.path.isfile(path):
        _fail(f"--boxes: file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(f"--boxes: cannot read {path!r} as JSON ({str(exc).splitlines()[0]})")
    if not isinstance(data, dict):
        _fail(f"--boxes: expected a JSON object mapping image names to lists of boxes, got a {type(data).__name__}")
    out: List[np.ndarray] = []
    used = set()
    for p in image_paths:
        base = os.path.basename(p)
        stem = os.path.splitext(base)[0]
        key = next((k for k in (p, base, stem) if k in data), None)
        if key is None:
            out.append(np.zeros((0, 4)))
            continue
        used.add(key)
        try:
            arr = np.asarray(data[key], dtype=np.float64).reshape(-1, 4) if data[key] else np.zeros((0, 4))
        except (TypeError, ValueError):
            _fail(f"--boxes: entry {key!r} must be a list of [x_min, y_min, x_max, y_max], got {data[key]!r}")
        if not np.all(np.isfinite(arr)) or np.any(arr[:, 2] <= arr[:, 0]) or np.any(arr[:, 3] <= arr[:, 1]):
            _fail(f"--boxes: entry {key!r} must have x_max > x_min and y_max > y_min, got {data[key]!r}")
        out.append(arr)
    if not used:
        _fail(f"--boxes: no key of {path!r} matches an image (keys: {', '.join(list(data)[:5])})")
    return out


def check(args: argparse.Namespace) -> None:
    """Every check that needs no model (run before torch is imported)."""
    from captum_nave.cli.common import check_out_file, collect_images

    from captum_nave.cli.compare import check_method_arguments

    check_method_arguments(args)
    seeds = list(args.seeds) if args.seeds is not None else [args.seed, args.seed + 1, args.seed + 2]
    if len(set(seeds)) != len(seeds):
        _fail(f"--seeds: expected distinct seeds, got {' '.join(map(str, seeds))}")
    collect_images(args.images, option="IMAGE_OR_DIR")
    check_out_file(args.out)
    model_names = list(args.model) if args.model else ["efficientnet_lite0"]
    if len(set(model_names)) != len(model_names):
        _fail(f"--model: each model once, got {' '.join(model_names)}")
    if args.register_pair is not None:
        for nm in args.register_pair:
            if nm not in model_names:
                _fail(f"--register-pair: {nm!r} is not one of the --model names ({', '.join(model_names)})")
        if args.register_pair[0] == args.register_pair[1]:
            _fail("--register-pair: expected two different models")
    if args.boxes is not None and not args.images:
        _fail("--boxes: give the IMAGE files the boxes belong to")
    if args.boxes is not None and not os.path.isfile(args.boxes):
        _fail(f"--boxes: file {args.boxes!r} does not exist")


def run(args: argparse.Namespace) -> int:
    import torch

    from captum_nave.cli.common import ImageLoader, collect_images, image_names
    from captum_nave.cli.compare import lrp_options, parse_target
    from captum_nave.cli.explain import parse_layers
    from captum_nave.cli._models import load_model_cli
    from captum_nave.models import sample_images
    from captum_nave.report import build_report

    methods = _methods(args.methods)
    target = parse_target(args.target)
    seeds = list(args.seeds) if args.seeds is not None else [args.seed, args.seed + 1, args.seed + 2]
    model_names = list(args.model) if args.model else ["efficientnet_lite0"]
    paths: List[str] = []
    skipped: List[str] = []
    if args.images:
        found = collect_images(args.images, option="IMAGE_OR_DIR")
        loader = ImageLoader()
        paths = [it.path for it in loader.usable(found)]
        loader.summary(len(found))
        skipped = [f"{p}: {why}" for p, why in loader.skipped]
        if not paths:
            _fail(f"no image could be read ({len(skipped)} skipped)")
    boxes = read_boxes(args.boxes, paths) if args.boxes is not None else None
    protocol = None
    if args.min_area is not None or args.border is not None or args.protocol != "authors":
        from captum_nave.evaluation import CorLocProtocol

        kw: Dict[str, Any] = {"conventions": args.protocol}
        if args.min_area is not None:
            kw["min_area"] = args.min_area
        if args.border is not None:
            kw["border"] = args.border
        try:
            protocol = CorLocProtocol(**kw)
        except ValueError as exc:
            _fail(f"--min-area/--border: {str(exc).splitlines()[0]}")

    device = torch.device(args.device or "cpu")  # checked by cli.main
    torch.manual_seed(args.seed)  # --no-pretrained weights are reproducible with --seed
    models: Dict[str, Any] = {}
    for name in model_names:
        model, info = load_model_cli(name, pretrained=not args.no_pretrained, device=device)
        models[name] = (model, info)

    images: Any = list(paths) if paths else sample_images()
    options = {
        "ig": {"n_steps": args.ig_steps, "internal_batch_size": args.internal_batch_size},
        "lrp": lrp_options(args),  # input bounds: from each model's normalisation (build_report)
    }
    cli_args = {k: v for k, v in vars(args).items() if k not in ("func", "check")}
    extra: Dict[str, Any] = {"command-line arguments": cli_args}
    if skipped:
        extra["skipped images"] = skipped
    try:
        path = build_report(
            images, models, out_path=args.out, image_names=image_names(paths) if paths else None,
            methods=methods, layers=parse_layers(args.layers),
            n_clusters=args.n_clusters, seeds=seeds, size=args.size, target=target,
            method_options={k: v for k, v in options.items() if k in methods},
            register_pair=tuple(args.register_pair) if args.register_pair else None,
            boxes=boxes, corloc_protocol=protocol, title=args.title, faithfulness=not args.no_faithfulness,
            lens=not args.no_lens,
            faithfulness_options={"n_steps": args.faithfulness_steps, "randomisation_stages": args.randomisation_stages},
            on_error="record" if args.keep_going else "raise",
            progress=sys.stderr.isatty(), extra_config=extra,
        )
    except (ValueError, TypeError) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except AssertionError as exc:  # models that check their input size with assert
        _fail(f"a model rejected the input: {str(exc).splitlines()[0] if str(exc) else 'assertion failed'}")
    from captum_nave.distributed import is_main_process

    if is_main_process():  # under torchrun rank 0 wrote the file
        print(str(path))
    return 0

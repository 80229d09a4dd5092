"""``captum-nave compare``: NAVE next to Grad-CAM, Integrated Gradients and LRP.

Writes one side-by-side figure (image | NAVE | Grad-CAM | IG | LRP, one row per image),
one CSV with the relevance of every attribution method in every NAVE segment
(:func:`captum_nave.attribution.segment_relevance`) and one CSV with the faithfulness
measures of every method (:func:`captum_nave.evaluation.faithfulness.faithfulness_audit`,
optionally :func:`~captum_nave.evaluation.faithfulness.randomisation_check`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Dict, List, NoReturn, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

from ._models import MODEL_HELP

NAME = "compare"

_BASELINES = ("zeros", "blur", "uniform")

_EPILOG = """\
Example:
  captum-nave compare                                  # scikit-image photos, offline model
  captum-nave compare cat.jpg --methods nave,gradcam,ig,lrp --target auto -k 5 --out cmp
  captum-nave compare dog.png --model tv:resnet50 --layers layer3 layer4 --target 207

Writes OUT/compare.png (one row per image: the image | NAVE segments | one heatmap per
attribution method), OUT/segment_relevance.csv (per image, NAVE segment and method:
area share, positive / negative / absolute relevance mass and share, density) and
OUT/faithfulness.csv (per image, method and ranking - pixels, NAVE segments by the
method's relevance mass and by segment importance, SLIC superpixels, a grid - the
deletion and insertion AUC of the explained class's probability with a blurred
baseline: lower deletion / higher insertion AUC = a more faithful map; a random map is
the reference), both written when --methods names at least one attribution method;
--randomisation-stages N adds OUT/randomisation.csv (cascading model randomisation:
Spearman / SSIM of each map with the trained model's, ARI for NAVE). Prints the paths.
A share cell is empty when the map has no mass of that sign (negative_share of
Grad-CAM, which is never negative). Images are resized so the shorter side matches
--size and centre-cropped (all rows share one size). NAVE is
always computed, since the CSV is per NAVE segment; leave 'nave' out of --methods to
drop its panel. --target auto explains each image's
predicted class; --target also takes an ImageNet class name ("tabby cat"). The default model, efficientnet_lite0, is ImageNet-trained and needs
no network access.
"""


def register(subparsers: Any) -> None:
    """Add the ``compare`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        NAME,
        help="NAVE segments next to Grad-CAM, Integrated Gradients and LRP, with per-segment relevance",
        description=(
            "Explain images with NAVE (clustered activations) and with pixel attribution "
            "methods (Grad-CAM, Integrated Gradients, LRP), draw them side by side and "
            "tabulate how much of each attribution map falls into each NAVE segment. With "
            "no IMAGE, uses the photos bundled with scikit-image."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (default: scikit-image sample photos)")
    p.add_argument(
        "--methods", default="nave,gradcam,ig,lrp", metavar="M[,M...]",
        help="comma-separated panels: nave and attribution methods (default: nave,gradcam,ig,lrp)",
    )
    p.add_argument("--target", default="auto", metavar="CLASS|auto",
                   help="class to explain: an index, an ImageNet class name (\"tabby cat\"), or auto (the prediction; default)")
    p.add_argument(
        "--model", default="efficientnet_lite0",
        help=MODEL_HELP,
    )
    p.add_argument("--no-pretrained", action="store_true", help="random weights of the same architecture")
    p.add_argument(
        "--layers", nargs="+", default=None, metavar="L",
        help="NAVE layers: dotted names (layer4, blocks.5) or block indices (-1); default: the model's defaults",
    )
    p.add_argument("-k", "--n-clusters", type=int, default=5, metavar="K", help="number of NAVE segments (default: 5)")
    p.add_argument(
        "--gradcam-layer", default=None, metavar="L",
        help="Grad-CAM layer (default: per family, e.g. layer4, bn2, blocks.N.norm1 for class-token ViTs)",
    )
    p.add_argument("--ig-steps", type=int, default=32, metavar="N", help="Integrated Gradients steps (default: 32)")
    p.add_argument(
        "--ig-baseline", default="zeros", metavar="|".join(_BASELINES),
        help="Integrated Gradients baseline (default: zeros)",
    )
    p.add_argument(
        "--internal-batch-size", type=int, default=16, metavar="B",
        help="IG path points per forward pass (default: 16)",
    )
    add_lrp_arguments(p)
    p.add_argument("--size", type=int, default=None, help="input size in pixels (default: the model's, 224)")
    p.add_argument("--no-faithfulness", action="store_true", help="do not write faithfulness.csv")
    p.add_argument("--faithfulness-steps", type=int, default=20, metavar="N",
                   help="deletion / insertion steps per curve (default: 20)")
    p.add_argument("--randomisation-stages", type=int, default=0, metavar="N",
                   help="also run the cascading model-randomisation check with N stages and write "
                   "randomisation.csv (default: 0, off)")
    p.add_argument("--out", default="nave-compare", metavar="DIR", help="output folder (default: ./nave-compare)")
    p.set_defaults(func=run, check=check)


def _fail(msg: str) -> NoReturn:
    from captum_nave.cli.common import fail

    fail(msg)


def check(args: argparse.Namespace) -> None:
    """Every check that needs no model (run before torch is imported)."""
    from captum_nave.cli.common import check_out_dir

    if str(args.ig_baseline).strip().lower() not in _BASELINES:
        _fail(f"--ig-baseline: expected one of {', '.join(_BASELINES)}, got {args.ig_baseline!r}")
    check_method_arguments(args)
    for path in args.images:
        if not os.path.isfile(path):
            _fail(f"image file {path!r} does not exist")
    check_out_dir(args.out)


#: Names of :data:`captum_nave.attribution._lrp_composites.COMPOSITES`, for ``--help``
#: without importing torch (a test checks that the two agree).
LRP_COMPOSITE_NAMES = (
    "epsilon", "epsilon-plus", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2-beta1",
    "epsilon-alpha2-beta1-flat", "cp-lrp", "attnlrp",
)


def add_lrp_arguments(p: argparse.ArgumentParser) -> None:
    """``--lrp-composite`` and ``--lrp-epsilon`` (compare and report)."""
    p.add_argument(
        "--lrp-composite", default="auto", metavar="NAME",
        help="LRP rules: auto (default: epsilon-plus-flat for CNNs, cp-lrp for ViTs), "
        + ", ".join(LRP_COMPOSITE_NAMES),
    )
    p.add_argument(
        "--lrp-epsilon", type=float, default=1e-6,
        help="LRP epsilon, relative to each layer's activations (default: 1e-6)",
    )


def check_method_arguments(args: argparse.Namespace) -> None:
    """The options ``compare`` and ``report`` share (K, size, IG, LRP, faithfulness), checked without torch."""
    import math

    if args.n_clusters < 2:
        _fail(f"-k/--n-clusters: expected an integer >= 2, got {args.n_clusters}")
    if args.size is not None and args.size < 8:
        _fail(f"--size: expected an image size of at least 8 pixels, got {args.size}")
    if args.ig_steps < 1:
        _fail(f"--ig-steps: expected a positive integer, got {args.ig_steps}")
    if args.internal_batch_size < 1:
        _fail(f"--internal-batch-size: expected a positive integer, got {args.internal_batch_size}")
    if not (math.isfinite(args.lrp_epsilon) and args.lrp_epsilon >= 0):
        _fail(f"--lrp-epsilon: expected a number >= 0, got {args.lrp_epsilon}")
    name = str(args.lrp_composite).strip().lower()
    if name != "auto" and name not in LRP_COMPOSITE_NAMES:
        _fail(f"--lrp-composite: expected auto or one of {', '.join(LRP_COMPOSITE_NAMES)}, got {args.lrp_composite!r}")
    if args.faithfulness_steps < 1:
        _fail(f"--faithfulness-steps: expected a positive integer, got {args.faithfulness_steps}")
    if args.randomisation_stages < 0:
        _fail(f"--randomisation-stages: expected an integer >= 0, got {args.randomisation_stages}")


def lrp_options(args: argparse.Namespace) -> Dict[str, Any]:
    """LRP options from ``--lrp-composite`` / ``--lrp-epsilon`` (checked by :func:`check_method_arguments`)."""
    return {"composite": str(args.lrp_composite).strip().lower(), "epsilon": float(args.lrp_epsilon)}


def parse_methods(text: str) -> List[str]:
    """``"nave,gradcam,ig"`` -> ``["nave", "gradcam", "ig"]`` (known names, no duplicates)."""
    from captum_nave.attribution import available_methods

    known = ["nave"] + available_methods()
    out: List[str] = []
    for part in str(text).split(","):
        name = part.strip().lower()
        if not name:
            continue
        if name not in known:
            _fail(f"--methods: expected names from {', '.join(known)}, got {part.strip()!r}")
        if name not in out:
            out.append(name)
    if not out:
        _fail(f"--methods: expected at least one of {', '.join(known)}, got {text!r}")
    return out


def parse_target(text: str) -> Union[str, int]:
    """``"auto"``, a non-negative class index, or an ImageNet-1k class name (-> its index)."""
    t = " ".join(str(text).strip().lower().split())
    if t == "auto":
        return "auto"
    if re.fullmatch(r"\d+", t):
        return int(t)
    from captum_nave.models import imagenet_class_index

    try:
        return imagenet_class_index(t)
    except ValueError as exc:
        detail = str(exc).split("; ", 1)[1] if "; " in str(exc) else ""
        if "several" in str(exc):
            detail = str(exc).split(": ", 1)[1]
        _fail(
            f"--target: expected a class index (an integer >= 0), 'auto' or an ImageNet-1k class "
            f"name, got {text!r}" + (f" ({detail})" if detail else "")
        )


def _parse_layers(specs: Optional[Sequence[str]]) -> Optional[List[Union[str, int]]]:
    if specs is None:
        return None
    return [int(s) if re.fullmatch(r"-?\d+", s.strip()) else s.strip() for s in specs]


def _load_images(args: argparse.Namespace, size: Tuple[int, int]) -> Tuple[List[str], "Tensor"]:
    import torch

    from captum_nave.cli.common import image_names
    from captum_nave.models import load_image, resize_images, sample_images

    if args.images:
        names = image_names(args.images)
        batch = []
        for path in args.images:
            try:
                batch.append(resize_images(load_image(path), size))
            except (ValueError, OSError) as exc:
                _fail(str(exc).splitlines()[0])
        return names, torch.cat(batch)
    samples = sample_images()
    return list(samples), torch.cat([resize_images(v, size) for v in samples.values()])

def run(args: argparse.Namespace) -> int:
    """Run ``captum-nave compare``; returns the exit code."""
    import torch

    from captum_nave import LayerClusterExplainer
    from captum_nave.attribution import SegmentRelevanceTable, attribute, segment_relevance
    from captum_nave.attribution.lrp import normalisation_bounds
    from captum_nave.cli._models import check_input_size, class_scores, load_model_cli
    from captum_nave.cli.common import layers_error
    from captum_nave.files import save_figure
    from captum_nave.models import imagenet_class_name, normalize

    methods = parse_methods(args.methods)
    target = parse_target(args.target)
    baseline = str(args.ig_baseline).strip().lower()
    lrp_opts = lrp_options(args)
    device = torch.device(args.device or "cpu")

    model, info = load_model_cli(args.model, pretrained=not args.no_pretrained, device=device)
    layers = _parse_layers(args.layers) or list(info["default_layers"])
    if not layers:
        _fail(f"--layers: model {args.model!r} has no default layers; name them with --layers")
    try:
        explainer = LayerClusterExplainer(model, layers)
    except (ValueError, TypeError) as exc:
        _fail(layers_error(exc, model, info))
    size = (args.size, args.size) if args.size is not None else tuple(info["input_size"])
    check_input_size(model, size, args.model)  # type: ignore[arg-type]
    names, x01 = _load_images(args, size)  # type: ignore[arg-type]
    x = normalize(x01, info).to(device)
    n_classes = info.get("num_classes")
    if isinstance(target, int) and isinstance(n_classes, int) and target >= n_classes:
        _fail(f"--target: expected a class index in [0, {n_classes - 1}] for {args.model!r}, got {target}")

    from tqdm import tqdm

    options: Dict[str, Dict[str, Any]] = {
        "gradcam": {} if args.gradcam_layer is None else {"layer": _parse_layers([args.gradcam_layer])[0]},  # type: ignore[index]
        "ig": {"n_steps": args.ig_steps, "baselines": baseline, "internal_batch_size": args.internal_batch_size,
               "random_state": args.seed},
        # the z^B rule of epsilon-gamma-box needs the range of the normalised pixels
        "lrp": {**lrp_opts, "input_bounds": normalisation_bounds(info["mean"], info["std"])},
    }
    attr_methods = [m for m in methods if m != "nave"]
    panels: Dict[str, "Tensor"] = {}
    maps: Dict[str, "Tensor"] = {}
    tables: List[SegmentRelevanceTable] = []
    faith = bool(attr_methods) and not args.no_faithfulness
    show = sys.stderr.isatty()
    steps = 1 + len(attr_methods) + int(faith) + int(faith and args.randomisation_stages > 0)
    with tqdm(total=steps, desc="compare", unit="step", disable=not show) as bar:
        try:
            segments = explainer.attribute(x, n_clusters=args.n_clusters, random_state=args.seed).cpu()
        except ValueError as exc:
            _fail(str(exc).splitlines()[0])
        if "nave" in methods:
            panels["nave"] = segments
        bar.update(1)
        targets = None
        for meth in attr_methods:
            try:
                res = attribute(meth, model, x, target, **options.get(meth, {}))
            except (ValueError, TypeError) as exc:
                _fail(f"{meth}: {str(exc).splitlines()[0]}")
            maps[meth] = res.maps
            panels[meth] = res.maps.cpu()
            targets = res.target.cpu()
            tables.append(segment_relevance(segments, panels[meth], method=meth, image_names=names))
            bar.update(1)
        if faith:
            audit, sanity = _faithfulness(args, model, x, x01, segments, maps, targets, layers, options, names, info)
            bar.update(1 + int(sanity is not None))
    if targets is None:
        logits = class_scores(model, x)
        targets = (logits.argmax(1) if target == "auto" else torch.full((x.shape[0],), int(target))).cpu()

    imagenet = n_classes == 1000 and not args.no_pretrained
    row_names = [
        f"{n}\n{imagenet_class_name(int(t))} ({int(t)})" if imagenet else f"{n}\nclass {int(t)}"
        for n, t in zip(names, targets)
    ]
    os.makedirs(args.out, exist_ok=True)
    from captum_nave.visualization import plot_side_by_side

    fig, _ = plot_side_by_side(x01, {info["name"]: panels}, image_names=row_names)
    fig.suptitle(
        f"{info['name']}{' (random weights)' if args.no_pretrained else ''} - NAVE layers "
        f"{', '.join(str(l) for l in layers)}, K={args.n_clusters}",
        fontsize="medium",
    )
    png = save_figure(fig, os.path.join(args.out, "compare.png"), dpi=100)
    print(png)
    if tables:
        csv_path = SegmentRelevanceTable.concat(tables).to_csv(os.path.join(args.out, "segment_relevance.csv"))
        print(csv_path)
    if faith:
        from captum_nave.evaluation.faithfulness.audit import write_csv

        print(audit.to_csv(os.path.join(args.out, "faithfulness.csv")))
        if sanity is not None:
            rows = sanity.summary()
            print(write_csv(os.path.join(args.out, "randomisation.csv"), list(rows[0]), rows))
    return 0


def _faithfulness(
    args: argparse.Namespace, model: Any, x: Tensor, x01: Tensor, segments: Tensor, maps: Dict[str, Tensor],
    targets: Tensor, layers: Sequence[Any], options: Dict[str, Dict[str, Any]], names: List[str], info: Dict[str, Any],
) -> Tuple[Any, Any]:
    """The faithfulness audit (and the randomisation check when asked) of the compared maps."""
    from captum_nave.attribution import segment_importance
    from captum_nave.evaluation.faithfulness import faithfulness_audit, randomisation_check

    seg = segments.to(x.device)
    t = targets.to(x.device)
    imp = segment_importance(model, x, seg, t)
    audit = faithfulness_audit(
        model, x, maps, t, segments=seg, segment_scores={"segment_importance": imp}, images=x01.to(x.device),
        n_steps=args.faithfulness_steps, image_names=names, model_name=info["name"],
    )
    sanity = None
    if args.randomisation_stages > 0:
        methods = ["nave"] + list(maps)
        mopts = {"nave": {"layers": list(layers), "n_clusters": args.n_clusters, "random_state": args.seed}}
        mopts.update({m: options.get(m, {}) for m in maps})
        sanity = randomisation_check(
            model, x, t, methods=methods, method_options=mopts, stages=args.randomisation_stages,
            reference_maps={**maps, "nave": seg},
        )
    return audit, sanity

"""``captum-nave explain``: NAVE segment maps of images, one PNG per image."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._models import MODEL_HELP

NAME = "explain"

_CLUSTERERS = ("kmeans", "ward", "pca", "auto")

_EPILOG = """\
Example:
  captum-nave explain                       # the four scikit-image photos, offline model
  captum-nave explain cat.jpg dog.png -k 6 --resolution input --out maps
  captum-nave explain photo.jpg --model tv:resnet50 --layers layer3 layer4

Writes OUT/<image name>_nave.png (the image | its NAVE segments with boundaries and a
legend; the title gives the model's top-1 class for ImageNet models) and prints the paths.
Images are resized so the shorter side matches --size and centre-cropped to a square.
The default model, efficientnet_lite0, is ImageNet-trained and needs no network access;
other timm / torchvision ('tv:NAME') models download their weights.
"""


def register(subparsers: Any) -> None:
    """Add the ``explain`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        NAME,
        help="segment images by clustering a model's activations (NAVE) and save the figures",
        description=(
            "Cluster the activations of the chosen layers of a vision model into a "
            "segmentation of each image (NAVE) and write, per image, a PNG with the image "
            "and its segment overlay. With no IMAGE, explains the photos bundled with "
            "scikit-image (chelsea, coffee, astronaut, rocket)."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (default: scikit-image sample photos)")
    p.add_argument(
        "--model", default="efficientnet_lite0",
        help=MODEL_HELP,
    )
    p.add_argument("--no-pretrained", action="store_true", help="random weights of the same architecture")
    p.add_argument(
        "--layers", nargs="+", default=None, metavar="L",
        help="layers to cluster: dotted names (layer4, blocks.5) or block indices (-1); "
        "default: the model's default layers (efficientnet_lite0: blocks.4 blocks.5)",
    )
    p.add_argument("-k", "--n-clusters", default="5", metavar="K", help="number of segments, or 'auto' (default: 5)")
    p.add_argument(
        "--resolution", default="layer", metavar="layer|input|HxW",
        help="clustering grid: first layer's resolution (default), the input's, or e.g. 28x28",
    )
    p.add_argument(
        "--clusterer", default="kmeans", metavar="|".join(_CLUSTERERS),
        help="kmeans (default), ward, pca (PCA argmax) or auto (k-means, K by the inertia elbow)",
    )
    p.add_argument("--size", type=int, default=None, help="input size in pixels (default: the model's, 224)")
    p.add_argument("--alpha", type=float, default=0.45, help="opacity of the segment colours (default: 0.45)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    p.add_argument("--out", default="nave-explanations", metavar="DIR", help="output folder (default: ./nave-explanations)")
    p.set_defaults(func=run)


def _fail(msg: str) -> NoReturn:
    from captum_nave.cli import CLIError

    raise CLIError(msg)


# --------------------------------------------------------------------------- argument parsing
def parse_resolution(text: str) -> Union[str, Tuple[int, int]]:
    """``"layer"``, ``"input"`` or ``"HxW"`` -> the explainer's ``resolution`` argument."""
    t = text.strip().lower()
    if t in ("layer", "input"):
        return t
    m = re.fullmatch(r"(\d+)\s*[x,]\s*(\d+)", t)
    if m and int(m.group(1)) > 0 and int(m.group(2)) > 0:
        return int(m.group(1)), int(m.group(2))
    _fail(f"--resolution: expected 'layer', 'input' or HxW such as 28x28, got {text!r}")


def parse_n_clusters(text: str) -> Union[int, str]:
    """``"auto"`` or an int >= 2."""
    t = str(text).strip().lower()
    if t == "auto":
        return "auto"
    try:
        k = int(t)
    except ValueError:
        k = -1
    if k < 2:
        _fail(f"-k/--n-clusters: expected an integer >= 2 or 'auto', got {text!r}")
    return k


def parse_layers(specs: Optional[Sequence[str]]) -> Optional[List[Union[str, int]]]:
    """Dotted names stay strings; plain integers ("-1") become block indices."""
    if specs is None:
        return None
    out: List[Union[str, int]] = []
    for s in specs:
        out.append(int(s) if re.fullmatch(r"-?\d+", s.strip()) else s.strip())
    return out


def _output_names(names: Sequence[str]) -> List[str]:
    """File stems, made unique when two images share a name."""
    seen: Dict[str, int] = {}
    out = []
    for n in names:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", n) or "image"
        if stem in seen:
            seen[stem] += 1
            stem = f"{stem}_{seen[stem]}"
        else:
            seen[stem] = 0
        out.append(stem)
    return out


# --------------------------------------------------------------------------- figure
def explain_figure(
    image: Tensor,
    segments: Tensor,
    *,
    title: str,
    subtitle: Optional[str] = None,
    alpha: float = 0.45,
):
    """The figure written per image: the image | its segments (boundaries, legend).

    Parameters
    ----------
    image : Tensor of shape (3, H, W), values in [0, 1]
    segments : LongTensor of shape (1, H, W)

    Returns
    -------
    (Figure, ndarray of 2 Axes)
    """
    from matplotlib.figure import Figure

    from captum_nave.visualization import plot_segments

    h, w = image.shape[-2:]
    fig = Figure(figsize=(9.0, 4.0 * h / max(w, 1) + 0.9), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=True)
    axes[0].imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    for spine in axes[0].spines.values():
        spine.set_visible(False)
    axes[0].set_title(subtitle or "Image", fontsize="medium")
    plot_segments(image, segments, alpha=alpha, title="NAVE segments", plt_fig_axis=(fig, axes[1]))
    fig.suptitle(title, fontsize="medium")
    return fig, axes


# --------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    from captum_nave import LayerClusterExplainer
    from captum_nave.cli._models import check_input_size, class_scores, load_model_cli
    from captum_nave.models import imagenet_class_name, load_image, normalize, resize_images, sample_images

    # validate everything that needs no model first, so mistakes fail fast
    resolution = parse_resolution(args.resolution)
    n_clusters = parse_n_clusters(args.n_clusters)
    clusterer = str(args.clusterer).strip().lower()
    if clusterer not in _CLUSTERERS:
        _fail(f"--clusterer: expected one of {', '.join(_CLUSTERERS)}, got {args.clusterer!r}")
    if args.size is not None and args.size < 8:
        _fail(f"--size: expected an image size of at least 8 pixels, got {args.size}")
    if args.batch_size < 1:
        _fail(f"--batch-size: expected a positive integer, got {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        _fail(f"--alpha: expected a value in [0, 1], got {args.alpha}")
    for path in args.images:
        if not os.path.isfile(path):
            _fail(f"image file {path!r} does not exist")
    layers = parse_layers(args.layers)
    device = torch.device(args.device or "cpu")

    model, info = load_model_cli(args.model, pretrained=not args.no_pretrained, device=device)
    if layers is None:
        layers = list(info["default_layers"])
        if not layers:
            _fail(f"--layers: model {args.model!r} has no default layers; name them with --layers")
    try:
        explainer = LayerClusterExplainer(model, layers)
    except (ValueError, TypeError) as exc:
        _fail(f"--layers: {str(exc).splitlines()[0]}")

    if args.images:
        names = [os.path.splitext(os.path.basename(p))[0] for p in args.images]
        sources: List[Any] = list(args.images)
    else:
        samples = sample_images()
        names = list(samples)
        sources = list(samples.values())
    size = (args.size, args.size) if args.size is not None else tuple(info["input_size"])
    check_input_size(model, size, args.model)
    os.makedirs(args.out, exist_ok=True)
    stems = _output_names(names)
    imagenet = info.get("num_classes") == 1000 and not args.no_pretrained

    from tqdm import tqdm

    k_txt = "auto" if n_clusters == "auto" or clusterer == "auto" else str(n_clusters)
    written: List[str] = []
    items = list(zip(names, stems, sources))
    batch = max(1, int(args.batch_size))
    with tqdm(total=len(items), desc="explain", unit="image", disable=not sys.stderr.isatty()) as bar:
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            images01 = []
            for _, _, src in chunk:
                if isinstance(src, str):
                    try:
                        src = load_image(src)
                    except ValueError as exc:
                        _fail(str(exc).splitlines()[0])
                images01.append(resize_images(src, size))  # (1, 3, S, S) in [0, 1]
            x01 = torch.cat(images01)
            x = normalize(x01, info).to(device)
            try:
                seg = explainer.attribute(
                    x, n_clusters=n_clusters, resolution=resolution, clusterer=clusterer,
                    random_state=args.seed,
                )
            except ValueError as exc:
                _fail(str(exc).splitlines()[0])
            except AssertionError as exc:  # models that check their input size with assert
                _fail(f"model {args.model!r} rejected a {size[0]}x{size[1]} input: {str(exc).splitlines()[0]}")
            seg = seg.cpu()
            subtitles: List[Optional[str]] = [None] * len(chunk)
            if imagenet:
                prob = class_scores(model, x).softmax(-1).cpu()
                p, c = prob.max(1)
                subtitles = [
                    f"prediction: {imagenet_class_name(int(ci))} ({100 * float(pi):.0f}%)"
                    for pi, ci in zip(p, c)
                ]
            for i, (name, stem, _) in enumerate(chunk):
                title = (
                    f"{name} - {info['name']}{' (random weights)' if args.no_pretrained else ''}, "
                    f"layers {', '.join(str(l) for l in layers)}, K={k_txt}, {clusterer}, "
                    f"resolution {args.resolution}"
                )
                fig, _ = explain_figure(x01[i], seg[i], title=title, subtitle=subtitles[i], alpha=args.alpha)
                path = os.path.join(args.out, f"{stem}_nave.png")
                fig.savefig(path, dpi=100)
                written.append(path)
                print(path)
            bar.update(len(chunk))
    return 0

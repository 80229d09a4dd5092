"""``captum-nave explain``: NAVE segment maps of images, one PNG per image."""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Dict, List, NoReturn, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

from ._models import MODEL_HELP

NAME = "explain"

_CLUSTERERS = ("kmeans", "ward", "pca", "auto")

_EPILOG = """\
Example:
  captum-nave explain                       # the four scikit-image photos, offline model
  captum-nave explain cat.jpg dog.png -k 6 --resolution input --out maps
  captum-nave explain photos/ --model tv:resnet50 --layers layer3 layer4
  torchrun --standalone --nproc-per-node 4 -m captum_nave.cli explain photos/ --device cuda --workers 4

Writes OUT/<image name>_nave.png (the image | its NAVE segments with boundaries and a
legend; the title gives the model's top-1 class for ImageNet models) and prints the paths.
When two images share a file name (a/x.jpg, b/x.jpg) the outputs are x_nave.png and
x_1_nave.png and every line reads 'INPUT -> OUTPUT'.
The whole image is explained at its own aspect ratio: it is resized so that its shorter
side is --size pixels (the longer side rounded to a multiple of a ViT's patch size).
--crop explains the centre square instead (ImageNet evaluation's view); a model that only
takes one input size (e.g. torchvision ViTs) is given the centre crop, and the figure
says so. Folders are read non-recursively; images in them that cannot be read (too large,
damaged, unsupported) are skipped and counted, a named file that cannot be read is an
error. The default model, efficientnet_lite0, is ImageNet-trained and needs no network
access; other timm / torchvision ('tv:NAME') models download their weights.
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
    p.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR",
                   help="image files and/or folders of images (default: scikit-image sample photos)")
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
        help="clustering grid: the first layer's (default, the paper's choice: cells of the "
        "layer's stride), the input's (a boundary at every pixel), or e.g. 28x28; the figure "
        "title says which grid was used",
    )
    p.add_argument(
        "--clusterer", default="kmeans", metavar="|".join(_CLUSTERERS),
        help="kmeans (default), ward, pca (PCA argmax) or auto (k-means, K by the inertia elbow)",
    )
    p.add_argument("--size", type=int, default=None,
                   help="shorter side of the image in pixels (default: the model's input size, 224)")
    p.add_argument("--crop", action="store_true",
                   help="explain the centre --size x --size square instead of the whole image")
    p.add_argument("--alpha", type=float, default=0.45, help="opacity of the segment colours (default: 0.45)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes decoding images ahead of the model (default: 0, decode in-process)")
    p.add_argument("--out", default="nave-explanations", metavar="DIR", help="output folder (default: ./nave-explanations)")
    p.set_defaults(func=run, check=check)


def _fail(msg: str) -> NoReturn:
    from captum_nave.cli.common import fail

    fail(msg)


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


def check(args: argparse.Namespace) -> None:
    """Every check that needs no model (run before torch is imported)."""
    from captum_nave.cli.common import check_out_dir, collect_images

    parse_resolution(args.resolution)
    parse_n_clusters(args.n_clusters)
    if str(args.clusterer).strip().lower() not in _CLUSTERERS:
        _fail(f"--clusterer: expected one of {', '.join(_CLUSTERERS)}, got {args.clusterer!r}")
    if args.size is not None and args.size < 8:
        _fail(f"--size: expected an image size of at least 8 pixels, got {args.size}")
    if args.batch_size < 1:
        _fail(f"--batch-size: expected a positive integer, got {args.batch_size}")
    if args.workers < 0:
        _fail(f"--workers: expected an integer >= 0, got {args.workers}")
    if not 0.0 <= args.alpha <= 1.0:
        _fail(f"--alpha: expected a value in [0, 1], got {args.alpha}")
    collect_images(args.images)
    check_out_dir(args.out)


# --------------------------------------------------------------------------- the view of each image
def whole_image_size(hw: Tuple[int, int], short_side: int, multiple: Union[int, Tuple[int, int]] = 1) -> Tuple[int, int]:
    """Size at which the whole image is explained: the shorter side becomes ``short_side``,
    the aspect ratio is kept, and each side is rounded to a multiple of ``multiple``
    (a ViT's patch size; 1 for CNNs), at least one multiple.

    >>> whole_image_size((300, 451), 224), whole_image_size((300, 451), 224, 16)
    ((224, 337), (224, 336))
    """
    mh, mw = (multiple, multiple) if isinstance(multiple, int) else multiple
    h, w = hw
    s = short_side / min(h, w)
    return max(mh, int(round(h * s / mh)) * mh), max(mw, int(round(w * s / mw)) * mw)


def fixed_input_size(model: Any) -> Optional[Tuple[int, int]]:
    """The one input size a model accepts, or None when it takes any size.

    Models whose family can take any size are switched to it first (timm ViTs: position
    embeddings interpolated per input, :func:`captum_nave.cli.corloc.allow_any_input_size`);
    what remains fixed is what the model's adapter reports
    (:meth:`captum_nave.adapters.ModelAdapter.input_size`, e.g. a torchvision ViT).
    """
    from captum_nave.adapters import get_adapter
    from captum_nave.cli.corloc import allow_any_input_size

    allow_any_input_size(model)
    return get_adapter(model).input_size()


def image_view(
    image01: "Tensor", size: Optional[int], info: Dict[str, Any], *, crop: bool, fixed: Optional[Tuple[int, int]]
) -> Tuple["Tensor", str]:
    """The image as the model sees it, and the words that say so in the figure.

    Returns
    -------
    view : Tensor of shape (1, 3, H', W'), values in [0, 1]
    description : str
    """
    from captum_nave.models import resize_images

    h, w = image01.shape[-2:]
    if fixed is not None:
        side = fixed
        why = f"the model takes only {side[0]}x{side[1]} inputs"
        if crop:
            why = "--crop"
        view = resize_images(image01, side)
        return view, f"centre crop of the {h}x{w} image ({why}), shown at {side[0]}x{side[1]}"
    short = size if size is not None else min(info["input_size"])
    if crop:
        view = resize_images(image01, (short, short))
        return view, f"centre crop of the {h}x{w} image (--crop), shown at {short}x{short}"
    target = whole_image_size((h, w), short, info.get("patch_size") or 1)
    view = resize_images(image01, target, crop=False)
    return view, f"whole {h}x{w} image at {target[0]}x{target[1]}"


def resolution_words(resolution: Union[str, Tuple[int, int]], grid: Tuple[int, int], first_layer: Any) -> str:
    """Which grid the segments were clustered on, for the figure title."""
    if resolution == "layer":
        return (f"clustered on the {grid[0]}x{grid[1]} grid of {first_layer}\n(--resolution layer, "
                "the paper's choice; --resolution input gives boundaries at every pixel)")
    if resolution == "input":
        return f"clustered at input resolution {grid[0]}x{grid[1]} (--resolution input)"
    return f"clustered on a {grid[0]}x{grid[1]} grid (--resolution {grid[0]}x{grid[1]})"


# --------------------------------------------------------------------------- figure
def explain_figure(
    image: "Tensor",
    segments: "Tensor",
    *,
    title: str,
    subtitle: Optional[str] = None,
    segments_title: str = "NAVE segments",
    alpha: float = 0.45,
):
    """The figure written per image: the image | its segments (boundaries, legend).

    Parameters
    ----------
    image : Tensor of shape (3, H, W), values in [0, 1]
    segments : LongTensor of shape (1, H, W)
    title : str
        Figure title.
    subtitle : str, optional
        Title of the image panel (default "Image").
    segments_title : str
        Title of the segment panel.

    Returns
    -------
    (Figure, ndarray of 2 Axes)
    """
    from matplotlib.figure import Figure

    from captum_nave.visualization import plot_segments

    h, w = image.shape[-2:]
    fig = Figure(figsize=(9.0, 4.0 * h / max(w, 1) + 1.1), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=True)
    axes[0].imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    for spine in axes[0].spines.values():
        spine.set_visible(False)
    axes[0].set_title(subtitle or "Image", fontsize="medium")
    plot_segments(image, segments, alpha=alpha, title=segments_title, plt_fig_axis=(fig, axes[1]))
    axes[1].title.set_fontsize("medium")
    fig.suptitle(title, fontsize="medium")
    return fig, axes


# --------------------------------------------------------------------------- run
def _batches(items: Sequence[Any], size_of: Any, limit: int):
    """Consecutive runs of items with the same tensor size, at most ``limit`` long."""
    batch: List[Any] = []
    for it in items:
        if batch and (len(batch) == limit or size_of(batch[0]) != size_of(it)):
            yield batch
            batch = []
        batch.append(it)
    if batch:
        yield batch


def run(args: argparse.Namespace) -> int:
    import torch

    from captum_nave import LayerClusterExplainer
    from captum_nave.cli.common import ImageInput, ImageLoader, collect_images, image_names, layers_error, output_stems
    from captum_nave.cli.parallel import gather_in_order, is_main, load_ahead, my_indices
    from captum_nave.distributed import all_reduce, check_all_ok, get_world_size
    from captum_nave.files import save_figure
    from captum_nave.cli._models import class_scores, load_model_cli
    from captum_nave.models import imagenet_class_name, normalize, sample_images

    resolution = parse_resolution(args.resolution)
    n_clusters = parse_n_clusters(args.n_clusters)
    clusterer = str(args.clusterer).strip().lower()
    inputs = collect_images(args.images)
    layers = parse_layers(args.layers)
    device = torch.device(args.device or "cpu")
    if not isinstance(resolution, str):  # imports torch: here, not in check()
        from captum_nave.clustering import check_grid_memory

        # one image at a time; at least one layer (the model's default layers are not known yet)
        check_grid_memory(
            resolution, 1, n_layers=len(layers or [None]), device=device, param=f"--resolution {args.resolution}"
        )
    # --no-pretrained weights are reproducible with --seed, and the same on every rank under torchrun
    torch.manual_seed(args.seed)
    model, info = load_model_cli(args.model, pretrained=not args.no_pretrained, device=device)
    if layers is None:
        layers = list(info["default_layers"])
        if not layers:
            _fail(f"--layers: model {args.model!r} has no default layers; name them with --layers")
    try:
        explainer = LayerClusterExplainer(model, layers)
    except (ValueError, TypeError) as exc:
        _fail(layers_error(exc, model, info))

    fixed = fixed_input_size(model)
    if fixed is not None and args.size is not None and (args.size, args.size) != fixed:
        _fail(f"--size: model {args.model!r} only accepts {fixed[0]}x{fixed[1]} inputs, got {args.size}x{args.size}")
    if inputs:
        names = image_names([it.path for it in inputs])
        sources: List[Any] = list(inputs)
    else:
        samples = sample_images()
        names = list(samples)
        sources = list(samples.values())
    stems = output_stems(names)
    clash = len({os.path.splitext(os.path.basename(n))[0] for n in names}) < len(names)
    imagenet = info.get("num_classes") == 1000 and not args.no_pretrained
    # this process's images (all of them, or i % world == rank under torchrun), decoded ahead
    mine = my_indices(len(sources))
    load = functools.partial(explain_view, size=args.size, info=info, crop=args.crop, fixed=fixed)
    skipped = 0

    def views():
        nonlocal skipped
        items = list(zip(range(len(sources)), names, stems, sources))
        for _, item in load_ahead(items, load, mine, workers=args.workers, device=device):
            if item is None:
                skipped += 1
                continue
            yield item

    from tqdm import tqdm

    written: List[Tuple[int, str]] = []  # (image index, line printed)
    error: Optional[BaseException] = None
    try:  # an error on one rank must reach the others (they would wait in the gather below)
        with tqdm(total=len(mine), desc="explain", unit="image", disable=not (sys.stderr.isatty() and is_main())) as bar:
            for chunk in _batches(views(), lambda item: tuple(item[4].shape[-2:]), max(1, int(args.batch_size))):
                x01 = torch.cat([item[4] for item in chunk])  # (B, 3, H, W) on the CPU, for the figures
                # pinned views (DataLoader on CUDA) are copied asynchronously
                x = normalize(torch.cat([item[4].to(device, non_blocking=True) for item in chunk]), info)
                try:
                    res = explainer.explain(
                        x, n_clusters=n_clusters, resolution=resolution, clusterer=clusterer,
                        random_state=args.seed,
                    )
                except ValueError as exc:
                    _fail(str(exc).splitlines()[0])
                except AssertionError as exc:  # models that check their input size with assert
                    _fail(f"model {args.model!r} rejected a {x.shape[-2]}x{x.shape[-1]} input: "
                          f"{str(exc).splitlines()[0]}; --crop explains a --size square instead")
                seg = res.segments.cpu()
                subtitles: List[Optional[str]] = [None] * len(chunk)
                if imagenet:
                    prob = class_scores(model, x).softmax(-1).cpu()
                    p, c = prob.max(1)
                    subtitles = [
                        f"prediction: {imagenet_class_name(int(ci))} ({100 * float(pi):.0f}%)"
                        for pi, ci in zip(p, c)
                    ]
                for i, (index, name, stem, src, _, words) in enumerate(chunk):
                    k_used = int(res.n_clusters[i if len(res.n_clusters) > 1 else 0])
                    title = (
                        f"{name} - {info['name']}{' (random weights)' if args.no_pretrained else ''}, "
                        f"layers {', '.join(str(l) for l in layers)}, K={k_used}"
                        f"{' (auto)' if n_clusters == 'auto' or clusterer == 'auto' else ''}, {clusterer}\n"
                        f"{words}; {resolution_words(resolution, res.grid, layers[0])}"
                    )
                    fig, _ = explain_figure(x01[i], seg[i], title=title, subtitle=subtitles[i], alpha=args.alpha)
                    os.makedirs(args.out, exist_ok=True)  # only once there is something to write
                    path = save_figure(fig, os.path.join(args.out, f"{stem}_nave.png"), dpi=100)
                    line = f"{src.path if isinstance(src, ImageInput) else name} -> {path}" if clash else str(path)
                    written.append((index, line))
                    if get_world_size() == 1:
                        print(line)
                bar.update(len(chunk))
    except Exception as exc:
        error = exc
    check_all_ok(error)
    # under torchrun: every rank's outputs (in image order) and skips reach rank 0, which reports them
    lines = gather_in_order([i for i, _ in written], [line for _, line in written], len(sources))
    n_skipped = int(all_reduce(torch.tensor([skipped])).item())
    if lines is not None:
        if get_world_size() > 1:
            for line in lines:
                if line is not None:
                    print(line)
        ImageLoader.summary_of(n_skipped, len(sources))
    if int(all_reduce(torch.tensor([len(written)])).item()) == 0:
        _fail(f"no image could be read ({n_skipped} skipped)")
    return 0


def explain_view(
    item: Tuple[int, str, str, Any], *, size: Optional[int], info: Dict[str, Any], crop: bool,
    fixed: Optional[Tuple[int, int]],
) -> Optional[Tuple[int, str, str, Any, "Tensor", str]]:
    """``(index, name, stem, source, view (1, 3, H, W), words)`` of one image, or None when skipped.

    Runs in the DataLoader's worker processes with ``--workers``: it decodes and resizes.
    """
    from captum_nave.cli.common import ImageInput, ImageLoader

    index, name, stem, src = item
    image01 = ImageLoader().load(src) if isinstance(src, ImageInput) else src
    if image01 is None:
        return None
    view, words = image_view(image01, size, info, crop=crop, fixed=fixed)
    return index, name, stem, src, view, words

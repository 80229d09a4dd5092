"""``captum-nave concepts``: NAVE concepts shared across an image set (ConceptClusters)."""

from __future__ import annotations

import argparse
import csv
import heapq
import os
import sys
from typing import Any, Dict, Iterator, List, NoReturn, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._models import MODEL_HELP

NAME = "concepts"

#: File extensions read from folders.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_EPILOG = """\
Example:
  captum-nave concepts                                  # scikit-image photos, offline model
  captum-nave concepts photos/ -k 8 --out concepts
  captum-nave concepts a.jpg b.jpg photos/ -k 10 --model tv:resnet50 --layers layer3 layer4 --epochs 2

Fits K concepts shared by all images (ConceptClusters: streaming mini-batch k-means on
the NAVE features of the chosen layers; memory bounded by one batch) and writes to OUT:
  concept_gallery.png   one row per concept: the images where it covers the most area
  concepts.npz          the fitted concepts (ConceptClusters.load reads them back)
  concept_shares.csv    per image and concept, the share of the image it covers
and prints the paths. Folders are read non-recursively (jpg, jpeg, png, bmp, gif, tif,
tiff, webp). Images are resized so the shorter side matches --size and centre-cropped.
"""


def register(subparsers: Any) -> None:
    """Add the ``concepts`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        NAME,
        help="fit NAVE concepts shared across a set of images and draw the concept gallery",
        description=(
            "Cluster the activations of a model over a whole set of images into K concepts "
            "whose ids mean the same thing in every image (ConceptClusters), then save the "
            "concepts, a gallery of the image regions of each concept and the share of every "
            "image that each concept covers. With no IMAGE, uses the photos bundled with "
            "scikit-image."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs", nargs="*", metavar="IMAGE_OR_DIR",
        help="image files and/or folders of images (default: scikit-image sample photos)",
    )
    p.add_argument("-k", "--n-clusters", type=int, default=10, metavar="K", help="number of concepts (default: 10)")
    p.add_argument(
        "--model", default="efficientnet_lite0",
        help=MODEL_HELP,
    )
    p.add_argument("--no-pretrained", action="store_true", help="random weights of the same architecture")
    p.add_argument(
        "--layers", nargs="+", default=None, metavar="L",
        help="layers to cluster (default: the model's default layers)",
    )
    p.add_argument("--size", type=int, default=None, help="input size in pixels (default: the model's, 224)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default: 16)")
    p.add_argument("--epochs", type=int, default=1, help="passes over the images while fitting (default: 1)")
    p.add_argument("--n-init", type=int, default=1, metavar="N",
                   help="k-means++ seedings of the first batch; the lowest inertia is kept (default: 1)")
    p.add_argument("--top", type=int, default=4, metavar="N", help="images per concept in the gallery (default: 4)")
    p.add_argument("--out", default="nave-concepts", metavar="DIR", help="output folder (default: ./nave-concepts)")
    p.set_defaults(func=run)


def _fail(msg: str) -> NoReturn:
    from captum_nave.cli import CLIError

    raise CLIError(msg)


def collect_images(inputs: Sequence[str]) -> List[str]:
    """Image files from files and folders (folders non-recursive, sorted), duplicates removed."""
    out: List[str] = []
    seen = set()
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f) for f in os.listdir(item)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, f))
            )
            if not found:
                _fail(f"folder {item!r} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        elif os.path.isfile(item):
            found = [item]
        else:
            _fail(f"image file or folder {item!r} does not exist")
        for f in found:
            key = os.path.abspath(f)
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


class _Batches:
    """Re-iterable batches of normalised images (each pass reloads them; memory: one batch)."""

    def __init__(self, sources: Sequence[Union[str, Tensor]], size: Tuple[int, int], info: Dict[str, Any],
                 batch_size: int, device: torch.device) -> None:
        self.sources, self.size, self.info = list(sources), size, info
        self.batch_size, self.device = batch_size, device

    def __len__(self) -> int:
        return (len(self.sources) + self.batch_size - 1) // self.batch_size

    def load01(self, indices: Sequence[int]) -> Tensor:
        from captum_nave.models import load_image, resize_images

        imgs = []
        for i in indices:
            src = self.sources[i]
            if isinstance(src, str):
                try:
                    src = load_image(src)
                except ValueError as exc:
                    _fail(str(exc).splitlines()[0])
            imgs.append(resize_images(src, self.size))
        return torch.cat(imgs)

    def batches(self) -> Iterator[Tuple[List[int], Tensor]]:
        from captum_nave.models import normalize

        for start in range(0, len(self.sources), self.batch_size):
            idx = list(range(start, min(start + self.batch_size, len(self.sources))))
            yield idx, normalize(self.load01(idx), self.info).to(self.device)

    def __iter__(self) -> Iterator[Tensor]:
        for _, x in self.batches():
            yield x


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from captum_nave import ConceptClusters, LayerClusterExplainer
    from captum_nave.cli.explain import parse_layers
    from captum_nave.cli._models import check_input_size, load_model_cli
    from captum_nave.models import sample_images
    from captum_nave.visualization import concept_top_images, plot_concept_gallery

    if args.n_clusters < 2:
        _fail(f"-k/--n-clusters: expected an integer >= 2, got {args.n_clusters}")
    if args.size is not None and args.size < 8:
        _fail(f"--size: expected an image size of at least 8 pixels, got {args.size}")
    for opt, v in (("--batch-size", args.batch_size), ("--epochs", args.epochs), ("--top", args.top),
                   ("--n-init", args.n_init)):
        if v < 1:
            _fail(f"{opt}: expected a positive integer, got {v}")
    if args.inputs:
        paths = collect_images(args.inputs)
        names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
        sources: List[Union[str, Tensor]] = list(paths)
    else:
        samples = sample_images()
        names, sources = list(samples), list(samples.values())
    layers = parse_layers(args.layers)
    device = torch.device(args.device or "cpu")  # checked by cli.main
    torch.manual_seed(args.seed)  # --no-pretrained weights are reproducible with --seed
    model, info = load_model_cli(args.model, pretrained=not args.no_pretrained, device=device)
    if layers is None:
        layers = list(info["default_layers"])
        if not layers:
            _fail(f"--layers: model {args.model!r} has no default layers; name them with --layers")
    try:
        explainer = LayerClusterExplainer(model, layers)
    except (ValueError, TypeError) as exc:
        _fail(f"--layers: {str(exc).splitlines()[0]}")
    size = (args.size, args.size) if args.size is not None else tuple(info["input_size"])
    check_input_size(model, size, args.model)  # type: ignore[arg-type]
    data = _Batches(sources, size, info, args.batch_size, device)  # type: ignore[arg-type]
    os.makedirs(args.out, exist_ok=True)

    concepts = ConceptClusters(
        explainer, n_clusters=args.n_clusters, n_epochs=args.epochs, random_state=args.seed,
        n_init=args.n_init, progress=sys.stderr.isatty(), device=device,
    )
    try:
        concepts.fit(data)
    except ValueError as exc:
        _fail(str(exc).splitlines()[0])
    npz = os.path.join(args.out, "concepts.npz")
    concepts.save(npz)

    # shares of every concept in every image; keep the top images per concept (bounded memory)
    K, top_n = args.n_clusters, args.top
    best: Dict[int, List[Tuple[float, int]]] = {k: [] for k in range(K)}  # min-heaps of (share, -index)
    csv_path = os.path.join(args.out, "concept_shares.csv")
    tmp = csv_path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "concept", "share"])
        with tqdm(total=len(sources), desc="predict", unit="image", disable=not sys.stderr.isatty()) as bar:
            for idx, x in data.batches():
                maps = concepts.predict(x).cpu()  # (B, 1, H, W)
                flat = maps.reshape(len(idx), -1)
                shares = torch.stack([(flat == k).double().mean(1) for k in range(K)], 1)  # (B, K)
                for row, i in enumerate(idx):
                    for k in range(K):
                        s = float(shares[row, k])
                        writer.writerow([names[i], k, repr(s)])
                        if s > 0:
                            item = (s, -i)
                            if len(best[k]) < top_n:
                                heapq.heappush(best[k], item)
                            else:
                                heapq.heappushpop(best[k], item)
                bar.update(len(idx))
    os.replace(tmp, csv_path)

    # gallery: only the images that are some concept's top image
    keep = sorted({-neg for k in best for _, neg in best[k]})
    x01 = data.load01(keep)
    from captum_nave.models import normalize

    maps = torch.cat([
        concepts.predict(normalize(x01[s : s + args.batch_size], info).to(device)).cpu()
        for s in range(0, len(keep), args.batch_size)
    ])
    fig, axes = plot_concept_gallery(x01, maps, n_top=top_n)
    top = concept_top_images(maps, top_n)
    for r, cid in enumerate(top):
        for c, (j, share) in enumerate(top[cid]):
            axes[r, c].set_title(f"{names[keep[j]]}: {100 * share:.0f}%", fontsize="small")
    fig.suptitle(f"{len(top)} concepts of {args.model}{' (random weights)' if args.no_pretrained else ''} "
                 f"over {len(sources)} images, layers {', '.join(str(l) for l in layers)}")
    png = os.path.join(args.out, "concept_gallery.png")
    fig.savefig(png, dpi=100)
    for p in (png, npz, csv_path):
        print(p)
    return 0

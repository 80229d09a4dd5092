"""``captum-nave concepts``: NAVE concepts shared across an image set (ConceptClusters)."""

from __future__ import annotations

import argparse
import functools
import csv
import heapq
import os
import sys
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, NoReturn, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor

from ._models import MODEL_HELP

NAME = "concepts"

_EPILOG = """\
Example:
  captum-nave concepts                                  # scikit-image photos, offline model
  captum-nave concepts photos/ -k 8 --out concepts
  captum-nave concepts a.jpg b.jpg photos/ -k 10 --model tv:resnet50 --layers layer3 layer4 --epochs 2
  # 4 GPUs, one process each, images decoded by 4 workers per process (rank 0 writes the outputs)
  torchrun --standalone --nproc-per-node 4 -m captum_nave.cli concepts photos/ --device cuda --workers 4

Fits K concepts shared by all images (ConceptClusters: streaming mini-batch k-means on
the NAVE features of the chosen layers; memory bounded by one batch) and writes to OUT:
  concept_gallery.png   one row per concept: the images where it covers the most area
  concepts.npz          the fitted concepts (ConceptClusters.load reads them back)
  concept_shares.csv    per image and concept, the share of the image it covers
and prints the paths. Folders are read non-recursively (jpg, jpeg, png, bmp, gif, tif,
tiff, webp, pgm, ppm); images in them that cannot be read (over Pillow's decompression-bomb
limit, damaged, a mode without a faithful conversion) are skipped and counted, a named
file that cannot be read is an error. Images are resized so the shorter side matches
--size and centre-cropped (every concept is fitted on the same square view). When two
images share a file name, the CSV names them by their path.
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
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes decoding images ahead of the model (default: 0, decode in-process)")
    p.add_argument("--out", default="nave-concepts", metavar="DIR", help="output folder (default: ./nave-concepts)")
    p.set_defaults(func=run, check=check)


def _fail(msg: str) -> NoReturn:
    from captum_nave.cli.common import fail

    fail(msg)


def check(args: argparse.Namespace) -> None:
    """Every check that needs no model (run before torch is imported)."""
    from captum_nave.cli.common import check_out_dir, collect_images

    if args.n_clusters < 2:
        _fail(f"-k/--n-clusters: expected an integer >= 2, got {args.n_clusters}")
    if args.size is not None and args.size < 8:
        _fail(f"--size: expected an image size of at least 8 pixels, got {args.size}")
    for opt, v in (("--batch-size", args.batch_size), ("--epochs", args.epochs), ("--top", args.top),
                   ("--n-init", args.n_init)):
        if v < 1:
            _fail(f"{opt}: expected a positive integer, got {v}")
    if args.workers < 0:
        _fail(f"--workers: expected an integer >= 0, got {args.workers}")
    collect_images(args.inputs, option="IMAGE_OR_DIR")
    check_out_dir(args.out)


def load_resized(src: Union[str, "Tensor"], size: Tuple[int, int]) -> "Tensor":
    """One image as (1, 3, H, W) in [0, 1] at ``size`` (runs in DataLoader workers with --workers)."""
    from captum_nave.models import load_image, resize_images

    if isinstance(src, str):
        try:
            src = load_image(src)
        except ValueError as exc:
            _fail(str(exc).splitlines()[0])
    return resize_images(src, size)


class _Batches:
    """Re-iterable batches of normalised images (each pass reloads them; memory: one batch).

    ``indices`` are the images this process reads (under torchrun its share, in order);
    ``workers`` DataLoader processes decode them ahead of the model.
    """

    def __init__(self, sources: Sequence[Union[str, "Tensor"]], size: Tuple[int, int], info: Dict[str, Any],
                 batch_size: int, device: "torch.device", *, indices: Optional[Sequence[int]] = None,
                 workers: int = 0) -> None:
        self.sources, self.size, self.info = list(sources), size, info
        self.batch_size, self.device, self.workers = batch_size, device, workers
        self.indices = list(range(len(self.sources))) if indices is None else list(indices)

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def load01(self, indices: Sequence[int]) -> "Tensor":
        import torch

        return torch.cat([load_resized(self.sources[i], self.size) for i in indices])

    def batches(self) -> Iterator[Tuple[List[int], "Tensor"]]:
        import torch

        from captum_nave.cli.parallel import load_ahead
        from captum_nave.models import normalize

        load = functools.partial(load_resized, size=self.size)
        idx: List[int] = []
        imgs: List["Tensor"] = []
        for i, img in load_ahead(self.sources, load, self.indices, workers=self.workers, device=self.device):
            idx.append(i)
            imgs.append(img.to(self.device, non_blocking=True))  # pinned on CUDA: an asynchronous copy
            if len(idx) == self.batch_size:
                yield idx, normalize(torch.cat(imgs), self.info)
                idx, imgs = [], []
        if idx:
            yield idx, normalize(torch.cat(imgs), self.info)

    def __iter__(self) -> Iterator["Tensor"]:
        for _, x in self.batches():
            yield x


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from captum_nave import ConceptClusters, LayerClusterExplainer
    from captum_nave.cli.common import ImageLoader, collect_images, image_names, layers_error
    from captum_nave.cli.parallel import gather_in_order, is_main, my_indices
    from captum_nave.distributed import check_all_ok
    from captum_nave.cli.explain import parse_layers
    from captum_nave.files import save_figure
    from captum_nave.cli._models import check_input_size, load_model_cli
    from captum_nave.models import sample_images
    from captum_nave.visualization import concept_top_images, plot_concept_gallery

    if args.inputs:
        found = collect_images(args.inputs, option="IMAGE_OR_DIR")
        loader = ImageLoader()
        # every pass of the fit reads the same images; under torchrun each rank checks its share
        share, error = my_indices(len(found)), None
        try:
            good = [loader.load(found[i]) is not None for i in share]
        except Exception as exc:  # a named file that cannot be read: every rank stops
            good, error = [], exc
        check_all_ok(error)
        ok = gather_in_order(share, good, len(found), to_all=True)
        usable = [it for it, g in zip(found, ok) if g]
        if is_main():
            ImageLoader.summary_of(len(found) - len(usable), len(found))
        if not usable:
            _fail(f"no image could be read ({len(found)} skipped)")
        paths = [it.path for it in usable]
        names = image_names(paths)
        sources: List[Union[str, "Tensor"]] = list(paths)
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
        _fail(layers_error(exc, model, info))
    size = (args.size, args.size) if args.size is not None else tuple(info["input_size"])
    check_input_size(model, size, args.model)  # type: ignore[arg-type]
    # under torchrun every rank fits on its share (ConceptClusters.fit is then a collective)
    data = _Batches(sources, size, info, args.batch_size, device, indices=my_indices(len(sources)),  # type: ignore[arg-type]
                    workers=args.workers)
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
    concepts.save(npz)  # the expensive part is kept even if the rest is interrupted (rank 0 writes)

    # shares of every concept in every image; keep the top images per concept (bounded memory)
    K, top_n = args.n_clusters, args.top
    csv_path = os.path.join(args.out, "concept_shares.csv")
    best = write_shares(concepts, data, names, csv_path, K, top_n)
    if best is None:  # not rank 0: rank 0 writes the table and the gallery
        return 0

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
    png = save_figure(fig, os.path.join(args.out, "concept_gallery.png"), dpi=100)
    for p in (png, npz, csv_path):
        print(p)
    return 0


def write_shares(
    concepts: Any, data: _Batches, names: Sequence[str], csv_path: str, n_concepts: int, top_n: int
) -> Optional[Dict[int, List[Tuple[float, int]]]]:
    """Write ``concept_shares.csv`` (image, concept, share) in image order; the top images per concept.

    Every process predicts its images. In one process the rows stream into the file; under
    torchrun each rank streams its rows into a hidden part file, and rank 0 merges the parts
    in image order (memory bounded by the heaps, not by the number of images) and removes
    them. Returns the min-heaps of ``(share, -index)`` of every concept on rank 0, None elsewhere.
    """
    import torch
    from tqdm import tqdm

    from captum_nave.cli.parallel import is_main
    from captum_nave.distributed import all_gather_object, check_all_ok, get_rank, get_world_size
    from captum_nave.files import atomic_write

    world = get_world_size()
    best: Dict[int, List[Tuple[float, int]]] = {k: [] for k in range(n_concepts)}  # min-heaps of (share, -index)
    target = csv_path if world == 1 else os.path.join(os.path.dirname(csv_path) or ".", f".concept_shares.rank{get_rank()}.part")
    error: Optional[BaseException] = None
    try:
        with atomic_write(target, newline="") as fh:
            writer = csv.writer(fh)
            if world == 1:
                writer.writerow(["image", "concept", "share"])
            with tqdm(total=len(data.indices), desc="predict", unit="image",
                      disable=not (sys.stderr.isatty() and is_main())) as bar:
                for idx, x in data.batches():
                    maps = concepts.predict(x).cpu()  # (B, 1, H, W)
                    flat = maps.reshape(len(idx), -1)
                    shares = torch.stack([(flat == k).double().mean(1) for k in range(n_concepts)], 1)  # (B, K)
                    for row, i in enumerate(idx):
                        for k in range(n_concepts):
                            s = float(shares[row, k])
                            writer.writerow(([] if world == 1 else [i]) + [names[i], k, repr(s)])
                            if s > 0:
                                item = (s, -i)
                                if len(best[k]) < top_n:
                                    heapq.heappush(best[k], item)
                                else:
                                    heapq.heappushpop(best[k], item)
                    bar.update(len(idx))
    except Exception as exc:  # told to the other ranks, which would wait for the parts
        error = exc
    check_all_ok(error)
    if world == 1:
        return best
    heaps = all_gather_object(best)
    if not is_main():
        return None
    parts = [os.path.join(os.path.dirname(csv_path) or ".", f".concept_shares.rank{r}.part") for r in range(world)]
    try:
        with atomic_write(csv_path, newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["image", "concept", "share"])
            files = [open(p, newline="", encoding="utf-8") for p in parts]
            try:  # each part is in image order: a k-way merge keeps the file in image order
                rows = heapq.merge(*(csv.reader(f) for f in files), key=lambda r: int(r[0]))
                for r in rows:
                    writer.writerow(r[1:])
            finally:
                for f in files:
                    f.close()
    finally:
        for p in parts:
            if os.path.exists(p):
                os.unlink(p)
    merged: Dict[int, List[Tuple[float, int]]] = {}
    for k in range(n_concepts):  # the union of every rank's top images holds the overall top
        merged[k] = heapq.nlargest(top_n, [it for h in heaps for it in h[k]])
        heapq.heapify(merged[k])
    return merged

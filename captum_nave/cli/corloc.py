"""``captum-nave corloc``: the paper's CorLoc object-extraction evaluation on a dataset."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple, Union

from ._models import MODEL_HELP

NAME = "corloc"
_RANDOM_SUFFIX = "@random"
_BASELINES = ("slic", "grid")

_EPILOG = """\
Example:
  captum-nave corloc --format voc --root VOCdevkit/VOC2007 --model vit_small_patch16_224.dino \\
      --layers -1 -k 5 --strategy both --out corloc-voc07
  captum-nave corloc --format coco --root train2014 --annotations instances_train2014.json \\
      --file-list coco_20k_filenames.txt --model tv:resnet50 tv:resnet50@random --baseline slic
  captum-nave corloc --format folder --root my_images --model efficientnet_lite0 --limit 100
  # 4 GPUs (or 4 CPU processes with --device cpu): the shards are the processes, rank 0
  # merges the tables when all are done; rerunning the command resumes every shard
  torchrun --standalone --nproc-per-node 4 -m captum_nave.cli corloc ... --device cuda --out run
  # without a launcher: split a large dataset over 4 machines, then combine:
  captum-nave corloc ... --num-shards 4 --shard-index 0 --out run/shard0   (and 1, 2, 3)
  captum-nave corloc --merge run/shard0 run/shard1 run/shard2 run/shard3 --out run

Protocol (Boubekki et al., arXiv 2411.19700): images keep their resolution, are normalised
with the model's mean/std and zero-padded at the bottom/right to a multiple of the patch
size; the NAVE map is split into 4-connected components, those with area <= --min-area
are dropped, a --border frame is zeroed, and the component whose inner or outer box best
overlaps a ground-truth box is selected (an oracle: a proxy task). CorLoc counts the images
whose selected component's outer box reaches --iou-threshold with the matched box. With
--protocol authors (default) every detail is the authors' evaluation script's, so numbers
are comparable with the paper's: inner boxes centred on the int-truncated median, float32
IoU with eps 1e-7, IoU > 0.5 for the inner and >= 0.5 for the outer strategy, ties to the
first ground-truth box; --protocol clean uses float conventions (captum-nave 0.1). Images
where no component survives count as misses ("no component" in the table).

Formats: voc = VOCdevkit/VOC20xx with ImageSets/Main/<split>.txt; coco = --root is the image
folder, --annotations the instances JSON (iscrowd dropped), --file-list optional (COCO20k);
folder = --root holds the images and boxes.json {"img.jpg": [[x_min, y_min, x_max, y_max]]}.
Results are keyed by the dataset's ids (VOC id, COCO image id, folder-relative path);
duplicates and image paths leaving --root are refused.
A model name ending in @random is evaluated with random weights drawn from --seed
(trained vs random; the same weights on every rerun and shard).
Results are appended per image as they are computed: rerunning the same command resumes.
Writes OUT/summary.md, OUT/summary.json, OUT/per_image.csv (and OUT/overlays/ with
--overlays) and prints their paths.
"""


def register(subparsers: Any) -> None:
    """Add the ``corloc`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        NAME,
        help="CorLoc object-extraction evaluation of NAVE (and SLIC / grid baselines) on a "
        "VOC, COCO or folder dataset",
        description=(
            "Evaluate how well NAVE segments isolate annotated objects with the paper's "
            "CorLoc protocol (inner- or outer-box segment selection), for one or several "
            "models and optional baselines, with resumable per-image results, shards and a "
            "Markdown comparison table."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = p.add_argument_group("dataset")
    d.add_argument("--format", choices=("voc", "coco", "folder"), default=None, help="dataset layout")
    d.add_argument("--root", default=None, metavar="DIR",
                   help="VOC: VOC2007/VOC2012 folder or VOCdevkit; COCO: image folder; folder: the folder")
    d.add_argument("--split", default="trainval", help="VOC image set (default: trainval)")
    d.add_argument("--year", default=None, help="VOC year when --root is a VOCdevkit with several")
    d.add_argument("--annotations", default=None, metavar="JSON", help="COCO instances JSON")
    d.add_argument("--file-list", default=None, metavar="TXT",
                   help="COCO: evaluate only these file names (e.g. the COCO20k list)")
    d.add_argument("--boxes-file", default="boxes.json", help="folder format: JSON of boxes (default: boxes.json)")
    d.add_argument("--name", default=None, help="dataset name in tables (default: from the files)")
    d.add_argument("--drop-difficult", action="store_true", help="VOC: drop 'difficult' objects")
    d.add_argument("--drop-truncated", action="store_true", help="VOC: drop 'truncated' objects")
    d.add_argument("--invalid-boxes", choices=("keep", "raise", "clip", "drop"), default=None,
                   help="boxes leaving the image: keep them as annotated (default for voc and coco, "
                   "as the authors' script), stop with an error (default for folder), clip or drop "
                   "them; boxes with NaN/inf coordinates are refused unless drop or clip")
    d.add_argument("--allow-outside-root", action="store_true",
                   help="accept image paths in the annotations that point outside --root "
                   "(absolute, or with ..)")
    d.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images")

    m = p.add_argument_group("methods")
    m.add_argument("--model", nargs="*", default=["efficientnet_lite0"], metavar="NAME",
                   help="models to evaluate: " + MODEL_HELP + "; append @random for random "
                   "weights; give --model with no name to evaluate only --baseline")
    m.add_argument("--no-pretrained", action="store_true", help="random weights for every model")
    m.add_argument("--layers", nargs="+", default=None, metavar="L",
                   help="layers to cluster (dotted names or block indices such as -1); default: "
                   "each model's default layers (ViTs: the last block)")
    m.add_argument("-k", "--n-clusters", default="5", metavar="K|auto",
                   help="clusters K (default: 5, the paper's), or auto: K per image by the "
                   "inertia-elbow rule over --k-range")
    m.add_argument("--k-range", type=int, nargs=2, default=(3, 10), metavar=("MIN", "MAX"),
                   help="candidate K for -k auto (default: 3 10)")
    m.add_argument("--clusterer", default="kmeans", choices=("kmeans", "ward", "pca"),
                   help="clustering algorithm (default: kmeans)")
    m.add_argument("--pad-multiple", type=int, default=None, metavar="P",
                   help="pad images to a multiple of P pixels (default: the model's patch size, "
                   "1 for CNNs)")
    m.add_argument("--baseline", nargs="+", default=[], choices=_BASELINES,
                   help="also evaluate SLIC superpixels and/or a regular grid")
    m.add_argument("--slic-segments", type=int, default=None, metavar="N",
                   help="SLIC superpixels per image (default: K)")
    m.add_argument("--slic-compactness", type=float, default=10.0, metavar="C", help="SLIC compactness (default: 10)")
    m.add_argument("--grid", type=int, default=3, metavar="G", help="grid baseline: G x G cells (default: 3)")

    q = p.add_argument_group("protocol")
    q.add_argument("--strategy", choices=("inner", "outer", "both"), default="both",
                   help="segment selection by inner box, outer box, or both (default)")
    q.add_argument("--protocol", choices=("authors", "clean"), default="authors",
                   help="authors: the authors' evaluation script exactly (default; comparable with "
                   "the paper); clean: float conventions of captum-nave 0.1")
    q.add_argument("--min-area", type=int, default=None, metavar="PX",
                   help="drop components with area <= this many pixels (default: the paper's 784 = 14*14*4)")
    q.add_argument("--border", type=int, default=None, metavar="PX",
                   help="pixels zeroed on each side (default: the paper's 14)")
    q.add_argument("--iou-threshold", type=float, default=None, metavar="T",
                   help="CorLoc IoU threshold (default: the paper's 0.5)")

    r = p.add_argument_group("run")
    r.add_argument("--out", default=None, metavar="DIR", help="output folder (default: ./corloc-results)")
    r.add_argument("--num-shards", type=int, default=None, metavar="N",
                   help="split the images into this many shards (machines without a launcher; under "
                   "torchrun the shards are the processes)")
    r.add_argument("--shard-index", type=int, default=None, metavar="I", help="which shard to evaluate (0-based)")
    r.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes decoding images ahead of the model (default: 0, decode in-process)")
    r.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="merge the results of these output folders (shards, datasets) and write "
                   "the tables to --out; evaluates nothing")
    r.add_argument("--overwrite", action="store_true", help="discard earlier results in --out instead of resuming")
    r.add_argument("--overlays", action="store_true", help="save a PNG of the selected boxes per image and method")
    p.set_defaults(func=run, check=check)


def _fail(msg: str) -> NoReturn:
    from captum_nave.cli.common import fail

    fail(msg)


def check(args: argparse.Namespace) -> None:
    """Every check that needs no model and no dataset (run before torch is imported)."""
    from captum_nave.cli.common import check_out_dir

    if args.merge:
        check_out_dir(args.out or args.merge[0])
        return
    k_text = str(args.n_clusters).strip().lower()
    if k_text != "auto" and (not re.fullmatch(r"\d+", k_text) or int(k_text) < 2):
        _fail(f"-k/--n-clusters: expected an integer >= 2 or auto, got {args.n_clusters!r}")
    k_min, k_max = args.k_range
    if not 2 <= k_min <= k_max:
        _fail(f"--k-range: expected 2 <= MIN <= MAX, got {k_min} {k_max}")
    if args.limit is not None and args.limit < 1:
        _fail(f"--limit: expected a positive integer, got {args.limit}")
    if args.pad_multiple is not None and args.pad_multiple < 1:
        _fail(f"--pad-multiple: expected a positive integer, got {args.pad_multiple}")
    world = os.environ.get("WORLD_SIZE", "1")  # set by torchrun (the process group starts later)
    if world.isdigit() and int(world) > 1 and (args.num_shards is not None or args.shard_index is not None):
        _fail(f"--num-shards/--shard-index: under torchrun the shards are the {world} processes; leave them out")
    if args.num_shards is not None and args.num_shards < 1:
        _fail(f"--num-shards: expected a positive integer, got {args.num_shards}")
    n_shards = args.num_shards or 1
    if args.shard_index is not None and not 0 <= args.shard_index < n_shards:
        _fail(f"--shard-index: expected 0 <= index < --num-shards ({n_shards}), got {args.shard_index}")
    if args.workers < 0:
        _fail(f"--workers: expected an integer >= 0, got {args.workers}")
    if args.grid < 1 or (args.slic_segments is not None and args.slic_segments < 1):
        _fail("--grid / --slic-segments: expected positive integers")
    check_out_dir(args.out or "corloc-results")


def parse_layers(specs: Optional[Sequence[str]]) -> Optional[List[Union[str, int]]]:
    """Dotted names stay strings; plain integers ("-1") become block indices."""
    if specs is None:
        return None
    return [int(s) if re.fullmatch(r"-?\d+", s.strip()) else s.strip() for s in specs]


def parse_model_spec(spec: str, no_pretrained: bool) -> Tuple[str, bool]:
    """``"NAME"`` / ``"NAME@random"`` -> (model name, pretrained)."""
    text = spec.strip()
    random_init = no_pretrained
    if text.lower().endswith(_RANDOM_SUFFIX):
        text = text[: -len(_RANDOM_SUFFIX)]
        random_init = True
    if not text:
        _fail(f"--model: empty model name in {spec!r}")
    return text, not random_init


def allow_any_input_size(model: Any) -> bool:
    """Let a fixed-size ViT take any (patch-multiple) input size, where its family can.

    The protocol feeds images at their own resolution; see
    :meth:`captum_nave.adapters.ModelAdapter.allow_any_input_size`. Returns True when
    the model was changed.
    """
    from torch import nn

    from captum_nave.adapters import get_adapter

    return isinstance(model, nn.Module) and get_adapter(model).allow_any_input_size()


def _dist_world() -> int:
    from captum_nave.distributed import get_world_size

    return get_world_size()


def _strategies(choice: str) -> Tuple[str, ...]:
    return ("inner", "outer") if choice == "both" else (choice,)


def _print_paths(out: str, paths: Sequence[str]) -> None:
    for p in paths:
        print(os.path.join(out, p))


def _build_methods(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    from captum_nave.evaluation import GridSegmenter, NaveSegmenter, SlicSegmenter
    from captum_nave.cli._models import load_model_cli

    device = torch.device(args.device or "cpu")
    layers = parse_layers(args.layers)
    explain_kwargs: Dict[str, Any] = {"clusterer": args.clusterer}
    if args.n_clusters == "auto":
        explain_kwargs["k_range"] = tuple(range(args.k_range[0], args.k_range[1] + 1))
    methods: Dict[str, Any] = {}
    for spec in args.model:
        name, pretrained = parse_model_spec(spec, args.no_pretrained)
        key = name if pretrained else f"{name}{_RANDOM_SUFFIX}"
        if key in methods:
            _fail(f"--model: {key!r} is given twice")
        # random weights drawn from --seed: reruns (resume) and shards get the same model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            model, info = load_model_cli(name, pretrained=pretrained, device=device)
        allow_any_input_size(model)
        model_layers = layers if layers is not None else list(info["default_layers"])
        if not model_layers:
            _fail(f"--layers: model {name!r} has no default layers; name them with --layers")
        pad = args.pad_multiple if args.pad_multiple is not None else (info.get("patch_size") or 1)
        try:
            methods[key] = NaveSegmenter(
                model,
                model_layers,
                n_clusters=args.n_clusters,
                mean=info["mean"],
                std=info["std"],
                pad_multiple=pad,
                random_state=args.seed,
                device=device,
                explain_kwargs=explain_kwargs,
                name=key,
                metadata={"weights_sha256": info.get("weights_sha256"), "pretrained": pretrained},
            )
        except (ValueError, TypeError) as exc:
            _fail(f"--layers: {str(exc).splitlines()[0]}")
    if "slic" in args.baseline:
        methods["SLIC"] = SlicSegmenter(
            n_segments=args.slic_segments or (args.n_clusters if args.n_clusters != "auto" else 5), compactness=args.slic_compactness
        )
    if "grid" in args.baseline:
        methods[f"grid {args.grid}x{args.grid}"] = GridSegmenter(args.grid, args.grid)
    if not methods:
        _fail("--model: no model and no --baseline given: nothing to evaluate")
    return methods


def _read(args: argparse.Namespace):
    from captum_nave.evaluation import read_coco, read_folder, read_voc

    if args.format is None or args.root is None:
        _fail("--format and --root are required (or use --merge DIR ...)")
    common: Dict[str, Any] = {"limit": args.limit, "allow_outside_root": args.allow_outside_root}
    if args.invalid_boxes is not None:
        common["invalid_boxes"] = args.invalid_boxes
    if args.format == "voc":
        data = read_voc(args.root, args.split, year=args.year, drop_difficult=args.drop_difficult,
                        drop_truncated=args.drop_truncated, **common)
        if args.name:
            data.name = args.name
        return data
    if args.format == "coco":
        if args.annotations is None:
            _fail("--annotations: the COCO format needs the instances JSON file")
        return read_coco(args.annotations, args.root, file_list=args.file_list, name=args.name, **common)
    return read_folder(args.root, args.boxes_file, name=args.name, **common)


def run(args: argparse.Namespace) -> int:
    from captum_nave.evaluation import CorLocProtocol, merge_runs, run_corloc

    if args.merge:
        from captum_nave.distributed import is_main_process, run_on_main

        out = args.out or args.merge[0]
        summaries = run_on_main(merge_runs, args.merge, out)  # once, also under a launcher
        if not is_main_process():
            return 0
        for s in summaries:
            if not s.complete:
                sys.stderr.write(f"captum-nave: warning: results for {s.dataset} are incomplete\n")
        _print_paths(out, ["summary.md", "summary.json", "per_image.csv"])
        return 0

    check(args)  # also when run() is called directly
    k_text = str(args.n_clusters).strip().lower()
    args.n_clusters = "auto" if k_text == "auto" else int(k_text)
    launched = _dist_world() > 1
    n_shards = args.num_shards or 1
    given = {"min_area": args.min_area, "border": args.border, "iou_threshold": args.iou_threshold}
    try:  # constants not given keep the paper's values (CorLocProtocol's defaults)
        protocol = CorLocProtocol(conventions=args.protocol, **{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        _fail(f"--{str(exc).split(':')[0].replace('_', '-')}: {str(exc).split(':', 1)[1].strip()}")
    data = _read(args)
    if len(data) == 0:
        _fail(f"--root: no image with boxes in {args.root} ({data.n_skipped} skipped without boxes)")
    methods = _build_methods(args)
    out = args.out or "corloc-results"
    try:
        run_corloc(
            data, methods, out,
            strategies=_strategies(args.strategy),
            protocol=protocol,
            num_shards=args.num_shards,
            shard_index=args.shard_index,
            overwrite=args.overwrite,
            overlays=args.overlays,
            progress=sys.stderr.isatty(),
            workers=args.workers,
        )
    except AssertionError as exc:  # models that check their input size with assert
        _fail(f"a model rejected an input image: {str(exc).splitlines()[0]}")
    from captum_nave.distributed import is_main_process

    if not is_main_process():  # rank 0 prints the merged results
        return 0
    if launched or n_shards == 1:
        _print_paths(out, ["summary.md", "summary.json", "per_image.csv"])
    else:
        print(os.path.join(out, "records"))
    if args.overlays:
        print(os.path.join(out, "overlays"))
    return 0

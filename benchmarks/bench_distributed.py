"""Scaling out: throughput of ConceptClusters and CorLoc with 1 and 2 processes (torchrun).

Each configuration is started exactly as a user would start it, with
``python -m torch.distributed.run --standalone --nproc-per-node P`` (gloo on the CPU,
NCCL with one process per GPU for ``--device cuda``), and every process uses ONE
thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``), so P processes use P
cores. Times are taken inside the workers between two barriers (model loading and
process start-up excluded) and reported by rank 0:

* ``concepts``: ``ConceptClusters.fit`` (torchvision ResNet50 random init, layers 3-4, input
  resolution, K = 10) over N images; every rank streams its N / P images in batches of
  B (the global batch is P x B); throughput = N / wall time. The bare forward pass
  over the same batches is timed too (the fit cannot beat it).
* ``faithfulness``: the report's faithfulness step (``collect_report``'s deletion / insertion
  curves of Grad-CAM, IG, LRP and the random map with pixels, NAVE segments, SLIC and a grid,
  segment importance, and the 4-stage randomisation check of every method, NAVE included; the
  report's defaults) on N random images with a randomly initialised ResNet18 (10 classes), each
  rank on its own images and merged; the maps come from a report run before the timing.
* ``corloc``: ``run_corloc`` as ``captum-nave corloc`` runs it (efficientnet_lite0 with
  its packaged weights, default layers, K = 5, both strategies, the paper's protocol,
  ``--workers`` decoding processes per rank) on a synthetic folder dataset of N JPEGs
  (about 224-280 px) with boxes, rank-sharded, rank 0 merging the tables; throughput =
  N / wall time (records written with fsync and merged; model loading excluded).

Scaling efficiency = throughput(P) / (P x throughput(1)); 1.0 is perfect.

Usage::

    python benchmarks/bench_distributed.py                # full run, writes results-distributed.md
    python benchmarks/bench_distributed.py --quick        # smoke test: tiny sizes, prints only
    python benchmarks/bench_distributed.py --device cuda  # GPU figures (results-distributed-cuda.md)

On a shared machine the figures are noisy: the results file records the load average
before and after each configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# --------------------------------------------------------------------------- workers (run under torchrun)
def _setup(device_text: str):
    import torch

    from captum_nave import distributed as cnd

    torch.set_num_threads(1)
    device = cnd.device_for_rank(device_text)
    cnd.init_distributed(device=device)
    return torch, cnd, device


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker_concepts(args: argparse.Namespace) -> Dict:
    torch, cnd, device = _setup(args.device)
    import torchvision

    from captum_nave import ConceptClusters, LayerClusterExplainer

    rank, world = cnd.get_rank(), cnd.get_world_size()
    torch.manual_seed(0)
    arch = torchvision.models.resnet18 if args.quick else torchvision.models.resnet50
    model = arch(weights=None).eval().to(device)
    ex = LayerClusterExplainer(model, ["layer3", "layer4"])
    g = torch.Generator().manual_seed(1)
    images = torch.rand(args.images, 3, args.size, args.size, generator=g)
    mine = images[rank::world]  # this rank's share, in its own batches
    batches = [mine[s : s + args.batch].to(device) for s in range(0, len(mine), args.batch)]

    cnd.barrier()
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in batches:
            model(b)
    _sync(device)
    cnd.barrier()
    t_forward = time.perf_counter() - t0

    cc = ConceptClusters(ex, n_clusters=10, resolution="input", random_state=0, progress=False)
    cnd.barrier()
    t0 = time.perf_counter()
    cc.partial_fit(batches[0])  # the seeding: rank 0 on the gathered first global batch
    _sync(device)
    cnd.barrier()
    t_seed = time.perf_counter() - t0
    for b in batches[1:]:  # the same steps as fit(batches)
        cc.partial_fit(b)
    _sync(device)
    cnd.barrier()
    t_fit = time.perf_counter() - t0
    return {"t_forward": t_forward, "t_fit": t_fit, "t_seed": t_seed, "n_steps": cc.n_steps_, "world": world,
            "first_batch": len(batches[0]) * world, "model": "ResNet18" if args.quick else "ResNet50"}


def make_dataset(root: str, n: int, size: int) -> None:
    """A folder dataset (boxes.json) of n images: noise background, one bright rectangle each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    boxes = {}
    for i in range(n):
        h, w = size + int(rng.integers(0, size // 4)), size + int(rng.integers(0, size // 4))
        img = (rng.random((h, w, 3)) * 90).astype(np.uint8)
        bh, bw = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
        y0, x0 = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        img[y0 : y0 + bh, x0 : x0 + bw] = rng.integers(120, 255, 3)
        Image.fromarray(img).save(os.path.join(root, f"img{i:04d}.jpg"), quality=90)
        boxes[f"img{i:04d}.jpg"] = [[x0, y0, x0 + bw, y0 + bh]]
    with open(os.path.join(root, "boxes.json"), "w") as fh:
        json.dump(boxes, fh)


def worker_corloc(args: argparse.Namespace) -> Dict:
    torch, cnd, device = _setup(args.device)
    from captum_nave.evaluation import CorLocProtocol, NaveSegmenter, read_folder, run_corloc
    from captum_nave.models import load_model

    model, info = load_model("efficientnet_lite0", device=device)
    seg = NaveSegmenter(model, info["default_layers"], n_clusters=5, mean=info["mean"], std=info["std"],
                        random_state=0, device=device)
    data = read_folder(args.data)
    out = os.path.join(os.path.dirname(args.result), "corloc-out")

    # control: decode + normalise + bare forward pass of this rank's images (perfectly parallel)
    from captum_nave.data import shard_indices
    from captum_nave.evaluation import load_image, prepare_image

    cnd.barrier()
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in shard_indices(len(data), cnd.get_world_size(), cnd.get_rank()):
            model(prepare_image(load_image(data[i]), info["mean"], info["std"]).to(device))
    _sync(device)
    cnd.barrier()
    t_forward = time.perf_counter() - t0

    cnd.barrier()
    _sync(device)
    t0 = time.perf_counter()
    run_corloc(data, {"efficientnet_lite0": seg}, out, protocol=CorLocProtocol(), fsync=True,
               workers=args.workers)
    _sync(device)
    cnd.barrier()
    t_run = time.perf_counter() - t0
    return {"t_fit": t_run, "t_forward": t_forward, "world": cnd.get_world_size(), "model": "EfficientNet-Lite0"}


def worker_faithfulness(args: argparse.Namespace) -> Dict:
    torch, cnd, device = _setup(args.device)
    import torchvision

    from captum_nave.data import shard_indices
    from captum_nave.models import normalize
    from captum_nave.report import collect_report
    from captum_nave.report.faithfulness import check_faithfulness_options
    from captum_nave.report.model_run import _add_faithfulness

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval().to(device)
    g = torch.Generator().manual_seed(2)
    x01 = torch.rand(args.report_images, 3, args.size, args.size, generator=g)
    ig = {"ig": {"n_steps": 8}}
    data = collect_report(x01, {"resnet18": model}, methods=("nave", "gradcam", "ig", "lrp"), n_clusters=5,
                          seeds=(0,), method_options=ig, faithfulness=False, lens=False)  # split and merged
    run, world = data.runs[0], cnd.get_world_size()
    x = normalize(data.images, run.info).to(device)
    opts = check_faithfulness_options(None)  # the report's defaults: 20 steps, 4 rankings, 4 randomisation stages
    mine = shard_indices(len(x), world, cnd.get_rank())

    # control: the perturbation passes of one map and one ranking over this rank's images (perfectly parallel)
    cnd.barrier()
    t0 = time.perf_counter()
    with torch.no_grad():
        copies = x[mine].repeat_interleave(opts["n_steps"] + 1, dim=0)
        for s in range(0, len(copies), opts["batch_size"]):
            model(copies[s : s + opts["batch_size"]])
    _sync(device)
    cnd.barrier()
    t_forward = time.perf_counter() - t0

    cnd.barrier()
    t0 = time.perf_counter()
    _add_faithfulness(run, model, x, data.images, list(data.image_names), n_clusters=5, seed=0, opts=ig,
                      boxes=None, faith_opts=opts, on_error="raise", warnings_out=[],
                      indices=mine if world > 1 else None)
    _sync(device)
    cnd.barrier()
    t_run = time.perf_counter() - t0
    return {"t_fit": t_run, "t_forward": t_forward, "world": world, "model": "ResNet18",
            "timings": {k: run.timings[k] for k in ("faithfulness curves", "randomisation")}}


WORKERS = {"concepts": worker_concepts, "corloc": worker_corloc, "faithfulness": worker_faithfulness}
LABELS = {
    "concepts": "ConceptClusters ({model} layers 3-4, input res, K=10, batch {batch}/rank)",
    "corloc": "CorLoc ({model} default layers, K=5, both strategies, {workers} decoding worker(s)/rank)",
    "faithfulness": "report faithfulness ({model} random init, 4 maps x 4 rankings + randomisation, 4 stages)",
}


# --------------------------------------------------------------------------- driver
def _loadavg() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def launch(kind: str, nproc: int, args: argparse.Namespace) -> Dict:
    """Run one configuration under torchrun and return rank 0's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            os.path.abspath(__file__), "--worker", kind, "--result", out, "--device", args.device,
            "--images", str(args.images), "--corloc-images", str(args.corloc_images),
            "--report-images", str(args.report_images),
            "--batch", str(args.batch), "--size", str(args.size), "--workers", str(args.workers),
            "--data", args.data or "",
        ] + (["--quick"] if args.quick else [])
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        before = _loadavg()
        subprocess.run(cmd, check=True, env=env)
        with open(out) as fh:
            res = json.load(fh)
        res["load_before"], res["load_after"] = before, _loadavg()
        return res


def report(results: Dict[str, Dict[int, Dict]], args: argparse.Namespace, argv: List[str]) -> str:
    sys.path.insert(0, HERE)
    from bench_nave import machine  # the same machine line as the single-process benchmark

    lines = [
        "# Scaling out: 1 vs 2 processes",
        "",
        f"Command: `{' '.join(['python', os.path.relpath(__file__, ROOT)] + argv)}`  ",
        f"Device: {args.device}; machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "Every process runs with one thread; P processes started by `torchrun --standalone "
        "--nproc-per-node P`; wall time between barriers on rank 0 (start-up and model loading "
        "excluded). Efficiency = throughput(P) / (P x throughput(1)). Load average "
        "(1/5/15 min) before and after each run shows how busy the machine was.",
        "",
        "| workload | processes | images | wall (s) | images/s | efficiency | after seeding (img/s) | efficiency after seeding | control (img/s) | images/s / control | efficiency vs control | load before | load after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, per_p in results.items():
        base = base_after = base_ratio = None
        for p, r in sorted(per_p.items()):
            n = r["images"]
            thr = n / r["t_fit"]
            base = thr if p == 1 else base
            eff = f"{thr / (p * base):.2f}" if base else "n/a"
            after, eff_after = "-", "-"
            if r.get("t_seed") is not None:
                thr_after = (n - r["first_batch"]) / (r["t_fit"] - r["t_seed"])
                base_after = thr_after if p == 1 else base_after
                after = f"{thr_after:.2f} (seeding {r['t_seed']:.1f} s)"
                eff_after = f"{thr_after / (p * base_after):.2f}" if base_after else "n/a"
            fwd, ratio, eff_ctl = "-", "-", "-"
            if r.get("t_forward"):
                q = r["t_forward"] / r["t_fit"]  # this workload's throughput / the control's
                base_ratio = q if p == 1 else base_ratio
                fwd, ratio = f"{n / r['t_forward']:.2f}", f"{q:.2f}"
                eff_ctl = f"{q / base_ratio:.2f}"
            lines.append(
                f"| {r['label']} | {p} | {n} | {r['t_fit']:.1f} | {thr:.2f} | {eff} | {after} | {eff_after} | {fwd} | "
                f"{ratio} | {eff_ctl} | {r['load_before']} | {r['load_after']} |"
            )
    lines += [
        "",
        "ConceptClusters seeds on the first global batch (P x batch images) on rank 0 alone, as one",
        "process would on that batch (this is what makes the result independent of P); the column",
        "'after seeding' is the throughput of the remaining, all-reduced mini-batch steps.",
        "",
        "The control is a perfectly parallel job on the same images in the same processes (ConceptClusters:",
        "the bare forward pass of the batches; CorLoc: decoding, normalisation and the bare forward pass",
        "of every image; report faithfulness: the forward passes of one map's pixel deletion curves over the",
        "rank's images). On a machine shared with other jobs, P processes get about P shares of the",
        "CPU, so raw efficiencies measure the scheduler; 'efficiency vs control' = (throughput / control",
        "throughput with P processes) / (the same with 1 process) is the part of the scaling that the",
        "distributed code itself loses or keeps (1.0: none lost).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one process per GPU)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (ResNet18, 64 px, 16 images); prints only")
    p.add_argument("--images", type=int, default=None, help="images of the ConceptClusters fit (default 160)")
    p.add_argument("--corloc-images", type=int, default=None, help="images of the CorLoc run (default 48)")
    p.add_argument("--report-images", type=int, default=None,
                   help="images of the report's faithfulness step (default 16)")
    p.add_argument("--batch", type=int, default=None, help="images per batch and rank (default 8)")
    p.add_argument("--size", type=int, default=None, help="image size (default 224)")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts (default: 1 2)")
    p.add_argument("--only", choices=tuple(WORKERS), default=None, help="one workload only")
    p.add_argument("--out", default=None, help="results file (default benchmarks/results-distributed[-cuda].md)")
    p.add_argument("--workers", type=int, default=0,
                   help="CorLoc: DataLoader decoding processes per rank (default 0: one process = one core)")
    p.add_argument("--worker", choices=tuple(WORKERS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.images = args.images or (16 if args.quick else 160)
    args.corloc_images = args.corloc_images or (8 if args.quick else 48)
    args.report_images = args.report_images or (4 if args.quick else 16)
    args.batch = args.batch or (4 if args.quick else 8)
    args.size = args.size or (64 if args.quick else 224)

    if args.worker is not None:  # inside torchrun
        res = WORKERS[args.worker](args)
        from captum_nave import distributed as cnd

        if cnd.is_main_process():
            with open(args.result, "w") as fh:
                json.dump(res, fh)
        cnd.destroy_distributed()
        return 0

    results: Dict[str, Dict[int, Dict]] = {}
    tmp_data = tempfile.TemporaryDirectory()
    args.data = os.path.join(tmp_data.name, "corloc-data")
    if args.only in (None, "corloc"):
        make_dataset(args.data, args.corloc_images, args.size)
    for kind in ([args.only] if args.only else list(WORKERS)):
        results[kind] = {}
        for nproc in args.procs:
            r = launch(kind, nproc, args)
            r["images"] = {"concepts": args.images, "corloc": args.corloc_images}.get(kind, args.report_images)
            r["label"] = LABELS[kind].format(model=r.get("model", ""), batch=args.batch, workers=args.workers)
            results[kind][nproc] = r
            print(f"{kind} with {nproc} process(es): {r['images'] / r['t_fit']:.2f} images/s "
                  f"(load {r['load_before']} -> {r['load_after']})", flush=True)
    text = report(results, args, argv)
    print(text)
    if not args.quick:
        out = args.out or os.path.join(HERE, "results-distributed-cuda.md" if args.device.startswith("cuda")
                                       else "results-distributed.md")
        with open(out, "w") as fh:
            fh.write(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

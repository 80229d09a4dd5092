"""Speed and memory of captum-nave against the materialised NAVE reference, in ONE process.

For ViT-S/16 (random init, last block) and ResNet50 (random init, stages 2-4) with a
batch of 8 images of 224x224 and K = 5, at (a) the default grid (first selected layer)
and (b) the input resolution, it times side by side:

* ``reference``: Algorithm 1 materialised (``F.interpolate`` bicubic, per-pixel L2
  normalisation, 1/(1+C) weights, concatenation) + scikit-learn ``KMeans`` (k-means++,
  n_init=1) on each image's explicit matrix, after the same forward pass;
* ``ours``: ``LayerClusterExplainer.attribute(x, n_clusters=5)``;
* ``forward``: the model's bare forward pass under ``torch.no_grad()``.

and then fits ``ConceptClusters`` (ResNet50 stages 3-4, input resolution, K = 10) over
1,000 random images in batches, against the bare forward throughput on the same batches.

It reports medians of wall time over ``--repeats`` runs (no memory sampler running, the
allocator in its normal mode), and the peak resident memory above the baseline of one
more run (sampled every 2 ms from /proc/self/statm with glibc returning freed memory;
on CUDA ``max_memory_allocated``),
the ratios against the targets of issue 3, and writes ``benchmarks/results.md``.

Usage::

    python benchmarks/bench_nave.py                 # full run (about 25-35 min on 2 cores)
    python benchmarks/bench_nave.py --quick         # smoke test: tiny sizes, no results file
    python benchmarks/bench_nave.py --device cuda   # GPU figures (results-cuda.md)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import statistics
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from captum_nave import ConceptClusters, LayerClusterExplainer
from captum_nave.activations import capture_activations

HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------- measurement
def _allocator(mode: str) -> None:
    """Put glibc's allocator in ``"memory"`` or ``"timing"`` mode (no-op elsewhere).

    ``memory``: freed blocks go back to the OS (mmap for blocks over 256 KB, trim above
    256 KB), so resident memory tracks live memory and every run's peak can be read; this
    makes each large allocation a fresh mmap with page faults, which slows every method.
    ``timing``: thresholds fixed at the values glibc's dynamic rule reaches in a warmed-up
    process with large tensors (mmap above 32 MB, trim above 64 MB), so times are those
    of a normal process. Times are taken in timing mode without the memory sampler.
    """
    mmap_threshold, trim_threshold = (256 * 1024, 256 * 1024) if mode == "memory" else (32 << 20, 64 << 20)
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, trim_threshold)  # M_TRIM_THRESHOLD
    except OSError:  # not glibc
        pass


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakMemory:
    """Peak resident memory (bytes) above the level at entry, sampled in a thread."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        _trim()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base = self._rss()
        self._stop = threading.Event()
        self._max = self._base

        def sample() -> None:
            while not self._stop.is_set():
                self._max = max(self._max, self._rss())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
            return
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, self._rss())
        self.peak = self._max - self._base


def measure(fn: Callable[[], object], device: torch.device, repeats: int) -> Tuple[float, float]:
    """Median wall time (s) over ``repeats`` runs, then peak memory (bytes) of one more run.

    Timed runs have no memory sampler and a normal allocator (``_allocator("timing")``);
    the memory run has both (``_allocator("memory")``), so neither disturbs the other.
    """
    times = []
    _allocator("timing")
    for _ in range(repeats):
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    _allocator("memory")
    with PeakMemory(device) as pm:
        fn()
    _allocator("timing")
    return statistics.median(times), pm.peak


# --------------------------------------------------------------------------- reference
def reference_nave(model, layers, x: torch.Tensor, k: int, grid: Optional[Tuple[int, int]]) -> np.ndarray:
    """Materialised Algorithm 1 + scikit-learn KMeans per image (the straightforward way)."""
    from sklearn.cluster import KMeans

    acts = capture_activations(model, layers, x, num_prefix=getattr(model, "num_prefix_tokens", None),
                               patch_size=_patch(model))
    H, W = grid if grid is not None else acts[0].shape[-2:]
    out = []
    for i in range(x.shape[0]):
        blocks = []
        for a in acts:
            u = F.interpolate(a[i : i + 1].float(), size=(H, W), mode="bicubic", align_corners=False)[0]
            u = u.reshape(a.shape[1], -1).t()
            u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-8) / (1 + a.shape[1])
            blocks.append(u)
        X = torch.cat(blocks, dim=1).cpu().numpy()
        out.append(KMeans(k, n_init=1, random_state=0).fit_predict(X))
    return np.stack(out)


def _patch(model):
    p = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    return tuple(p) if p is not None else None


# --------------------------------------------------------------------------- cases
def build(name: str, size: int, device: torch.device):
    import timm

    if name == "vit_s16":
        model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=size)
        layers = [-1]
        label = "ViT-S/16 (random init), last block"
    else:
        model = timm.create_model("resnet50", pretrained=False)
        layers = ["layer2", "layer3", "layer4"]
        label = "ResNet50 (random init), stages 2-4"
    return model.eval().to(device), layers, label


def bench_case(name: str, batch: int, size: int, k: int, device: torch.device, repeats: int,
               ref_repeats: int, skip_ref_input: bool) -> List[Dict]:
    model, layer_specs, label = build(name, size, device)
    ex = LayerClusterExplainer(model, layer_specs)
    x = torch.randn(batch, 3, size, size, device=device)
    rows = []
    with torch.no_grad():
        model(x)  # warm-up
    t_fwd, m_fwd = measure(lambda: model(x), device, repeats)
    for res in ("layer", "input"):
        ex.attribute(x, n_clusters=k, resolution=res, random_state=0)  # warm-up
        t_ours, m_ours = measure(lambda: ex.attribute(x, n_clusters=k, resolution=res, random_state=0),
                                 device, repeats)
        if res == "input" and skip_ref_input:
            t_ref = m_ref = float("nan")
        else:
            grid = (size, size) if res == "input" else None
            t_ref, m_ref = measure(lambda: reference_nave(model, ex.layers, x, k, grid), device, ref_repeats)
        rows.append(dict(case=label, grid=res, batch=batch, size=size, t_forward=t_fwd, m_forward=m_fwd,
                         t_ours=t_ours, m_ours=m_ours, t_ref=t_ref, m_ref=m_ref))
        print(f"{label:40s} grid={res:5s} forward {t_fwd:7.2f}s  ours {t_ours:7.2f}s {m_ours / 1e6:8.0f}MB  "
              f"reference {t_ref:8.2f}s {m_ref / 1e6:8.0f}MB", flush=True)
    return rows


def bench_concepts(n_images: int, batch: int, size: int, device: torch.device) -> Dict:
    import timm

    model = timm.create_model("resnet50", pretrained=False).eval().to(device)
    ex = LayerClusterExplainer(model, ["layer3", "layer4"])
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(min(batch, n_images - s), 3, size, size, generator=g) for s in range(0, n_images, batch)]
    with torch.no_grad():
        model(batches[0].to(device))

    def forward_all():
        with torch.no_grad():
            for b in batches:
                model(b.to(device))

    def fit_all():
        ConceptClusters(ex, n_clusters=10, resolution="input", random_state=0, progress=False).fit(batches)

    t_fwd, m_fwd = measure(forward_all, device, 1)
    t_fit, m_fit = measure(fit_all, device, 1)
    res = dict(n_images=n_images, batch=batch, size=size, t_forward=t_fwd, m_forward=m_fwd, t_fit=t_fit, m_fit=m_fit)
    print(f"ConceptClusters {n_images} images: forward {t_fwd:.1f}s ({n_images / t_fwd:.1f} img/s), fit "
          f"{t_fit:.1f}s ({n_images / t_fit:.1f} img/s), peak {m_fit / 1e9:.2f} GB", flush=True)
    return res


# --------------------------------------------------------------------------- report
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def write_results(path: str, device: torch.device, rows: List[Dict], concepts: Optional[Dict], argv: str) -> None:
    ok = lambda b: "met" if b else "**missed**"  # noqa: E731
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{argv}`  ",
        f"Device: {device}; machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "Batch of 8 images of 224x224, K = 5, k-means++ with n_init = 1 for both; medians of wall time",
        "(no memory sampler, allocator in its normal mode); peak memory = peak resident memory above",
        "the level before the call, from one more run with glibc returning freed memory (reference:",
        "the materialised Algorithm 1 + scikit-learn KMeans per image, after the same forward pass).",
        "",
        "| case | grid | forward (s) | ours (s) | reference (s) | speed-up | ours / forward | peak ours (MB) | peak reference (MB) | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sp = r["t_ref"] / r["t_ours"]
        mr = r["m_ours"] / r["m_ref"] if r["m_ref"] == r["m_ref"] and r["m_ref"] > 0 else float("nan")
        lines.append(
            f"| {r['case']} | {r['grid']} | {r['t_forward']:.2f} | {r['t_ours']:.2f} | {r['t_ref']:.2f} | "
            f"{sp:.1f}x | {r['t_ours'] / r['t_forward']:.2f} | {r['m_ours'] / 1e6:.0f} | {r['m_ref'] / 1e6:.0f} | {mr:.3f} |"
        )
    lines += ["", "## Targets (issue 3)", ""]
    for r in rows:
        if r["grid"] == "input":
            sp = r["t_ref"] / r["t_ours"]
            mr = r["m_ours"] / r["m_ref"] if r["m_ref"] > 0 else float("nan")
            lines.append(f"- {r['case']}, input resolution: speed-up {sp:.1f}x (target >= 20x: {ok(sp >= 20)}), "
                         f"peak memory {mr:.3f} of the reference (target <= 0.2: {ok(mr <= 0.2)})")
        else:
            q = r["t_ours"] / r["t_forward"]
            lines.append(f"- {r['case']}, default grid: attribute() = {q:.2f}x the bare forward pass "
                         f"(target <= 1.25x: {ok(q <= 1.25)})")
    if concepts:
        thr = concepts["t_forward"] / concepts["t_fit"]
        lines.append(
            f"- ConceptClusters over {concepts['n_images']} images (ResNet50 stages 3-4, input resolution, "
            f"batches of {concepts['batch']}): peak memory {concepts['m_fit'] / 1e9:.2f} GB (target < 3 GB: "
            f"{ok(concepts['m_fit'] < 3e9)}); throughput {concepts['n_images'] / concepts['t_fit']:.2f} img/s = "
            f"{thr:.2f}x the bare forward throughput {concepts['n_images'] / concepts['t_forward']:.2f} img/s "
            f"(target >= 0.7x: {ok(thr >= 0.7)})"
        )
    lines += ["", ""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {path}")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes; prints only")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ref-repeats", type=int, default=1, help="repeats of the (slow) reference")
    p.add_argument("--concept-images", type=int, default=1000)
    p.add_argument("--skip-concepts", action="store_true")
    p.add_argument("--out", default=None, help="results file (default benchmarks/results[-cuda].md)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    batch, size = (2, 64) if args.quick else (8, 224)
    rows = []
    for name in ("vit_s16", "resnet50"):
        rows += bench_case(name, batch, size, 5, device, 1 if args.quick else args.repeats,
                           1 if args.quick else args.ref_repeats, False)
    concepts = None
    if not args.skip_concepts:
        concepts = bench_concepts(16 if args.quick else args.concept_images, 4 if args.quick else 25, size, device)
    if not args.quick:
        out = args.out or os.path.join(HERE, "results-cuda.md" if device.type == "cuda" else "results.md")
        write_results(out, device, rows, concepts, "python " + " ".join([os.path.relpath(__file__)] + (argv or sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

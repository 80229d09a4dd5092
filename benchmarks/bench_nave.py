"""Speed and memory of captum-nave beside the reference and the peers, in ONE process.

Everything runs in one process on the same images and models (random-init timm
models, random images), one after the other:

* ``forward``: the bare forward pass under ``torch.no_grad()``, and the forward pass up
  to the deepest selected layer (NAVE stops there; :func:`capture_activations`);
* ``ours``: ``LayerClusterExplainer.attribute(x, n_clusters=K)`` (k-means++, n_init=1);
* ``reference``: Algorithm 1 materialised (``F.interpolate`` bicubic, per-pixel L2
  normalisation, 1/(1+C) weights, concatenation) + scikit-learn ``KMeans`` (k-means++,
  n_init=1) on each image's explicit matrix, after the same forward pass;
* ``captum+kmeans``: Captum ``LayerActivation`` on the deepest selected layer and
  scikit-learn ``KMeans`` per image on the plain activations at the layer's resolution
  (no normalisation, no upsampling: what a user would write by hand);
* ``dff``: pytorch-grad-cam's ``DeepFeatureFactorization`` on the same layer (NMF with
  K components over the batch; ``pip install grad-cam``, the ``bench`` extra).

Cases: ViT-S/16 (last block) and ResNet50 (stages 2-4), batch of 8 images of 224x224,
K = 5, at the default grid (first selected layer) and at the input resolution; ViT-B/16
with ``blocks.6`` at the default grid; ``ConceptClusters`` (ResNet50 stages 3-4, input
resolution, K = 10) over 1,000 images in batches of 25 against the bare forward
throughput; and scaling curves of ours against the reference (ViT-S/16, input
resolution) over the input size (56-448), K (2-20) and the batch (1-32), written as
``scaling.png`` and a table.

Times are medians over ``--repeats`` runs without a memory sampler and with glibc's
allocator in its normal mode; peak memory is the peak resident memory above the level
before the call, from one more run with the allocator returning freed blocks (on CUDA
``max_memory_allocated``). The results go to ``benchmarks/results.md``.

Usage::

    python benchmarks/bench_nave.py                  # full run (see results.md for its length)
    python benchmarks/bench_nave.py --quick          # smoke test: tiny sizes, prints only
    python benchmarks/bench_nave.py --device cuda    # GPU figures (results-cuda.md)

Timings are only meaningful on an otherwise idle machine.
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
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from captum_nave import ConceptClusters, LayerClusterExplainer
from captum_nave.activations import capture_activations, tokens_to_grid

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


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time (s) over ``repeats`` runs (allocator in timing mode, no sampler)."""
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
    return statistics.median(times)


def peak(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory (bytes) of one run, allocator returning freed blocks."""
    _allocator("memory")
    with PeakMemory(device) as pm:
        fn()
    _allocator("timing")
    return float(pm.peak)


# --------------------------------------------------------------------------- methods
def _patch(model) -> Optional[Tuple[int, int]]:
    p = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    return tuple(p) if p is not None else None


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


def captum_kmeans(model, layer, x: torch.Tensor, k: int) -> torch.Tensor:
    """Captum LayerActivation + scikit-learn KMeans on the plain activations, per image.

    As a user would write it: the layer's output (tokens without the prefix tokens,
    reshaped to the patch grid for a ViT), clustered per image at the layer's own
    resolution, the labels resized to the input with nearest interpolation.
    """
    from captum.attr import LayerActivation
    from sklearn.cluster import KMeans

    with torch.no_grad():
        a = LayerActivation(model, layer).attribute(x)
    if a.dim() == 3:  # ViT tokens
        a = tokens_to_grid(a, model.num_prefix_tokens, tuple(x.shape[-2:]), _patch(model))
    n, c, h, w = a.shape
    labels = [KMeans(k, n_init=1, random_state=0).fit_predict(a[i].reshape(c, -1).t().cpu().numpy()) for i in range(n)]
    lab = torch.as_tensor(np.stack(labels)).reshape(n, 1, h, w).double()
    return F.interpolate(lab, size=tuple(x.shape[-2:]), mode="nearest").long()


def grad_cam_dff(model, layer, x: torch.Tensor, k: int) -> Optional[np.ndarray]:
    """pytorch-grad-cam's DeepFeatureFactorization, labels = argmax over the K heatmaps."""
    try:
        from pytorch_grad_cam import DeepFeatureFactorization
    except ImportError:
        return None
    def to_grid(t):
        return tokens_to_grid(t, model.num_prefix_tokens, tuple(x.shape[-2:]), _patch(model))

    reshape = to_grid if getattr(model, "num_prefix_tokens", None) is not None else None
    dff = DeepFeatureFactorization(model=model, target_layer=layer, reshape_transform=reshape)
    _, explanations = dff(x, n_components=k)
    del dff
    return np.stack(explanations).argmax(1)


def warm_up_sklearn() -> None:
    """Import scikit-learn and run one tiny KMeans, so no timed call pays for it."""
    from sklearn.cluster import KMeans

    KMeans(2, n_init=1, random_state=0).fit(np.random.default_rng(0).normal(size=(16, 3)))


def dff_available() -> bool:
    try:
        import pytorch_grad_cam  # noqa: F401 (availability check)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- models
@dataclass
class Case:
    key: str
    label: str
    model: torch.nn.Module
    layers: List
    x: torch.Tensor
    peer_layer: torch.nn.Module
    peer_layer_name: str


def build(key: str, batch: int, size: int, device: torch.device) -> Case:
    import timm

    torch.manual_seed(0)
    if key == "vit_s16":
        model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=size)
        layers, label, peer = [-1], "ViT-S/16 (random init), last block", "blocks.11"
    elif key == "vit_b16_block6":
        model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=size)
        layers, label, peer = ["blocks.6"], "ViT-B/16 (random init), blocks.6", "blocks.6"
    else:
        model = timm.create_model("resnet50", pretrained=False)
        layers, label, peer = ["layer2", "layer3", "layer4"], "ResNet50 (random init), stages 2-4", "layer4"
    model = model.eval().to(device)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    return Case(key, label, model, layers, x, model.get_submodule(peer), peer)


# --------------------------------------------------------------------------- benchmarks
@dataclass
class Row:
    case: str
    grid: str
    t_forward: float
    t_forward_last: float
    t_ours: float
    m_ours: float
    t_ref: float = float("nan")
    m_ref: float = float("nan")


@dataclass
class PeerRow:
    case: str
    method: str
    seconds: float
    peak: float
    note: str


def bench_case(case: Case, k: int, device, repeats: int, ref_repeats: int, grids: Sequence[str],
               with_ref: bool, peers: bool) -> Tuple[List[Row], List[PeerRow]]:
    model, x = case.model, case.x
    ex = LayerClusterExplainer(model, case.layers)
    with torch.no_grad():
        model(x)  # warm-up

    def forward():
        with torch.no_grad():
            model(x)

    t_fwd = timed(forward, device, repeats)
    t_last = timed(lambda: capture_activations(model, ex.layers, x, num_prefix=ex.num_prefix_tokens,
                                               patch_size=ex.patch_size), device, repeats)
    rows, peer_rows = [], []
    for res in grids:
        run = lambda: ex.attribute(x, n_clusters=k, resolution=res, random_state=0)  # noqa: E731
        run()  # warm-up
        row = Row(case.label, res, t_fwd, t_last, timed(run, device, repeats), peak(run, device))
        if with_ref:
            grid = tuple(x.shape[-2:]) if res == "input" else None
            ref = lambda: reference_nave(model, ex.layers, x, k, grid)  # noqa: E731
            row.t_ref, row.m_ref = timed(ref, device, ref_repeats), peak(ref, device)
        rows.append(row)
        print(f"{case.label:42s} grid={res:5s} forward {t_fwd:7.3f}s (to last layer {t_last:7.3f}s)  "
              f"ours {row.t_ours:7.3f}s {row.m_ours / 1e6:7.0f}MB  reference {row.t_ref:8.2f}s "
              f"{row.m_ref / 1e6:7.0f}MB", flush=True)
    if peers:
        peer_rows.append(PeerRow(case.label, "bare forward pass", t_fwd, peak(forward, device), "no grad"))
        peer_rows.append(PeerRow(case.label, "forward to the deepest selected layer", t_last,
                                 peak(lambda: capture_activations(model, ex.layers, x, num_prefix=ex.num_prefix_tokens,
                                                                  patch_size=ex.patch_size), device), "what NAVE runs"))
        ours = [r for r in rows if r.grid == "layer"][0]
        peer_rows.append(PeerRow(case.label, "captum-nave (ours)", ours.t_ours, ours.m_ours,
                                 f"{len(case.layers)} layer(s), normalised, layer grid, k-means++"))
        if ours.t_ref == ours.t_ref:
            peer_rows.append(PeerRow(case.label, "reference: materialised Algorithm 1 + sklearn KMeans",
                                     ours.t_ref, ours.m_ref, "same features and grid as ours"))
        ck = lambda: captum_kmeans(model, case.peer_layer, x, k)  # noqa: E731
        ck()
        peer_rows.append(PeerRow(case.label, "Captum LayerActivation + sklearn KMeans", timed(ck, device, repeats),
                                 peak(ck, device), f"{case.peer_layer_name} only, plain activations, per image"))
        if dff_available():
            dff = lambda: grad_cam_dff(model, case.peer_layer, x, k)  # noqa: E731
            dff()
            peer_rows.append(PeerRow(case.label, "pytorch-grad-cam DeepFeatureFactorization", timed(dff, device, repeats),
                                     peak(dff, device), f"{case.peer_layer_name} only, NMF over the batch"))
        for p in peer_rows[-3:]:
            print(f"  peer {p.method:45s} {p.seconds:8.3f}s {p.peak / 1e6:7.0f}MB", flush=True)
    return rows, peer_rows


def bench_concepts(n_images: int, batch: int, size: int, device: torch.device) -> Dict:
    import timm

    torch.manual_seed(0)
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

    t_fwd, t_fit = timed(forward_all, device, 1), timed(fit_all, device, 1)
    m_fit = peak(fit_all, device)
    res = dict(n_images=n_images, batch=batch, size=size, t_forward=t_fwd, t_fit=t_fit, m_fit=m_fit)
    print(f"ConceptClusters {n_images} images: forward {t_fwd:.1f}s ({n_images / t_fwd:.1f} img/s), fit "
          f"{t_fit:.1f}s ({n_images / t_fit:.1f} img/s), peak {m_fit / 1e9:.2f} GB", flush=True)
    return res


@dataclass
class ScalePoint:
    sweep: str
    value: int
    t_forward: float
    t_ours: float
    t_ref: float


def bench_scaling(sizes: Sequence[int], ks: Sequence[int], batches: Sequence[int], base: Tuple[int, int, int],
                  device: torch.device, repeats: int) -> List[ScalePoint]:
    """Ours vs the reference, ViT-S/16 last block at input resolution, one factor at a time."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, dynamic_img_size=True,
                              dynamic_img_pad=True).eval().to(device)
    ex = LayerClusterExplainer(model, [-1])
    size0, k0, batch0 = base
    points = []
    configs = [("input size", s, (s, k0, batch0)) for s in sizes] + [("K", k, (size0, k, batch0)) for k in ks] + \
              [("batch", b, (size0, k0, b)) for b in batches]
    for sweep, value, (size, k, batch) in configs:
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2)).to(device)

        def forward():
            with torch.no_grad():
                model(x)

        forward()
        run = lambda: ex.attribute(x, n_clusters=k, resolution="input", random_state=0)  # noqa: E731
        run()
        p = ScalePoint(sweep, value, timed(forward, device, repeats), timed(run, device, repeats),
                       timed(lambda: reference_nave(model, ex.layers, x, k, (size, size)), device, 1))
        points.append(p)
        print(f"scaling {sweep:10s} {value:4d}: forward {p.t_forward:7.3f}s ours {p.t_ours:7.3f}s "
              f"reference {p.t_ref:8.2f}s ({p.t_ref / p.t_ours:.1f}x)", flush=True)
    return points


def plot_scaling(points: List[ScalePoint], base: Tuple[int, int, int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = ["input size", "K", "batch"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, sweep in zip(axes, sweeps):
        pts = [p for p in points if p.sweep == sweep]
        xs = [p.value for p in pts]
        ax.plot(xs, [p.t_ref for p in pts], "o-", color="tab:red", label="reference (Algorithm 1 + sklearn KMeans)")
        ax.plot(xs, [p.t_ours for p in pts], "o-", color="tab:blue", label="captum-nave")
        ax.plot(xs, [p.t_forward for p in pts], "o--", color="tab:gray", label="bare forward pass")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([str(v) for v in xs])
        ax.set_xlabel(sweep)
        ax.set_ylabel("seconds per call")
        ax.grid(True, which="both", alpha=0.3)
    size0, k0, batch0 = base
    axes[0].set_title(f"K={k0}, batch {batch0}")
    axes[1].set_title(f"{size0}x{size0}, batch {batch0}")
    axes[2].set_title(f"{size0}x{size0}, K={k0}")
    axes[0].legend(fontsize=8)
    fig.suptitle("ViT-S/16 (random init), last block, NAVE at input resolution")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    try:
        load = "load average %.1f at the start" % os.getloadavg()[0]
    except OSError:
        load = "load unknown"
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}; {load}")


def _fmt_mb(b: float) -> str:
    return "-" if b != b else f"{b / 1e6:.0f}"


def write_results(path: str, device: torch.device, rows: List[Row], peers: List[PeerRow], concepts: Optional[Dict],
                  scaling: List[ScalePoint], scale_base: Tuple[int, int, int], figure: Optional[str], argv: str,
                  header: str, elapsed: float) -> None:
    ok = lambda b: "met" if b else "**missed**"  # noqa: E731
    lines = [
        "# Benchmark results",
        "",
        f"Command: `{argv}` ({elapsed / 60:.0f} min)  ",
        f"Device: {device}; machine: {machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
    ]
    if header:
        lines += [header, ""]
    lines += [
        "Random-init timm models, random images; K = 5, k-means++ with n_init = 1 for every k-means.",
        "Times: medians of wall time (no memory sampler, allocator in its normal mode). Peak memory:",
        "peak resident memory above the level before the call, from one more run with glibc",
        "returning freed memory. Reference: materialised Algorithm 1 + scikit-learn KMeans per",
        "image after the same forward pass. \"to last layer\": the forward pass up to the deepest",
        "selected layer, which is what NAVE runs.",
        "",
        "| case | grid | forward (s) | to last layer (s) | ours (s) | reference (s) | speed-up | ours / to last layer | ours / forward | peak ours (MB) | peak reference (MB) | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sp = r.t_ref / r.t_ours
        mr = r.m_ours / r.m_ref if r.m_ref == r.m_ref and r.m_ref > 0 else float("nan")
        lines.append(
            f"| {r.case} | {r.grid} | {r.t_forward:.3f} | {r.t_forward_last:.3f} | {r.t_ours:.3f} | "
            f"{'-' if r.t_ref != r.t_ref else f'{r.t_ref:.2f}'} | {'-' if sp != sp else f'{sp:.1f}x'} | "
            f"{r.t_ours / r.t_forward_last:.2f} | {r.t_ours / r.t_forward:.2f} | {_fmt_mb(r.m_ours)} | "
            f"{_fmt_mb(r.m_ref)} | {'-' if mr != mr else f'{mr:.3f}'} |"
        )
    if peers:
        lines += ["", "## Side by side with the peers (default grid, same images and models)", "",
                  "| case | method | time (s) | peak memory (MB) | what it computes |", "|---|---|---|---|---|"]
        lines += [f"| {p.case} | {p.method} | {p.seconds:.3f} | {_fmt_mb(p.peak)} | {p.note} |" for p in peers]
        if not any("DeepFeature" in p.method for p in peers):
            lines += ["", "pytorch-grad-cam is not installed (`pip install captum-nave[bench]`): no DFF rows."]
    lines += ["", "## Targets (issues 3 and 13)", ""]
    for r in rows:
        if r.grid == "input":
            sp = r.t_ref / r.t_ours
            mr = r.m_ours / r.m_ref if r.m_ref > 0 else float("nan")
            lines.append(f"- {r.case}, input resolution: speed-up {sp:.1f}x (target >= 20x: {ok(sp >= 20)}), "
                         f"peak memory {mr:.3f} of the reference (target <= 0.2: {ok(mr <= 0.2)})")
        elif "blocks.6" in r.case:
            q = r.t_ours / r.t_forward
            lines.append(f"- {r.case}, default grid: attribute() = {q:.2f}x the full forward pass "
                         f"(target < 0.7x: {ok(q < 0.7)}); the forward up to blocks.6 alone is "
                         f"{r.t_forward_last / r.t_forward:.2f}x")
        else:
            q = r.t_ours / r.t_forward_last
            lines.append(f"- {r.case}, default grid: attribute() = {q:.2f}x the forward pass up to the last "
                         f"selected layer (target <= 1.1x: {ok(q <= 1.1)})")
    if concepts:
        thr = concepts["t_forward"] / concepts["t_fit"]
        lines.append(
            f"- ConceptClusters over {concepts['n_images']} images (ResNet50 stages 3-4, input resolution, K = 10, "
            f"batches of {concepts['batch']}): peak memory {concepts['m_fit'] / 1e9:.2f} GB (target < 3 GB: "
            f"{ok(concepts['m_fit'] < 3e9)}); throughput {concepts['n_images'] / concepts['t_fit']:.2f} img/s = "
            f"{thr:.2f}x the bare forward throughput {concepts['n_images'] / concepts['t_forward']:.2f} img/s "
            f"(target >= 0.9x: {ok(thr >= 0.9)})"
        )
    if scaling:
        size0, k0, batch0 = scale_base
        lines += ["", "## Scaling (ViT-S/16 random init, last block, input resolution)", "",
                  f"One factor at a time from {size0}x{size0}, K = {k0}, batch {batch0}; reference run once per point.",
                  ""]
        if figure:
            lines += [f"![scaling]({os.path.basename(figure)})", ""]
        lines += ["| varied | value | forward (s) | ours (s) | reference (s) | speed-up | ours / forward |",
                  "|---|---|---|---|---|---|---|"]
        for p in scaling:
            lines.append(f"| {p.sweep} | {p.value} | {p.t_forward:.3f} | {p.t_ours:.3f} | {p.t_ref:.2f} | "
                         f"{p.t_ref / p.t_ours:.1f}x | {p.t_ours / p.t_forward:.2f} |")
    notes = os.path.join(HERE, "notes.md")  # the profile and the analysis, kept by hand
    if os.path.exists(notes):
        with open(notes) as fh:
            lines += ["", fh.read().rstrip()]
    lines += ["", ""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {path}")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds per part; prints only "
                   "unless --out is given")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ref-repeats", type=int, default=1, help="repeats of the (slow) reference")
    p.add_argument("--concept-images", type=int, default=1000)
    p.add_argument("--skip", nargs="*", default=[], choices=["cases", "peers", "concepts", "scaling"],
                   help="parts to leave out")
    p.add_argument("--note", default="", help="a line about the conditions, written under the header")
    p.add_argument("--out", default=None, help="results file (default benchmarks/results[-cuda].md)")
    args = p.parse_args(argv)
    from sklearn.exceptions import ConvergenceWarning

    # DFF's NMF stops at scikit-learn's default 200 iterations, as pytorch-grad-cam runs it
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.perf_counter()
    q = args.quick
    batch, size, k = (2, 96, 5) if q else (8, 224, 5)
    warm_up_sklearn()
    repeats = 1 if q else args.repeats
    rows: List[Row] = []
    peers: List[PeerRow] = []
    if "cases" not in args.skip:
        for key, grids in (("vit_s16", ("layer", "input")), ("resnet50", ("layer", "input")),
                           ("vit_b16_block6", ("layer",))):
            case = build(key, batch, size, device)
            r, pr = bench_case(case, k, device, repeats, 1 if q else args.ref_repeats, grids,
                               with_ref=key != "vit_b16_block6", peers="peers" not in args.skip and key != "vit_b16_block6")
            rows += r
            peers += pr
            del case
            gc.collect()
    concepts = None
    if "concepts" not in args.skip:
        concepts = bench_concepts(16 if q else args.concept_images, 4 if q else 25, 64 if q else 224, device)
    scaling: List[ScalePoint] = []
    scale_base = (64, 5, 2) if q else (224, 5, 8)
    figure = None
    if "scaling" not in args.skip:
        if q:
            scaling = bench_scaling((32, 64), (2, 5), (1, 2), scale_base, device, 1)
        else:
            scaling = bench_scaling((56, 112, 224, 336, 448), (2, 5, 10, 20), (1, 4, 8, 16, 32), scale_base, device,
                                    args.repeats)
    out = args.out if args.out else (None if q else os.path.join(HERE, "results-cuda.md" if device.type == "cuda" else "results.md"))
    if out:
        if scaling:
            figure = os.path.join(os.path.dirname(os.path.abspath(out)), "scaling" + ("-cuda" if device.type == "cuda" else "") + ".png")
            plot_scaling(scaling, scale_base, figure)
        cmd = "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
        write_results(out, device, rows, peers, concepts, scaling, scale_base, figure, cmd, args.note,
                      time.perf_counter() - t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())

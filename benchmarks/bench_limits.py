"""How fast oversized or hostile inputs are refused (issue 16, points 5 and 6).

Times, in one process, from the call to the error:

* ``attribute(x, resolution=(20000, 20000))`` on a 224x224 image (k-means' 2**24-pixel
  limit, checked before the forward pass);
* ``attribute(x, resolution="input")`` on a 20000x20000 image (its 4.8 GB tensor is
  allocated but never touched: the grid is refused before the pixel scan);
* ``captum-nave explain --resolution 5000x5000`` in-process (exit code 2, before the
  model loads);
* ``ConceptClusters.load`` of a small compressed ``.npz`` whose centres inflate to
  2 GiB (refused from the zip directory), and of one whose header claims 16 GiB.

and the peak resident memory of the process over each (``ru_maxrss`` growth). Writes
``benchmarks/limits.md``.

Usage::

    python benchmarks/bench_limits.py
"""

from __future__ import annotations

import io
import json
import os
import platform
import resource
import sys
import tempfile
import time
import zipfile
from typing import Callable, List, Tuple

import numpy as np
import torch


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time_refusal(fn: Callable[[], object]) -> Tuple[float, str, float]:
    before = _maxrss_mb()
    t0 = time.perf_counter()
    try:
        fn()
        msg = "NOT REFUSED"
    except (ValueError, TypeError) as exc:
        msg = str(exc).splitlines()[0]
    return time.perf_counter() - t0, msg, _maxrss_mb() - before


def _bomb(path: str, inflated_bytes: int, meta: dict) -> None:
    """An .npz whose cluster_centers.npy inflates to ``inflated_bytes`` of zeros."""
    n = inflated_bytes // 8
    k = 2
    d = n // k
    meta = dict(meta, n_clusters=k, n_features_in=d, layer_dims=[d - 1, 1])
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f8", "fortran_order": False, "shape": (k, d)})
    zeros = bytes(2**24)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("cluster_centers.npy", "w", force_zip64=True) as fh:
            fh.write(hdr.getvalue())
            left = k * d * 8
            while left > 0:
                fh.write(zeros[: min(left, len(zeros))])
                left -= len(zeros)
        for name, arr in (("counts", np.zeros(k)), ("metadata", np.frombuffer(json.dumps(meta).encode(), np.uint8))):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr)
            zf.writestr(name + ".npy", buf.getvalue())


def main() -> int:
    torch.set_num_threads(1)
    from captum_nave import ConceptClusters, LayerClusterExplainer
    from captum_nave.cli import main as cli_main
    from captum_nave.models import load_model

    model, info = load_model()
    ex = LayerClusterExplainer(model, info["default_layers"])
    rows: List[Tuple[str, float, float, str]] = []

    x = torch.rand(1, 3, 224, 224)
    t, msg, mem = _time_refusal(lambda: ex.attribute(x, 5, resolution=(20000, 20000)))
    rows.append(("attribute, 224x224 image, resolution=(20000, 20000)", t, mem, msg))

    big = torch.empty(1, 3, 20000, 20000)  # 4.8 GB, never touched
    t, msg, mem = _time_refusal(lambda: ex.attribute(big, 5, resolution="input"))
    rows.append(("attribute, 20000x20000 image, resolution='input'", t, mem, msg))
    del big

    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        img = os.path.join(tmp, "a.png")
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
        err = io.StringIO()
        real_err, sys.stderr = sys.stderr, err
        try:
            t0 = time.perf_counter()
            rc = cli_main(["explain", img, "--resolution", "5000x5000", "--out", os.path.join(tmp, "o")])
            t = time.perf_counter() - t0
        finally:
            sys.stderr = real_err
        rows.append((f"captum-nave explain --resolution 5000x5000 (exit {rc})", t, 0.0, err.getvalue().strip()))

        x, _ = torch.rand(4, 3, 8, 12), None
        tiny = LayerClusterExplainer(torch.nn.Sequential(torch.nn.Identity()), ["0"])
        cc = ConceptClusters(tiny, 3, random_state=0).fit(x)
        good = os.path.join(tmp, "good.npz")
        cc.save(good)
        with np.load(good) as z:
            meta = json.loads(z["metadata"].tobytes().decode())
        bomb = os.path.join(tmp, "bomb.npz")
        t0 = time.perf_counter()
        _bomb(bomb, 2**31, meta)
        build = time.perf_counter() - t0
        size = os.path.getsize(bomb)
        t, msg, mem = _time_refusal(lambda: ConceptClusters.load(bomb, tiny))
        rows.append((f"ConceptClusters.load, {size / 1e6:.1f} MB .npz inflating to 2 GiB (built in {build:.0f} s)", t, mem, msg))

        claim = os.path.join(tmp, "claim.npz")
        with zipfile.ZipFile(claim, "w") as zf:
            hdr = io.BytesIO()
            np.lib.format.write_array_header_1_0(hdr, {"descr": "<f8", "fortran_order": False, "shape": (65536, 32768)})
            zf.writestr("cluster_centers.npy", hdr.getvalue())
            m = dict(meta, n_clusters=65536, n_features_in=32768, layer_dims=[32768])
            for name, arr in (("counts", np.zeros(65536)), ("metadata", np.frombuffer(json.dumps(m).encode(), np.uint8))):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr)
                zf.writestr(name + ".npy", buf.getvalue())
        t, msg, mem = _time_refusal(lambda: ConceptClusters.load(claim, tiny))
        rows.append(("ConceptClusters.load, header claiming (65536, 32768) float64", t, mem, msg))

    lines = [
        "# Refusal of oversized and hostile inputs",
        "",
        f"`python benchmarks/bench_limits.py` on {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, 1 thread. Issue 16 measured before: the 2^24 grid failed after 98 s "
        "and 2.7 GB (CLI) and 267 s and 15 GB (API at 20000x20000); the 2 MB `.npz` carrying 2 GiB cost "
        "2 GB and 78 s before rejection.",
        "",
        "| case | seconds to the error | peak RSS growth (MB) | message |",
        "|---|---|---|---|",
    ]
    for name, t, mem, msg in rows:
        lines.append(f"| {name} | {t:.3f} | {mem:.0f} | {msg.replace('|', '/')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "limits.md"), "w") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

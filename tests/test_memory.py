"""Working memory of NAVE at input resolution: bounded per pixel, refused up front when too large."""

import sys

import pytest
import torch
from torch import nn

from captum_nave import LayerClusterExplainer
from captum_nave import _memory


def _patch_net() -> nn.Module:
    """Patchify CNN (stride 8): the activation is 64x smaller than the image."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), nn.ReLU()).eval()


# Run in a fresh process: glibc's allocator is put in a mode where every large block is
# its own mapping, returned to the system when freed, so the kernel's peak resident size
# (VmHWM, reset through /proc/self/clear_refs) is the peak of live memory.
_MEASURE = r"""
import ctypes, gc, json, sys, torch
libc = ctypes.CDLL("libc.so.6")
libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD
libc.mallopt(-1, 256 * 1024)  # M_TRIM_THRESHOLD
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from test_memory import _patch_net
from captum_nave import LayerClusterExplainer

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

ex = LayerClusterExplainer(_patch_net(), ["1"])
K = int(sys.argv[2])
peaks = {}
for h in map(int, sys.argv[3:]):
    x = torch.rand(1, 3, h, 64)
    ex.attribute(x, n_clusters=K, resolution="input", max_iter=2, random_state=0)  # warm-up
    gc.collect(); libc.malloc_trim(0)
    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS:")
    ex.attribute(x, n_clusters=K, resolution="input", max_iter=2, random_state=0)
    peaks[h] = status("VmHWM:") - base
print(json.dumps(peaks))
"""


def _peaks(k: int, heights) -> dict:
    import json
    import os
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, here, str(k), *map(str, heights)],
        capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return {int(h): v for h, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the kernel's peak resident memory")
def test_input_resolution_memory_grows_only_by_the_per_pixel_maps():
    """Peak memory per added pixel of a tall image (64 wide, 4096 -> 16384 rows), K = 20 and 5.

    One (K, H, W) float32 map of distances or scores would alone cost 80 bytes per
    pixel at K = 20; version 0.1 needed about 670 bytes per pixel here. The bounded
    path keeps a few per-pixel maps (``grid_bytes_per_pixel``: 60 bytes) and tiles of
    rows of bounded size, so the growth is the same for K = 5 and K = 20.
    """
    heights = (4096, 16384)
    added = (heights[1] - heights[0]) * 64
    slope = {}
    for k in (20, 5):
        p = _peaks(k, heights)
        slope[k] = (p[heights[1]] - p[heights[0]]) / added
    assert slope[20] <= _memory.grid_bytes_per_pixel(1) + 20, slope
    assert abs(slope[20] - slope[5]) <= 25, slope  # a (K, H, W) map would add 60 bytes per pixel here


def test_a_grid_too_large_for_the_memory_is_refused_before_the_forward_pass(monkeypatch):
    """The estimate is compared with the memory available, exactly at the boundary."""
    calls = []
    net = _patch_net()
    net.register_forward_pre_hook(lambda m, a: calls.append(1))
    ex = LayerClusterExplainer(net, ["1"])
    need = 2 * 640 * 480 * _memory.grid_bytes_per_pixel(1)
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: need - 1)
    x = torch.rand(2, 3, 640, 480)
    with pytest.raises(MemoryError, match=r"2 images x 640x480 = 614400 pixels needs about 0\.0 GB.*60 bytes per grid pixel"):
        ex.attribute(x, n_clusters=3, resolution="input")
    with pytest.raises(ValueError, match=r"2 images x 1000x900 = 1800000 pixels"):
        ex.attribute(x, n_clusters=3, resolution=(1000, 900))
    assert calls == []  # refused before the model ran
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: need)
    assert ex.attribute(x, n_clusters=3, resolution="input", max_iter=1).shape == (2, 1, 640, 480)
    assert calls == [1]
    # the layer's grid (80x60) is checked after the forward pass, before the features
    monkeypatch.setattr(_memory, "available_bytes", lambda device=None: 0)
    with pytest.raises(MemoryError, match=r"resolution='layer': a clustering grid of 2 images x 80x60"):
        ex.attribute(x, n_clusters=3)
    assert calls == [1, 1]

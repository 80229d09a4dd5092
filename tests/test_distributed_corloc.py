"""CorLoc under torch.distributed: 2 gloo processes give the single-process tables.

Every rank evaluates the images ``i % 2 == rank`` into the same output folder; rank 0
merges after all have finished. The per-image computation is the same code on the
same image with the same seed, so the tables must be identical (not just close) to a
single-process run; only the ``seconds`` column differs.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captum_nave.evaluation import CorLocProtocol, GridSegmenter, NaveSegmenter, read_folder, read_records, run_corloc
from spawn import run_ranks
from synthetic import shapes_dataset
from test_distributed_concepts import TinyNet

PROTOCOL = dict(min_area=16, border=2)
N_IMAGES = 10
ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, n: int = N_IMAGES) -> Path:
    """Shapes on textured backgrounds, sizes 40-56 px, one box each (folder format)."""
    root.mkdir(parents=True, exist_ok=True)
    boxes = {}
    for i in range(n):
        size = 40 + 8 * (i % 3)
        x, _, _, b = shapes_dataset(1, size, seed=100 + i)
        Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(root / f"img{i:02d}.png")
        boxes[f"img{i:02d}.png"] = [b[0].tolist()]
    (root / "boxes.json").write_text(json.dumps(boxes))
    return root


def methods() -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        net = TinyNet().eval()
    nave = NaveSegmenter(net, ["stage1", "stage2"], n_clusters=3, mean=(0.5,) * 3, std=(0.25,) * 3, random_state=0)
    return {"tiny": nave, "grid 3x3": GridSegmenter(3, 3)}


def tables(out: Path) -> dict:
    """summary.json, and per_image.csv without the timing column."""
    with open(out / "per_image.csv", newline="") as fh:
        rows = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]
    return {"summary": json.loads((out / "summary.json").read_text()), "rows": rows}


def _corloc_worker(rank: int, world: int, root: str, out: str, kill_after: int, workers: int) -> dict:
    calls = []

    def on_record(method, record):
        calls.append((method, record["index"]))
        if rank == 1 and len(calls) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # a rank dies mid-run, between two methods

    summary = run_corloc(
        read_folder(root), methods(), out, protocol=CorLocProtocol(**PROTOCOL), fsync=False,
        on_record=on_record, workers=workers,
    )
    result = {"calls": calls, "summary": summary.to_dict()}
    if kill_after == 0 and workers == 1:
        # a folder of a 3-process run cannot be resumed by 2 processes: refused on every rank
        other = Path(out).parent / "three"
        (other / "records").mkdir(parents=True, exist_ok=True)
        if rank == 0:
            (other / "records" / "meta.shard-2-of-3.json").write_text(json.dumps({"dataset": "data", "num_shards": 3}))
        from captum_nave import distributed as cnd

        cnd.barrier()
        try:
            run_corloc(read_folder(root), methods(), other, protocol=CorLocProtocol(**PROTOCOL), fsync=False)
        except ValueError as exc:
            result["layout_error"] = str(exc)
    return result


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process, no shards."""
    tmp = tmp_path_factory.mktemp("corloc-single")
    root = make_folder(tmp / "data")
    run_corloc(read_folder(root), methods(), tmp / "out", protocol=CorLocProtocol(**PROTOCOL), fsync=False)
    return root, tables(tmp / "out")


def test_two_ranks_equal_the_single_process_tables(single, tmp_path):
    root, ref = single
    out = tmp_path / "out"
    res = run_ranks(_corloc_worker, 2, tmp_path, str(root), str(out), 0, 1)
    assert tables(out) == ref
    # each rank evaluated its own images (i % 2 == rank), both methods, in dataset order
    for r in (0, 1):
        assert [i for m, i in res[r]["calls"] if m == "tiny"] == list(range(r, N_IMAGES, 2))
        # every rank returns the merged scores of the whole dataset
        assert res[r]["summary"] == ref["summary"][0]
    assert sorted(p.name for p in (out / "records").iterdir()) == [
        "grid_3x3.shard-0-of-2.jsonl", "grid_3x3.shard-1-of-2.jsonl", "meta.shard-0-of-2.json",
        "meta.shard-1-of-2.json", "tiny.shard-0-of-2.jsonl", "tiny.shard-1-of-2.jsonl",
    ]
    for r in (0, 1):
        assert "holds records of 'data' split into 3 shards (meta.shard-2-of-3.json); restart with 3 processes" in (
            res[r]["layout_error"]
        )
    assert sorted(p.name for p in (tmp_path / "three" / "records").iterdir()) == ["meta.shard-2-of-3.json"]


def test_a_killed_rank_resumes_and_the_tables_are_the_same(single, tmp_path):
    root, ref = single
    out = tmp_path / "out"
    with pytest.raises(Exception):  # the job fails (which rank reports first varies)
        run_ranks(_corloc_worker, 2, tmp_path, str(root), str(out), 3, 0)  # rank 1 dies after 3 records
    on_disk = {
        f.name: len(read_records(f)) for f in (out / "records").glob("*.jsonl")
    }
    assert on_disk["tiny.shard-1-of-2.jsonl"] == 2 and on_disk["grid_3x3.shard-1-of-2.jsonl"] == 1
    assert not (out / "summary.json").exists()  # nothing merged from an unfinished job
    res = run_ranks(_corloc_worker, 2, tmp_path, str(root), str(out), 0, 0)  # the same job again
    assert tables(out) == ref
    # the restart computed exactly what was missing: 2 methods x 10 images minus the records kept
    assert len(res[0]["calls"]) + len(res[1]["calls"]) == 2 * N_IMAGES - sum(on_disk.values())
    assert ("tiny", 3) not in res[1]["calls"] and ("grid 3x3", 3) in res[1]["calls"]


def _torchrun(args, cwd, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "captum_nave.cli"] + args
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _worker_pid(parent: int, local_rank: str) -> int:
    """PID of the torchrun worker with LOCAL_RANK=local_rank (a descendant of ``parent``)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if f"LOCAL_RANK={local_rank}".encode() in env and f"TORCHELASTIC_RUN_ID".encode() in b"\0".join(env):
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent or Path(f"/proc/{ppid}/stat").exists() and int(
                Path(f"/proc/{ppid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            ) == parent:
                return int(pid)
    raise LookupError(f"no torchrun worker with LOCAL_RANK={local_rank} under {parent}")


@pytest.mark.slow
def test_torchrun_cli_equals_one_process_and_resumes_after_a_kill(tmp_path):
    """The real launcher: captum-nave corloc under torchrun (2 gloo processes, DataLoader workers)."""
    import captum_nave.cli as cli

    root = make_folder(tmp_path / "data", n=24)
    common = ["--seed", "0", "corloc", "--format", "folder", "--root", str(root), "--model", "test_resnet",
              "--no-pretrained", "-k", "3", "--min-area", "16", "--border", "2", "--baseline", "grid"]
    assert cli.main(common + ["--out", str(tmp_path / "one")]) == 0

    out = tmp_path / "two"
    proc = _torchrun(common + ["--out", str(out), "--workers", "1"], tmp_path)
    rank1 = out / "records" / "test_resnet_random.shard-1-of-2.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if rank1.exists() and rank1.read_bytes().count(b"\n") >= 2:
            os.kill(_worker_pid(proc.pid, "1"), signal.SIGKILL)
            break
        time.sleep(0.01)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0, err  # torchrun reports the failed rank and stops the job
    kept = rank1.read_bytes().count(b"\n")
    assert 2 <= kept < 12, "the kill came too late to test a resume"
    assert not (out / "summary.json").exists()

    proc = _torchrun(common + ["--out", str(out), "--workers", "1"], tmp_path)
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert stdout.split() == [str(out / "summary.md"), str(out / "summary.json"), str(out / "per_image.csv")]
    assert tables(out) == tables(tmp_path / "one")

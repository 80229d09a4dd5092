"""Run a function in N gloo processes (tests of the torch.distributed paths).

``run_ranks(fn, world_size, tmp_path, *args)`` starts ``world_size`` processes with
``torch.multiprocessing`` (spawn), joins a gloo process group through a rendezvous
file in ``tmp_path`` (no port, so parallel test workers cannot collide), calls
``fn(rank, world_size, *args)`` with one thread per process and returns every rank's
return value (through ``torch.save`` files). An exception in any rank fails the call
with that rank's traceback. ``fn`` must be a module-level function of an importable
module (the test module itself is importable: pytest puts ``tests/`` on ``sys.path``
and spawn passes ``sys.path`` to the children).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, List


def _entry(rank: int, world_size: int, init_file: str, out_dir: str, fn: Callable, args: tuple) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    # a deadlocked collective fails the test after 3 minutes instead of hanging it
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=180),
    )
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable, world_size: int, tmp_path: Path, *args: Any) -> List[Any]:
    """Results of ``fn(rank, world_size, *args)`` from ``world_size`` gloo processes."""
    import torch
    import torch.multiprocessing as mp

    work = Path(tmp_path) / f"spawn-{fn.__name__}"
    work.mkdir(parents=True, exist_ok=True)
    init_file = work / "rendezvous"
    if init_file.exists():
        init_file.unlink()
    mp.spawn(_entry, args=(world_size, str(init_file), str(work), fn, args), nprocs=world_size, join=True)
    return [torch.load(work / f"rank{r}.pt", weights_only=False) for r in range(world_size)]

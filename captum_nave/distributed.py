"""``torch.distributed`` helpers that are no-ops without a process group.

captum-nave scales out on PyTorch's own engine: start one process per GPU (NCCL)
or per CPU worker (gloo) with ``torchrun`` (or SLURM's ``srun``), and the
distributed code paths (:class:`~captum_nave.ConceptClusters`, the CorLoc runner,
the CLI) use the helpers below. Every helper works unchanged in a single process:
without an initialised process group, ``get_world_size()`` is 1, reductions
return their input, gathers return a one-element list and barriers return at once,
so library code calls them unconditionally.

Communication runs on the device the backend needs (CUDA for NCCL, CPU for
gloo); tensors are moved there and the results come back on the caller's device.

Examples
--------
>>> from captum_nave import distributed as cnd
>>> started = cnd.init_distributed()          # True under torchrun, False otherwise
>>> device = cnd.device_for_rank("cuda")      # cuda:LOCAL_RANK under torchrun
>>> total = cnd.all_reduce(torch.tensor([3.0]))  # summed over the ranks
>>> if started:
...     cnd.destroy_distributed()
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Callable, Iterator, List, Optional, Sequence, TypeVar, Union

import torch
from torch import Tensor

__all__ = [
    "is_initialized",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "local_rank",
    "launch_environment",
    "device_for_rank",
    "init_distributed",
    "destroy_distributed",
    "distributed_session",
    "resolve_shards",
    "all_reduce",
    "all_gather",
    "gather",
    "broadcast",
    "all_gather_object",
    "broadcast_object",
    "barrier",
    "run_on_main",
    "check_all_ok",
    "RemoteError",
]

T = TypeVar("T")
DeviceLike = Union[str, torch.device, None]
_REDUCE_OPS = ("sum", "max", "min")


class RemoteError(RuntimeError):
    """Raised on every rank when the work of another rank (or of rank 0) failed."""


# --------------------------------------------------------------------------- state
def is_initialized() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def get_rank(group: Any = None) -> int:
    """Rank of this process in ``group`` (default: the world); 0 without a process group."""
    if not is_initialized():
        return 0
    import torch.distributed as dist

    return dist.get_rank(group)


def get_world_size(group: Any = None) -> int:
    """Number of processes in ``group`` (default: the world); 1 without a process group."""
    if not is_initialized():
        return 1
    import torch.distributed as dist

    return dist.get_world_size(group)


def is_main_process(group: Any = None) -> bool:
    """True on rank 0 (and in a single process)."""
    return get_rank(group) == 0


def _env_int(names: Sequence[str]) -> Optional[int]:
    for name in names:
        text = os.environ.get(name)
        if text is None or text.strip() == "":
            continue
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"environment variable {name}: expected an integer, got {text!r}") from None
    return None


def launch_environment() -> Optional[dict]:
    """Rank, world size and local rank set by a launcher, or None when there is none.

    Reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (torchrun, ``torch.distributed.launch``,
    most cluster launchers), else ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID``
    (``srun`` without torchrun; ``MASTER_ADDR`` and ``MASTER_PORT`` must then be set).

    Returns
    -------
    dict with int keys ``rank``, ``world_size``, ``local_rank``, or None
    """
    rank = _env_int(["RANK"])
    world = _env_int(["WORLD_SIZE"])
    local = _env_int(["LOCAL_RANK"])
    if rank is None or world is None:
        rank = _env_int(["SLURM_PROCID"])
        world = _env_int(["SLURM_NTASKS"])
        local = _env_int(["SLURM_LOCALID"])
        if rank is None or world is None or "MASTER_ADDR" not in os.environ:
            return None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"launcher environment: expected 0 <= rank < world size, got rank {rank}, world size {world}")
    return {"rank": rank, "world_size": world, "local_rank": local if local is not None else 0}


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK``), 0 without a launcher."""
    env = launch_environment()
    return env["local_rank"] if env is not None else 0


def device_for_rank(device: DeviceLike = None) -> torch.device:
    """The device this process should run on.

    ``"cuda"`` without an index becomes ``cuda:LOCAL_RANK`` (one process per GPU, as
    torchrun starts them); an explicit index (``"cuda:1"``) and other devices are kept.
    ``None`` means the CPU.

    Raises
    ------
    ValueError
        If the string is not a torch device, or ``cuda:LOCAL_RANK`` does not exist.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"device: expected a torch device such as cpu or cuda, got {device!r} ({exc})") from None
    if dev.type == "cuda" and dev.index is None:
        index = local_rank()
        if torch.cuda.is_available() and index >= torch.cuda.device_count():
            raise ValueError(
                f"device: LOCAL_RANK={index} but this node has {torch.cuda.device_count()} CUDA device(s); "
                "start at most one process per GPU (torchrun --nproc-per-node)"
            )
        dev = torch.device("cuda", index)
    return dev


# --------------------------------------------------------------------------- set-up
def init_distributed(
    backend: Optional[str] = None,
    *,
    device: DeviceLike = None,
    timeout: Optional[datetime.timedelta] = None,
) -> bool:
    """Initialise the default process group from the launcher's environment.

    Does nothing (returns False) when a process group already exists or no launcher
    set the environment (a plain ``python`` run). Under torchrun or srun it starts
    the group (``init_method="env://"``) and returns True; then call
    :func:`destroy_distributed` at the end (or use :func:`distributed_session`).

    Parameters
    ----------
    backend : "gloo", "nccl" or None
        Default: NCCL when ``device`` is a CUDA device, gloo otherwise.
    device : str or torch.device, optional
        The device this process computes on (see :func:`device_for_rank`); with CUDA
        it becomes the current CUDA device, which NCCL requires.
    timeout : datetime.timedelta, optional
        Collective timeout (torch's default when None).
    """
    if is_initialized():
        return False
    env = launch_environment()
    if env is None:
        return False
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    dev = device_for_rank(device)
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend: expected 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError(f"backend: NCCL needs a CUDA device, got device {dev}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise ValueError(
            "launcher environment: MASTER_ADDR and MASTER_PORT must be set (torchrun sets them; "
            "with srun export them from the job script)"
        )
    kwargs: dict = {"init_method": "env://", "rank": env["rank"], "world_size": env["world_size"]}
    if timeout is not None:
        kwargs["timeout"] = timeout
    dist.init_process_group(backend, **kwargs)
    return True


def destroy_distributed() -> None:
    """Destroy the default process group (no-op without one)."""
    if is_initialized():
        import torch.distributed as dist

        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(backend: Optional[str] = None, *, device: DeviceLike = None) -> Iterator[bool]:
    """Context manager: :func:`init_distributed` on entry, destroy on exit if it started the group.

    Yields True when a process group is active (started here or earlier).
    """
    started = init_distributed(backend, device=device)
    try:
        yield is_initialized()
    finally:
        if started:
            destroy_distributed()


def resolve_shards(num_shards: Optional[int] = None, shard_index: Optional[int] = None) -> "tuple[int, int, bool]":
    """The shard this process works on: ``(num_shards, shard_index, from_process_group)``.

    Under a process group with several ranks the shards are the ranks
    (``num_shards = world size``, ``shard_index = rank``); an explicit ``num_shards``
    that disagrees is refused. Without one, the explicit values are used (default one
    shard), which is how users without a launcher split a job over machines
    (``--num-shards/--shard-index``, then ``--merge``).

    Raises
    ------
    ValueError
        For invalid values, or explicit shards under a multi-process group.
    """
    world = get_world_size()
    if world > 1:
        if (num_shards is not None and num_shards != world) or (shard_index is not None and shard_index != get_rank()):
            raise ValueError(
                f"num_shards: under torchrun the shards are the {world} processes (one per rank); "
                f"got num_shards={num_shards!r}, shard_index={shard_index!r}; leave them unset"
            )
        return world, get_rank(), True
    from .data import check_shards

    n, i = check_shards(1 if num_shards is None else num_shards, 0 if shard_index is None else shard_index)
    return n, i, False


# --------------------------------------------------------------------------- tensors
def _comm_device(group: Any = None) -> torch.device:
    """Where collectives of the group run: the current CUDA device for NCCL, else the CPU."""
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _global(group: Any, rank: int) -> int:
    if group is None:
        return rank
    import torch.distributed as dist

    return dist.get_global_rank(group, rank)


def _reduce_op(op: str):
    import torch.distributed as dist

    if op not in _REDUCE_OPS:
        raise ValueError(f"op: expected one of {', '.join(_REDUCE_OPS)}, got {op!r}")
    return {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]


def all_reduce(tensor: Tensor, op: str = "sum", *, group: Any = None) -> Tensor:
    """Element-wise reduction over the ranks; every rank gets the same result.

    Parameters
    ----------
    tensor : Tensor
        Same shape and dtype on every rank; not modified.
    op : "sum", "max" or "min"

    Returns
    -------
    Tensor
        A new tensor on ``tensor``'s device (``tensor`` itself without a process group).
    """
    red = _reduce_op(op)
    if get_world_size(group) == 1:
        return tensor
    import torch.distributed as dist

    buf = tensor.detach().to(_comm_device(group), copy=True).contiguous()
    dist.all_reduce(buf, op=red, group=group)
    return buf.to(tensor.device)


def _pad_rows(tensor: Tensor, rows: int) -> Tensor:
    if tensor.shape[0] == rows:
        return tensor.contiguous()
    pad = tensor.new_zeros((rows - tensor.shape[0],) + tuple(tensor.shape[1:]))
    return torch.cat([tensor, pad]).contiguous()


def _row_counts(tensor: Tensor, group: Any) -> List[int]:
    n = torch.tensor([tensor.shape[0]], dtype=torch.long)
    import torch.distributed as dist

    dev = _comm_device(group)
    out = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(get_world_size(group))]
    dist.all_gather(out, n.to(dev), group=group)
    return [int(t) for t in out]


def all_gather(tensor: Tensor, *, group: Any = None) -> List[Tensor]:
    """Every rank's tensor, in rank order, on every rank.

    The first dimension may differ between ranks (e.g. the last, smaller batch);
    the other dimensions and the dtype must agree.

    Returns
    -------
    list of Tensor
        One per rank, on ``tensor``'s device (``[tensor]`` without a process group).
    """
    if get_world_size(group) == 1:
        return [tensor]
    import torch.distributed as dist

    rows = _row_counts(tensor, group)
    dev = _comm_device(group)
    buf = _pad_rows(tensor.detach().to(dev), max(rows))
    out = [torch.empty_like(buf) for _ in rows]
    dist.all_gather(out, buf, group=group)
    return [o[:r].to(tensor.device) for o, r in zip(out, rows)]


def gather(tensor: Tensor, dst: int = 0, *, group: Any = None) -> Optional[List[Tensor]]:
    """Every rank's tensor, in rank order, on rank ``dst`` only (None elsewhere).

    The first dimension may differ between ranks; see :func:`all_gather`.
    """
    if get_world_size(group) == 1:
        return [tensor]
    import torch.distributed as dist

    rows = _row_counts(tensor, group)
    dev = _comm_device(group)
    buf = _pad_rows(tensor.detach().to(dev), max(rows))
    me = get_rank(group)
    out = [torch.empty_like(buf) for _ in rows] if me == dst else None
    dist.gather(buf, out, dst=_global(group, dst), group=group)
    if out is None:
        return None
    return [o[:r].to(tensor.device) for o, r in zip(out, rows)]


def broadcast(tensor: Tensor, src: int = 0, *, group: Any = None) -> Tensor:
    """Rank ``src``'s tensor on every rank (same shape and dtype everywhere).

    Returns a new tensor on ``tensor``'s device (``tensor`` without a process group).
    """
    if get_world_size(group) == 1:
        return tensor
    import torch.distributed as dist

    buf = tensor.detach().to(_comm_device(group), copy=True).contiguous()
    dist.broadcast(buf, src=_global(group, src), group=group)
    return buf.to(tensor.device)


# --------------------------------------------------------------------------- objects
def all_gather_object(obj: Any, *, group: Any = None) -> List[Any]:
    """Every rank's picklable object, in rank order (``[obj]`` without a process group).

    Objects travel through pickle between the job's own processes; keep them small
    (headers, lists of ids), and send tensors with :func:`all_gather`.
    """
    if get_world_size(group) == 1:
        return [obj]
    import torch.distributed as dist

    out: List[Any] = [None] * get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def broadcast_object(obj: Any, src: int = 0, *, group: Any = None) -> Any:
    """Rank ``src``'s picklable object on every rank (``obj`` without a process group)."""
    if get_world_size(group) == 1:
        return obj
    import torch.distributed as dist

    box = [obj if get_rank(group) == src else None]
    dist.broadcast_object_list(box, src=_global(group, src), group=group)
    return box[0]


def barrier(*, group: Any = None) -> None:
    """Wait until every rank gets here (no-op without a process group)."""
    if get_world_size(group) == 1:
        return
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        dist.barrier(group=group, device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier(group=group)


def run_on_main(fn: Callable[..., T], *args: Any, group: Any = None, **kwargs: Any) -> T:
    """Run ``fn`` on rank 0 only and give its result to every rank ("rank 0 writes").

    A collective: every rank must call it. Rank 0 calls ``fn(*args, **kwargs)``; its
    return value (picklable and small) is broadcast. If ``fn`` raises on rank 0, it
    re-raises there and every other rank raises :class:`RemoteError` with rank 0's
    message, so no rank waits forever and none continues on a missing result. When
    the call returns, rank 0's work is finished (it acts as a barrier).
    """
    if get_world_size(group) == 1:
        return fn(*args, **kwargs)
    error: Optional[BaseException] = None
    result: Any = None
    if get_rank(group) == 0:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # re-raised below, after the others are told
            error = exc
    outcome = broadcast_object(
        ("error", f"{type(error).__name__}: {error}") if error is not None else ("ok", result), group=group
    )
    if error is not None:
        raise error
    if outcome[0] == "error":
        raise RemoteError(f"rank 0 failed: {outcome[1]}")
    return outcome[1]


def check_all_ok(error: Optional[BaseException], *, group: Any = None) -> None:
    """Collective error check after work done on every rank.

    Each rank passes the exception its own step raised (or None). If any rank failed,
    the failing ranks re-raise their exception and the others raise
    :class:`RemoteError` naming the first failed rank and its message, so no rank is
    left waiting in the next collective. Costs one small all-reduce when all is well.
    """
    if get_world_size(group) == 1:
        if error is not None:
            raise error
        return
    failed = all_reduce(torch.tensor([0.0 if error is None else 1.0]), group=group)
    if float(failed[0]) == 0:
        return
    msgs = all_gather_object(None if error is None else f"{type(error).__name__}: {error}", group=group)
    if error is not None:
        raise error
    bad = [(r, m) for r, m in enumerate(msgs) if m is not None]
    r, m = bad[0]
    more = f" (and {len(bad) - 1} more rank(s))" if len(bad) > 1 else ""
    raise RemoteError(f"rank {r} failed: {m}{more}")

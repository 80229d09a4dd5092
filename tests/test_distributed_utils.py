"""captum_nave.distributed: collectives on 2 gloo processes, no-ops in one process."""

from __future__ import annotations

import socket

import pytest
import torch

from captum_nave import distributed as cnd
from spawn import run_ranks

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
               "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def no_launcher(monkeypatch):
    for v in LAUNCH_VARS:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def _collectives_worker(rank: int, world: int) -> dict:
    out: dict = {"rank": cnd.get_rank(), "world": cnd.get_world_size(), "main": cnd.is_main_process()}
    t = torch.tensor([1.0 + rank, 10.0 * rank])
    out["sum"] = cnd.all_reduce(t)
    out["max"] = cnd.all_reduce(t, "max")
    out["min"] = cnd.all_reduce(t, "min")
    out["input_unchanged"] = t.clone()
    # rows differ per rank (2 and 3); other dims agree
    rows = torch.arange(6.0).reshape(3, 2)[: 2 + rank] + 100 * rank
    out["all_gather"] = cnd.all_gather(rows)
    out["gather"] = cnd.gather(rows)
    out["gather_empty"] = cnd.gather(rows[:0] if rank == 0 else rows)
    out["broadcast"] = cnd.broadcast(torch.tensor([rank + 5.0]))
    out["objects"] = cnd.all_gather_object({"rank": rank})
    out["object"] = cnd.broadcast_object(f"from {rank}")
    out["on_main"] = cnd.run_on_main(lambda: f"computed by {cnd.get_rank()}")

    def fail() -> None:
        raise OSError("disk full")

    try:
        cnd.run_on_main(fail)
    except Exception as exc:  # noqa: BLE001 - the type is what is checked
        out["on_main_error"] = (type(exc).__name__, str(exc))
    try:
        cnd.check_all_ok(ValueError("bad image") if rank == 1 else None)
    except Exception as exc:  # noqa: BLE001
        out["check"] = (type(exc).__name__, str(exc))
    cnd.check_all_ok(None)  # all well: returns
    cnd.barrier()
    return out


def test_collectives_on_two_gloo_processes(tmp_path):
    res = run_ranks(_collectives_worker, 2, tmp_path)
    for r, o in enumerate(res):
        assert (o["rank"], o["world"], o["main"]) == (r, 2, r == 0)
        assert torch.equal(o["sum"], torch.tensor([3.0, 10.0]))
        assert torch.equal(o["max"], torch.tensor([2.0, 10.0]))
        assert torch.equal(o["min"], torch.tensor([1.0, 0.0]))
        assert torch.equal(o["input_unchanged"], torch.tensor([1.0 + r, 10.0 * r]))
        rows0 = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
        rows1 = torch.tensor([[100.0, 101.0], [102.0, 103.0], [104.0, 105.0]])
        assert [g.tolist() for g in o["all_gather"]] == [rows0.tolist(), rows1.tolist()]
        assert torch.equal(o["broadcast"], torch.tensor([5.0]))
        assert o["objects"] == [{"rank": 0}, {"rank": 1}]
        assert o["object"] == "from 0"
        assert o["on_main"] == "computed by 0"
    assert [g.tolist() for g in res[0]["gather"]] == [[[0.0, 1.0], [2.0, 3.0]], [[100.0, 101.0], [102.0, 103.0], [104.0, 105.0]]]
    assert res[1]["gather"] is None
    assert [g.shape[0] for g in res[0]["gather_empty"]] == [0, 3]
    # rank 0's failure: re-raised there, reported on the others
    assert res[0]["on_main_error"] == ("OSError", "disk full")
    assert res[1]["on_main_error"] == ("RemoteError", "rank 0 failed: OSError: disk full")
    # rank 1's failure in a step every rank ran
    assert res[1]["check"] == ("ValueError", "bad image")
    assert res[0]["check"] == ("RemoteError", "rank 1 failed: ValueError: bad image")


def test_single_process_helpers_are_no_ops(no_launcher):
    assert not cnd.is_initialized()
    assert (cnd.get_rank(), cnd.get_world_size(), cnd.is_main_process(), cnd.local_rank()) == (0, 1, True, 0)
    t = torch.tensor([1.0, 2.0])
    assert cnd.all_reduce(t) is t and cnd.broadcast(t) is t
    assert cnd.all_gather(t)[0] is t and cnd.gather(t)[0] is t
    assert cnd.all_gather_object(3) == [3] and cnd.broadcast_object("x") == "x"
    cnd.barrier()
    assert cnd.run_on_main(lambda a, b=0: a + b, 2, b=3) == 5
    cnd.check_all_ok(None)
    with pytest.raises(KeyError):
        cnd.check_all_ok(KeyError("mine"))
    with pytest.raises(ValueError, match="op: expected one of sum, max, min, got 'mean'"):
        cnd.all_reduce(t, "mean")
    assert cnd.init_distributed() is False  # no launcher: nothing to start
    with cnd.distributed_session() as active:
        assert active is False


def test_launch_environment(no_launcher):
    assert cnd.launch_environment() is None
    no_launcher.setenv("RANK", "3")
    no_launcher.setenv("WORLD_SIZE", "4")
    no_launcher.setenv("LOCAL_RANK", "1")
    assert cnd.launch_environment() == {"rank": 3, "world_size": 4, "local_rank": 1}
    assert cnd.local_rank() == 1
    no_launcher.setenv("RANK", "4")
    with pytest.raises(ValueError, match="expected 0 <= rank < world size, got rank 4, world size 4"):
        cnd.launch_environment()
    no_launcher.setenv("RANK", "x")
    with pytest.raises(ValueError, match="environment variable RANK: expected an integer, got 'x'"):
        cnd.launch_environment()
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        no_launcher.delenv(v)
    # srun without torchrun: SLURM's variables, used only with MASTER_ADDR set
    no_launcher.setenv("SLURM_PROCID", "5")
    no_launcher.setenv("SLURM_NTASKS", "8")
    no_launcher.setenv("SLURM_LOCALID", "1")
    assert cnd.launch_environment() is None
    no_launcher.setenv("MASTER_ADDR", "node01")
    assert cnd.launch_environment() == {"rank": 5, "world_size": 8, "local_rank": 1}


def test_device_for_rank(no_launcher):
    assert cnd.device_for_rank() == torch.device("cpu")
    assert cnd.device_for_rank("cpu") == torch.device("cpu")
    assert cnd.device_for_rank("cuda:3") == torch.device("cuda", 3)  # explicit index kept
    with pytest.raises(ValueError, match="device: expected a torch device such as cpu or cuda, got 'gpu0'"):
        cnd.device_for_rank("gpu0")
    no_launcher.setenv("RANK", "1")
    no_launcher.setenv("WORLD_SIZE", "2")
    no_launcher.setenv("LOCAL_RANK", "1")
    if torch.cuda.device_count() >= 2 or not torch.cuda.is_available():
        assert cnd.device_for_rank("cuda") == torch.device("cuda", 1)
    else:
        with pytest.raises(ValueError, match="LOCAL_RANK=1 but this node has 1 CUDA device"):
            cnd.device_for_rank("cuda")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_init_distributed_from_the_launcher_environment(no_launcher):
    """A one-process 'job' with torchrun's variables: gloo on the CPU, destroyed on exit."""
    no_launcher.setenv("RANK", "0")
    no_launcher.setenv("WORLD_SIZE", "1")
    no_launcher.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="MASTER_ADDR and MASTER_PORT must be set"):
        cnd.init_distributed()
    with pytest.raises(ValueError, match="backend: NCCL needs a CUDA device, got device cpu"):
        cnd.init_distributed("nccl")
    no_launcher.setenv("MASTER_ADDR", "127.0.0.1")
    no_launcher.setenv("MASTER_PORT", str(_free_port()))
    with cnd.distributed_session() as active:
        import torch.distributed as dist

        assert active and dist.get_backend() == "gloo" and cnd.get_world_size() == 1
        assert cnd.init_distributed() is False  # already initialised
        assert torch.equal(cnd.all_reduce(torch.tensor([2.0])), torch.tensor([2.0]))
    assert not cnd.is_initialized()

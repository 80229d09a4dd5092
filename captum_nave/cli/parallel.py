"""Commands over many images under torchrun: this rank's share, results back in order.

``captum-nave`` starts the process group itself when a launcher started it
(:func:`captum_nave.cli.main`). A command then works on the images
``i % world == rank`` (:func:`my_indices`), decodes them ahead in DataLoader workers
(:func:`load_ahead`), and hands per-image results to rank 0 in image order
(:func:`gather_in_order`), which writes the shared outputs and prints. In one process
every helper is the plain single-process behaviour.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar

from captum_nave import distributed as dist_utils
from captum_nave.data import IndexedDataset, iterate_items, shard_indices

__all__ = ["my_indices", "load_ahead", "gather_in_order", "is_main"]

T = TypeVar("T")


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that prints and writes shared files."""
    return dist_utils.is_main_process()


def my_indices(n: int) -> List[int]:
    """Indices of the ``n`` images this process works on (all of them in a single process)."""
    return shard_indices(n, dist_utils.get_world_size(), dist_utils.get_rank())


def load_ahead(
    sources: Sequence[Any],
    load: Callable[[Any], Any],
    indices: Sequence[int],
    *,
    workers: int = 0,
    device: Any = None,
) -> Iterator[Tuple[int, Any]]:
    """``(index, load(sources[index]))`` for ``indices`` in order, loaded by ``workers`` processes.

    ``load`` runs in the DataLoader's workers (a module-level function or a
    ``functools.partial`` of one); its exceptions reach the caller unchanged. On CUDA the
    loaded tensors come in pinned memory.
    """
    yield from iterate_items(IndexedDataset(sources, load=load), indices, workers=workers, device=device)


def gather_in_order(
    indices: Sequence[int], values: Sequence[T], n: int, *, to_all: bool = False
) -> Optional[List[Optional[T]]]:
    """Every rank's ``values`` (one per index of its ``indices``) as one list of ``n`` on rank 0.

    Images no rank produced a value for are ``None``. Returns ``None`` on the other ranks
    unless ``to_all``. A collective: every rank calls it (with empty lists when it had no
    image). Keep the values small (names, flags, a few numbers per image).
    """
    if len(indices) != len(values):
        raise ValueError(f"values: expected one value per index ({len(indices)}), got {len(values)}")
    parts = dist_utils.all_gather_object((list(indices), list(values)))
    if not (to_all or is_main()):
        return None
    out: List[Optional[T]] = [None] * n
    for idx, vals in parts:
        for i, v in zip(idx, vals):
            out[i] = v
    return out

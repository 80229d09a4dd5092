"""Image sets as ``torch.utils.data`` datasets: sharded over ranks, decoded by workers.

Batch commands (``explain`` over folders, ``concepts``, ``report``, the CorLoc runner)
read many image files. Decoding a JPEG costs about as much as a small model's forward
pass, so it runs in :class:`~torch.utils.data.DataLoader` worker processes
(``--workers N``) while the model works on the previous image; on CUDA the loaded
tensors are put in pinned memory so the copy to the GPU can overlap.

Every item carries its index in the dataset, and a loader yields the items of a
shard in the order of the shard's indices (the DataLoader keeps sampler order with
any number of workers), so per-image records come out in dataset order.
:func:`shard_indices` is the one rule that assigns images to shards and ranks:
image ``i`` belongs to shard ``i % num_shards`` (torchrun: shard = rank).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset

from ._validation import check_int

__all__ = ["IndexedDataset", "shard_indices", "check_shards", "iterate_items", "loader_kwargs"]


class IndexedDataset(Dataset):
    """``(index, load(source))`` for each source, loaded lazily (in a worker process).

    Parameters
    ----------
    sources : sequence
        Anything ``load`` accepts: file paths, dataset records, or already loaded images.
    load : callable, optional
        ``load(source) -> item``; default: the source itself. Runs in the DataLoader's
        worker processes, so it must be picklable when ``workers > 0`` and the start
        method is not ``fork`` (a module-level function or a ``functools.partial``).

    Examples
    --------
    >>> ds = IndexedDataset(paths, load=load_image)
    >>> for idx, image in iterate_items(ds, shard_indices(len(ds), world, rank), workers=4):
    ...     ...
    """

    def __init__(self, sources: Sequence[Any], load: Optional[Callable[[Any], Any]] = None) -> None:
        self.sources = list(sources)
        self.load = load

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> Tuple[int, Any]:
        src = self.sources[index]
        if self.load is None:
            return index, src
        try:
            return index, self.load(src)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there as is
            return index, _Failed(exc)


class _Failed:
    """An exception raised while loading an item, carried out of the worker process.

    The DataLoader would re-raise a worker's exception wrapped ("Caught ValueError in
    DataLoader worker process 0" plus a traceback); carrying it as a value lets
    :func:`iterate_items` raise the loader's own exception, with its own message.
    """

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def shard_indices(n: int, num_shards: int = 1, shard_index: int = 0) -> List[int]:
    """Dataset indices of shard ``shard_index`` of ``num_shards``: ``i % num_shards == shard_index``.

    Raises
    ------
    ValueError
        If ``num_shards`` is not a positive int or ``shard_index`` not in ``[0, num_shards)``
        (:class:`~captum_nave._validation.InvalidParameterError` when not an int at all).
    """
    num, index = check_shards(num_shards, shard_index)
    return list(range(index, int(n), num))


def check_shards(num_shards: Any, shard_index: Any) -> Tuple[int, int]:
    """``(num_shards, shard_index)`` as ints, ``num_shards >= 1`` and ``0 <= shard_index < num_shards``."""
    num = check_int(num_shards, "num_shards", low=1)
    index = check_int(shard_index, "shard_index", low=0, high=num - 1)  # type: ignore[operator]
    return num, index  # type: ignore[return-value]


def _keep(batch: List[Tuple[int, Any]]) -> List[Tuple[int, Any]]:
    """Collate that keeps the items as they are (images of different sizes)."""
    return batch


def loader_kwargs(workers: int, device: Union[str, torch.device, None]) -> dict:
    """DataLoader options for ``workers`` decoding processes feeding ``device``.

    ``pin_memory`` on CUDA; with workers, two items prefetched per worker.
    """
    workers = check_int(workers, "workers", low=0)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    kw: dict = {"num_workers": workers, "pin_memory": dev.type == "cuda"}
    if workers > 0:
        kw["prefetch_factor"] = 2
    return kw


def iterate_items(
    dataset: Dataset,
    indices: Sequence[int],
    *,
    batch_size: Optional[int] = None,
    workers: int = 0,
    device: Union[str, torch.device, None] = None,
) -> Iterator[Any]:
    """Items (or lists of items) of ``dataset`` at ``indices``, in that order.

    Parameters
    ----------
    dataset : Dataset
        Typically an :class:`IndexedDataset` (items ``(index, image)``).
    indices : sequence of int
        The shard to read (see :func:`shard_indices`), in the order wanted.
    batch_size : int, optional
        None: yield single items; else lists of up to ``batch_size`` items.
    workers : int
        DataLoader worker processes (0: load in this process).
    device : str or torch.device, optional
        The consumer's device; CUDA turns on pinned memory.
    """
    if len(indices) == 0:
        return
    loader = DataLoader(
        dataset, batch_size=batch_size or 1, sampler=list(indices), collate_fn=_keep,
        **loader_kwargs(workers, device),
    )
    for batch in loader:
        for _, item in batch:
            if isinstance(item, _Failed):
                raise item.exc
        if batch_size is None:
            yield batch[0]
        else:
            yield batch

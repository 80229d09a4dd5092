"""What the dataset readers return: annotated images and a dataset of them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, overload

import numpy as np

from ._annotations import check_unique_keys

__all__ = ["ImageRecord", "BoxDataset"]


@dataclass(frozen=True)
class ImageRecord:
    """One annotated image.

    Attributes
    ----------
    image_id : str
        The dataset's own id, unique within the dataset: the VOC id, the COCO
        image ``id`` (as a string), or the path relative to the folder. It keys
        the image's per-image results.
    path : Path
        Image file.
    width, height : int
        Image size in pixels, from the annotation (checked when the image is loaded).
    boxes : ndarray of shape (M, 4), float64
        Ground-truth boxes ``(x_min, y_min, x_max, y_max)``, 0-based, continuous.
    classes : tuple of str
        Class name of each box (empty strings when unknown).
    """

    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    classes: Tuple[str, ...] = ()


@dataclass
class BoxDataset(Sequence[ImageRecord]):
    """A list of :class:`ImageRecord` plus what was left out while reading.

    Attributes
    ----------
    name : str
        Short name used in tables (e.g. ``"VOC2007-trainval"``).
    records : list of ImageRecord
        Images with at least one ground-truth box, in a deterministic order.
    skipped : dict of str to list of str
        Image ids left out, by reason (``"no_boxes"``).
    dropped_boxes : int
        Boxes removed by the reader options (difficult, truncated, crowd, invalid).
    outside_boxes : int
        Boxes kept although they leave their image (``invalid_boxes="keep"``).
    format : str or None
        ``"voc"``, ``"coco"``, ``"folder"`` (None when built by hand).

    Raises
    ------
    ValueError
        When two records have the same ``image_id``.
    """

    name: str
    records: List[ImageRecord]
    skipped: Dict[str, List[str]] = field(default_factory=dict)
    dropped_boxes: int = 0
    outside_boxes: int = 0
    format: Optional[str] = None

    def __post_init__(self) -> None:
        check_unique_keys(
            [r.image_id for r in self.records], [r.path for r in self.records], f"dataset {self.name!r}"
        )

    @overload
    def __getitem__(self, index: int) -> ImageRecord: ...

    @overload
    def __getitem__(self, index: slice) -> "BoxDataset": ...

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        if isinstance(index, slice):
            return replace(self, records=self.records[index])
        return self.records[index]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    @property
    def n_skipped(self) -> int:
        """Number of images left out."""
        return sum(len(v) for v in self.skipped.values())

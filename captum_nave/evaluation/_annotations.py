"""Checks shared by the dataset readers: boxes, image paths, image keys.

* :func:`validate_boxes` applies the ``invalid_boxes`` policy to boxes that
  leave their image or have a non-finite coordinate; :class:`BoxFilter` does
  it for every image of a dataset and counts what was dropped or kept;
* :func:`inside_root` refuses an annotated image path that leaves the dataset
  folder (absolute, or climbing out with ``..``);
* :func:`check_unique_keys` refuses two images with the same key (the key of
  the per-image results, so a duplicate would be skipped as "already done");
* :func:`parse_iscrowd` reads COCO's ``iscrowd`` strictly;
* small parsing helpers (sizes, JSON files, limits).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path, PurePath
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from captum_nave._validation import check_int

#: What a reader does with a box that leaves its image: keep it as annotated (the
#: authors' script does), stop with an error, clip it to the image, or drop it.
INVALID_BOX_POLICIES: Tuple[str, ...] = ("keep", "raise", "clip", "drop")


def check_policy(invalid_boxes: object) -> str:
    """Return ``invalid_boxes`` if it is a known policy, else raise ``ValueError``."""
    if not isinstance(invalid_boxes, str) or invalid_boxes not in INVALID_BOX_POLICIES:
        raise ValueError(
            f"invalid_boxes: expected one of {list(INVALID_BOX_POLICIES)}, got {invalid_boxes!r}"
        )
    return invalid_boxes


def validate_boxes(
    boxes: np.ndarray, width: int, height: int, policy: str, where: str
) -> Tuple[np.ndarray, np.ndarray, int]:
    """Apply ``policy`` to the boxes of one image.

    Parameters
    ----------
    boxes : ndarray of shape (M, 4), float64
        ``(x_min, y_min, x_max, y_max)``, 0-based continuous coordinates.
    width, height : int
        Image size.
    policy : {"keep", "raise", "clip", "drop"}
        For boxes leaving the image: keep them as annotated, raise, clip them
        to the image, or drop them. A NaN / inf coordinate is refused with
        ``"keep"`` and ``"raise"``; ``"drop"`` drops such boxes; ``"clip"``
        clips infinite coordinates to the image and drops boxes with a NaN
        (a NaN cannot be clipped).
    where : str
        Names the annotation in error messages.

    Returns
    -------
    boxes : ndarray of shape (M, 4)
        Clipped with ``"clip"``; otherwise unchanged.
    keep : ndarray of shape (M,), bool
        False for the boxes dropped.
    n_outside : int
        Kept boxes that leave the image (only with ``"keep"``).
    """
    if boxes.size == 0:
        return boxes.reshape(0, 4), np.zeros(0, dtype=bool), 0
    keep = np.ones(len(boxes), dtype=bool)
    finite = np.isfinite(boxes).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        if policy in ("keep", "raise"):
            raise ValueError(
                f"{where}: box {boxes[i].tolist()} has a non-finite coordinate (NaN or inf); "
                "pass invalid_boxes='drop' (CLI: --invalid-boxes drop) to leave such boxes out"
            )
        nan = np.isnan(boxes).any(axis=1)
        keep &= ~nan if policy == "clip" else finite
    check = keep & finite
    inverted = check & ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if np.any(inverted):
        i = int(np.argmax(inverted))
        raise ValueError(
            f"{where}: malformed box {boxes[i].tolist()} (x_max < x_min or y_max < y_min)"
        )
    with np.errstate(invalid="ignore"):
        outside = keep & (
            (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
        )
    n_outside = 0
    if np.any(outside):
        i = int(np.argmax(outside))
        if policy == "raise":
            raise ValueError(
                f"{where}: box {boxes[i].tolist()} (x_min, y_min, x_max, y_max, 0-based) "
                f"leaves the {width}x{height} image; pass invalid_boxes='keep', 'clip' or 'drop' "
                "(CLI: --invalid-boxes) to accept such annotations"
            )
        if policy == "clip":
            boxes = boxes.copy()
            boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
            boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
            inverted = keep & ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
            if np.any(inverted):
                i = int(np.argmax(inverted))
                raise ValueError(f"{where}: malformed box {boxes[i].tolist()} after clipping to the image")
        elif policy == "drop":
            keep &= ~outside
        else:
            n_outside = int(outside.sum())
    return boxes, keep, n_outside


class BoxFilter:
    """Applies the ``invalid_boxes`` policy to the images of one dataset and counts.

    Attributes
    ----------
    dropped : int
        Boxes dropped (by the policy, or counted in with :meth:`drop`).
    outside : int
        Boxes kept although they leave their image (policy ``"keep"``).
    """

    def __init__(self, policy: object) -> None:
        self.policy = check_policy(policy)
        self.dropped = 0
        self.outside = 0
        self._where: List[str] = []

    def drop(self, n: int = 1) -> None:
        """Count boxes a reader option removed (difficult, truncated, crowd)."""
        self.dropped += n

    def __call__(self, boxes: np.ndarray, width: int, height: int, where: str) -> Tuple[np.ndarray, np.ndarray]:
        """Kept boxes (clipped with ``"clip"``) and the keep mask, see :func:`validate_boxes`."""
        boxes, keep, n_outside = validate_boxes(boxes, width, height, self.policy, where)
        self.dropped += int((~keep).sum())
        if n_outside:
            self.outside += n_outside
            self._where.append(where)
        return boxes[keep], keep

    def warn(self, name: str) -> None:
        """One ``RuntimeWarning`` for the dataset when boxes leaving their image were kept."""
        if self.outside:
            warnings.warn(
                f"{name}: {self.outside} ground-truth box(es) in {len(self._where)} image(s) leave their "
                f"image (e.g. {self._where[0]}); kept as annotated, as the authors' evaluation script "
                "does; pass invalid_boxes='clip', 'drop' or 'raise' (CLI: --invalid-boxes) to change that",
                RuntimeWarning,
                stacklevel=3,
            )


def inside_root(root: Path, name: str, *, where: str, what: str, allow_outside: bool = False) -> Path:
    """``root / name``, refusing a ``name`` that leaves ``root``.

    The check is lexical (an absolute path, or ``..`` climbing above ``root``
    after normalisation): symbolic links inside ``root`` that point elsewhere
    are followed as usual.
    """
    if not allow_outside:
        norm = PurePath(os.path.normpath(name))
        if os.path.isabs(name) or norm.anchor or norm.parts[:1] == ("..",):
            raise ValueError(
                f"{where}: {what} {name!r} points outside {root}; image paths must stay inside the "
                "dataset folder (pass allow_outside_root=True, CLI: --allow-outside-root, if you "
                "trust this annotation file)"
            )
    return root / name


def check_unique_keys(keys: Sequence[str], files: Sequence[object], where: str) -> None:
    """Raise ``ValueError`` naming both files when two images share a key."""
    seen: Dict[str, int] = {}
    for i, key in enumerate(keys):
        j = seen.setdefault(key, i)
        if j != i:
            raise ValueError(
                f"{where}: images {str(files[j])!r} and {str(files[i])!r} have the same id {key!r}; "
                "ids key the per-image results and must be unique"
            )


def parse_iscrowd(value: object, where: str) -> bool:
    """COCO ``iscrowd``: 0 / 1 (also as ``false`` / ``true`` or the strings ``"0"`` / ``"1"``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        if value in (0, 1):
            return bool(value)
    elif isinstance(value, str) and value.strip() in ("0", "1"):
        return value.strip() == "1"
    raise ValueError(f"{where}: iscrowd must be 0 or 1, got {value!r}")


def positive_int(value: object, where: str, what: str) -> int:
    """An image size field as a positive int, else ``ValueError`` naming ``where``."""
    try:
        v = int(float(str(value)))
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{where}: {what} must be a positive integer, got {value!r}") from None
    if v <= 0:
        raise ValueError(f"{where}: {what} must be a positive integer, got {value!r}")
    return v


def load_json(path: Path, what: str, object_pairs_hook: Optional[object] = None) -> object:
    """Parse a JSON file; errors name the parameter ``what`` and the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh, object_pairs_hook=object_pairs_hook)  # type: ignore[arg-type]
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: malformed JSON in {path}: {exc}") from None
    except ValueError as exc:  # raised by object_pairs_hook
        raise ValueError(f"{what}: {path}: {exc}") from None


def no_duplicate_keys(pairs: List[Tuple[str, object]]) -> Dict[str, object]:
    """``object_pairs_hook`` refusing a key given twice (``json`` keeps the last one silently)."""
    out: Dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {k!r} appears twice in one JSON object")
        out[k] = v
    return out


def check_limit(limit: object) -> int:
    """``limit`` as a positive int, else ``ValueError``."""
    return check_int(limit, "limit", low=1)  # type: ignore[return-value]

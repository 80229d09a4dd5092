"""Readers of box-annotated image datasets for the CorLoc evaluation.

Three layouts are supported, all returning a :class:`BoxDataset` of
:class:`ImageRecord` (image path, size, ground-truth boxes as
``(x_min, y_min, x_max, y_max)`` in continuous 0-based pixel coordinates):

* Pascal VOC (:func:`read_voc`): ``VOCdevkit/VOC2007`` or ``VOC2012`` with
  ``Annotations/*.xml``, ``JPEGImages/`` and ``ImageSets/Main/<split>.txt``.
  The XML boxes are 1-based and inclusive: 1 is subtracted from ``xmin`` and
  ``ymin`` (as the authors' and LOST's scripts). "difficult" and "truncated"
  objects are kept unless asked otherwise.
* COCO JSON (:func:`read_coco`): ``bbox = [x, y, w, h]`` becomes
  ``[x, y, x + w, y + h]`` rounded to integers; ``iscrowd`` annotations are
  dropped; an optional file list restricts the images (e.g. COCO20k).
* A folder with a ``boxes.json`` (:func:`read_folder`) for users' own data:
  ``{"image.jpg": [[x_min, y_min, x_max, y_max], ...], ...}`` with paths
  relative to the folder and 0-based continuous coordinates.

Images without any (kept) box are skipped and counted in
``BoxDataset.skipped``. Boxes that leave the image raise a ``ValueError``
unless ``invalid_boxes`` is ``"clip"`` or ``"drop"``.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union, overload

import numpy as np

from captum_nave._validation import check_int

__all__ = [
    "ImageRecord",
    "BoxDataset",
    "read_voc",
    "read_coco",
    "read_folder",
    "read_dataset",
    "load_image",
    "DATASET_FORMATS",
]

PathLike = Union[str, "os.PathLike[str]"]
DATASET_FORMATS: Tuple[str, ...] = ("voc", "coco", "folder")
_INVALID_POLICIES = ("raise", "clip", "drop")


@dataclass(frozen=True)
class ImageRecord:
    """One annotated image.

    Attributes
    ----------
    image_id : str
        Identifier, unique within the dataset (VOC id, COCO file name stem, file path).
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
    """

    name: str
    records: List[ImageRecord]
    skipped: Dict[str, List[str]] = field(default_factory=dict)
    dropped_boxes: int = 0

    @overload
    def __getitem__(self, index: int) -> ImageRecord: ...

    @overload
    def __getitem__(self, index: slice) -> "BoxDataset": ...

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        if isinstance(index, slice):
            return BoxDataset(self.name, self.records[index], self.skipped, self.dropped_boxes)
        return self.records[index]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    @property
    def n_skipped(self) -> int:
        """Number of images left out."""
        return sum(len(v) for v in self.skipped.values())


# --------------------------------------------------------------------------- helpers
def load_image(record_or_path: Union[ImageRecord, PathLike]) -> np.ndarray:
    """Read an image as an RGB ``uint8`` array of shape (H, W, 3).

    When given an :class:`ImageRecord`, the size is checked against the annotation.
    """
    from PIL import Image

    path = Path(record_or_path.path if isinstance(record_or_path, ImageRecord) else record_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if isinstance(record_or_path, ImageRecord):
        rec = record_or_path
        if arr.shape[:2] != (rec.height, rec.width):
            raise ValueError(
                f"image {path}: the annotation says {rec.width}x{rec.height} (WxH) but the "
                f"file is {arr.shape[1]}x{arr.shape[0]}"
            )
    return arr


def _check_policy(invalid_boxes: str) -> None:
    if invalid_boxes not in _INVALID_POLICIES:
        raise ValueError(
            f"invalid_boxes: expected one of {list(_INVALID_POLICIES)}, got {invalid_boxes!r}"
        )


def _validate_boxes(
    boxes: np.ndarray, width: int, height: int, policy: str, where: str
) -> Tuple[np.ndarray, np.ndarray]:
    """Return (valid boxes, keep mask) after applying ``policy`` to boxes leaving the image."""
    if boxes.size == 0:
        return boxes.reshape(0, 4), np.zeros(0, dtype=bool)
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if np.any(inverted):
        i = int(np.argmax(inverted))
        raise ValueError(
            f"{where}: malformed box {boxes[i].tolist()} (x_max < x_min or y_max < y_min)"
        )
    outside = (
        (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
    )
    keep = np.ones(len(boxes), dtype=bool)
    if np.any(outside):
        i = int(np.argmax(outside))
        if policy == "raise":
            raise ValueError(
                f"{where}: box {boxes[i].tolist()} (x_min, y_min, x_max, y_max, 0-based) "
                f"leaves the {width}x{height} image; pass invalid_boxes='clip' or 'drop' "
                "(CLI: --invalid-boxes) to accept such annotations"
            )
        if policy == "clip":
            boxes = boxes.copy()
            boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
            boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
        else:
            keep = ~outside
    return boxes, keep


def _positive_int(value: object, where: str, what: str) -> int:
    try:
        v = int(float(str(value)))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} must be a positive integer, got {value!r}") from None
    if v <= 0:
        raise ValueError(f"{where}: {what} must be a positive integer, got {value!r}")
    return v


# --------------------------------------------------------------------------- VOC
def _voc_dir(root: Path, year: Optional[Union[int, str]]) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(f"root: directory not found: {root}")
    if (root / "Annotations").is_dir():
        return root
    if year is not None:
        cand = root / f"VOC{year}"
        if not (cand / "Annotations").is_dir():
            raise FileNotFoundError(
                f"root: {cand} has no Annotations/ folder (expected the VOCdevkit layout)"
            )
        return cand
    found = sorted(p for p in root.glob("VOC*") if (p / "Annotations").is_dir())
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(
            f"root: no VOC dataset under {root}: expected Annotations/ there or in a "
            "VOC2007/VOC2012 subfolder"
        )
    raise ValueError(
        f"root: several VOC datasets under {root} ({', '.join(p.name for p in found)}); "
        "pass year= (CLI: --year) to choose one"
    )


def _xml_text(node: ET.Element, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{where}: missing <{tag}>")
    return child.text.strip()


def _parse_voc_xml(
    path: Path,
) -> Tuple[str, int, int, List[Tuple[str, bool, bool, List[float]]]]:
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise ValueError(f"malformed VOC annotation {path}: {exc}") from None
    root = tree.getroot()
    where = str(path)
    fname_node = root.find("filename")
    filename = fname_node.text.strip() if fname_node is not None and fname_node.text else ""
    size = root.find("size")
    if size is None:
        raise ValueError(f"{where}: missing <size>")
    width = _positive_int(_xml_text(size, "width", where), where, "width")
    height = _positive_int(_xml_text(size, "height", where), where, "height")
    objects = []
    for obj in root.findall("object"):
        name = obj.findtext("name", default="").strip()
        difficult = obj.findtext("difficult", default="0").strip() not in ("0", "")
        truncated = obj.findtext("truncated", default="0").strip() not in ("0", "")
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"{where}: object {name!r} has no <bndbox>")
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = _xml_text(bb, tag, f"{where}: object {name!r}")
            try:
                coords.append(float(text))
            except ValueError:
                raise ValueError(
                    f"{where}: object {name!r}: <{tag}> is not a number: {text!r}"
                ) from None
        objects.append((name, difficult, truncated, coords))
    return filename, width, height, objects


def read_voc(
    root: PathLike,
    split: str = "trainval",
    *,
    year: Optional[Union[int, str]] = None,
    drop_difficult: bool = False,
    drop_truncated: bool = False,
    invalid_boxes: str = "raise",
    limit: Optional[int] = None,
) -> BoxDataset:
    """Read a Pascal VOC dataset (``VOCdevkit/VOC2007`` or ``VOC2012`` layout).

    Parameters
    ----------
    root : path
        The ``VOC2007``/``VOC2012`` folder (with ``Annotations/``), or the
        ``VOCdevkit`` folder containing it.
    split : str, default "trainval"
        Image set: reads ``ImageSets/Main/<split>.txt`` (the paper uses trainval).
    year : int or str, optional
        Picks ``VOC<year>`` under a ``VOCdevkit`` root holding several.
    drop_difficult, drop_truncated : bool, default False
        Drop objects flagged "difficult" / "truncated" (kept by the paper's protocol).
    invalid_boxes : {"raise", "clip", "drop"}, default "raise"
        What to do with a box that leaves the image.
    limit : int, optional
        Read only the first ``limit`` ids of the split.

    Returns
    -------
    BoxDataset
        Boxes as 0-based ``(xmin - 1, ymin - 1, xmax, ymax)``.
    """
    _check_policy(invalid_boxes)
    base = _voc_dir(Path(root), year)
    split_file = base / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        avail = sorted(p.stem for p in (base / "ImageSets" / "Main").glob("*.txt"))[:10]
        raise FileNotFoundError(
            f"split: image set file not found: {split_file}"
            + (f" (available: {', '.join(avail)})" if avail else "")
        )
    ids = [ln.split()[0] for ln in split_file.read_text().splitlines() if ln.strip()]
    if limit is not None:
        ids = ids[: _check_limit(limit)]
    records: List[ImageRecord] = []
    skipped: Dict[str, List[str]] = {}
    dropped = 0
    for image_id in ids:
        xml_path = base / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            raise FileNotFoundError(f"VOC annotation not found: {xml_path}")
        filename, width, height, objects = _parse_voc_xml(xml_path)
        boxes, classes = [], []
        for name, difficult, truncated, (x1, y1, x2, y2) in objects:
            if (drop_difficult and difficult) or (drop_truncated and truncated):
                dropped += 1
                continue
            boxes.append([x1 - 1.0, y1 - 1.0, x2, y2])
            classes.append(name)
        arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        arr, keep = _validate_boxes(arr, width, height, invalid_boxes, str(xml_path))
        dropped += int((~keep).sum())
        arr = arr[keep]
        classes = [c for c, k in zip(classes, keep) if k]
        if arr.shape[0] == 0:
            skipped.setdefault("no_boxes", []).append(image_id)
            continue
        img_path = base / "JPEGImages" / (filename or f"{image_id}.jpg")
        if not img_path.is_file():
            alt = base / "JPEGImages" / f"{image_id}.jpg"
            if alt.is_file():
                img_path = alt
            else:
                raise FileNotFoundError(f"VOC image not found: {img_path}")
        records.append(ImageRecord(image_id, img_path, width, height, arr, tuple(classes)))
    return BoxDataset(f"{base.name}-{split}", records, skipped, dropped)


# --------------------------------------------------------------------------- COCO
def _load_json(path: Path, what: str) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: malformed JSON in {path}: {exc}") from None


def read_coco(
    annotations: PathLike,
    images_dir: PathLike,
    *,
    file_list: Optional[Union[PathLike, Sequence[str]]] = None,
    invalid_boxes: str = "raise",
    name: Optional[str] = None,
    limit: Optional[int] = None,
) -> BoxDataset:
    """Read a COCO-style JSON (``images`` + ``annotations`` with ``bbox = [x, y, w, h]``).

    Parameters
    ----------
    annotations : path
        The instances JSON (e.g. ``instances_train2014.json``).
    images_dir : path
        Folder holding the images named by ``file_name``.
    file_list : path or sequence of str, optional
        Restrict to these images (one file name per line in a text file, matched
        by base name; e.g. the COCO20k list). The order of the list is kept.
    invalid_boxes : {"raise", "clip", "drop"}, default "raise"
        What to do with a box that leaves the image.
    name : str, optional
        Dataset name for tables; default: the JSON file's stem.
    limit : int, optional
        Keep only the first ``limit`` images.

    Returns
    -------
    BoxDataset
        ``iscrowd`` boxes dropped; boxes ``round([x, y, x + w, y + h])``.
    """
    _check_policy(invalid_boxes)
    ann_path = Path(annotations)
    img_dir = Path(images_dir)
    if not img_dir.is_dir():
        raise FileNotFoundError(f"images_dir: directory not found: {img_dir}")
    data = _load_json(ann_path, "annotations")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"annotations: {ann_path} has no 'images' list (not a COCO JSON)")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise ValueError(f"annotations: 'annotations' in {ann_path} must be a list")
    images: Dict[object, dict] = {}
    by_name: Dict[str, object] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not {"id", "file_name", "width", "height"} <= set(im):
            raise ValueError(
                f"annotations: images[{i}] in {ann_path} needs id, file_name, width, height"
            )
        images[im["id"]] = im
        by_name[os.path.basename(str(im["file_name"]))] = im["id"]
    per_image: Dict[object, List[Tuple[List[float], str]]] = {k: [] for k in images}
    dropped = 0
    cat_names = {
        c.get("id"): str(c.get("name", "")) for c in data.get("categories", []) if isinstance(c, dict)
    }
    for j, ann in enumerate(anns):
        if not isinstance(ann, dict) or "image_id" not in ann or "bbox" not in ann:
            raise ValueError(f"annotations: annotations[{j}] in {ann_path} needs image_id and bbox")
        if ann["image_id"] not in images:
            raise ValueError(
                f"annotations: annotations[{j}] refers to unknown image_id {ann['image_id']!r}"
            )
        if ann.get("iscrowd", 0):
            dropped += 1
            continue
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise ValueError(f"annotations: annotations[{j}].bbox must be [x, y, w, h], got {bbox!r}")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise ValueError(f"annotations: annotations[{j}].bbox is not numeric: {bbox!r}") from None
        box = np.round(np.array([x, y, x + w, y + h])).tolist()
        per_image[ann["image_id"]].append((box, cat_names.get(ann.get("category_id"), "")))

    if file_list is not None:
        if isinstance(file_list, (str, os.PathLike)):
            fl = Path(file_list)
            if not fl.is_file():
                raise FileNotFoundError(f"file_list: file not found: {fl}")
            names = [ln.strip() for ln in fl.read_text().splitlines() if ln.strip()]
        else:
            names = [str(n) for n in file_list]
        missing = [n for n in names if os.path.basename(n) not in by_name]
        if missing:
            raise ValueError(
                f"file_list: {len(missing)} file(s) are not in {ann_path}, e.g. {missing[:3]}"
            )
        order = [by_name[os.path.basename(n)] for n in names]
    else:
        order = list(images)
    if limit is not None:
        order = order[: _check_limit(limit)]

    records: List[ImageRecord] = []
    skipped: Dict[str, List[str]] = {}
    for image_key in order:
        im = images[image_key]
        fname = str(im["file_name"])
        image_id = Path(fname).stem
        where = f"{ann_path} image {fname}"
        width = _positive_int(im["width"], where, "width")
        height = _positive_int(im["height"], where, "height")
        entries = per_image[image_key]
        arr = np.asarray([b for b, _ in entries], dtype=np.float64).reshape(-1, 4)
        arr, keep = _validate_boxes(arr, width, height, invalid_boxes, where)
        dropped += int((~keep).sum())
        classes = tuple(c for (_, c), k in zip(entries, keep) if k)
        arr = arr[keep]
        if arr.shape[0] == 0:
            skipped.setdefault("no_boxes", []).append(image_id)
            continue
        path = img_dir / fname
        if not path.is_file():
            alt = img_dir / os.path.basename(fname)
            if not alt.is_file():
                raise FileNotFoundError(f"COCO image not found: {path}")
            path = alt
        records.append(ImageRecord(image_id, path, width, height, arr, classes))
    return BoxDataset(name or ann_path.stem, records, skipped, dropped)


# --------------------------------------------------------------------------- folder
def read_folder(
    root: PathLike,
    boxes_file: str = "boxes.json",
    *,
    invalid_boxes: str = "raise",
    name: Optional[str] = None,
    limit: Optional[int] = None,
) -> BoxDataset:
    """Read a folder of images with one JSON file of boxes.

    ``<root>/<boxes_file>`` maps image paths (relative to ``root``) to lists of
    boxes ``[x_min, y_min, x_max, y_max]`` in 0-based continuous pixel
    coordinates (a box covering columns 0..9 has ``x_min=0, x_max=10``)::

        {"cat.jpg": [[12, 30, 200, 180]], "sub/dog.png": [[0, 0, 50, 40], [60, 10, 90, 70]]}

    Parameters
    ----------
    root : path
        The folder.
    boxes_file : str, default "boxes.json"
        Name of the JSON file inside ``root``.
    invalid_boxes : {"raise", "clip", "drop"}, default "raise"
        What to do with a box that leaves the image.
    name : str, optional
        Dataset name for tables; default: the folder name.
    limit : int, optional
        Keep only the first ``limit`` images (sorted by path).
    """
    from PIL import Image

    _check_policy(invalid_boxes)
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"root: directory not found: {base}")
    json_path = base / boxes_file
    data = _load_json(json_path, "boxes_file")
    if not isinstance(data, dict):
        raise ValueError(
            f"boxes_file: {json_path} must map image paths to lists of "
            f"[x_min, y_min, x_max, y_max], got a {type(data).__name__}"
        )
    keys = sorted(data)
    if limit is not None:
        keys = keys[: _check_limit(limit)]
    records: List[ImageRecord] = []
    skipped: Dict[str, List[str]] = {}
    dropped = 0
    for key in keys:
        where = f"{json_path} [{key!r}]"
        raw = data[key]
        try:
            arr = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: boxes must be a list of 4 numbers each, got {raw!r}") from None
        if arr.size == 0:
            skipped.setdefault("no_boxes", []).append(key)
            continue
        if arr.ndim != 2 or arr.shape[1] != 4 or not np.all(np.isfinite(arr)):
            raise ValueError(f"{where}: boxes must be a list of [x_min, y_min, x_max, y_max], got {raw!r}")
        path = base / key
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path} (listed in {json_path})")
        with Image.open(path) as img:
            width, height = img.size
        arr, keep = _validate_boxes(arr, width, height, invalid_boxes, where)
        dropped += int((~keep).sum())
        arr = arr[keep]
        if arr.shape[0] == 0:
            skipped.setdefault("no_boxes", []).append(key)
            continue
        records.append(ImageRecord(key, path, width, height, arr, ("",) * len(arr)))
    return BoxDataset(name or base.resolve().name, records, skipped, dropped)


def read_dataset(format: str, root: PathLike, **kwargs: object) -> BoxDataset:
    """Dispatch to :func:`read_voc`, :func:`read_coco` or :func:`read_folder`.

    For ``"coco"``, ``root`` is the images folder and ``annotations=`` is required.
    """
    if format == "voc":
        return read_voc(root, **kwargs)  # type: ignore[arg-type]
    if format == "coco":
        ann = kwargs.pop("annotations", None)
        if ann is None:
            raise ValueError("annotations: the COCO format needs the path of the instances JSON")
        return read_coco(ann, root, **kwargs)  # type: ignore[arg-type]
    if format == "folder":
        return read_folder(root, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"format: expected one of {list(DATASET_FORMATS)}, got {format!r}")


def _check_limit(limit: object) -> int:
    return check_int(limit, "limit", low=1)  # type: ignore[return-value]

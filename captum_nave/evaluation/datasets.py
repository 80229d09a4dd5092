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

Every image is keyed by the dataset's own id (``ImageRecord.image_id``): the
VOC id of the split file, the COCO image ``id``, the folder-relative path.
The key identifies the image's per-image results, so duplicates are refused
with an error naming both files. Image paths in the annotations must stay
inside the dataset folder unless ``allow_outside_root=True``.

Images without any (kept) box are skipped and counted in
``BoxDataset.skipped``. Boxes that leave their image are kept as annotated
by the VOC and COCO readers (as the authors' evaluation script does; counted
in ``BoxDataset.outside_boxes`` and warned about) and refused by the folder
reader; ``invalid_boxes`` chooses ``"keep"``, ``"raise"``, ``"clip"`` or
``"drop"``. Boxes with a NaN or infinite coordinate are refused unless
``invalid_boxes`` is ``"drop"`` or ``"clip"``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._annotations import (
    check_limit,
    BoxFilter,
    inside_root,
    load_json,
    no_duplicate_keys,
    parse_iscrowd,
    positive_int,
)
from .boxdata import BoxDataset, ImageRecord

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


# --------------------------------------------------------------------------- helpers
def load_image(record_or_path: Union[ImageRecord, PathLike]) -> np.ndarray:
    """Read an image as an RGB ``uint8`` array of shape (H, W, 3).

    Decoded by :func:`captum_nave.images.read_image_array` (16-bit and float files
    scaled by their real range, unconvertible modes refused, decompression-bomb limit),
    without applying the EXIF orientation: boxes are annotated on the stored pixel grid.
    When given an :class:`ImageRecord`, the size is checked against the annotation.
    """
    from captum_nave.images import read_image_array

    path = Path(record_or_path.path if isinstance(record_or_path, ImageRecord) else record_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    arr = np.rint(read_image_array(path, exif_orientation=False) * 255.0).astype(np.uint8)
    if isinstance(record_or_path, ImageRecord):
        rec = record_or_path
        if arr.shape[:2] != (rec.height, rec.width):
            raise ValueError(
                f"image {path}: the annotation says {rec.width}x{rec.height} (WxH) but the "
                f"file is {arr.shape[1]}x{arr.shape[0]}"
            )
    return arr


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
    width = positive_int(_xml_text(size, "width", where), where, "width")
    height = positive_int(_xml_text(size, "height", where), where, "height")
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
    invalid_boxes: str = "keep",
    limit: Optional[int] = None,
    allow_outside_root: bool = False,
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
    invalid_boxes : {"keep", "raise", "clip", "drop"}, default "keep"
        What to do with a box that leaves the image: keep it as annotated (the
        authors' script does; counted in ``outside_boxes`` with a warning),
        raise, clip it, or drop it. Boxes with NaN / inf coordinates raise
        unless ``"drop"`` or ``"clip"``.
    limit : int, optional
        Read only the first ``limit`` ids of the split.
    allow_outside_root : bool, default False
        Accept a ``<filename>`` (or an id) that points outside the dataset
        folder (absolute, or with ``..``).

    Returns
    -------
    BoxDataset
        Boxes as 0-based ``(xmin - 1, ymin - 1, xmax, ymax)``, keyed by the VOC id.

    Raises
    ------
    ValueError
        When the split file lists an id twice, or an annotation is malformed.
    """
    boxes_filter = BoxFilter(invalid_boxes)
    base = _voc_dir(Path(root), year)
    split_file = base / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        avail = sorted(p.stem for p in (base / "ImageSets" / "Main").glob("*.txt"))[:10]
        raise FileNotFoundError(
            f"split: image set file not found: {split_file}"
            + (f" (available: {', '.join(avail)})" if avail else "")
        )
    ids: List[str] = []
    line_of: Dict[str, int] = {}
    for lineno, ln in enumerate(split_file.read_text().splitlines(), start=1):
        if not ln.strip():
            continue
        image_id = ln.split()[0]
        first = line_of.setdefault(image_id, lineno)
        if first != lineno:
            raise ValueError(
                f"split: {split_file} lists the image id {image_id!r} twice (lines {first} and "
                f"{lineno}); each image must appear once (results are keyed by the id)"
            )
        ids.append(image_id)
    if limit is not None:
        ids = ids[: check_limit(limit)]
    records: List[ImageRecord] = []
    skipped: Dict[str, List[str]] = {}
    for image_id in ids:
        xml_path = inside_root(base / "Annotations", f"{image_id}.xml", where=f"split: {split_file}",
                               what="image id", allow_outside=allow_outside_root)
        if not xml_path.is_file():
            raise FileNotFoundError(f"VOC annotation not found: {xml_path}")
        filename, width, height, objects = _parse_voc_xml(xml_path)
        boxes, classes = [], []
        for name, difficult, truncated, (x1, y1, x2, y2) in objects:
            if (drop_difficult and difficult) or (drop_truncated and truncated):
                boxes_filter.drop()
                continue
            boxes.append([x1 - 1.0, y1 - 1.0, x2, y2])
            classes.append(name)
        arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        arr, keep = boxes_filter(arr, width, height, str(xml_path))
        classes = [c for c, k in zip(classes, keep) if k]
        if arr.shape[0] == 0:
            skipped.setdefault("no_boxes", []).append(image_id)
            continue
        img_path = inside_root(base / "JPEGImages", filename or f"{image_id}.jpg", where=str(xml_path),
                               what="<filename>", allow_outside=allow_outside_root)
        if not img_path.is_file():
            alt = base / "JPEGImages" / f"{image_id}.jpg"
            if alt.is_file():
                img_path = alt
            else:
                raise FileNotFoundError(f"VOC image not found: {img_path}")
        records.append(ImageRecord(image_id, img_path, width, height, arr, tuple(classes)))
    name = f"{base.name}-{split}"
    boxes_filter.warn(name)
    return BoxDataset(name, records, skipped, boxes_filter.dropped, boxes_filter.outside, "voc")


# --------------------------------------------------------------------------- COCO
def read_coco(
    annotations: PathLike,
    images_dir: PathLike,
    *,
    file_list: Optional[Union[PathLike, Sequence[str]]] = None,
    invalid_boxes: str = "keep",
    name: Optional[str] = None,
    limit: Optional[int] = None,
    allow_outside_root: bool = False,
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
        to ``file_name`` as given, else by base name; e.g. the COCO20k list). The
        order of the list is kept.
    invalid_boxes : {"keep", "raise", "clip", "drop"}, default "keep"
        What to do with a box that leaves the image (see :func:`read_voc`).
    name : str, optional
        Dataset name for tables; default: the JSON file's stem.
    limit : int, optional
        Keep only the first ``limit`` images.
    allow_outside_root : bool, default False
        Accept a ``file_name`` that points outside ``images_dir``.

    Returns
    -------
    BoxDataset
        Keyed by the COCO image ``id`` (as a string); ``iscrowd`` boxes dropped;
        boxes ``round([x, y, x + w, y + h])``.

    Raises
    ------
    ValueError
        On duplicate image ids, a file-list entry listed twice or matching
        several images, an ``iscrowd`` other than 0 / 1, a malformed box.
    """
    boxes_filter = BoxFilter(invalid_boxes)
    ann_path = Path(annotations)
    img_dir = Path(images_dir)
    if not img_dir.is_dir():
        raise FileNotFoundError(f"images_dir: directory not found: {img_dir}")
    data = load_json(ann_path, "annotations")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"annotations: {ann_path} has no 'images' list (not a COCO JSON)")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise ValueError(f"annotations: 'annotations' in {ann_path} must be a list")
    images: Dict[object, dict] = {}
    index_of: Dict[str, int] = {}
    by_path: Dict[str, object] = {}
    by_base: Dict[str, List[object]] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not {"id", "file_name", "width", "height"} <= set(im):
            raise ValueError(
                f"annotations: images[{i}] in {ann_path} needs id, file_name, width, height"
            )
        iid, fname = im["id"], im["file_name"]
        if isinstance(iid, bool) or not isinstance(iid, (int, str)) or not isinstance(fname, str) or not fname:
            raise ValueError(
                f"annotations: images[{i}] in {ann_path}: expected an integer or string id and a "
                f"file_name string, got id={iid!r}, file_name={fname!r}"
            )
        j = index_of.setdefault(str(iid), i)
        if j != i:
            raise ValueError(
                f"annotations: images[{j}] ({data['images'][j]['file_name']!r}) and images[{i}] "
                f"({fname!r}) in {ann_path} have the same id {iid!r}; COCO image ids must be unique"
            )
        images[iid] = im
        by_path.setdefault(os.path.normpath(fname), iid)
        by_base.setdefault(os.path.basename(fname), []).append(iid)
    per_image: Dict[object, List[Tuple[List[float], str]]] = {k: [] for k in images}
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
        if parse_iscrowd(ann.get("iscrowd", 0), f"annotations: annotations[{j}] in {ann_path}"):
            boxes_filter.drop()
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
        order = _match_file_list(names, images, by_path, by_base, ann_path)
    else:
        order = list(images)
    if limit is not None:
        order = order[: check_limit(limit)]

    records: List[ImageRecord] = []
    skipped: Dict[str, List[str]] = {}
    for image_key in order:
        im = images[image_key]
        fname = str(im["file_name"])
        image_id = str(image_key)
        where = f"{ann_path} image {fname}"
        width = positive_int(im["width"], where, "width")
        height = positive_int(im["height"], where, "height")
        entries = per_image[image_key]
        arr = np.asarray([b for b, _ in entries], dtype=np.float64).reshape(-1, 4)
        arr, keep = boxes_filter(arr, width, height, where)
        classes = tuple(c for (_, c), k in zip(entries, keep) if k)
        if arr.shape[0] == 0:
            skipped.setdefault("no_boxes", []).append(image_id)
            continue
        path = inside_root(img_dir, fname, where=f"annotations: {ann_path}", what="file_name",
                           allow_outside=allow_outside_root)
        if not path.is_file():
            alt = img_dir / os.path.basename(fname)
            if not alt.is_file():
                raise FileNotFoundError(f"COCO image not found: {path}")
            path = alt
        records.append(ImageRecord(image_id, path, width, height, arr, classes))
    name = name or ann_path.stem
    boxes_filter.warn(name)
    return BoxDataset(name, records, skipped, boxes_filter.dropped, boxes_filter.outside, "coco")


def _match_file_list(
    names: Sequence[str],
    images: Dict[object, dict],
    by_path: Dict[str, object],
    by_base: Dict[str, List[object]],
    ann_path: Path,
) -> List[object]:
    """COCO ids of a file list: exact ``file_name`` first, else a unique base name."""
    order: List[object] = []
    first: Dict[object, int] = {}
    missing: List[str] = []
    for pos, n in enumerate(names):
        iid = by_path.get(os.path.normpath(n))
        if iid is None:
            cands = by_base.get(os.path.basename(n), [])
            if len(cands) > 1:
                files = ", ".join(repr(images[c]["file_name"]) for c in cands)
                raise ValueError(
                    f"file_list: {n!r} matches several images of {ann_path} by its base name "
                    f"({files}); list it with its path as in file_name"
                )
            if not cands:
                missing.append(n)
                continue
            iid = cands[0]
        prev = first.setdefault(iid, pos)
        if prev != pos:
            raise ValueError(
                f"file_list: {names[prev]!r} (entry {prev + 1}) and {n!r} (entry {pos + 1}) are the "
                f"same image ({images[iid]['file_name']!r}, id {iid!r}); each image must be listed once"
            )
        order.append(iid)
    if missing:
        raise ValueError(f"file_list: {len(missing)} file(s) are not in {ann_path}, e.g. {missing[:3]}")
    return order


# --------------------------------------------------------------------------- folder
def read_folder(
    root: PathLike,
    boxes_file: str = "boxes.json",
    *,
    invalid_boxes: str = "raise",
    name: Optional[str] = None,
    limit: Optional[int] = None,
    allow_outside_root: bool = False,
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
    invalid_boxes : {"keep", "raise", "clip", "drop"}, default "raise"
        What to do with a box that leaves the image (see :func:`read_voc`).
    name : str, optional
        Dataset name for tables; default: the folder name.
    limit : int, optional
        Keep only the first ``limit`` images (sorted by path).
    allow_outside_root : bool, default False
        Accept image paths that point outside ``root``.

    Returns
    -------
    BoxDataset
        Keyed by the normalised relative path (``"./a.png"`` becomes ``"a.png"``).

    Raises
    ------
    ValueError
        When a path is listed twice (also as two spellings of one path).
    """
    from PIL import Image

    boxes_filter = BoxFilter(invalid_boxes)
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"root: directory not found: {base}")
    json_path = base / boxes_file
    data = load_json(json_path, "boxes_file", object_pairs_hook=no_duplicate_keys)
    if not isinstance(data, dict):
        raise ValueError(
            f"boxes_file: {json_path} must map image paths to lists of "
            f"[x_min, y_min, x_max, y_max], got a {type(data).__name__}"
        )
    spelled: Dict[str, str] = {}
    for key in data:
        norm = Path(os.path.normpath(key)).as_posix()
        prev = spelled.setdefault(norm, key)
        if prev != key:
            raise ValueError(
                f"boxes_file: {json_path} lists the image {norm!r} twice (as {prev!r} and {key!r})"
            )
    keys = sorted(spelled)
    if limit is not None:
        keys = keys[: check_limit(limit)]
    records: List[ImageRecord] = []
    skipped: Dict[str, List[str]] = {}
    for key in keys:
        where = f"{json_path} [{spelled[key]!r}]"
        raw = data[spelled[key]]
        try:
            arr = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: boxes must be a list of 4 numbers each, got {raw!r}") from None
        if arr.size == 0:
            skipped.setdefault("no_boxes", []).append(key)
            continue
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"{where}: boxes must be a list of [x_min, y_min, x_max, y_max], got {raw!r}")
        path = inside_root(base, spelled[key], where=str(json_path), what="image path",
                           allow_outside=allow_outside_root)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path} (listed in {json_path})")
        with Image.open(path) as img:
            width, height = img.size
        arr, _ = boxes_filter(arr, width, height, where)
        if arr.shape[0] == 0:
            skipped.setdefault("no_boxes", []).append(key)
            continue
        records.append(ImageRecord(key, path, width, height, arr, ("",) * len(arr)))
    name = name or base.resolve().name
    boxes_filter.warn(name)
    return BoxDataset(name, records, skipped, boxes_filter.dropped, boxes_filter.outside, "folder")


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

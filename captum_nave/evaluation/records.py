"""Per-image CorLoc records: how one is built, keyed, combined and resumed.

This is the one place that decides

* what a per-image record holds (:func:`image_record`); records are keyed by
  the dataset's own image id (``ImageRecord.image_id``, :data:`RECORD_KEYS`);
* what two records of the same image mean (:func:`combine_records`: identical
  copies, e.g. from overlapping shards or reruns, are kept once; copies that
  disagree are an error);
* whether a folder of records can be resumed with new settings
  (:func:`check_resumable`), including folders written by captum-nave 0.1.

Reading and writing the record files is the runner's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Sequence, Tuple

import numpy as np

from .corloc import STRATEGIES, CorLocProtocol, Selection
from .datasets import ImageRecord

__all__ = ["RECORD_KEYS", "image_record", "combine_records", "check_resumable", "strip_time"]

#: How records are keyed: by the dataset's own ids (0.1 used COCO file-name stems).
RECORD_KEYS = "dataset-ids"


def image_record(
    rec: ImageRecord,
    index: int,
    labels: Any,
    protocol: CorLocProtocol,
    strategies: Sequence[str] = STRATEGIES,
    *,
    method: str = "method",
) -> Tuple[Dict[str, Any], Dict[str, Selection]]:
    """Score one image's label map and build its per-image record.

    Parameters
    ----------
    rec : ImageRecord
        The image (its ``image_id`` keys the record).
    index : int
        Position of the image in the dataset (orders the reports; assigns shards).
    labels : array-like of shape (H', W')
        Segment ids at the (padded) image size, covering the image.
    protocol : CorLocProtocol
    strategies : sequence of {"inner", "outer"}
    method : str
        Method name, for error messages.

    Returns
    -------
    record : dict
        JSON-serialisable: ``image_id``, ``index``, ``width``, ``height``,
        ``labels_shape``, ``n_gt``, ``n_components`` and one
        :meth:`Selection.to_dict` per strategy (the caller adds ``seconds``).
    selections : dict
        ``{strategy: Selection}``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] < rec.height or labels.shape[1] < rec.width:
        raise ValueError(
            f"methods[{method!r}] returned labels of shape {labels.shape} for image "
            f"{rec.image_id!r} of size {rec.height}x{rec.width}: expected (H', W') "
            "covering the image (padding only at the bottom / right)"
        )
    sels = protocol.evaluate(labels, rec.boxes, strategies)
    record: Dict[str, Any] = {
        "image_id": rec.image_id,
        "index": index,
        "width": rec.width,
        "height": rec.height,
        "labels_shape": [int(labels.shape[0]), int(labels.shape[1])],
        "n_gt": int(len(rec.boxes)),
        "n_components": sels[strategies[0]].n_components,
    }
    for s in strategies:
        record[s] = sels[s].to_dict()
    return record, sels


def combine_records(
    sources: Iterable[Tuple[Path, Iterable[Mapping[str, Any]]]], method: str
) -> Dict[str, Dict[str, Any]]:
    """Records of one method from several files (shards, reruns), keyed by image id.

    A record seen twice is kept once when both copies agree (apart from the
    time taken); copies that disagree raise ``ValueError`` naming the file.
    """
    out: Dict[str, Dict[str, Any]] = {}
    for path, recs in sources:
        for r in recs:
            prev = out.get(r["image_id"])
            if prev is None:
                out[r["image_id"]] = dict(r)
            elif strip_time(prev) != strip_time(r):
                raise ValueError(
                    f"merge: conflicting records for image {r['image_id']!r}, method {method!r} "
                    f"in {path}"
                )
    return out


def check_resumable(out: Path, old: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Refuse to resume ``out`` (meta ``old``) with different settings (``meta``)."""
    if old.get("record_keys") != RECORD_KEYS and meta["format"] == "coco" and old.get("files"):
        raise ValueError(
            f"out_dir: {out} holds COCO results of captum-nave 0.1, keyed by file-name stems; "
            "images are now keyed by their COCO id (stems are not unique). Use another output "
            "folder or overwrite=True (CLI: --overwrite)"
        )
    for key in ("dataset", "num_shards", "strategies", "protocol"):
        was, now = old.get(key), meta[key]
        if key == "protocol" and isinstance(was, dict):
            was = CorLocProtocol.from_dict(dict(was)).to_dict()  # 0.1: the clean conventions
        if was != now:
            hint = ""
            if key == "protocol" and isinstance(was, dict) and was.get("conventions") != now.get("conventions"):
                hint = (f" (conventions {was.get('conventions')!r}: pass protocol="
                        f"{was.get('conventions')!r}, CLI: --protocol {was.get('conventions')}, to resume)")
            raise ValueError(
                f"out_dir: {out} holds results with a different {key} ({was!r}, now {now!r}){hint}; "
                "use another output folder or overwrite=True (CLI: --overwrite)"
            )
    for n in meta["method_order"]:
        if n in old.get("methods", {}) and old["methods"][n] != meta["methods"][n]:
            was, now = old["methods"][n], meta["methods"][n]
            diff = ", ".join(
                f"{k}: {was.get(k)!r} -> {now.get(k)!r}"
                for k in sorted(set(was) | set(now))
                if was.get(k) != now.get(k)
            )
            raise ValueError(
                f"out_dir: {out} holds results of method {n!r} with different settings "
                f"({diff}); use another output folder, another method name, or "
                "overwrite=True (CLI: --overwrite)"
            )


def strip_time(r: Mapping[str, Any]) -> Dict[str, Any]:
    """A record without its timing (the only field that differs between reruns)."""
    return {k: v for k, v in r.items() if k != "seconds"}

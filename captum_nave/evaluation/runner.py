"""Resumable, shardable CorLoc runner with CSV / Markdown reports.

Layout of an output folder::

    out/
      records/meta.shard-<i>-of-<n>.json        settings of shard i (written atomically)
      records/<method>.shard-<i>-of-<n>.jsonl   one JSON line per evaluated image
      per_image.csv                             every (dataset, method, image) row
      summary.md / summary.json                 CorLoc tables (one per dataset, and a
                                                comparison table across datasets)
      overlays/<method>/<image>.png             optional figures of the selected boxes

Each per-image record is appended with a single ``write`` of a complete line,
then flushed and ``fsync``-ed, as soon as it is computed. A resumed run reads
the records back, drops a trailing partial line left by a kill mid-write, and
skips the images already done. Summaries are written to a temporary file and
atomically renamed. Images are assigned to shard ``index % num_shards``; the
clustering seed is the same for every image, so a sharded run followed by
:func:`merge_runs` gives exactly the unsharded result.

Records are keyed by the dataset's own image ids (``ImageRecord.image_id``:
VOC id, COCO image id, folder-relative path; ``meta["record_keys"]``). The
per-image record is built by :func:`image_record` and records of one method
are combined by :func:`combine_records`, the one place that decides what a
duplicate means. Folders written by captum-nave 0.1 (no ``record_keys``, no
``conventions`` in the protocol) are resumed when their keys are unchanged
(VOC, folder datasets) and with ``protocol="clean"`` (the 0.1 conventions);
COCO folders of 0.1, keyed by file-name stems, are refused with a message.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .. import distributed as dist_utils
from ..data import IndexedDataset, iterate_items, loader_kwargs, shard_indices
from ..files import save_figure
from .corloc import STRATEGIES, CorLocProtocol, Selection, _check_strategies, as_protocol
from .datasets import BoxDataset, ImageRecord, load_image
from .record_files import _AppendLog, _atomic_write_text, _read_meta, _safe_name, _shard_tag, read_records
from .records import RECORD_KEYS, check_resumable, combine_records, image_record
from .summary import CorLocSummary, MethodScore, comparison_table, summarize_records

__all__ = [
    "MethodScore",
    "CorLocSummary",
    "run_corloc",
    "merge_runs",
    "read_records",
    "summarize_records",
    "comparison_table",
    "write_reports",
]

PathLike = Union[str, "os.PathLike[str]"]
RECORDS_DIR = "records"


# --------------------------------------------------------------------------- overlays
def _save_overlay(
    path: Path,
    image: np.ndarray,
    record: ImageRecord,
    selections: Mapping[str, Selection],
    title: str,
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    strategies = list(selections)
    fig = Figure(figsize=(4 * len(strategies), 4), dpi=100)
    FigureCanvasAgg(fig)
    colours = {"selection": "tab:blue", "outer": "tab:red", "gt": "lime"}
    for k, s in enumerate(strategies):
        ax = fig.add_subplot(1, len(strategies), k + 1)
        ax.imshow(image)
        for b in record.boxes:
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False,
                                   ec=colours["gt"], lw=2))
        sel = selections[s]
        if sel.outer_box is not None:
            b = sel.outer_box
            ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False,
                                   ec=colours["outer"], lw=2))
            if s == "inner" and sel.selection_box is not None:
                b = sel.selection_box
                ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False,
                                       ec=colours["selection"], lw=2, ls="--"))
        ax.set_title(f"{s}: IoU={sel.iou:.2f}" + (" ok" if sel.correct else ""), fontsize=9)
        ax.set_xlim(0, image.shape[1])
        ax.set_ylim(image.shape[0], 0)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)


# --------------------------------------------------------------------------- runner
def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=repr))


def run_corloc(
    dataset: BoxDataset,
    methods: Mapping[str, Any],
    out_dir: PathLike,
    *,
    strategies: Sequence[str] = STRATEGIES,
    protocol: Union[None, str, CorLocProtocol] = None,
    num_shards: Optional[int] = None,
    shard_index: Optional[int] = None,
    overwrite: bool = False,
    overlays: bool = False,
    progress: bool = False,
    fsync: bool = True,
    on_record: Optional[Callable[[str, Dict[str, Any]], None]] = None,
    workers: int = 0,
) -> CorLocSummary:
    """Evaluate segmenters on a box dataset with the CorLoc protocol.

    Parameters
    ----------
    dataset : BoxDataset
        From :func:`~captum_nave.evaluation.read_voc`, ``read_coco`` or ``read_folder``.
    methods : mapping of str to segmenter
        Name -> callable ``segmenter(image (H, W, 3) uint8) -> labels (H', W')``
        with a ``config()`` method (:class:`NaveSegmenter`, :class:`SlicSegmenter`, ...).
        Several models in one run give a comparison table.
    out_dir : path
        Output folder (created); see the module docstring for its layout.
    strategies : sequence of {"inner", "outer"}, default both
    protocol : CorLocProtocol or {"authors", "clean"}, optional
        The paper's constants with the authors' conventions by default (numbers
        comparable with the paper's); ``"clean"`` for the float conventions of
        captum-nave 0.1 (see :class:`CorLocProtocol`). Recorded in the run's
        metadata and in the summary table.
    num_shards, shard_index : int, optional
        Evaluate only the images with ``index % num_shards == shard_index``
        (default: all) and combine the shards with :func:`merge_runs`. Under
        ``torchrun`` (an initialised process group with several ranks) leave them
        unset: the shards are the ranks, and after every rank has finished, rank 0
        merges the records and writes the reports (the same code path, merged for you).
    overwrite : bool, default False
        Discard this shard's previous records instead of resuming from them.
    overlays : bool, default False
        Save a PNG per (method, image) with the ground truth and selected boxes.
    progress : bool, default False
        Show a tqdm progress bar on stderr.
    fsync : bool, default True
        ``fsync`` after every record (durability against power loss / kills).
    on_record : callable, optional
        Called as ``on_record(method, record)`` after each record is on disk.
    workers : int, default 0
        DataLoader worker processes decoding the images ahead of the segmenters
        (0: decode in this process). Records are written in dataset order whatever
        the number of workers.

    Returns
    -------
    CorLocSummary
        Scores of this shard's images, for ``methods`` and any other method
        evaluated into ``out_dir`` by earlier runs (the folder accumulates a
        comparison). With a single shard, ``per_image.csv``,
        ``summary.md`` and ``summary.json`` are written too. Under ``torchrun``,
        every rank returns the merged scores of the whole dataset.

    Raises
    ------
    ValueError
        When ``out_dir`` holds records made with different settings, or COCO
        records of captum-nave 0.1 (keyed by file-name stems).
    """
    if not isinstance(dataset, BoxDataset):
        raise TypeError(f"dataset: expected a BoxDataset, got {type(dataset).__name__}")
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError(f"methods: expected a non-empty mapping name -> segmenter, got {methods!r}")
    for name, m in methods.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"methods: names must be non-empty strings, got {name!r}")
        if not callable(m) or not callable(getattr(m, "config", None)):
            raise TypeError(
                f"methods[{name!r}]: expected a segmenter (callable with a config() method), "
                f"got {type(m).__name__}"
            )
    safe = {n: _safe_name(n) for n in methods}
    if len(set(safe.values())) != len(safe):
        raise ValueError(f"methods: names collide once made file-safe: {safe}")
    strategies = _check_strategies(strategies)
    protocol = as_protocol(protocol)
    num_shards, shard_index, launched = dist_utils.resolve_shards(num_shards, shard_index)
    loader_kwargs(workers, None)  # validates workers before any work
    if launched:
        return _run_on_every_rank(
            dataset, methods, out_dir, strategies=strategies, protocol=protocol, num_shards=num_shards,
            shard_index=shard_index, overwrite=overwrite, overlays=overlays, progress=progress, fsync=fsync,
            on_record=on_record, workers=workers,
        )
    return _run_shard(
        dataset, methods, out_dir, safe=safe, strategies=strategies, protocol=protocol, num_shards=num_shards,
        shard_index=shard_index, overwrite=overwrite, overlays=overlays, progress=progress, fsync=fsync,
        on_record=on_record, workers=workers,
    )


def _run_on_every_rank(dataset: BoxDataset, methods: Mapping[str, Any], out_dir: PathLike, **kw: Any) -> CorLocSummary:
    """torchrun: every rank evaluates its shard; after all have finished, rank 0 merges.

    An error on one rank is raised on every rank (no rank waits forever); the records
    written so far stay on disk, so rerunning the job resumes every rank's shard.
    """
    error: Optional[BaseException] = None
    try:
        _check_layout(out_dir, dataset.name, kw["num_shards"])
        _run_shard(dataset, methods, out_dir, safe={n: _safe_name(n) for n in methods}, **kw)
    except Exception as exc:  # told to every rank by check_all_ok, then re-raised here
        error = exc
    dist_utils.check_all_ok(error)
    summaries = dist_utils.run_on_main(merge_runs, out_dir)
    for s in summaries:
        if s.dataset == dataset.name:
            return s
    raise RuntimeError(f"merge: no records of dataset {dataset.name!r} in {out_dir}")  # pragma: no cover


def _check_layout(out_dir: PathLike, name: str, num_shards: int) -> None:
    """Refuse a folder whose records of ``name`` were split into another number of shards.

    A job restarted with another number of processes would not find its records (they
    are per shard) and its merge would mix two splits.
    """
    rec_dir = Path(out_dir) / RECORDS_DIR
    for mp in sorted(rec_dir.glob("meta.shard-*-of-*.json")) if rec_dir.is_dir() else []:
        try:
            meta = json.loads(mp.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # reported by the shard that owns it
        if meta.get("dataset") == name and meta.get("num_shards") != num_shards:
            raise ValueError(
                f"out_dir: {out_dir} holds records of {name!r} split into {meta.get('num_shards')} shards "
                f"({mp.name}); restart with {meta.get('num_shards')} processes to resume them, or use "
                "another output folder"
            )


def _run_shard(
    dataset: BoxDataset,
    methods: Mapping[str, Any],
    out_dir: PathLike,
    *,
    safe: Mapping[str, str],
    strategies: Tuple[str, ...],
    protocol: CorLocProtocol,
    num_shards: int,
    shard_index: int,
    overwrite: bool,
    overlays: bool,
    progress: bool,
    fsync: bool,
    on_record: Optional[Callable[[str, Dict[str, Any]], None]],
    workers: int,
) -> CorLocSummary:
    """Evaluate shard ``shard_index`` of ``num_shards`` into ``out_dir`` (resuming its records)."""
    out = Path(out_dir)
    rec_dir = out / RECORDS_DIR
    rec_dir.mkdir(parents=True, exist_ok=True)
    tag = _shard_tag(shard_index, num_shards)
    indices = shard_indices(len(dataset), num_shards, shard_index)
    meta = {
        "dataset": dataset.name,
        "format": dataset.format,
        "record_keys": RECORD_KEYS,
        "n_dataset": len(dataset),
        "n_skipped": dataset.n_skipped,
        "n_outside_boxes": dataset.outside_boxes,
        "num_shards": num_shards,
        "shard_index": shard_index,
        "n_shard": len(indices),
        "strategies": list(strategies),
        "protocol": protocol.to_dict(),
        "methods": {n: _jsonable(m.config()) for n, m in methods.items()},
        "method_order": list(methods),
        "files": {n: f"{safe[n]}.{tag}.jsonl" for n in methods},
    }
    meta_path = rec_dir / f"meta.{tag}.json"
    if overwrite:
        for n in methods:
            (rec_dir / meta["files"][n]).unlink(missing_ok=True)
    elif meta_path.is_file():
        old = _read_meta(meta_path)
        check_resumable(out, old, meta)
        # keep methods of earlier runs in the meta so that merges still find them
        for n, cfg in old.get("methods", {}).items():
            if n not in meta["methods"]:
                meta["methods"][n] = cfg
                meta["files"][n] = old["files"][n]
        earlier = [n for n in old.get("method_order", []) if n in meta["methods"]]
        meta["method_order"] = earlier + [n for n in methods if n not in earlier]
    _atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True))

    done: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for n in methods:
        path = rec_dir / meta["files"][n]
        done[n] = combine_records([(path, read_records(path, repair=True))], n)
    logs = {n: _AppendLog(rec_dir / meta["files"][n], fsync=fsync) for n in methods}
    bar = None
    try:
        from tqdm.auto import tqdm

        # only the images some method still lacks are decoded (ahead, by the DataLoader's workers)
        todo_indices = [i for i in indices if any(dataset[i].image_id not in done[n] for n in methods)]
        show = progress and dist_utils.is_main_process()
        bar = tqdm(total=len(indices), initial=len(indices) - len(todo_indices), desc=f"CorLoc {dataset.name}",
                   unit="img", disable=not show)
        for idx, image in iterate_items(IndexedDataset(dataset.records, load=load_image), todo_indices,
                                        workers=workers):
            bar.update(1)
            rec = dataset[idx]
            todo = [n for n in methods if rec.image_id not in done[n]]
            for n in todo:
                t0 = time.perf_counter()
                labels = methods[n](image)
                record, sels = image_record(rec, idx, labels, protocol, strategies, method=n)
                record["seconds"] = round(time.perf_counter() - t0, 4)
                logs[n].append(record)
                done[n][rec.image_id] = record
                if overlays:
                    _save_overlay(
                        out / "overlays" / safe[n] / _overlay_name(rec.image_id),
                        image, rec, sels, f"{n} - {rec.image_id}",
                    )
                if on_record is not None:
                    on_record(n, record)
    finally:
        if bar is not None:
            bar.close()
        for log in logs.values():
            log.close()

    wanted = {dataset[i].image_id for i in indices}
    # methods evaluated into this folder by earlier runs are reported too
    for n in meta["method_order"]:
        if n not in done:
            path = rec_dir / meta["files"][n]
            done[n] = combine_records([(path, read_records(path))], n)
    records = {
        n: [r for r in done[n].values() if r["image_id"] in wanted] for n in meta["method_order"]
    }
    for n in records:
        records[n].sort(key=lambda r: r["index"])
    summary = summarize_records(
        records,
        dataset=dataset.name,
        strategies=strategies,
        protocol=protocol.to_dict(),
        n_expected=len(indices),
        n_skipped=dataset.n_skipped,
        n_outside_boxes=dataset.outside_boxes,
    )
    if num_shards == 1:
        write_reports(out, [summary], {dataset.name: records})
    return summary


def _overlay_name(image_id: str) -> str:
    """File name of an overlay: the id made file-safe, plus a short hash when that changed it."""
    safe = _safe_name(image_id)
    if safe != image_id:
        safe += "-" + hashlib.sha1(image_id.encode("utf-8")).hexdigest()[:8]
    return f"{safe}.png"


# --------------------------------------------------------------------------- merge
def merge_runs(
    run_dirs: Union[PathLike, Sequence[PathLike]],
    out_dir: Optional[PathLike] = None,
) -> List[CorLocSummary]:
    """Merge shard records (possibly from several folders) and write the reports.

    Records of the same dataset are combined across shards; different datasets
    give one summary each and a cross-dataset comparison table.

    Parameters
    ----------
    run_dirs : path or sequence of paths
        Output folders of :func:`run_corloc` (each with a ``records/`` folder).
    out_dir : path, optional
        Where to write ``per_image.csv``, ``summary.md``, ``summary.json``;
        default: the first of ``run_dirs``.

    Returns
    -------
    list of CorLocSummary
        One per dataset, in the order first seen.

    Raises
    ------
    ValueError
        When shards of one dataset disagree on settings, or records conflict.
    """
    dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, os.PathLike)) else [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("run_dirs: expected at least one folder, got none")
    metas: List[Tuple[Path, Dict[str, Any]]] = []
    for d in dirs:
        rd = d / RECORDS_DIR
        found = sorted(rd.glob("meta.shard-*-of-*.json")) if rd.is_dir() else []
        if not found:
            raise FileNotFoundError(f"run_dirs: no CorLoc records in {d} (expected {rd}/meta.shard-*.json)")
        for mp in found:
            metas.append((mp.parent, _read_meta(mp)))

    by_dataset: Dict[str, List[Tuple[Path, Dict[str, Any]]]] = {}
    for rd, meta in metas:
        by_dataset.setdefault(meta["dataset"], []).append((rd, meta))

    summaries: List[CorLocSummary] = []
    all_records: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    for name, group in by_dataset.items():
        for _, meta in group:  # 0.1 metas: the clean conventions
            meta["protocol"] = CorLocProtocol.from_dict(dict(meta["protocol"])).to_dict()
        ref = group[0][1]
        schemes = {meta.get("record_keys") for _, meta in group}
        if len(schemes) > 1 and any(meta.get("format") == "coco" for _, meta in group):
            raise ValueError(
                f"merge: shards of {name!r} were keyed differently (COCO file-name stems by "
                "captum-nave 0.1, COCO ids since); rerun the 0.1 shards"
            )
        for rd, meta in group[1:]:
            for key in ("num_shards", "strategies", "protocol"):
                if meta[key] != ref[key]:
                    raise ValueError(
                        f"merge: shards of {name!r} disagree on {key}: {ref[key]!r} vs "
                        f"{meta[key]!r} ({rd})"
                    )
        method_cfg: Dict[str, Any] = {}
        for rd, meta in group:
            for m in meta.get("method_order", sorted(meta["methods"])):
                cfg = meta["methods"][m]
                if m in method_cfg and method_cfg[m] != cfg:
                    raise ValueError(f"merge: method {m!r} of {name!r} has different settings across shards ({rd})")
                method_cfg.setdefault(m, cfg)
        shard_counts: Dict[int, int] = {}
        for _, meta in group:
            shard_counts[meta["shard_index"]] = max(shard_counts.get(meta["shard_index"], 0), meta["n_shard"])
        num_shards = ref["num_shards"]
        missing = sorted(set(range(num_shards)) - set(shard_counts))
        if missing:
            warnings.warn(
                f"merge: dataset {name!r} is missing shard(s) {missing} of {num_shards}",
                RuntimeWarning,
                stacklevel=2,
            )
        n_expected = sum(shard_counts.values()) if not missing else None
        records = {
            m: combine_records(
                ((rd / meta["files"][m], read_records(rd / meta["files"][m]))
                 for rd, meta in group if m in meta["files"]),
                m,
            )
            for m in method_cfg
        }
        ordered = {m: sorted(v.values(), key=lambda r: r["index"]) for m, v in records.items()}
        summary = summarize_records(
            ordered,
            dataset=name,
            strategies=ref["strategies"],
            protocol=ref["protocol"],
            n_expected=n_expected,
            n_skipped=ref.get("n_skipped", 0),
            n_outside_boxes=ref.get("n_outside_boxes", 0),
        )
        if missing:
            summary.complete = False
        summaries.append(summary)
        all_records[name] = ordered
    write_reports(Path(out_dir) if out_dir is not None else dirs[0], summaries, all_records)
    return summaries


# --------------------------------------------------------------------------- reports
def _csv_rows(
    dataset: str, method: str, recs: Iterable[Mapping[str, Any]], strategies: Sequence[str]
) -> Iterable[Dict[str, Any]]:
    for r in recs:
        row: Dict[str, Any] = {
            "dataset": dataset,
            "method": method,
            "image_id": r["image_id"],
            "index": r["index"],
            "width": r["width"],
            "height": r["height"],
            "n_gt": r["n_gt"],
            "n_components": r["n_components"],
            "seconds": r["seconds"],
        }
        for s in strategies:
            sel = r[s]
            row[f"{s}_correct"] = int(bool(sel["correct"]))
            row[f"{s}_iou"] = f"{sel['iou']:.6f}"
            row[f"{s}_selection_iou"] = f"{sel['selection_iou']:.6f}"
            row[f"{s}_cluster"] = sel["cluster"]
            row[f"{s}_gt_index"] = sel["gt_index"]
            box = sel["outer_box"] or [""] * 4
            for k, v in zip(("x_min", "y_min", "x_max", "y_max"), box):
                row[f"{s}_outer_{k}"] = v
        yield row


def write_reports(
    out_dir: PathLike,
    summaries: Sequence[CorLocSummary],
    records: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
) -> Dict[str, Path]:
    """Write ``per_image.csv``, ``summary.md`` and ``summary.json`` (atomically).

    Parameters
    ----------
    out_dir : path
    summaries : sequence of CorLocSummary
        One per dataset.
    records : mapping dataset -> method -> records
        Per-image records for the CSV.

    Returns
    -------
    dict
        ``{"csv": path, "markdown": path, "json": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    strategies_all: List[str] = []
    for s in summaries:
        for st in s.strategies:
            if st not in strategies_all:
                strategies_all.append(st)
    buf = io.StringIO()
    writer: Optional[csv.DictWriter] = None
    for s in summaries:
        for m in s.methods:
            for row in _csv_rows(s.dataset, m, records.get(s.dataset, {}).get(m, []), strategies_all):
                if writer is None:
                    writer = csv.DictWriter(buf, fieldnames=list(row), lineterminator="\n")
                    writer.writeheader()
                writer.writerow(row)
    if writer is None:
        buf.write("dataset,method,image_id\n")
    paths = {"csv": out / "per_image.csv", "markdown": out / "summary.md", "json": out / "summary.json"}
    _atomic_write_text(paths["csv"], buf.getvalue())
    md = ["# CorLoc results", ""]
    for s in summaries:
        md.append(s.to_markdown())
    if len(summaries) > 1 or any(len(s.methods) > 1 for s in summaries):
        md += ["## Comparison (CorLoc %, rows: method (selection strategy), columns: datasets)", ""]
        md.append(comparison_table(summaries))
    _atomic_write_text(paths["markdown"], "\n".join(md))
    _atomic_write_text(
        paths["json"],
        json.dumps([s.to_dict() for s in summaries], indent=2, sort_keys=True, default=repr),
    )
    return paths

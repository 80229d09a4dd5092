"""The CorLoc runner's files: record logs (appended line by line, fsynced), run metadata.

A run's records are JSON lines appended with one ``os.write`` each; a line cut by a kill is
dropped (or repaired) when read. Metadata and reports are written atomically
(:mod:`captum_nave.files`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

from ..files import write_text

PathLike = Union[str, "os.PathLike[str]"]
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _safe_name(name: str) -> str:
    safe = _SAFE.sub("_", name).strip("._") or "method"
    return safe


def _shard_tag(index: int, num: int) -> str:
    return f"shard-{index}-of-{num}"


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)


def _read_meta(path: Path) -> Dict[str, Any]:
    """A run's ``meta.*.json``; a damaged file raises ValueError naming it."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path}: damaged run metadata, not valid JSON ({' '.join(str(exc).split())}); "
            "remove the file to start this output folder afresh, or rerun with overwrite=True "
            "(CLI: --overwrite)"
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: damaged run metadata, expected a JSON object, got a {type(meta).__name__}")
    return meta


def read_records(path: PathLike, *, repair: bool = False) -> List[Dict[str, Any]]:
    """Read a JSON-lines records file written by :func:`run_corloc`.

    A trailing partial line (a kill in the middle of a write) is ignored, and
    removed from the file when ``repair`` is True. A malformed complete line
    raises ``ValueError`` naming the file and line.
    """
    p = Path(path)
    if not p.is_file():
        return []
    data = p.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        warnings.warn(
            f"{p}: ignoring a partial last line of {len(data) - end} bytes "
            "(interrupted write); that image will be recomputed",
            RuntimeWarning,
            stacklevel=2,
        )
        if repair:
            with open(p, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
    out: List[Dict[str, Any]] = []
    for lineno, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: line {lineno} is not valid JSON ({exc}); the file is corrupt") from None
        if not isinstance(rec, dict) or "image_id" not in rec:
            raise ValueError(f"{p}: line {lineno} is not a CorLoc record")
        out.append(rec)
    return out


class _AppendLog:
    """Append complete lines with one ``os.write`` each, then ``fsync``."""

    def __init__(self, path: Path, fsync: bool = True) -> None:
        # 0o666: the user's umask decides the permissions, as for every output
        self.fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self.fsync = fsync

    def append(self, record: Mapping[str, Any]) -> None:
        data = (json.dumps(record, sort_keys=True, allow_nan=True) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        if self.fsync:
            os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)

"""ImageNet-1k class names (from timm's bundled ImageNet metadata)."""

from __future__ import annotations

import difflib
import functools
from typing import Any, Dict, List

from .._validation import check_int

__all__ = ["imagenet_class_index", "imagenet_class_name"]


@functools.lru_cache(maxsize=1)
def _imagenet_info() -> Any:
    from timm.data import ImageNetInfo

    return ImageNetInfo()


def imagenet_class_name(index: int) -> str:
    """Short English name of ImageNet-1k class ``index`` (0..999), e.g. 281 -> "tabby"."""
    index = check_int(index, "index", low=0, high=999)
    return _imagenet_info().index_to_description(index).split(",")[0].strip()


def imagenet_class_index(name: str) -> int:
    """ImageNet-1k class index of an English class name, e.g. "tabby cat" -> 281.

    Any of a class's synonyms matches, case and surrounding spaces ignored.

    Raises
    ------
    ValueError
        When no class has that name (the closest names are listed), or when the
        name is shared by several classes (their indices are listed: pass one).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name: expected an ImageNet-1k class name such as 'tabby cat', got {name!r}")
    info = _imagenet_info()
    key = " ".join(name.lower().split())
    names: Dict[str, List[int]] = {}
    for idx in range(1000):
        for syn in info.index_to_description(idx).split(","):
            syn = " ".join(syn.lower().split())
            if syn:
                names.setdefault(syn, []).append(idx)
    hits = sorted(set(names.get(key, [])))
    if len(hits) == 1:
        return hits[0]
    if hits:
        desc = "; ".join(f"{i} ({info.index_to_description(i)})" for i in hits)
        raise ValueError(f"name: {name!r} names several ImageNet-1k classes, pass an index: {desc}")
    close = [n for n in names if key in n.split()][:5] or difflib.get_close_matches(key, list(names), n=5, cutoff=0.6)
    hint = f"; closest: {', '.join(repr(c) for c in close)}" if close else ""
    raise ValueError(f"name: expected an ImageNet-1k class name, got {name!r}{hint}")



"""Helpers shared by the subcommands: errors, output paths, image inputs.

Nothing here imports torch: the checks run before any heavy import, so a user mistake
is reported in a fraction of a second.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, NoReturn, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

__all__ = [
    "CLIError",
    "IMAGE_EXTENSIONS",
    "ImageInput",
    "fail",
    "warn",
    "check_out_dir",
    "check_out_file",
    "collect_images",
    "image_names",
    "output_stems",
    "ImageLoader",
]

#: File extensions read from folders (non-recursive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


class CLIError(Exception):
    """A user mistake: printed as one line without a traceback (exit code 2)."""


def fail(msg: str) -> NoReturn:
    """Stop with a one-line user error (exit code 2)."""
    raise CLIError(msg)


def warn(msg: str) -> None:
    """One warning line on stderr (the CLI's own messages; the library uses ``warnings``)."""
    sys.stderr.write(f"captum-nave: warning: {msg}\n")


# --------------------------------------------------------------------------- output paths
def _nearest_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _check_creatable(path: str, option: str, what: str) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a writable folder."""
    anc = _nearest_existing(path)
    if not os.path.isdir(anc):
        fail(f"{option}: cannot create {what} {path!r}: {anc!r} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        fail(f"{option}: cannot create {what} {path!r}: folder {anc!r} is not writable")


def check_out_dir(path: str, option: str = "--out") -> None:
    """Fail unless ``path`` is a writable folder or can be created (nothing is created)."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            fail(f"{option}: {path!r} exists and is not a folder; give a folder name")
        if not os.access(path, os.W_OK | os.X_OK):
            fail(f"{option}: folder {path!r} is not writable")
        return
    _check_creatable(path, option, "folder")


def check_out_file(path: str, option: str = "--out", example: str = "report.html") -> None:
    """Fail unless ``path`` can be written as a file (missing folders are created later)."""
    if os.path.isdir(path):
        fail(f"{option}: {path!r} is a folder; give a file name such as {os.path.join(path, example)!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder):
        if not os.access(folder, os.W_OK | os.X_OK):
            fail(f"{option}: folder {folder!r} is not writable")
        return
    _check_creatable(folder, option, "folder")


# --------------------------------------------------------------------------- image inputs
@dataclass(frozen=True)
class ImageInput:
    """An image file to process: ``found_in`` is the folder it was listed from, if any."""

    path: str
    found_in: Optional[str] = None


def collect_images(inputs: Sequence[str], option: str = "IMAGE") -> List[ImageInput]:
    """Image files from files and folders (folders non-recursive, sorted), duplicates removed.

    A named file must exist (it is checked, not read); a folder must hold at least one
    file with an image extension (:data:`IMAGE_EXTENSIONS`).
    """
    out: List[ImageInput] = []
    seen = set()
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f) for f in os.listdir(item)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, f))
            )
            if not found:
                fail(f"folder {item!r} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
            entries = [ImageInput(f, item) for f in found]
        elif os.path.isfile(item):
            entries = [ImageInput(item)]
        elif os.path.exists(item):
            fail(f"{option}: {item!r} is neither an image file nor a folder")
        else:
            fail(f"image file {item!r} does not exist" if os.path.splitext(item)[1]
                 else f"image file or folder {item!r} does not exist")
        for e in entries:
            key = os.path.realpath(e.path)
            if key not in seen:
                seen.add(key)
                out.append(e)
    return out


def image_names(paths: Sequence[str]) -> List[str]:
    """Display names: the file name without extension, or the path as given where two
    images share that name (``a/x.jpg`` and ``b/x.jpg`` stay distinguishable)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    counts: Dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else p for s, p in zip(stems, paths)]


def output_stems(names: Sequence[str]) -> List[str]:
    """Safe, unique file stems for output files (``x``, ``x_1``, ...)."""
    used = set()
    out = []
    for n in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(n))[0]) or "image"
        stem, i = base, 0
        while stem in used:
            i += 1
            stem = f"{base}_{i}"
        used.add(stem)
        out.append(stem)
    return out


class ImageLoader:
    """Load images for a run: named files must load, files found in folders are skipped.

    An image listed from a folder that cannot be used (over Pillow's decompression-bomb
    limit, unreadable, a mode that cannot be converted faithfully) is skipped with a
    warning line and counted; a file named on the command line stops the run with a
    one-line error instead.
    """

    def __init__(self) -> None:
        self.skipped: List[Tuple[str, str]] = []

    def load(self, item: ImageInput) -> Optional["Tensor"]:
        """The image as (3, H, W) in [0, 1], or None when it is skipped."""
        from captum_nave.images import load_image

        try:
            return load_image(item.path)
        except (ValueError, OSError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            msg = msg[len("path: "):] if msg.startswith("path: ") else msg
            if item.found_in is None:
                fail(msg)
            self.skipped.append((item.path, msg))
            warn(f"skipped {msg}")
            return None

    def usable(self, items: Iterable[ImageInput]) -> List[ImageInput]:
        """The items that load (each is read once; the others are skipped and counted)."""
        return [it for it in items if self.load(it) is not None]

    def summary(self, total: int) -> None:
        """Print how many images were skipped (nothing when none was)."""
        self.summary_of(len(self.skipped), total)

    @staticmethod
    def summary_of(n_skipped: int, total: int) -> None:
        """Print that ``n_skipped`` of ``total`` images were skipped (loads counted elsewhere:
        DataLoader workers, other ranks)."""
        if n_skipped:
            warn(f"skipped {n_skipped} of {total} images found in folders (see above)")


# --------------------------------------------------------------------------- messages
def block_names(model: Any) -> List[str]:
    """Names of a model's blocks, for suggestions: a ViT's transformer blocks, the items of
    a top-level ``blocks`` / ``stages`` / ``features`` sequence, or ResNet's ``layerN``."""
    from torch import nn

    from captum_nave.activations import find_blocks

    found = find_blocks(model)
    if found is not None:
        path, container = found
        return [f"{path}.{n}" for n, _ in container.named_children()]
    names: List[str] = []
    for n, m in model.named_children():
        if n in ("blocks", "stages", "features") and isinstance(m, (nn.Sequential, nn.ModuleList)):
            names += [f"{n}.{i}" for i, _ in m.named_children()]
        elif re.fullmatch(r"layer\d+", n):
            names.append(n)
    return names


def _abbreviate(names: Sequence[str], limit: int = 8) -> str:
    if len(names) <= limit:
        return " ".join(names)
    return " ".join(list(names[:3]) + ["...", names[-1]]) + f" ({len(names)} blocks)"


def layers_error(exc: BaseException, model: Any, info: Dict[str, Any], option: str = "--layers") -> str:
    """One-line ``--layers`` error that suggests the model's default layers and block
    names first, then the library's close matches."""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    head, _, close = msg.partition("; closest valid names: ")
    head = head[len("layers: "):] if head.startswith("layers: ") else head
    hints = []
    defaults = [str(v) for v in info.get("default_layers") or []]
    if defaults:
        hints.append(f"default layers: {' '.join(defaults)}")
    blocks = block_names(model)
    if blocks:
        hints.append(f"blocks: {_abbreviate(blocks)}")
    if close:
        hints.append(f"close names: {close}")
    return f"{option}: {head}" + (f"; {'; '.join(hints)}" if hints else "")

"""Writing output files safely: temporary file in the same folder, then rename.

Every file captum-nave writes (figures, CSV, NPZ, HTML, JSON, Markdown) goes through
:func:`atomic_write` (or :func:`write_text` / :func:`save_figure`): the data is written to
a hidden temporary file next to the target, flushed to disk and renamed over the target
in one step, so a reader never sees a truncated file and an interrupted run (an error,
Ctrl-C, a full disk) leaves the previous file untouched and no temporary file behind.
Files are created with the permissions of the user's umask (``0o666 & ~umask``, as
``open()`` does), never the ``0o600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from typing import IO, Any, Iterator, Optional, Union

__all__ = ["atomic_write", "write_text", "save_figure", "temporary_name"]

PathLike = Union[str, "os.PathLike[str]"]

#: Prefix and suffix of temporary files (hidden, recognisable, removed on every error path).
_TMP_PREFIX, _TMP_SUFFIX = ".", ".tmp"


def temporary_name(path: PathLike) -> str:
    """A fresh hidden temporary path in the folder of ``path`` (``.NAME.RANDOM.tmp``)."""
    p = os.fspath(path)
    folder, name = os.path.split(p)
    return os.path.join(folder, f"{_TMP_PREFIX}{name}.{secrets.token_hex(4)}{_TMP_SUFFIX}")


def _check_target(p: str, param: str) -> None:
    if os.path.isdir(p):
        raise IsADirectoryError(errno.EISDIR, f"{param}: {p!r} is a folder, expected a file name", p)
    folder = os.path.dirname(p) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"{param}: folder {folder!r} of {p!r} does not exist", folder)


@contextlib.contextmanager
def atomic_write(
    path: PathLike,
    mode: str = "w",
    *,
    encoding: Optional[str] = "utf-8",
    newline: Optional[str] = None,
    fsync: bool = True,
    param: str = "path",
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; rename it to ``path`` on success.

    Parameters
    ----------
    path : str or path-like
        The file to (over)write. Its folder must exist.
    mode : {"w", "wb"}, default "w"
        Text or binary.
    encoding, newline : str, optional
        As for :func:`open` (text mode only; default UTF-8).
    fsync : bool, default True
        Flush the data to disk before the rename (a crash then leaves the old or the new
        file, never an empty one).
    param : str, default "path"
        Name of the parameter in error messages (e.g. ``"--out"``).

    Yields
    ------
    file object
        Write to it inside the ``with`` block. If the block raises (any exception,
        including ``KeyboardInterrupt``), the temporary file is removed, ``path`` is left
        as it was, and the exception propagates.

    Raises
    ------
    IsADirectoryError
        ``path`` is a folder.
    FileNotFoundError
        The folder of ``path`` does not exist.

    Examples
    --------
    >>> with atomic_write("table.csv", newline="") as fh:
    ...     fh.write("a,b\\n1,2\\n")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode: expected 'w' or 'wb', got {mode!r}")
    p = os.fspath(path)
    _check_target(p, param)
    tmp: Optional[str] = None
    fh: Optional[IO[Any]] = None
    try:
        while True:
            tmp = temporary_name(p)
            try:
                # 0o666: the umask decides the final permissions, as for open()
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
                break
            except FileExistsError:  # pragma: no cover - 32 random bits collided
                continue
        if mode == "wb":
            fh = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        yield fh
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
        fh.close()
        os.replace(tmp, p)
        tmp = None
    finally:
        if fh is not None and not fh.closed:
            with contextlib.suppress(OSError):
                fh.close()
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_text(path: PathLike, text: str, *, param: str = "path", newline: Optional[str] = "") -> str:
    """Write ``text`` to ``path`` atomically (UTF-8; newlines as given). Returns the path."""
    with atomic_write(path, "w", newline=newline, param=param) as fh:
        fh.write(text)
    return os.fspath(path)


def save_figure(fig: Any, path: PathLike, *, param: str = "path", **savefig_kwargs: Any) -> str:
    """``fig.savefig(path, **savefig_kwargs)`` written atomically; the format is the suffix's.

    Returns
    -------
    str
        The path written.
    """
    p = os.fspath(path)
    fmt = savefig_kwargs.pop("format", None) or (os.path.splitext(p)[1][1:].lower() or "png")
    with atomic_write(p, "wb", param=param) as fh:
        fig.savefig(fh, format=fmt, **savefig_kwargs)
    return p

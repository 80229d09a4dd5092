"""Reading a ``ConceptClusters`` file (``.npz``) defensively.

The file may come from anywhere, so nothing in it is trusted: the zip directory and
the ``.npy`` headers are checked (names, dtypes, shapes, sizes against a cap) before
any array data is inflated, object arrays (pickles) are never loaded, the metadata is
validated field by field, and the centres must be finite. Every problem is reported as
a ``ValueError`` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Dict, Tuple, Union

import numpy as np

from ._validation import check_int

__all__ = ["FORMAT", "VERSION", "LOAD_LIMIT_BYTES", "METADATA_LIMIT_BYTES", "read_concepts_file"]

FORMAT = "captum-nave/concepts"
VERSION = 1

#: Default cap on the centres (and on the counts) of a concepts file, in bytes: 256 MiB
#: holds e.g. 4096 concepts x 8192 features in float64. ``ConceptClusters.load(...,
#: max_bytes=...)`` raises it.
LOAD_LIMIT_BYTES = 2**28

#: Cap on the JSON metadata member, in bytes.
METADATA_LIMIT_BYTES = 2**20

_MEMBERS = ("cluster_centers", "counts", "metadata")
_HEADER_SLACK = 2**16  # an .npy header is at most 10,000 bytes (numpy's own limit)
_REQUIRED = ("format", "version", "n_clusters", "n_features_in", "layer_dims", "layer_names", "resolution", "n_steps")


def _human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


class _Bad(Exception):
    """A problem of the file; turned into a ValueError naming the file."""


def read_concepts_file(
    path: Union[str, "os.PathLike[str]"], max_bytes: int = LOAD_LIMIT_BYTES
) -> Tuple[Dict[str, Any], np.ndarray, np.ndarray]:
    """Read and check a concepts file.

    Parameters
    ----------
    path : str or PathLike
    max_bytes : int
        Largest centres (and counts) array accepted, in bytes.

    Returns
    -------
    metadata : dict
        Validated: ``n_clusters`` K, ``n_features_in`` D, ``layer_dims``, ``layer_names``,
        ``resolution``, ``n_steps``.
    centers : ndarray of shape (K, D), float64, finite
    counts : ndarray of shape (K,), float64, finite and >= 0

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Anything else: not a zip archive, damaged, wrong members, object arrays, wrong
        dtypes or shapes, sizes over the cap, invalid metadata, non-finite values.
    """
    name = os.fspath(path)
    limit = check_int(max_bytes, "max_bytes", low=1)
    if not os.path.exists(name):
        raise FileNotFoundError(f"path: {name!r} does not exist")
    if os.path.isdir(name):
        raise ValueError(f"path: {name!r} is a folder, not a concepts file")
    try:
        return _read(name, limit)  # type: ignore[arg-type]
    except _Bad as exc:
        raise ValueError(f"path: {name!r} {exc}") from None


def _read(name: str, limit: int) -> Tuple[Dict[str, Any], np.ndarray, np.ndarray]:
    size = os.path.getsize(name)
    most = 2 * limit + METADATA_LIMIT_BYTES + 2**20  # two arrays, the metadata, headers and zip records
    if size > most:
        raise _Bad(f"is {_human(size)} on disk, more than a concepts file can be with max_bytes={limit} ({_human(most)})")
    try:
        with open(name, "rb") as fh:
            zf = zipfile.ZipFile(fh)
            with zf:
                return _read_zip(zf, limit)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        # zipfile raises these for a damaged directory (or an encrypted / unknown member)
        raise _Bad(f"is not a zip archive (damaged or truncated: {exc})") from None


def _read_zip(zf: zipfile.ZipFile, limit: int) -> Tuple[Dict[str, Any], np.ndarray, np.ndarray]:
    infos = zf.infolist()
    names = [i.filename for i in infos]
    for n in set(names):
        if names.count(n) > 1:
            raise _Bad(f"holds {n} twice")
    wanted = sorted(m + ".npy" for m in _MEMBERS)
    if sorted(names) != wanted:
        got = ", ".join(sorted(n[:-4] if n.endswith(".npy") else n for n in names)) or "nothing"
        raise _Bad(f"is not a captum-nave concepts file: expected the arrays {', '.join(_MEMBERS)}, got {got}")
    info = {i.filename[:-4]: i for i in infos}
    caps = {"cluster_centers": limit, "counts": limit, "metadata": METADATA_LIMIT_BYTES}
    for m in _MEMBERS:  # the zip directory's sizes first: nothing is inflated yet
        if info[m].file_size > caps[m] + _HEADER_SLACK:
            raise _Bad(
                f"{m}.npy: inflates to {_human(info[m].file_size)}, more than the limit of {_human(caps[m])}"
                + (" (max_bytes)" if m != "metadata" else " for the metadata")
            )
    headers = {m: _header(zf, info[m], caps[m]) for m in _MEMBERS}
    dtype, shape = headers["metadata"][:2]
    if dtype != np.uint8 or len(shape) != 1:
        raise _Bad(f"metadata.npy: expected a uint8 array of shape (n,), got {dtype} {shape}")
    meta = _metadata(_read_data(zf, info["metadata"], headers["metadata"]))
    K, D = meta["n_clusters"], meta["n_features_in"]
    for m, want, what in (("cluster_centers", (K, D), "(n_clusters, n_features_in)"), ("counts", (K,), "(n_clusters,)")):
        dtype, shape = headers[m][:2]
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            raise _Bad(f"{m}.npy: expected a float32 or float64 array, got dtype {dtype}")
        if shape != want:
            raise _Bad(f"{m}.npy: expected shape {want} {what}, got {shape}")
    centers = _read_data(zf, info["cluster_centers"], headers["cluster_centers"]).astype(np.float64)
    counts = _read_data(zf, info["counts"], headers["counts"]).astype(np.float64)
    bad = ~np.isfinite(centers)
    if bad.any():
        k, d = (int(v) for v in np.argwhere(bad)[0])
        raise _Bad(
            f"cluster_centers.npy: expected finite centres, got {int(bad.sum())} NaN or infinite values "
            f"(first at concept {k}, feature {d})"
        )
    bad = ~(np.isfinite(counts) & (counts >= 0))
    if bad.any():
        k = int(np.argwhere(bad)[0][0])
        raise _Bad(
            f"counts.npy: expected finite counts >= 0, got {int(bad.sum())} other value(s) "
            f"(first {float(counts[k])!r} at concept {k})"
        )
    return meta, centers, counts


def _header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> Tuple[np.dtype, Tuple[int, ...], bool, int]:
    """(dtype, shape, fortran_order, header length) of a member, from its first bytes only."""
    m = info.filename
    try:
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise _Bad(f"{m}: unsupported .npy format version {version}")
            header_len = int(fh.tell())
    except _Bad:
        raise
    except zipfile.BadZipFile as exc:
        raise _Bad(f"{m} is damaged ({exc})") from None
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as exc:
        raise _Bad(f"{m} is not a valid .npy array ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if dtype.hasobject:
        raise _Bad(f"{m} holds Python objects (a pickle), which are never loaded")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > cap:
        raise _Bad(
            f"{m}: shape {shape} {dtype} needs {_human(nbytes)}, more than the limit of {_human(cap)}"
            + (" (max_bytes)" if m != "metadata.npy" else " for the metadata")
        )
    held = info.file_size - header_len
    if held != nbytes:
        raise _Bad(f"{m} holds {held} bytes of data, its header says {nbytes}")
    return dtype, tuple(int(s) for s in shape), bool(fortran), header_len


def _read_data(zf: zipfile.ZipFile, info: zipfile.ZipInfo, header: Tuple[np.dtype, Tuple[int, ...], bool, int]) -> np.ndarray:
    """The member's array; sizes were checked from its header, the CRC is checked here."""
    dtype, shape, fortran, header_len = header
    m = info.filename
    try:
        with zf.open(info) as fh:
            fh.read(header_len)
            nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            data = fh.read(nbytes)
            if len(data) != nbytes or fh.read(1):
                raise _Bad(f"{m} holds a different number of bytes than its header says")
    except zipfile.BadZipFile as exc:
        raise _Bad(f"{m} is damaged ({exc})") from None
    except (EOFError, OSError, RuntimeError) as exc:
        raise _Bad(f"{m} is damaged ({exc})") from None
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _metadata(raw: np.ndarray) -> Dict[str, Any]:
    from .explainer import check_resolution

    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Bad(f"metadata: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise _Bad(f"metadata: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise _Bad(f"metadata: missing {', '.join(missing)}")
    if meta["format"] != FORMAT or meta["version"] != VERSION:
        raise _Bad(
            f"metadata: expected format {FORMAT} version {VERSION}, got format {meta['format']!r} "
            f"version {meta['version']!r}"
        )
    try:
        K = check_int(meta["n_clusters"], "n_clusters", low=2)
        D = check_int(meta["n_features_in"], "n_features_in", low=1)
        check_int(meta["n_steps"], "n_steps", low=0)
        res = meta["resolution"]
        check_resolution(res if isinstance(res, str) else tuple(res) if isinstance(res, list) else res)
    except ValueError as exc:  # TypeError-like problems are InvalidParameterError, a ValueError too
        raise _Bad(f"metadata: {exc}") from None
    dims = meta["layer_dims"]
    if (
        not isinstance(dims, list) or not dims
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims)
        or sum(dims) != D
    ):
        raise _Bad(f"metadata: layer_dims: expected a list of ints >= 1 summing to n_features_in={D}, got {dims!r}")
    names = meta["layer_names"]
    if not isinstance(names, list) or len(names) != len(dims) or not all(isinstance(n, str) for n in names):
        raise _Bad(f"metadata: layer_names: expected a list of {len(dims)} str (one per layer), got {names!r}")
    meta["n_clusters"], meta["n_features_in"] = K, D
    return meta

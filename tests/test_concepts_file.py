"""ConceptClusters.load on damaged and hostile files: every one is refused with a
ValueError naming the file and what is wrong, before any array data is read when the
zip directory or the .npy headers already show the problem."""

import io
import json
import os
import pathlib
import struct
import zipfile

import numpy as np
import pytest
import torch

from captum_nave import ConceptClusters, LayerClusterExplainer
from captum_nave import _concepts_io as cio
from test_concepts import direction_batches
from test_explainer import DirectionNet


@pytest.fixture(scope="module")
def fitted():
    x, _ = direction_batches(4)
    ex = LayerClusterExplainer(DirectionNet(), ["feat", "pooled"])
    cc = ConceptClusters(ex, n_clusters=3, random_state=0).fit(x)
    return ex, cc, x


@pytest.fixture
def good(fitted, tmp_path):
    _, cc, _ = fitted
    path = tmp_path / "concepts.npz"
    cc.save(path)
    return path


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _meta(path):
    return json.loads(_arrays(path)["metadata"].tobytes().decode("utf-8"))


def _write(path, arrays, *, compressed=False, allow_pickle=False):
    """Write an .npz holding ``arrays`` (name -> ndarray) the way numpy does."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=allow_pickle)
            zf.writestr(name + ".npy", buf.getvalue())
    return path


def _with(path, out, **changes):
    arrays = _arrays(path)
    meta = _meta(path)
    for k, v in changes.items():
        if k.startswith("meta_"):
            meta[k[5:]] = v
        else:
            arrays[k] = v
    arrays["metadata"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return _write(out, arrays)


@pytest.fixture
def no_data_read(monkeypatch):
    """Fail if the data of the arrays is inflated (only their headers and the small,
    capped metadata may be read)."""
    real = cio._read_data

    def guarded(zf, info, header):
        if info.filename != "metadata.npy":
            raise AssertionError(f"the data of {info.filename} was read")
        return real(zf, info, header)

    monkeypatch.setattr(cio, "_read_data", guarded)


def test_a_good_file_round_trips(fitted, good):
    ex, cc, x = fitted
    back = ConceptClusters.load(good, ex)
    assert torch.equal(back.cluster_centers_, cc.cluster_centers_.float())
    assert torch.equal(back.predict(x), cc.predict(x))


def _load(path, ex):
    return ConceptClusters.load(path, ex)


def test_damaged_files(fitted, good, tmp_path):
    ex = fitted[0]
    data = good.read_bytes()
    cases = {
        "truncated.npz": (data[: len(data) // 2], r"is not a zip archive \(damaged or truncated"),
        "text.npz": (b"cluster_centers = [[1, 2, 3]]\n", r"is not a zip archive"),
        "empty.npz": (b"", r"is not a zip archive"),
    }
    # a flipped byte inside the centres' data: the CRC does not match
    i = data.index(b"cluster_centers.npy") + 200
    flipped = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
    cases["flipped.npz"] = (flipped, r"cluster_centers.npy is damaged")
    for name, (content, match) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(ValueError, match=rf"path: '{p}' {match}") as err:
            _load(p, ex)
        assert "allow_pickle" not in str(err.value), name


def test_wrong_members(fitted, good, tmp_path):
    ex = fitted[0]
    a = _arrays(good)
    with pytest.raises(ValueError, match=r"is not a captum-nave concepts file: expected the arrays cluster_centers, counts, metadata, got a"):
        _load(_write(tmp_path / "other.npz", {"a": np.zeros(3)}), ex)
    with pytest.raises(ValueError, match=r"got cluster_centers, counts, extra, metadata"):
        _load(_write(tmp_path / "extra.npz", {**a, "extra": np.zeros(1)}), ex)
    # the same member twice (a zip may hold duplicate names; which one numpy reads is arbitrary)
    p = tmp_path / "dup.npz"
    _write(p, a)
    with zipfile.ZipFile(p, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("counts.npy", b"x")
    with pytest.raises(ValueError, match=r"holds counts.npy twice"):
        _load(p, ex)


def test_pickled_object_arrays_are_refused_without_unpickling(fitted, good, tmp_path):
    ex = fitted[0]
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    a = _arrays(good)
    a["cluster_centers"] = np.array([Evil()], dtype=object)
    p = _write(tmp_path / "pickle.npz", a, allow_pickle=True)
    with pytest.raises(ValueError, match=r"cluster_centers.npy holds Python objects \(a pickle\), which are never loaded"):
        _load(p, ex)
    assert not marker.exists()


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((3, 6), dtype=np.int64), r"cluster_centers.npy: expected a float32 or float64 array, got dtype int64"),
        (np.zeros((3, 6), dtype=np.complex128), r"cluster_centers.npy: expected a float32 or float64 array, got dtype complex128"),
        (np.zeros(18), r"cluster_centers.npy: expected shape \(3, 6\) \(n_clusters, n_features_in\), got \(18,\)"),
        (np.zeros((4, 6)), r"cluster_centers.npy: expected shape \(3, 6\)"),
        (np.zeros((3, 6), dtype=[("a", "<f8")]), r"cluster_centers.npy: expected a float32 or float64 array, got dtype \[\('a', '<f8'\)\]"),
    ],
)
def test_wrong_dtypes_and_shapes_are_seen_in_the_header(fitted, good, tmp_path, array, match, no_data_read):
    p = _with(good, tmp_path / "bad.npz", cluster_centers=array)
    with pytest.raises(ValueError, match=rf"path: '{p}' {match}"):
        _load(p, fitted[0])


def test_huge_arrays_are_refused_from_the_header(fitted, good, tmp_path, no_data_read):
    """A header claiming 16 GiB (the data need not even be there) is refused at once."""
    meta = _meta(good)
    meta.update(n_clusters=65536, n_features_in=32768, layer_dims=[32767, 1])
    p = tmp_path / "huge.npz"
    with zipfile.ZipFile(p, "w") as zf:
        hdr = io.BytesIO()
        np.lib.format.write_array_header_1_0(hdr, {"descr": "<f8", "fortran_order": False, "shape": (65536, 32768)})
        zf.writestr("cluster_centers.npy", hdr.getvalue())
        for name, arr in (("counts", np.zeros(65536)), ("metadata", np.frombuffer(json.dumps(meta).encode(), np.uint8))):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr)
            zf.writestr(name + ".npy", buf.getvalue())
    with pytest.raises(ValueError, match=(
        rf"path: '{p}' cluster_centers.npy: shape \(65536, 32768\) float64 needs 17.2 GB, more than the "
        r"limit of 268.4 MB \(max_bytes\)"
    )):
        _load(p, fitted[0])


def test_a_compressed_bomb_is_refused_from_the_zip_directory(fitted, good, tmp_path, no_data_read):
    """The issue's case: a small compressed file whose member inflates to far more than the
    limit (here the limit is lowered so the test stays small)."""
    meta = _meta(good)
    meta.update(n_clusters=2, n_features_in=2**18, layer_dims=[2**18 - 1, 1])
    arrays = {"cluster_centers": np.zeros((2, 2**18)), "counts": np.zeros(2),
              "metadata": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    p = _write(tmp_path / "bomb.npz", arrays, compressed=True)
    assert p.stat().st_size < 10_000  # 4 MiB of zeros in a few kB
    with pytest.raises(ValueError, match=r"cluster_centers.npy: inflates to 4.2 MB, more than the limit of 1.0 MB \(max_bytes\)"):
        ConceptClusters.load(p, fitted[0], max_bytes=2**20)
    assert cio.LOAD_LIMIT_BYTES == 2**28  # the default would accept it: 4 MiB of centres


def test_sizes_that_disagree_with_the_header_are_refused(fitted, good, tmp_path):
    """A member whose bytes do not match its header's shape (cut short, or with a tail)."""
    a = _arrays(good)
    for name, tail, match in (("short", -8, r"holds 136 bytes of data, its header says 144"), ("long", 8, r"holds 152 bytes of data, its header says 144")):
        p = tmp_path / f"{name}.npz"
        with zipfile.ZipFile(p, "w") as zf:
            for k, arr in a.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr)
                b = buf.getvalue()
                if k == "cluster_centers":
                    b = b[:tail] if tail < 0 else b + b"\0" * tail
                zf.writestr(k + ".npy", b)
        with pytest.raises(ValueError, match=rf"cluster_centers.npy {match}"):
            _load(p, fitted[0])


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"cluster_centers": "NAN"}, r"cluster_centers.npy: expected finite centres, got 1 NaN or infinite values \(first at concept 1, feature 2\)"),
        ({"cluster_centers": "INF"}, r"cluster_centers.npy: expected finite centres, got 1 NaN or infinite values"),
        ({"counts": np.array([1.0, -2.0, 3.0])}, r"counts.npy: expected finite counts >= 0, got 1 other value\(s\) \(first -2.0 at concept 1\)"),
        ({"counts": np.array([1.0, np.nan, 3.0])}, r"counts.npy: expected finite counts >= 0, got 1 other value\(s\) \(first nan at concept 1\)"),
        ({"meta_n_clusters": "3"}, r"metadata: n_clusters: expected an int >= 2, got '3'"),
        ({"meta_n_clusters": 1}, r"metadata: n_clusters: expected an int >= 2, got 1"),
        ({"meta_layer_dims": [3, "3"]}, r"metadata: layer_dims: expected a list of ints >= 1 summing to n_features_in=6, got \[3, '3'\]"),
        ({"meta_layer_dims": [3, 4]}, r"metadata: layer_dims: expected a list of ints >= 1 summing to n_features_in=6, got \[3, 4\]"),
        ({"meta_layer_names": "feat"}, r"metadata: layer_names: expected a list of 2 str \(one per layer\), got 'feat'"),
        ({"meta_resolution": [0, 4]}, r"metadata: resolution: expected 'layer', 'input' or a pair of positive ints"),
        ({"meta_n_steps": -1}, r"metadata: n_steps: expected an int >= 0, got -1"),
        ({"meta_format": "other"}, r"metadata: expected format captum-nave/concepts version 1, got format 'other' version 1"),
        ({"meta_version": 2}, r"metadata: expected format captum-nave/concepts version 1, got format 'captum-nave/concepts' version 2"),
        ({"metadata": np.frombuffer(b"{not json", np.uint8)}, r"metadata: not valid UTF-8 JSON"),
        ({"metadata": np.frombuffer(b"[1, 2]", np.uint8)}, r"metadata: expected a JSON object, got list"),
        ({"metadata": np.zeros(4, dtype=np.float32)}, r"metadata.npy: expected a uint8 array of shape \(n,\), got float32"),
    ],
)
def test_inconsistent_contents(fitted, good, tmp_path, changes, match):
    changes = dict(changes)
    if isinstance(changes.get("cluster_centers"), str):
        c = _arrays(good)["cluster_centers"].copy()
        c[1, 2] = np.nan if changes["cluster_centers"] == "NAN" else np.inf
        changes["cluster_centers"] = c
    if "metadata" in changes:
        a = _arrays(good)
        a["metadata"] = changes["metadata"]
        p = _write(tmp_path / "bad.npz", a)
    else:
        p = _with(good, tmp_path / "bad.npz", **changes)
    with pytest.raises(ValueError, match=rf"path: '{p}' {match}"):
        _load(p, fitted[0])


def test_a_huge_metadata_member_is_refused(fitted, good, tmp_path, no_data_read):
    a = _arrays(good)
    a["metadata"] = np.zeros(2**21, dtype=np.uint8)
    p = _write(tmp_path / "bigmeta.npz", a)
    with pytest.raises(ValueError, match=r"metadata.npy: inflates to 2.1 MB, more than the limit of 1.0 MB for the metadata"):
        _load(p, fitted[0])


def test_not_a_file(fitted, tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"path: '{tmp_path / 'missing.npz'}' does not exist"):
        _load(tmp_path / "missing.npz", fitted[0])
    with pytest.raises(ValueError, match=rf"path: '{tmp_path}' is a folder, not a concepts file"):
        _load(tmp_path, fitted[0])


def test_a_huge_file_on_disk_is_refused_before_its_directory_is_parsed(fitted, tmp_path):
    p = tmp_path / "big.npz"
    with open(p, "wb") as fh:
        fh.truncate(10**7)  # sparse: 10 MB of zeros
    with pytest.raises(ValueError, match=r"is 10.0 MB on disk, more than a concepts file can be with max_bytes=1000 \(2.1 MB\)"):
        ConceptClusters.load(p, fitted[0], max_bytes=1000)
    with pytest.raises(ValueError, match=r"max_bytes: expected an int >= 1, got 0"):
        ConceptClusters.load(p, fitted[0], max_bytes=0)

"""Every output file is written to a temporary file in the same folder and renamed.

The helper (:mod:`captum_nave.files`) is tested directly; a source scan checks that no
other module of the package opens files for writing itself; the library writers
(``ConceptClusters.save``, ``SegmentRelevanceTable.to_csv``, the register comparison
CSV, the CorLoc tables, the HTML report) are tested on their error paths.
"""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_nave.files import atomic_write, save_figure, write_text

PACKAGE = Path(__file__).resolve().parents[1] / "captum_nave"


def _leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    try:
        yield 0o664
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --------------------------------------------------------------------------- the helper
def test_atomic_write_replaces_and_follows_the_umask(tmp_path, umask_002):
    target = tmp_path / "a.csv"
    write_text(target, "old\n")
    assert target.read_text() == "old\n" and _mode(target) == umask_002
    with atomic_write(target, newline="") as fh:
        fh.write("new\r\n")
        assert target.read_text() == "old\n"  # nothing visible before the rename
    assert target.read_bytes() == b"new\r\n" and _mode(target) == umask_002
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyboardInterrupt()])
def test_atomic_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, exc):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(exc)):
        with atomic_write(target, "wb") as fh:
            fh.write(b"partial")
            assert len(_leftovers(tmp_path)) == 1
            raise exc
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_atomic_write_refuses_a_folder_and_a_missing_folder(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match=r"--out: '.*d' is a folder"):
        write_text(tmp_path / "d", "x", param="--out")
    with pytest.raises(FileNotFoundError, match=r"path: folder '.*nope' of"):
        write_text(tmp_path / "nope" / "a.txt", "x")
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "d") == []


def test_save_figure_interrupted_leaves_nothing(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    png = tmp_path / "f.png"
    save_figure(fig, png, dpi=50)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    good = png.read_bytes()

    real = fig.savefig

    def interrupted(fh, **kw):  # half a PNG, then Ctrl-C
        real(fh, **kw)
        fh.seek(100)
        fh.truncate()
        raise KeyboardInterrupt

    fig.savefig = interrupted
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, png, dpi=50)
    assert png.read_bytes() == good and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- every writer uses it
def _writes_a_file(node: ast.Call) -> bool:
    """A call that creates or overwrites a file directly (not through captum_nave.files)."""
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    src = ast.unparse(node)
    if name == "open" and isinstance(f, ast.Name):
        modes = [a for a in node.args[1:2]] + [k.value for k in node.keywords if k.arg == "mode"]
        return any(isinstance(m, ast.Constant) and any(c in str(m.value) for c in "wax") for m in modes)
    if name == "open" and "O_CREAT" in src:  # os.open: only the append-only CorLoc log may
        return "O_APPEND" not in src
    if name in ("savefig", "savez", "savez_compressed", "save"):  # into a buffer or an atomic_write handle
        into_handle = node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in ("buf", "fh")
        return name != "save" and not into_handle or (name == "save" and "Image" in src and not into_handle)
    return isinstance(f, ast.Attribute) and name in ("write_text", "write_bytes", "mkstemp", "imsave")


def test_no_module_writes_files_without_the_helper():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _writes_a_file(node):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert offenders == []


# --------------------------------------------------------------------------- library writers
def test_concept_clusters_save_refuses_a_folder_and_cleans_up(tmp_path, monkeypatch, umask_002):
    from captum_nave import ConceptClusters, LayerClusterExplainer

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1))
    cc = ConceptClusters(LayerClusterExplainer(net, ["0", "2"]), n_clusters=2, random_state=0)
    cc.fit([torch.rand(2, 3, 8, 8)])
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match=r"path: '.*d' is a folder"):
        cc.save(tmp_path / "d")
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "d") == []

    npz = tmp_path / "c.npz"
    cc.save(npz)
    assert _mode(npz) == umask_002
    good = npz.read_bytes()
    real = np.savez

    def interrupted(fh, **arrays):
        real(fh, **arrays)
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cc.save(npz)
    assert npz.read_bytes() == good and _leftovers(tmp_path) == []


def test_segment_relevance_csv_is_atomic_and_has_no_nan(tmp_path, umask_002):
    from captum_nave.attribution import segment_relevance

    seg = torch.tensor([[[[0, 0], [1, 1]]]])
    table = segment_relevance(seg, torch.tensor([[[[1.0, 0.0], [2.0, 3.0]]]]), method="gradcam")
    path = table.to_csv(tmp_path / "s.csv")
    assert _mode(path) == umask_002
    text = Path(path).read_text()
    assert "nan" not in text.lower()
    rows = [line.split(",") for line in text.splitlines()]
    col = rows[0].index("negative_share")
    assert [r[col] for r in rows[1:]] == ["", ""]  # no negative relevance at all: no share
    with pytest.raises(IsADirectoryError):
        table.to_csv(tmp_path)
    assert _leftovers(tmp_path) == []


def test_report_refuses_a_folder_before_computing(tmp_path, monkeypatch):
    import captum_nave.report.builder as builder

    def never(*a, **k):
        raise AssertionError("computed although the output path is a folder")

    monkeypatch.setattr(builder, "collect_report", never)
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError, match=r"out_path: '.*out' is a folder"):
        builder.build_report(torch.rand(1, 3, 16, 16), torch.nn.Identity(), out_path=tmp_path / "out")
    assert _leftovers(tmp_path) == []

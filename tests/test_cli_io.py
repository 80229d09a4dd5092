"""The command line as a hostile or new user meets it (issue 16, points 4, 5, 7, 9, 10,
12, 13, 14): output paths checked before the model loads, atomic outputs on Ctrl-C,
oversized images skipped and counted in folders, devices, exit codes, interrupts, the
whole image explained at its aspect ratio, file modes, start-up imports, global options
after the command, same-name inputs and messages."""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from PIL import Image

import captum_nave.cli as cli
import captum_nave.cli.explain as explain_mod
from captum_nave import LayerClusterExplainer
from captum_nave import models as models_mod

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("captum-nave: error: "), err
    return err[0]


def _leftovers(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


def _photo(path: Path, h: int = 48, w: int = 72, seed: int = 0) -> Path:
    """A small picture: a disc on sky over ground, with noise."""
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(seed)
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[...] = (60, 110, 220)
    arr[(yy - h // 3) ** 2 + (xx - w // 2 - seed) ** 2 < (h // 4) ** 2] = (240, 130, 20)
    arr[2 * h // 3 :] = (40, 150, 40)
    arr = np.clip(arr.astype(int) + rng.integers(-10, 11, arr.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if any subcommand loads a model."""

    def never(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(models_mod, "load_model", never)


# --------------------------------------------------------------------------- point 4: --out first
_OUT_DIR_COMMANDS = {
    "explain": ["explain"],
    "compare": ["compare"],
    "concepts": ["concepts"],
    "compare-registers": ["compare-registers", "IMG", "--model-a", "a", "--model-b", "b"],
    "corloc": ["corloc", "--format", "folder", "--root", "ROOT"],
}


@pytest.mark.parametrize("cmd", sorted(_OUT_DIR_COMMANDS))
def test_out_that_is_a_file_fails_before_the_model_loads(cmd, tmp_path, capsys, no_model):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    img = _photo(tmp_path / "img.png")
    argv = [str(img) if a == "IMG" else str(tmp_path) if a == "ROOT" else a for a in _OUT_DIR_COMMANDS[cmd]]
    assert cli.main([*argv, "--out", str(taken)]) == 2
    assert _one_line_error(capsys).endswith(f"--out: {str(taken)!r} exists and is not a folder; give a folder name")
    assert taken.read_text() == "keep me"


def test_report_out_that_is_a_folder_fails_before_computing(tmp_path, capsys, no_model):
    assert cli.main(["report", "--out", str(tmp_path)]) == 2
    assert f"--out: {str(tmp_path)!r} is a folder; give a file name such as" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_explain_saves_a_figure_leaves_nothing(cached_model, tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    real = Figure.savefig

    def interrupted(self, fname, **kw):  # half a PNG, then Ctrl-C
        real(self, fname, **kw)
        fname.truncate(200)
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    out = tmp_path / "out"
    assert cli.main(["explain", str(_photo(tmp_path / "a.png")), "--size", "32", "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip() == "captum-nave: error: interrupted"
    assert list(out.iterdir()) == []


def test_ctrl_c_in_concepts_keeps_the_fit_and_leaves_no_temporary_csv(cached_model, tmp_path, capsys, monkeypatch):
    from captum_nave.concepts import ConceptClusters

    for i in range(3):
        _photo(tmp_path / "imgs" / f"p{i}.png", seed=i)
    real = ConceptClusters.predict
    calls = []

    def predict(self, x):  # Ctrl-C while the shares CSV is being written
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(ConceptClusters, "predict", predict)
    out = tmp_path / "out"
    argv = ["concepts", str(tmp_path / "imgs"), "-k", "2", "--size", "32", "--batch-size", "2", "--out", str(out)]
    assert cli.main(argv) == 130
    assert sorted(p.name for p in out.iterdir()) == ["concepts.npz"]  # no concept_shares.csv(.tmp)


# --------------------------------------------------------------------------- point 5: oversized images
@pytest.fixture
def big_and_small(tmp_path, monkeypatch):
    """A folder with two usable photos and one over a (lowered) decompression-bomb limit."""
    folder = tmp_path / "photos"
    _photo(folder / "a.png", seed=1)
    _photo(folder / "c.png", seed=2)
    _photo(folder / "huge.png", h=96, w=96)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 48x72 = 3456 < 4000 < 96x96 = 9216
    return folder


def test_oversized_single_image_is_a_one_line_error(cached_model, big_and_small, tmp_path, capsys):
    huge = big_and_small / "huge.png"
    for argv in (["explain", str(huge)], ["concepts", str(huge)], ["report", str(huge), "--methods", "nave"]):
        assert cli.main([*argv, "--out", str(tmp_path / argv[0] / "r.html")]) == 2
        line = _one_line_error(capsys)
        assert "huge.png" in line and "9216 pixels" in line and "decompression-bomb limit" in line


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_oversized_images_in_folders_are_skipped_and_counted(cached_model, big_and_small, tmp_path, capsys):
    out = tmp_path / "ex"
    assert cli.main(["explain", str(big_and_small), "--size", "32", "-k", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == [str(out / "a_nave.png"), str(out / "c_nave.png")]
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 2 and "huge.png" in warnings[0] and "decompression-bomb" in warnings[0]
    assert warnings[1] == "captum-nave: warning: skipped 1 of 3 images found in folders (see above)"

    out = tmp_path / "cc"
    assert cli.main(["concepts", str(big_and_small), "-k", "2", "--size", "32", "--top", "1", "--out", str(out)]) == 0
    assert "skipped 1 of 3 images" in capsys.readouterr().err
    with open(out / "concept_shares.csv", newline="") as fh:
        assert sorted({r["image"] for r in csv.DictReader(fh)}) == ["a", "c"]

    html = tmp_path / "rep" / "r.html"
    assert cli.main(["report", str(big_and_small), "--methods", "nave", "--size", "32", "-k", "2",
                     "--seeds", "0", "--out", str(html)]) == 0
    assert "skipped 1 of 3 images" in capsys.readouterr().err
    text = html.read_text(encoding="utf-8")
    assert "skipped images" in text and "huge.png" in text


# --------------------------------------------------------------------------- point 7: exit codes
@pytest.mark.parametrize("device, message", [
    ("meta", "--device: 'meta' holds no data (shapes only); expected cpu, cuda[:N] or mps"),
    ("mps", "--device: 'mps' requested but mps is not available on this machine"),
])
def test_meta_and_absent_devices_are_one_line_errors(device, message, tmp_path, capsys):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    assert cli.main(["explain", "--device", device, "--out", str(tmp_path / "o")]) == 2
    assert _one_line_error(capsys) == f"captum-nave: error: {message}"
    assert not (tmp_path / "o").exists()


def test_damaged_corloc_metadata_is_named(tmp_path, capsys):
    root = tmp_path / "data"
    for i in range(2):
        _photo(root / f"p{i}.png", seed=i)
    (root / "boxes.json").write_text(json.dumps({f"p{i}.png": [[4, 4, 30, 30]] for i in range(2)}))
    out = tmp_path / "out"
    argv = ["corloc", "--format", "folder", "--root", str(root), "--model", "--baseline", "grid",
            "--min-area", "4", "--border", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    meta = next((out / "records").glob("meta.*.json"))
    meta.write_text(meta.read_text()[:40])  # truncated by something else
    assert cli.main(argv) == 2
    line = _one_line_error(capsys)
    assert str(meta) in line and "damaged run metadata" in line and "--overwrite" in line


def test_an_interrupt_swallowed_by_a_library_still_exits_130(monkeypatch, tmp_path, capsys):
    def swallowing_run(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)  # the handler raises in here
        except BaseException:  # what a careless library might do
            pass
        return 0

    monkeypatch.setattr(explain_mod, "run", swallowing_run)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (xdist ignores it)
    try:
        assert cli.main(["explain", "--out", str(tmp_path / "o")]) == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err.strip() == "captum-nave: error: interrupted"


def test_an_interrupt_that_breaks_a_library_later_still_exits_130(monkeypatch, tmp_path, capsys):
    # what CI saw: Ctrl-C during numpy's import was swallowed by an importer, numpy stayed
    # half-imported, and the next use raised AttributeError: that must read as an interrupt
    def breaking_run(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)  # the handler raises in here
        except BaseException:
            pass
        raise AttributeError("module 'numpy._core' has no attribute '_multiarray_umath'")

    monkeypatch.setattr(explain_mod, "run", breaking_run)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert cli.main(["explain", "--out", str(tmp_path / "o")]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert capsys.readouterr().err.strip() == "captum-nave: error: interrupted"


def test_an_unexpected_error_without_an_interrupt_is_not_hidden(monkeypatch, tmp_path):
    def failing_run(args):
        raise AttributeError("a real bug")

    monkeypatch.setattr(explain_mod, "run", failing_run)
    with pytest.raises(AttributeError, match="a real bug"):
        cli.main(["explain", "--out", str(tmp_path / "o")])


# what the console script does, with markers before and after the import of the package
_SCRIPT = ("import sys; print('started', flush=True); from captum_nave.cli import main; "
           "print('imported', flush=True); sys.exit(main(sys.argv[1:]))")


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


def test_ctrl_c_during_the_imports_exits_130_without_a_traceback(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, "explain", "--out", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    assert proc.stdout.readline().strip() == "started"
    # the package import is light (test_help_and_argument_errors_do_not_import_torch); main()
    # installs its handler first and then imports torch, timm, ... (seconds). Waiting for the
    # marker after the package import (not a fixed delay after start) keeps a slow, loaded
    # machine from sending the signal before main() runs
    assert proc.stdout.readline().strip() == "imported"
    time.sleep(0.2)  # into the heavy imports
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "captum-nave: error: interrupted"


# --------------------------------------------------------------------------- point 12: start-up
_PROBE = textwrap.dedent("""
    import sys
    from captum_nave.cli import main
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "timm", "captum", "matplotlib", "torchvision"})
    print("HEAVY:" + ",".join(heavy), "CODE:" + str(code), file=sys.stderr)
""")


@pytest.mark.parametrize("argv", [["--help"], ["explain", "--help"], ["report", "--help"], ["explain", "-k", "1"],
                                  ["concepts", "missing.png"], ["explain", "--no-such-option"]])
def test_help_and_argument_errors_do_not_import_torch(argv):
    res = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120, env=_env())
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("HEAVY: ") or last.startswith("HEAVY:"), res.stderr
    assert last.split()[0] == "HEAVY:", res.stderr  # nothing heavy was imported
    assert last.split()[1] in ("CODE:0", "CODE:2")


# --------------------------------------------------------------------------- point 9: the whole image
@pytest.fixture
def chelsea(tmp_path):
    from skimage import data

    path = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)  # 300 x 451
    return path


@pytest.fixture
def figures(monkeypatch):
    """The (image, segments, title) of every figure explain draws."""
    seen = []
    real = explain_mod.explain_figure

    def spy(image, segments, *, title, **kw):
        seen.append((image.clone(), segments.clone(), title))
        return real(image, segments, title=title, **kw)

    monkeypatch.setattr(explain_mod, "explain_figure", spy)
    return seen


def test_explain_shows_and_explains_the_whole_image(cached_model, chelsea, figures, tmp_path):
    assert cli.main(["explain", str(chelsea), "--size", "64", "-k", "3", "--out", str(tmp_path / "o")]) == 0
    (image, segments, title), = figures
    assert tuple(image.shape) == (3, 64, 96)  # 300x451 -> shorter side 64, aspect kept: 96.2 -> 96
    assert "whole 300x451 image at 64x96" in title
    model, info = cached_model
    whole = models_mod.resize_images(models_mod.load_image(chelsea), (64, 96), crop=False)
    torch.testing.assert_close(image[None], whole)
    seg = LayerClusterExplainer(model, info["default_layers"]).attribute(
        models_mod.normalize(whole, info), n_clusters=3, random_state=0)
    assert torch.equal(segments[None], seg)
    assert "clustered on the 4x6 grid of blocks.4" in title and "--resolution layer" in title

    figures.clear()
    assert cli.main(["explain", str(chelsea), "--size", "64", "--crop", "--resolution", "input", "-k", "3",
                     "--out", str(tmp_path / "o")]) == 0
    (image, _, title), = figures
    assert tuple(image.shape) == (3, 64, 64)
    torch.testing.assert_close(image[None], models_mod.resize_images(models_mod.load_image(chelsea), 64))
    assert "centre crop of the 300x451 image (--crop), shown at 64x64" in title
    assert "clustered at input resolution 64x64 (--resolution input)" in title


def test_a_timm_vit_explains_the_whole_image_at_patch_multiples(chelsea, figures, tmp_path):
    argv = ["explain", str(chelsea), "--model", "vit_tiny_patch16_224", "--no-pretrained", "--size", "32",
            "-k", "2", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 0
    (image, segments, title), = figures
    assert tuple(image.shape) == (3, 32, 48)  # 451 * 32 / 300 = 48.1 -> 3 patches of 16
    assert "whole 300x451 image at 32x48" in title and "2x3 grid" in title


def test_whole_image_size_and_fixed_size_views():
    assert explain_mod.whole_image_size((300, 451), 224) == (224, 337)
    assert explain_mod.whole_image_size((300, 451), 224, 14) == (224, 336)
    assert explain_mod.whole_image_size((451, 300), 224, (16, 8)) == (336, 224)
    assert explain_mod.whole_image_size((10, 1000), 8, 16) == (16, 800)  # at least one patch
    x = torch.rand(1, 3, 30, 45)
    view, words = explain_mod.image_view(x, None, {"input_size": (24, 24), "patch_size": None}, crop=False, fixed=(24, 24))
    assert tuple(view.shape) == (1, 3, 24, 24)
    assert words == "centre crop of the 30x45 image (the model takes only 24x24 inputs), shown at 24x24"


# --------------------------------------------------------------------------- point 10: file modes
def test_outputs_follow_the_umask(cached_model, tmp_path, capsys):
    root = tmp_path / "data"
    for i in range(2):
        _photo(root / f"p{i}.png", seed=i)
    (root / "boxes.json").write_text(json.dumps({f"p{i}.png": [[4, 4, 30, 30]] for i in range(2)}))
    old = os.umask(0o002)
    try:
        assert cli.main(["corloc", "--format", "folder", "--root", str(root), "--model", "--baseline", "grid",
                         "--min-area", "4", "--border", "1", "--out", str(tmp_path / "cl")]) == 0
        assert cli.main(["explain", str(root / "p0.png"), "--size", "32", "-k", "2", "--out", str(tmp_path / "ex")]) == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "cl").rglob("*") if p.is_file()] + list((tmp_path / "ex").iterdir())
    names = {p.name for p in files}
    assert {"per_image.csv", "summary.md", "summary.json", "p0_nave.png"} <= names
    assert any(n.startswith("meta.") for n in names) and any(n.endswith(".jsonl") for n in names)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(0o664) for p in files}


# --------------------------------------------------------------------------- point 13: options, folders, names
def test_global_options_after_the_command():
    parser = cli.build_parser()
    a = parser.parse_args(["explain", "x.png", "--device", "cuda:1", "--seed", "7", "--debug"])
    assert (a.device, a.seed, a.debug) == ("cuda:1", 7, True)
    b = parser.parse_args(["--device", "cpu", "--seed", "3", "explain", "x.png"])
    assert (b.device, b.seed, b.debug) == ("cpu", 3, False)
    c = parser.parse_args(["--seed", "3", "report", "--seed", "4"])
    assert c.seed == 4


def test_seed_after_the_command_is_used(cached_model, tmp_path, capsys, figures):
    img = _photo(tmp_path / "a.png")
    assert cli.main(["--seed", "5", "explain", str(img), "--size", "48", "-k", "4", "--out", str(tmp_path / "b")]) == 0
    assert cli.main(["explain", str(img), "--size", "48", "-k", "4", "--seed", "5", "--device", "cpu",
                     "--out", str(tmp_path / "a")]) == 0
    assert torch.equal(figures[0][1], figures[1][1])


def test_report_creates_missing_folders(cached_model, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "a.html"
    assert cli.main(["report", str(_photo(tmp_path / "p.png")), "--methods", "nave", "--size", "32", "-k", "2",
                     "--seeds", "0", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.is_file()


def test_explain_a_folder_and_same_name_inputs(cached_model, tmp_path, capsys, figures):
    a = _photo(tmp_path / "a" / "x.png", seed=1)
    b = _photo(tmp_path / "b" / "x.png", seed=7)
    out = tmp_path / "out"
    assert cli.main(["explain", str(a), str(tmp_path / "b"), "--size", "32", "-k", "2", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [
        f"{a} -> {out / 'x_nave.png'}", f"{b} -> {out / 'x_1_nave.png'}"]
    assert figures[0][2].startswith(f"{a} - ") and figures[1][2].startswith(f"{b} - ")
    for src, (image, _, _) in zip((a, b), figures):  # each output shows its own input
        torch.testing.assert_close(image[None], models_mod.resize_images(models_mod.load_image(src), (32, 48), crop=False))


def test_explain_a_missing_path_and_a_folder_without_images(tmp_path, capsys, no_model):
    assert cli.main(["explain", str(tmp_path / "nope")]) == 2
    assert f"image file or folder {str(tmp_path / 'nope')!r} does not exist" in _one_line_error(capsys)
    (tmp_path / "empty").mkdir()
    assert cli.main(["explain", str(tmp_path / "empty")]) == 2
    assert "has no image files" in _one_line_error(capsys)


# --------------------------------------------------------------------------- point 14: messages
def test_unknown_layer_suggests_default_layers_and_blocks_first(cached_model, tmp_path, capsys):
    assert cli.main(["explain", str(_photo(tmp_path / "a.png")), "--layers", "nope", "--out", str(tmp_path / "o")]) == 2
    line = _one_line_error(capsys)
    assert line.startswith("captum-nave: error: --layers: no layer named 'nope' in EfficientNet; "
                           "default layers: blocks.4 blocks.5; blocks: blocks.0 blocks.1")
    assert line.index("default layers") < line.index("close names")


def test_compare_csv_has_no_nan_for_grad_cam(cached_model, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(_photo(tmp_path / "a.png")), "--methods", "gradcam", "-k", "3", "--size", "32",
                     "--out", str(out)]) == 0
    with open(out / "segment_relevance.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["negative_share"] == "" for r in rows)
    assert all(r["positive_share"] != "" for r in rows)
    assert "nan" not in (out / "segment_relevance.csv").read_text().lower()


def test_convergence_delta_is_explained_relative_to_what_it_conserves():
    from captum_nave.report.sections import convergence_text

    raw = torch.ones(2, 3, 2, 2)  # sums 12 per image
    delta = torch.tensor([2.0, -3.0])  # references 10 and 15
    lrp = convergence_text("lrp", raw, delta)
    assert lrp.startswith("mean 2.500, max 3.000; relative to |the target logit| (mean 12.500): mean 20.0%, max 20.0%")
    assert "bias terms" in lrp
    ig = convergence_text("ig", raw, torch.tensor([1.2, 0.0]))
    assert "relative to |F(x) - F(baseline)|" in ig and "mean 5.6%, max 11.1%" in ig and "--ig-steps" in ig
    assert convergence_text("gradcam", raw, None) == "n/a"

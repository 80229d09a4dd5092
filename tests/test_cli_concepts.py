"""Tests of ``captum-nave concepts`` run in-process through ``captum_nave.cli.main``."""

from __future__ import annotations

import csv

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.image import imread

import captum_nave.cli as cli
from captum_nave import ConceptClusters, LayerClusterExplainer
from captum_nave import models as models_mod
from captum_nave.cli.common import collect_images


@pytest.fixture
def image_dir(tmp_path):
    """Five images: orange discs on blue sky over grass, and green squares on sand."""
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    yy, xx = np.mgrid[:64, :64]
    rng = np.random.default_rng(0)
    for i in range(5):
        arr = np.zeros((64, 64, 3), dtype=np.uint8)
        if i % 2 == 0:
            arr[...] = (60, 110, 220)
            arr[(yy - 26) ** 2 + (xx - 20 - 6 * i) ** 2 < 12**2] = (240, 130, 20)
            arr[48:] = (40, 150, 40)
        else:
            arr[...] = (220, 200, 140)
            arr[12 + 2 * i : 40 + 2 * i, 16:44] = (30, 170, 60)
        arr = np.clip(arr.astype(int) + rng.integers(-12, 13, arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"img{i}.png")
    (d / "notes.txt").write_text("not an image")
    return d


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("captum-nave: error: ")
    return err[0]


def test_concepts_equal_the_api_fit(cached_model, image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["--seed", "3", "concepts", str(image_dir), "-k", "3", "--size", "64", "--batch-size", "2",
                   "--epochs", "2", "--n-init", "3", "--top", "2", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [str(out / "concept_gallery.png"), str(out / "concepts.npz"), str(out / "concept_shares.csv")]

    # the same fit through the API: same batches, seed and epochs -> the same centroids
    model, info = cached_model
    files = sorted(image_dir.glob("*.png"))
    x = models_mod.normalize(torch.cat([models_mod.resize_images(models_mod.load_image(f), 64) for f in files]), info)
    explainer = LayerClusterExplainer(model, info["default_layers"])
    ref = ConceptClusters(explainer, n_clusters=3, n_epochs=2, random_state=3, n_init=3).fit([x[0:2], x[2:4], x[4:5]])
    saved = ConceptClusters.load(out / "concepts.npz", explainer)
    torch.testing.assert_close(saved.cluster_centers_, ref.cluster_centers_.float(), rtol=1e-5, atol=1e-6)
    assert saved.n_steps_ == ref.n_steps_ == 6

    # shares in the CSV: every image's concept shares are those of the API's predict and sum to 1
    with open(out / "concept_shares.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 * 3
    pred = ref.predict(x)
    for i, f in enumerate(files):
        mine = {int(r["concept"]): float(r["share"]) for r in rows if r["image"] == f.stem}
        assert sum(mine.values()) == pytest.approx(1.0)
        for k in range(3):
            assert mine[k] == pytest.approx(float((pred[i] == k).double().mean()), abs=1e-9)
    gallery = imread(out / "concept_gallery.png")
    assert gallery.ndim == 3 and gallery.shape[0] > 100

    # a second run with the same seed gives the same file; another seed is allowed to differ
    out2 = tmp_path / "out2"
    assert cli.main(["--seed", "3", "concepts", str(image_dir), "-k", "3", "--size", "64", "--batch-size", "2",
                     "--epochs", "2", "--n-init", "3", "--top", "2", "--out", str(out2)]) == 0
    again = ConceptClusters.load(out2 / "concepts.npz", explainer)
    assert torch.equal(again.cluster_centers_, saved.cluster_centers_)


def test_collect_images_reads_folders_and_files(image_dir):
    files = collect_images([str(image_dir), str(image_dir / "img1.png")])
    assert [f.path.split("/")[-1] for f in files] == [f"img{i}.png" for i in range(5)]  # sorted, no duplicate, no .txt
    assert {f.found_in for f in files} == {str(image_dir)}  # img1.png was listed from the folder first


@pytest.mark.parametrize(
    "argv, message",
    [
        (["concepts", "nowhere/"], "image file or folder 'nowhere/' does not exist"),
        (["concepts", "-k", "1"], "-k/--n-clusters: expected an integer >= 2"),
        (["concepts", "--top", "0"], "--top: expected a positive integer"),
        (["concepts", "--n-init", "0"], "--n-init: expected a positive integer, got 0"),
        (["concepts", "--batch-size", "0"], "--batch-size: expected a positive integer"),
        (["concepts", "--size", "4"], "--size: expected an image size of at least 8"),
        (["concepts", "--model", "no_such_model_xyz"], "--model: "),
        (["--device", "bogus", "concepts"], "--device: expected a torch device"),
    ],
)
def test_user_mistakes_are_one_line_errors(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in _one_line_error(capsys)


def test_empty_folder_and_too_few_pixels(cached_model, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["concepts", str(empty)]) == 2
    assert "has no image files" in _one_line_error(capsys)
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "tiny.png")
    # 16 px -> a 1x1 grid at stride 16: one pixel cannot seed 3 concepts
    assert cli.main(["concepts", str(tmp_path / "tiny.png"), "-k", "3", "--size", "16", "--out", str(tmp_path / "o")]) == 2
    assert "n_clusters" in _one_line_error(capsys)

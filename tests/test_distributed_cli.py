"""``captum-nave explain`` and ``concepts`` on 2 gloo processes (as under torchrun).

Each rank runs ``captum_nave.cli.main`` inside the process group (what ``torchrun -m
captum_nave.cli`` does), with ``--workers 1`` so images come through a DataLoader
worker. The single-process CLI is the reference.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import captum_nave.cli as cli
from captum_nave import ConceptClusters, LayerClusterExplainer
from captum_nave.models import load_image, load_model, normalize, resize_images
from spawn import run_ranks
from synthetic import shapes_dataset

N = 7
MODEL = ["--model", "test_resnet", "--no-pretrained"]


def make_images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    x, _, _, _ = shapes_dataset(N, 48, seed=21)
    for i in range(N):
        Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"im{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")  # found in the folder: skipped and counted
    return folder


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue().splitlines(), err.getvalue().splitlines()


def explain_argv(images, out):
    return ["--seed", "1", "explain", str(images), *MODEL, "-k", "3", "--size", "48", "--batch-size", "2",
            "--out", str(out)]


def concepts_argv(images, out):
    return ["--seed", "1", "concepts", str(images), *MODEL, "-k", "3", "--size", "48", "--batch-size", "2",
            "--top", "2", "--out", str(out)]


def _cli_worker(rank: int, world: int, tmp: str) -> dict:
    images = Path(tmp) / "images"
    res = {}
    res["explain"] = run_cli(explain_argv(images, Path(tmp) / "explain2") + ["--workers", "1"])
    res["concepts"] = run_cli(concepts_argv(images, Path(tmp) / "concepts2") + ["--workers", "1"])
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist-cli")
    images = make_images(tmp / "images")
    ranks = run_ranks(_cli_worker, 2, tmp, str(tmp))
    single = {
        "explain": run_cli(explain_argv(images, tmp / "explain1")),
        "concepts": run_cli(concepts_argv(images, tmp / "concepts1")),
    }
    return tmp, ranks, single


def test_explain_on_two_ranks_writes_what_one_process_writes(runs):
    tmp, ranks, single = runs
    code, printed, err = single["explain"]
    assert code == 0
    assert printed == [str(tmp / "explain1" / f"im{i}_nave.png") for i in range(N)]
    for r in (0, 1):
        assert ranks[r]["explain"][0] == 0
    # rank 0 prints every output in image order, once; rank 1 prints nothing
    assert ranks[0]["explain"][1] == [p.replace("explain1", "explain2") for p in printed]
    assert ranks[1]["explain"][1] == []
    # the skipped file is reported once, with the total of both ranks
    summary = [line for r in (0, 1) for line in ranks[r]["explain"][2] if "skipped 1 of 8" in line]
    assert len(summary) == 1
    for i in range(N):  # the same figures (per-image NAVE does not depend on the batch)
        a = np.asarray(Image.open(tmp / "explain1" / f"im{i}_nave.png"))
        b = np.asarray(Image.open(tmp / "explain2" / f"im{i}_nave.png"))
        assert np.array_equal(a, b), i


def _read_shares(path: Path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_concepts_on_two_ranks(runs):
    tmp, ranks, single = runs
    out = tmp / "concepts2"
    assert [ranks[r]["concepts"][0] for r in (0, 1)] == [0, 0]
    assert ranks[0]["concepts"][1] == [str(out / "concept_gallery.png"), str(out / "concepts.npz"),
                                       str(out / "concept_shares.csv")]
    assert ranks[1]["concepts"][1] == []
    assert sorted(p.name for p in out.iterdir()) == ["concept_gallery.png", "concept_shares.csv", "concepts.npz"]

    # the fit is the global mini-batch k-means over the ranks' batches (rank 0's batch, then rank 1's)
    torch.manual_seed(1)
    model, info = load_model("test_resnet", pretrained=False)
    ex = LayerClusterExplainer(model, info["default_layers"])
    x = torch.cat([resize_images(load_image(str(tmp / "images" / f"im{i}.png")), (48, 48)) for i in range(N)])
    x = normalize(x, info)
    mine = {0: [0, 2, 4, 6], 1: [1, 3, 5]}
    batches = []
    for s in range(0, 4, 2):
        batches.append(torch.cat([x[mine[r][s : s + 2]] for r in (0, 1) if mine[r][s : s + 2]]))
    ref = ConceptClusters(ex, n_clusters=3, random_state=1).fit(batches)
    got = ConceptClusters.load(out / "concepts.npz", ex)
    # float32 features, sums all-reduced in another order than one process sums them:
    # relative differences ~1e-6 (a few hundred pixels per concept)
    torch.testing.assert_close(got.cluster_centers_, ref.cluster_centers_.float(), rtol=1e-4, atol=1e-6)

    # the table: every image x concept in image order, shares of the saved concepts' maps
    rows = _read_shares(out / "concept_shares.csv")
    assert rows[0] == ["image", "concept", "share"]
    assert [r[0] for r in rows[1:]] == [f"im{i}" for i in range(N) for _ in range(3)]
    maps = got.predict(x).reshape(N, -1)
    for i in range(N):
        for k in range(3):
            assert float(rows[1 + 3 * i + k][2]) == pytest.approx(float((maps[i] == k).double().mean()))

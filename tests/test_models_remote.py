"""``hf:`` and ``hub:`` model names, and knowing within seconds that weights cannot be fetched.

No network access: Hugging Face models are saved to and loaded from a local folder
(``save_pretrained``), torch-hub entries from a local repository folder with a
``hubconf.py``; the offline paths are exercised with the Hugging Face offline switch and
with the network probe reporting an unreachable host.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
import torch

from captum_nave.cli import main
from captum_nave.models import WeightsUnavailableError, load_model, network, state_dict_sha256

TESTS = Path(__file__).resolve().parent
MISSING_REPO = "captum-nave-tests/no-such-model"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("captum-nave: error: ")
    return err[0]


@pytest.fixture(autouse=True)
def _fresh_probe(monkeypatch):
    monkeypatch.setattr(network, "_probed", {})


# ----------------------------------------------------------------------------- hf:
@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """Tiny DINOv2 classifier, DINOv2 and DINOv2-with-registers saved as Hugging Face folders."""
    pytest.importorskip("transformers")
    import transformers as T

    root = tmp_path_factory.mktemp("hf")
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    out = {}
    for name, model in (
        ("cls", T.Dinov2ForImageClassification(T.Dinov2Config(num_labels=5, **small))),
        ("plain", T.Dinov2Model(T.Dinov2Config(**small))),
        ("reg", T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(num_register_tokens=4, **small))),
    ):
        d = root / name
        model.save_pretrained(d)
        T.BitImageProcessor(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3],
                            size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                            do_center_crop=True).save_pretrained(d)
        out[name] = (d, state_dict_sha256(model))
    return out


def test_hf_folder_loads_with_its_weights_and_preprocessing(hf_folders):
    d, sha = hf_folders["cls"]
    model, info = load_model(f"hf:{d}")
    assert type(model).__name__ == "Dinov2ForImageClassification" and not model.training
    assert info["weights_sha256"] == sha and info["source"] == "hf" and info["family"] == "hf"
    assert info["mean"] == pytest.approx((0.4, 0.5, 0.6)) and info["std"] == pytest.approx((0.2, 0.25, 0.3))
    assert info["input_size"] == (32, 32) and info["patch_size"] == 8 and info["num_classes"] == 5
    assert info["default_layers"] == ["dinov2.encoder.layer.1"]
    random_model, rinfo = load_model(f"hf:{d}", pretrained=False)
    assert type(random_model) is type(model) and rinfo["weights_sha256"] != sha


def test_hf_name_errors():
    pytest.importorskip("transformers")
    with pytest.raises(ValueError, match="expected 'hf:<repo id or folder>'"):
        load_model("hf:")
    with pytest.raises(ValueError, match="expected 'hub:<owner/repo"):
        load_model("hub:facebookresearch/dinov2")


# ----------------------------------------------------------------------------- hub:
@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory):
    """A local torch-hub repository whose entry builds the DINOv2 stand-in."""
    root = tmp_path_factory.mktemp("hub")
    sys.path.insert(0, str(TESTS))
    from hub_dinov2 import dinov2_standin

    weights = root / "weights.pt"
    torch.save(dinov2_standin(seed=5, img_size=32, patch_size=8, num_register_tokens=4).state_dict(), weights)
    (root / "hubconf.py").write_text(
        "dependencies = ['torch']\n"
        "import sys, torch\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from hub_dinov2 import DinoVisionTransformer\n"
        "def dinov2_tiny_reg(pretrained=True, **kw):\n"
        "    m = DinoVisionTransformer(img_size=32, patch_size=8, num_register_tokens=4, **kw)\n"
        f"    if pretrained:\n        m.load_state_dict(torch.load({str(weights)!r}))\n"
        "    return m\n"
    )
    return root, state_dict_sha256(torch.load(weights))


def test_hub_folder_entry_loads(hub_repo):
    root, sha = hub_repo
    model, info = load_model(f"hub:{root}:dinov2_tiny_reg")
    assert info["source"] == "torch-hub" and info["family"] == "torch-hub-dinov2"
    assert info["weights_sha256"] == sha and info["patch_size"] == 8
    assert info["default_layers"] == ["blocks.2"]
    _, rinfo = load_model(f"hub:{root}:dinov2_tiny_reg", pretrained=False)
    assert rinfo["weights_sha256"] != sha


# ----------------------------------------------------------------------------- offline
def test_probe_reports_unreachable_hosts_and_honours_the_proxy(monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()  # the kernel completes the handshake: no accept needed
    port = server.getsockname()[1]
    try:
        assert network.unreachable("127.0.0.1", port) is None
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
        closed.close()
        t0 = time.perf_counter()
        reason = network.unreachable("127.0.0.1", dead, timeout=2.0)
        assert reason and time.perf_counter() - t0 < 2.5
        # with a proxy, the proxy is what must answer
        monkeypatch.setattr(network, "_probed", {})
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{dead}")
        assert "127.0.0.1 unreachable" in network.unreachable("huggingface.co")
    finally:
        server.close()


def test_hf_offline_mode_fails_at_once_without_touching_the_network(monkeypatch):
    pytest.importorskip("transformers")
    import transformers  # noqa: F401  (import time is not what is measured)

    def no_probe(*a, **k):
        raise AssertionError("offline mode must not probe the network")

    monkeypatch.setattr(network, "unreachable", no_probe)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        load_model(f"hf:{MISSING_REPO}")
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "\n" not in msg and MISSING_REPO in msg and "offline mode" in msg and "local cache" in msg
    assert "pretrained=False" in msg and "--no-pretrained" in err.value.cli_message()


def test_unreachable_network_reads_caches_only_and_names_the_host(monkeypatch):
    import huggingface_hub.constants as hub_constants
    import timm

    monkeypatch.setattr(network, "unreachable", lambda host, *a, **k: "[Errno -2] Name or service not known")
    modes = []

    def create(name, pretrained=False, **kw):
        modes.append(hub_constants.HF_HUB_OFFLINE)  # only the cache may be read
        raise OSError("We couldn't find the file in the cached files")

    monkeypatch.setattr(timm, "create_model", create)
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        load_model("vit_small_patch16_224")
    assert time.perf_counter() - t0 < 10 and modes == [True]
    assert hub_constants.HF_HUB_OFFLINE is not True or modes == [True]  # restored
    line = err.value.cli_message()
    assert "huggingface.co" in line and "Name or service not known" in line and "\n" not in line
    assert "'vit_small_patch16_224'" in line and "--no-pretrained" in line and "pretrained=False" not in line


def test_unreachable_github_for_an_uncached_hub_repo(monkeypatch, tmp_path):
    monkeypatch.setattr(network, "unreachable", lambda host, *a, **k: "timed out")
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(WeightsUnavailableError, match=r"github\.com \(no network: timed out\)"):
            load_model("hub:facebookresearch/dinov2:dinov2_vits14_reg")
    finally:
        torch.hub.set_dir(old)


# ----------------------------------------------------------------------------- CLI
SUBCOMMANDS = {
    "explain": lambda m, img, out: ["explain", img, "--model", m, "--out", out],
    "compare": lambda m, img, out: ["compare", img, "--model", m, "--out", out],
    "compare-registers": lambda m, img, out: ["compare-registers", "--model-a", m, "--model-b", m, img, "--out", out],
    "concepts": lambda m, img, out: ["concepts", img, "--model", m, "--out", out],
    "corloc": lambda m, img, out: ["corloc", "--format", "folder", "--root", str(Path(img).parent), "--model", m, "--out", out],
    "report": lambda m, img, out: ["report", img, "--model", m, "--out", out + ".html"],
}


@pytest.mark.parametrize("cmd", sorted(SUBCOMMANDS))
def test_every_subcommand_says_offline_in_one_line(cmd, tiny_image, tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (Path(tiny_image).parent / "boxes.json").write_text('{"tiny.png": [[10, 10, 40, 40]]}')  # for corloc
    t0 = time.perf_counter()
    rc = main(SUBCOMMANDS[cmd](f"hf:{MISSING_REPO}", str(tiny_image), str(tmp_path / "o")))
    assert rc == 2 and time.perf_counter() - t0 < 30
    line = _one_line_error(capsys)
    assert MISSING_REPO in line and "--no-pretrained" in line and "pretrained=False" not in line


def test_cli_explain_and_compare_with_hf_and_hub_models(hf_folders, hub_repo, tiny_image, tmp_path, capsys):
    d, _ = hf_folders["cls"]
    rc = main(["explain", str(tiny_image), "--model", f"hf:{d}", "--out", str(tmp_path / "e"), "-k", "3"])
    assert rc == 0 and (tmp_path / "e" / "tiny_nave.png").stat().st_size > 1000
    rc = main(["compare", str(tiny_image), "--model", f"hf:{d}", "--methods", "nave,gradcam,ig,lrp",
               "--ig-steps", "4", "-k", "3", "--out", str(tmp_path / "c")])
    assert rc == 0
    csv = (tmp_path / "c" / "segment_relevance.csv").read_text()
    assert {"gradcam", "ig", "lrp"} <= {row.split(",")[1] for row in csv.splitlines()[1:]} | set(csv.split(","))
    root, _ = hub_repo
    rc = main(["explain", str(tiny_image), "--model", f"hub:{root}:dinov2_tiny_reg", "--size", "32",
               "--out", str(tmp_path / "h"), "-k", "3"])
    assert rc == 0 and (tmp_path / "h" / "tiny_nave.png").exists()
    capsys.readouterr()


def test_cli_compare_registers_with_hf_folders(hf_folders, tiny_image, tmp_path):
    a, _ = hf_folders["plain"]
    b, _ = hf_folders["reg"]
    rc = main(["compare-registers", "--model-a", f"hf:{a}", "--model-b", f"hf:{b}", "--size", "32",
               "--n-clusters", "3", str(tiny_image), "--out", str(tmp_path / "r")])
    assert rc == 0
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "mass_registers" in summary and "max_register_ratio" in summary

import os

import pytest
import torch

# Two cores on CI: avoid oversubscription between torch and BLAS threads.
torch.set_num_threads(int(os.environ.get("CAPTUM_NAVE_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shape_nets():
    """(trained, random-init) ShapeNet pair; trained once per test session (~10 s)."""
    from trained import train_shape_net

    return train_shape_net()


@pytest.fixture(scope="session")
def bars_net():
    """(trained bars classifier, 16 held-out images, labels, test accuracy); trained once (~2 s)."""
    from trained import bars_classifier

    return bars_classifier()


# --------------------------------------------------------------- the offline default model
@pytest.fixture(scope="module")
def lite0():
    """``load_model()``: EfficientNet-Lite0 with its packaged ImageNet weights, and its info."""
    from captum_nave import models as models_mod

    return models_mod.load_model()


@pytest.fixture
def cached_model(lite0, monkeypatch):
    """The CLI's ``load_model``, with the default model loaded once per test module."""
    from captum_nave import models as models_mod

    real = models_mod.load_model

    def load(name="efficientnet_lite0", pretrained=True, device=None):
        if name == "efficientnet_lite0" and pretrained:
            return lite0
        return real(name, pretrained=pretrained, device=device)

    monkeypatch.setattr(models_mod, "load_model", load)
    return lite0


@pytest.fixture
def tiny_image(tmp_path):
    """A 64x64 PNG: orange disk on a blue background above green ground."""
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[:64, :64]
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    arr[..., 2] = 200  # blue background
    arr[(yy - 30) ** 2 + (xx - 34) ** 2 < 15**2] = (230, 120, 20)  # orange disk
    arr[48:, :] = (40, 160, 40)  # green ground
    path = tmp_path / "tiny.png"
    Image.fromarray(arr).save(path)
    return path

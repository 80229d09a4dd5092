"""Bad arguments across the public API: one clear error naming the parameter, the
expectation and the value; NumPy integers accepted wherever ints are; image dtypes."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from captum_nave import ConceptClusters, LayerClusterExplainer
from captum_nave.attribution import attribute, register_method, unregister_method
from captum_nave.attribution.lrp import lrp_attribute
from test_explainer import DirectionNet, direction_image

NOT_FINITE = r"inputs: expected finite values, got \d+ NaN and \d+ infinite \(first at image 0, channel 1, row 2, column 3\)"


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


def _bad_pixel(value: float) -> torch.Tensor:
    x = torch.rand(2, 3, 16, 16)
    x[0, 1, 2, 3] = value
    return x


# ----------------------------------------------------------------------------- NaN / inf pixels
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_get_the_same_error_from_every_entry_point(value):
    model = small_cnn()
    x = _bad_pixel(value)
    ex = LayerClusterExplainer(model, ["1", "3"])
    with pytest.raises(ValueError, match=NOT_FINITE):
        ex.attribute(x, n_clusters=3)
    with pytest.raises(ValueError, match=NOT_FINITE):
        ex.features(x)
    with pytest.raises(ValueError, match=NOT_FINITE):
        ex.attribute((x,), n_clusters=3)  # tuple inputs: the image is the first element
    with pytest.raises(ValueError, match=NOT_FINITE):
        ConceptClusters(ex, 3).fit(x)
    for method in ("gradcam", "ig", "lrp"):
        with pytest.raises(ValueError, match=NOT_FINITE):
            attribute(method, model, x, target=0)
    with pytest.raises(ValueError, match=NOT_FINITE):
        lrp_attribute(model, x, target=0)
    from captum_nave.attribution import segment_importance

    with pytest.raises(ValueError, match=NOT_FINITE):
        segment_importance(model, x, torch.zeros(2, 1, 16, 16, dtype=torch.long), target=0)

    calls = []

    def custom(model, inputs, target, **options):
        calls.append(1)
        return torch.zeros(inputs.shape[0], 1, *inputs.shape[2:]), None, None

    register_method("test-validation-custom", custom)
    try:
        with pytest.raises(ValueError, match=NOT_FINITE):
            attribute("test-validation-custom", model, x, target=0)
        assert calls == []  # refused before the method runs
    finally:
        unregister_method("test-validation-custom")


def test_nan_only_in_extra_forward_tensors_is_not_an_image_error():
    """Only the image is checked: the other tensors of a tuple input (masks, -inf
    attention biases) are the model's business."""

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.feat = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x, bias):
            return self.feat(x) + torch.nan_to_num(bias, neginf=0.0)

    x = torch.rand(1, 3, 12, 12)
    bias = torch.full((1, 4, 12, 12), -float("inf"))
    seg = LayerClusterExplainer(TwoInputs(), ["feat"]).attribute((x, bias), n_clusters=2, random_state=0)
    assert seg[0].shape == (1, 1, 12, 12)


def test_a_model_that_makes_nan_from_finite_pixels_is_named():
    class Log(nn.Module):
        def forward(self, x):
            return torch.log(x - 1)  # NaN for pixels < 1

    model = nn.Sequential(nn.Identity(), Log())
    with pytest.raises(ValueError, match="layers: 1 produced NaN or inf activations"):
        LayerClusterExplainer(model, ["1"]).attribute(torch.rand(1, 3, 8, 8), n_clusters=2)


# ----------------------------------------------------------------------------- image dtypes
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.int32, torch.bool])
def test_integer_images_are_refused_by_nave_as_by_attribute(dtype):
    model = small_cnn()
    x = (torch.rand(1, 3, 16, 16) * 255).to(dtype)
    msg = rf"inputs: expected a floating point tensor of normalised images, got dtype {dtype}"
    with pytest.raises(TypeError, match=msg):
        LayerClusterExplainer(model, ["1"]).attribute(x, n_clusters=3)
    with pytest.raises(TypeError, match=msg):
        attribute("gradcam", model, x, target=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_images_are_converted_to_the_model_dtype(dtype):
    model = small_cnn()
    x = torch.rand(2, 3, 16, 16).to(dtype)  # values exactly representable in `dtype`
    ex = LayerClusterExplainer(model, ["1", "3"])
    ref = ex.explain(x.float(), n_clusters=3, random_state=0)
    got = ex.explain(x, n_clusters=3, random_state=0)
    assert torch.equal(got.segments, ref.segments)
    assert torch.equal(got.centroids, ref.centroids)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # model untouched
    for method in ("gradcam", "ig", "lrp"):
        a = attribute(method, model, x, target=1)
        b = attribute(method, model, x.float(), target=1)
        assert torch.equal(a.maps, b.maps), method
    # a float64 model gets float64 inputs: no silent loss of precision
    m64 = small_cnn().double()
    r64 = LayerClusterExplainer(m64, ["1"]).explain(x.float(), n_clusters=3, random_state=0, dtype=torch.float64)
    r64b = LayerClusterExplainer(m64, ["1"]).explain(x.double(), n_clusters=3, random_state=0, dtype=torch.float64)
    assert torch.equal(r64.centroids, r64b.centroids)


# ----------------------------------------------------------------------------- explainer arguments
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"layers": 3.5}, TypeError, r"layers: expected a module, a dotted name \(str\), a block index \(int\) or a list of them, got 3.5"),
        ({"layers": None}, TypeError, r"layers: expected .*got None"),
        ({"layers": ["1", "1"]}, ValueError, r"layers: expected distinct layers, got '1' and '1' \(both the module '1'\)"),
        ({"layers": ["1", "MODULE"]}, ValueError, r"layers: expected distinct layers, got '1' and ReLU \(both the module '1'\)"),
        ({"layers": ["1"], "patch_size": 0}, ValueError, r"patch_size: expected an int >= 1 or a pair of them, got 0"),
        ({"layers": ["1"], "patch_size": (16, -1)}, ValueError, r"patch_size: expected an int >= 1 or a pair of them, got \(16, -1\)"),
        ({"layers": ["1"], "patch_size": 2.5}, TypeError, r"patch_size: expected an int >= 1 or a pair of them, got 2.5"),
        ({"layers": ["1"], "num_prefix_tokens": 1.0}, TypeError, r"num_prefix_tokens: expected an int >= 0 or None, got 1.0"),
    ],
)
def test_constructor_errors(kwargs, error, match):
    model = small_cnn()
    if isinstance(kwargs["layers"], list):  # "MODULE": the module object of layer "1"
        kwargs = {**kwargs, "layers": [model[1] if s == "MODULE" else s for s in kwargs["layers"]]}
    with pytest.raises(error, match=match):
        LayerClusterExplainer(model, **kwargs)


def test_patch_size_zero_on_a_vit_is_refused_before_any_division():
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                            depth=2, embed_dim=48, num_heads=2, num_classes=3).eval()
    with pytest.raises(ValueError, match="patch_size: expected an int >= 1"):
        LayerClusterExplainer(vit, [-1], patch_size=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"dtype": torch.int64}, ValueError, r"dtype: expected a floating point torch.dtype .*got torch.int64"),
        ({"dtype": "float64"}, TypeError, r"dtype: expected a floating point torch.dtype or None, got 'float64'"),
        ({"random_state": 2**70}, ValueError, r"random_state: expected an int in \[-2\*\*63, 2\*\*64 - 1\], got 1180591620717411303424"),
        ({"random_state": 1.5}, TypeError, r"random_state: expected an int, a torch.Generator or None, got 1.5"),
        ({"eps": -1e-3}, ValueError, r"eps: expected a finite number >= 0, got -0.001"),
        ({"eps": float("nan")}, ValueError, r"eps: expected a finite number >= 0, got nan"),
        ({"tol": float("nan")}, ValueError, r"tol: expected a finite number >= 0, got nan"),
        ({"tol": -1.0}, ValueError, r"tol: expected a finite number >= 0, got -1.0"),
        ({"tol": "1e-4"}, TypeError, r"tol: expected a finite number >= 0, got '1e-4'"),
        ({"n_init": 0}, ValueError, r"n_init: expected an int >= 1, got 0"),
        ({"max_iter": 2.0}, TypeError, r"max_iter: expected an int >= 1, got 2.0"),
        ({"n_clusters": 3.0}, TypeError, r"n_clusters: expected an int >= 2 or 'auto', got 3.0"),
        ({"n_clusters": np.int64(1)}, ValueError, r"n_clusters: expected an int >= 2 or 'auto', got np.int64\(1\)"),
        ({"n_clusters": "auto", "k_range": [2, 3.5]}, TypeError, r"k_range: expected at least two ints >= 2, got \[2, 3.5\]"),
        ({"shared": 1}, TypeError, r"shared: expected a bool, got 1"),
        ({"attribute_to_layer_input": "no"}, TypeError, r"attribute_to_layer_input: expected a bool, got 'no'"),
        ({"resolution": (8, 0)}, ValueError, r"resolution: expected 'layer', 'input' or a pair of positive ints"),
    ],
)
def test_attribute_errors(kwargs, error, match):
    x, _ = direction_image()
    ex = LayerClusterExplainer(DirectionNet(), ["feat"])
    kwargs = dict(kwargs)
    k = kwargs.pop("n_clusters", 3)
    with pytest.raises(error, match=match):
        ex.attribute(x, k, **kwargs)


def test_numpy_integers_and_floats_are_accepted_everywhere():
    x, truth = direction_image()
    ex = LayerClusterExplainer(DirectionNet(), ["feat"])
    plain = ex.explain(x, 3, random_state=0, n_init=2, max_iter=50, tol=1e-4, eps=1e-8)
    numpy = ex.explain(
        x, np.int64(3), random_state=np.int64(0), n_init=np.int32(2), max_iter=np.int16(50),
        tol=np.float32(1e-4), eps=np.float64(1e-8), resolution=(np.int64(8), np.int64(12)),
        k_range=np.arange(3, 6),
    )
    assert torch.equal(numpy.segments, plain.segments) and torch.equal(numpy.segments[0, 0], truth)
    # the configuration holds plain Python numbers (it is written to JSON by the CLI and reports)
    assert json.loads(json.dumps(numpy.config))["n_clusters"] == 3
    skip = ("resolution", "k_range", "tol")  # tol: float32(1e-4) is not 1e-4
    assert {k: v for k, v in numpy.config.items() if k not in skip} == {
        k: v for k, v in plain.config.items() if k not in skip
    }
    assert type(numpy.config["tol"]) is float and numpy.config["resolution"] == (8, 12)
    auto = ex.explain(x, "auto", k_range=np.arange(2, 5), random_state=0)
    assert int(auto.n_clusters[0]) in (2, 3, 4)
    cc = ConceptClusters(ex, np.int64(3), n_epochs=np.int64(1), n_init=np.int64(1),
                         init_max_iter=np.int64(5), random_state=np.int64(0)).fit(x)
    assert cc.cluster_centers_.shape == (3, 3)
    assert torch.equal(cc.predict(x)[0, 0].unique(), torch.arange(3))
    model = small_cnn()
    xi = torch.rand(1, 3, 16, 16)
    a = attribute("ig", model, xi, target=np.int64(2), n_steps=np.int64(8), internal_batch_size=np.int64(4))
    b = attribute("ig", model, xi, target=2, n_steps=8, internal_batch_size=4)
    assert torch.equal(a.maps, b.maps)
    g = attribute("gradcam", model, xi, target=2, layer="3", num_prefix_tokens=np.int64(0))
    assert torch.equal(g.maps, attribute("gradcam", model, xi, target=2, layer="3").maps)


@pytest.mark.parametrize(
    "params, error, match",
    [
        ({"n_clusters": 2.5}, TypeError, r"n_clusters: expected an int >= 2, got 2.5"),
        ({"n_epochs": 0}, ValueError, r"n_epochs: expected an int >= 1, got 0"),
        ({"init_max_iter": True}, TypeError, r"init_max_iter: expected an int >= 1, got True"),
        ({"random_state": 2**70}, ValueError, r"random_state: expected an int in \[-2\*\*63, 2\*\*64 - 1\]"),
        ({"progress": "yes"}, TypeError, r"progress: expected a bool or None, got 'yes'"),
        ({"resolution": "full"}, ValueError, r"resolution: expected 'layer', 'input' or a pair"),
    ],
)
def test_concept_clusters_errors(params, error, match):
    x, _ = direction_image()
    ex = LayerClusterExplainer(DirectionNet(), ["feat"])
    params = {"n_clusters": 3, **params}
    with pytest.raises(error, match=match):
        ConceptClusters(ex, **params).fit(x)


@pytest.mark.parametrize(
    "method, options, error, match",
    [
        ("ig", {"baselines": float("nan")}, ValueError, r"baselines: expected finite values"),
        ("ig", {"baselines": torch.full((1, 3, 16, 16), float("inf"))}, ValueError, r"baselines: expected finite values"),
        ("ig", {"baselines": "uniform", "random_state": 2**70}, ValueError, r"random_state: expected an int in"),
        ("ig", {"blur_sigma": float("nan"), "baselines": "blur"}, ValueError, r"blur_sigma: expected a finite number > 0"),
        ("ig", {"n_steps": 2.0}, TypeError, r"n_steps: expected an int >= 1, got 2.0"),
        ("lrp", {"epsilon": float("nan")}, ValueError, r"epsilon: expected a finite number >= 0, got nan"),
        ("lrp", {"epsilon": -1.0}, ValueError, r"epsilon: expected a finite number >= 0, got -1.0"),
        ("lrp", {"composite": "epsilon-gamma-box", "gamma": float("inf")}, ValueError, r"gamma: expected a finite number >= 0, got inf"),
        ("lrp", {"stabilizer": float("nan")}, ValueError, r"stabilizer: expected a finite number >= 0, got nan"),
        ("lrp", {"composite": "lrp"}, ValueError, r"composite: expected .auto. or one of epsilon, "),
        ("gradcam", {"patch_size": 0}, ValueError, r"patch_size: expected an int >= 1 or a pair of them, got 0"),
        ("gradcam", {"relu_attributions": 1}, TypeError, r"relu_attributions: expected a bool, got 1"),
    ],
)
def test_attribution_option_errors(method, options, error, match):
    model = small_cnn()
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(error, match=match):
        attribute(method, model, x, target=0, **options)


def test_seed_range_is_torch_generator_range():
    """The bounds given in the message are the ones torch accepts."""
    g = torch.Generator()
    g.manual_seed(2**64 - 1)
    g.manual_seed(-(2**63))
    for bad in (2**64, -(2**63) - 1):
        with pytest.raises((RuntimeError, ValueError)):
            g.manual_seed(bad)
    x, _ = direction_image()
    ex = LayerClusterExplainer(DirectionNet(), ["feat"])
    ex.attribute(x, 3, random_state=2**64 - 1)
    with pytest.raises(ValueError, match="random_state"):
        ex.attribute(x, 3, random_state=2**64)
    assert math.isfinite(float(ex.explain(x, 3, random_state=-(2**63)).inertia[0]))


# ----------------------------------------------------------------------------- the rest of the API
def _np_vs_py():
    """(name, call with NumPy scalars, call with Python scalars): results must be equal."""
    from captum_nave.evaluation import CorLocProtocol, SlicSegmenter, extract_components, grid_labels, slic_labels
    from captum_nave.data import check_shards as _check_shards  # the one shard rule (runner, CLI, torchrun)
    from captum_nave.models import imagenet_class_name, resize_images
    from captum_nave.registers import ViTLayout
    from captum_nave.registers.norms import detect_outliers
    from captum_nave.registers.stats import paired_bootstrap_ci
    from captum_nave.visualization import concept_top_images, segment_colors

    rng = np.random.default_rng(0)
    img = (rng.random((24, 24, 3)) * 255).astype(np.uint8)
    lab = np.kron(np.arange(4).reshape(2, 2), np.ones((12, 12), dtype=np.int64))
    norms = torch.tensor([[1.0, 1.1, 0.9, 1.0, 9.0, 1.05]])
    maps = np.stack([lab, lab[::-1]])[:, None]
    a, b = rng.random(20), rng.random(20)
    i64, f64 = np.int64, np.float64
    return [
        ("slic_labels", lambda: slic_labels(img, n_segments=i64(4), compactness=f64(10.0)),
         lambda: slic_labels(img, n_segments=4, compactness=10.0)),
        ("grid_labels", lambda: grid_labels(i64(6), i64(9), i64(2), i64(3)), lambda: grid_labels(6, 9, 2, 3)),
        ("SlicSegmenter", lambda: SlicSegmenter(i64(4), pad_multiple=(i64(8), i64(8)))(img),
         lambda: SlicSegmenter(4, pad_multiple=(8, 8))(img)),
        ("extract_components", lambda: [c.area for c in extract_components(lab, min_area=i64(3), border=i64(1))],
         lambda: [c.area for c in extract_components(lab, min_area=3, border=1)]),
        ("CorLocProtocol", lambda: json.dumps(CorLocProtocol(min_area=i64(3), border=i64(1), iou_threshold=np.float32(0.5),
                                                             connectivity=i64(8)).to_dict()),
         lambda: json.dumps(CorLocProtocol(min_area=3, border=1, iou_threshold=0.5, connectivity=8).to_dict())),
        ("shards", lambda: _check_shards(i64(4), i64(3)), lambda: (4, 3)),
        ("imagenet_class_name", lambda: imagenet_class_name(i64(281)), lambda: imagenet_class_name(281)),
        ("resize_images", lambda: resize_images(torch.rand(1, 3, 20, 30, generator=torch.Generator().manual_seed(0)), (i64(16), i64(16))),
         lambda: resize_images(torch.rand(1, 3, 20, 30, generator=torch.Generator().manual_seed(0)), (16, 16))),
        ("ViTLayout", lambda: ViTLayout(num_prefix_tokens=i64(5), cls_index=i64(0), register_indices=(i64(1), i64(2)),
                                        patch_size=i64(16), num_heads=i64(3), scale=f64(0.125)),
         lambda: ViTLayout(num_prefix_tokens=5, cls_index=0, register_indices=(1, 2), patch_size=16, num_heads=3, scale=0.125)),
        ("detect_outliers", lambda: detect_outliers(norms, k=i64(3), min_ratio=f64(2.0)),
         lambda: detect_outliers(norms, k=3.0, min_ratio=2.0)),
        ("paired_bootstrap_ci", lambda: paired_bootstrap_ci(a, b, n_boot=i64(50), confidence=f64(0.9)),
         lambda: paired_bootstrap_ci(a, b, n_boot=50, confidence=0.9)),
        ("segment_colors", lambda: segment_colors(i64(5)), lambda: segment_colors(5)),
        ("concept_top_images", lambda: concept_top_images(maps, n_top=i64(1)), lambda: concept_top_images(maps, n_top=1)),
    ]


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return repr(a) == repr(b)


@pytest.mark.parametrize("case", range(13))
def test_numpy_scalars_are_accepted_by_every_public_function(case):
    name, with_numpy, with_python = _np_vs_py()[case]
    assert _equal(with_numpy(), with_python()), name


def test_the_same_mistake_gets_the_same_message_everywhere():
    from captum_nave.evaluation import SlicSegmenter, extract_components, grid_labels
    from captum_nave.data import check_shards as _check_shards  # the one shard rule (runner, CLI, torchrun)
    from captum_nave.models import imagenet_class_name, resize_images
    from captum_nave.registers import ViTLayout
    from captum_nave.registers.norms import detect_outliers
    from captum_nave.registers.stats import paired_bootstrap_ci

    lab = np.zeros((8, 8), dtype=np.int64)
    cases = [
        (lambda: grid_labels(8, 8, 0, 2), ValueError, "rows: expected an int >= 1, got 0"),
        (lambda: SlicSegmenter(2.5), TypeError, "n_segments: expected an int >= 1, got 2.5"),
        (lambda: SlicSegmenter(3, compactness=float("nan")), ValueError, "compactness: expected a finite number > 0, got nan"),
        (lambda: extract_components(lab, min_area=-1), ValueError, "min_area: expected an int >= 0, got -1"),
        (lambda: _check_shards(2, 2), ValueError, r"shard_index: expected an int in \[0, 1\], got 2"),
        (lambda: imagenet_class_name(1000), ValueError, r"index: expected an int in \[0, 999\], got 1000"),
        (lambda: resize_images(torch.rand(1, 3, 8, 8), (0, 8)), ValueError, r"size: expected an int >= 1 or a pair of them, got \(0, 8\)"),
        (lambda: ViTLayout(num_prefix_tokens=1, cls_index=0, patch_size=0), ValueError, "patch_size: expected an int >= 1"),
        (lambda: ViTLayout(num_prefix_tokens=1.0), TypeError, "num_prefix_tokens: expected an int >= 0, got 1.0"),
        (lambda: ViTLayout(num_prefix_tokens=1, cls_index=0, scale=float("inf")), ValueError, "scale: expected a finite number > 0 or None, got inf"),
        (lambda: detect_outliers(torch.ones(1, 4), k=float("nan")), ValueError, "k: expected a finite number >= 0, got nan"),
        (lambda: detect_outliers(torch.ones(1, 4), method="fixed", threshold="1"), TypeError, "threshold: expected a finite number, got '1'"),
        (lambda: paired_bootstrap_ci([1.0], [2.0], confidence=1.0), ValueError, r"confidence: expected a finite number in \(0, 1\), got 1.0"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


def test_the_finite_check_has_no_false_alarm_when_the_sum_overflows():
    from captum_nave._validation import check_finite

    check_finite(torch.full((1, 3, 8, 8), 3e38))  # float32 sum overflows; every value is finite
    check_finite(torch.full((1, 3, 64, 64), 60000.0, dtype=torch.float16))
    check_finite(torch.full((1, 3, 8, 8), 1e308, dtype=torch.float64))
    x = torch.full((1, 3, 8, 8), 3e38)
    x[0, 2, 7, 1] = float("inf")
    with pytest.raises(ValueError, match=r"got 0 NaN and 1 infinite \(first at image 0, channel 2, row 7, column 1\)"):
        check_finite(x)

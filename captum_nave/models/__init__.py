"""Loading models and images by name, including a real ImageNet model that works offline.

* :mod:`.loading`: :func:`load_model` for the offline default ``"efficientnet_lite0"``,
  timm, torchvision (``tv:``), Hugging Face (``hf:``) and torch-hub (``hub:``) names;
  :func:`default_layers`;
* :mod:`.weights`: the packaged EfficientNet-Lite0 weights, state-dict mapping and hashing;
* :mod:`.network`: detecting an unreachable network in seconds;
* :mod:`.images`: reading, resizing and normalising images, the scikit-image samples;
* :mod:`.imagenet`: ImageNet-1k class names.
"""

from .images import SAMPLE_IMAGE_NAMES, load_image, normalize, preprocess, resize_images, sample_images
from .imagenet import imagenet_class_index, imagenet_class_name
from .loading import (
    DEFAULT_MODEL,
    available_model_names,
    default_layers,
    load_model,
    model_info,
)
from .weights import (
    WeightsUnavailableError,
    efficientnet_lite0_weights_path,
    map_state_dict_in_order,
    state_dict_sha256,
)

__all__ = [
    "DEFAULT_MODEL",
    "SAMPLE_IMAGE_NAMES",
    "WeightsUnavailableError",
    "available_model_names",
    "default_layers",
    "efficientnet_lite0_weights_path",
    "imagenet_class_index",
    "imagenet_class_name",
    "load_image",
    "load_model",
    "map_state_dict_in_order",
    "model_info",
    "normalize",
    "preprocess",
    "resize_images",
    "sample_images",
    "state_dict_sha256",
]

"""Grad-CAM for CNNs and Vision Transformers, through Captum's ``LayerGradCam``.

Grad-CAM (Selvaraju et al., ICCV 2017) weights each channel ``c`` of a layer's
activation ``A`` by the spatial mean of the target score's gradient,
``alpha_c = mean_{y,x} dS/dA_c[y, x]``, and returns ``relu(sum_c alpha_c A_c)``,
upsampled to the input size.

Captum's ``LayerGradCam`` averages the gradient over *all* dimensions after the
channel dimension, so on a ViT block, whose output is tokens ``(N, T, C)``, it averages
over the embedding and sums over tokens: a meaningless ``(N, 1, C)`` result. Here the
chosen layer gets a temporary forward hook that passes its output through a small
identity module (:class:`_GridView`, not part of the model):

* a CNN map ``(N, C, h, w)`` goes through unchanged;
* ViT tokens ``(N, T, C)`` are split into the prefix tokens (class, distillation and
  register tokens; their number is read from the model's adapter,
  :func:`captum_nave.adapters.get_adapter`, never assumed to be 1) and the
  patch tokens, which are reshaped to the patch grid ``(N, C, h, w)`` with
  :func:`captum_nave.activations.tokens_to_grid`, passed through the identity module
  and flattened back; the hook returns the same values, so the model computes exactly
  what it computed before.

``LayerGradCam`` is then run on the identity module, i.e. on the patch grid: the
prefix tokens are neither weighted nor summed into the map. The hook is removed in a
``finally`` block.

Default layers (:func:`default_gradcam_layer`, from the model's adapter)
-------------------------------------------------------------------------
=========================================  ==========================================
family                                     default layer
=========================================  ==========================================
ResNet (torchvision / timm)                ``layer4`` (last stage, stride 32)
VGG (torchvision ``features``)             the last ReLU in ``features`` (the rectified
                                           last convolution, before the last pooling)
timm EfficientNet / MobileNetV2           ``bn2`` (BatchNorm + activation after
(``conv_head`` + ``bn2``)                  ``conv_head``: the last spatial features)
timm MobileNetV3 (head after pooling)      ``blocks.{n-1}``
torchvision EfficientNet / MobileNet       ``features.{n-1}`` (the 1x1 head conv block)
ConvNeXt and other staged models           ``stages.{n-1}``
timm ViT, ``global_pool="token"``          ``blocks.{n-1}.norm1`` (see below)
timm ViT, other pooling (avg, max, map)    ``blocks.{n-1}``
torchvision ViT (class token)              ``encoder.layers.encoder_layer_{n-1}.ln_1``
Hugging Face ViT / DeiT / CLIP, DINOv2     the last block's pre-attention norm
backbones, torch-hub DINOv2 (CLS output)   (``layernorm_before``, ``norm1``,
                                           ``layer_norm1``)
Hugging Face DINOv2 classifiers (CLS and   the last block
patch mean), SigLIP (attention pooling)
anything else                              the last module (in execution order) whose
                                           output is a spatial map with more than one
                                           pixel
=========================================  ==========================================

Why ``norm1`` of the last block for class-token ViTs: the head reads only the class
token of the last block's *output*; the patch tokens of that output are not used by any
later computation, so the gradient of the class score with respect to them is exactly
zero and Grad-CAM on ``blocks[-1]`` is an all-zero map. The patch tokens entering the
last block's attention (``blocks[-1].norm1``'s output) are the last patch
representations that still reach the class token, through the keys and values of that
attention. For average- or attention-pooled ViTs the last block's patch tokens feed
the head directly, so the last block itself is used.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn

from captum_nave._validation import check_bool, check_int, check_int_pair
from captum_nave.activations import LayerSpec, resolve_layers, tokens_to_grid
from captum_nave.adapters import get_adapter

from .registry import _forward_args, register_method

__all__ = ["default_gradcam_layer", "gradcam"]

_INTERPOLATION = ("bilinear", "bicubic", "nearest", "area")


class _GridView(nn.Module):
    """Identity on a spatial map ``(N, C, h, w)``: the module ``LayerGradCam`` hooks."""

    def forward(self, x: Tensor) -> Tensor:
        return x


# --------------------------------------------------------------------------- defaults
def _fallback_layer(model: nn.Module, inputs: Tensor, extra: Tuple[Any, ...]) -> str:
    """Name of the last module (execution order) whose output is a map with h*w > 1."""
    names = {m: n for n, m in model.named_modules() if n}
    last: List[str] = []
    handles = []

    def hook(mod: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
            last.append(names[mod])

    try:
        for m in names:
            handles.append(m.register_forward_hook(hook))
        with torch.no_grad():
            model(inputs[:1], *extra)
    finally:
        for h in handles:
            h.remove()
    if not last:
        raise ValueError(
            f"layer: no default Grad-CAM layer for {type(model).__name__} (no submodule outputs a "
            "spatial map); pass layer= (a module or a dotted name)"
        )
    return last[-1]


def default_gradcam_layer(
    model: nn.Module, inputs: Optional[Tensor] = None, additional_forward_args: Any = None
) -> str:
    """Dotted name of the documented default Grad-CAM layer of ``model``.

    See the module docstring for the rules per family.

    Parameters
    ----------
    model : nn.Module
    inputs : Tensor of shape (N, C, H, W), optional
        Needed only for the generic rule (one forward pass of the first image).
    additional_forward_args : any, optional
        Extra forward arguments for that pass.

    Returns
    -------
    str
    """
    name = get_adapter(model).default_gradcam_layer()
    if name is not None:
        return name
    if inputs is None:
        raise ValueError(f"layer: no default Grad-CAM layer for {type(model).__name__}; pass layer=")
    return _fallback_layer(model, inputs, _forward_args(additional_forward_args))


def _layer_name(model: nn.Module, layer: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is layer and name:
            return name
    return type(layer).__name__


def _prefix_count(model: nn.Module, given: Optional[int]) -> Optional[int]:
    if given is not None:
        return check_int(given, "num_prefix_tokens", low=0, allow_none=True)
    return get_adapter(model).num_prefix_tokens


# --------------------------------------------------------------------------- method
def gradcam(
    model: nn.Module,
    inputs: Tensor,
    target: Tensor,
    *,
    layer: Optional[LayerSpec] = None,
    relu_attributions: bool = True,
    attribute_to_layer_input: bool = False,
    interpolate_mode: str = "bilinear",
    num_prefix_tokens: Optional[int] = None,
    patch_size: Optional[Union[int, Tuple[int, int]]] = None,
    additional_forward_args: Any = None,
) -> Tuple[Tensor, Tensor, None, Dict[str, Any]]:
    """Grad-CAM of ``target`` at ``layer`` (registered as ``"gradcam"``).

    Call it through ``captum_nave.attribution.attribute("gradcam", model, inputs, target,
    **options)``, which also resolves ``target="auto"`` and protects the model.

    Parameters
    ----------
    model : nn.Module
        CNN or ViT classifier returning (N, K) scores (a Hugging Face ``ModelOutput`` is
        unwrapped by the model's adapter).
    inputs : Tensor of shape (N, C, H, W)
    target : LongTensor of shape (N,)
    layer : module, dotted name or int, optional
        Layer whose output (or input) is explained; default
        :func:`default_gradcam_layer`. Its output must be a map (N, C, h, w) or tokens
        (N, T, C) with ``num_prefix_tokens`` prefix tokens, and it must run once per
        forward pass.
    relu_attributions : bool, default True
        Keep only positive evidence (the Grad-CAM definition).
    attribute_to_layer_input : bool, default False
        Use the layer's input instead of its output.
    interpolate_mode : {"bilinear", "bicubic", "nearest", "area"}
        Upsampling of the layer map to the input size.
    num_prefix_tokens : int, optional
        Tokens before the patch tokens (class, distillation, registers); default read
        from the model's adapter. Only used for token layers.
    patch_size : int or (int, int), optional
        Default read from the model's adapter.
    additional_forward_args : any, optional
        Extra positional arguments of the model (Captum convention).

    Returns
    -------
    maps : Tensor of shape (N, 1, H, W)
    raw : Tensor of shape (N, 1, h, w)
        The map at the layer's (patch grid) resolution.
    delta : None
    options : dict
        ``layer`` (name), ``grid`` (h, w), ``num_prefix_tokens`` (for token layers) and
        the other options used.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: Grad-CAM needs an nn.Module (to hook a layer), got {type(model).__name__}")
    check_bool(relu_attributions, "relu_attributions")
    check_bool(attribute_to_layer_input, "attribute_to_layer_input")
    if interpolate_mode not in _INTERPOLATION:
        raise ValueError(f"interpolate_mode: expected one of {', '.join(_INTERPOLATION)}, got {interpolate_mode!r}")
    if layer is None:
        name = default_gradcam_layer(model, inputs, additional_forward_args)
        module = resolve_layers(model, [name])[0]
    else:
        module = resolve_layers(model, [layer])[0]
        name = layer if isinstance(layer, str) else _layer_name(model, module)
    prefix = _prefix_count(model, num_prefix_tokens)
    patch = get_adapter(model).patch_size if patch_size is None else check_int_pair(patch_size, "patch_size")

    hw = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    view = _GridView()
    calls = [0]
    info: Dict[str, Any] = {}

    def to_grid(value: Any) -> Tensor:
        calls[0] += 1
        if calls[0] > 1:
            raise ValueError(
                f"layer: {name!r} runs more than once per forward pass (a shared module); "
                "choose a layer that is called once"
            )
        if not isinstance(value, Tensor):
            raise TypeError(
                f"layer: {name!r} {'input' if attribute_to_layer_input else 'output'} is a "
                f"{type(value).__name__}; Grad-CAM needs a Tensor (N, C, h, w) or tokens (N, T, C)"
            )
        if value.dim() == 4:
            info["grid"] = tuple(value.shape[-2:])
            return view(value)
        if value.dim() == 3:
            if prefix is None:
                raise ValueError(
                    f"num_prefix_tokens: layer {name!r} gives tokens of shape {tuple(value.shape)} but "
                    "the model does not say how many prefix tokens precede the patches; pass "
                    "num_prefix_tokens= (and patch_size=)"
                )
            grid = view(tokens_to_grid(value, prefix, hw, patch))
            info["grid"] = tuple(grid.shape[-2:])
            info["num_prefix_tokens"] = prefix
            patches = grid.flatten(2).transpose(1, 2)
            return torch.cat([value[:, :prefix], patches], dim=1)
        raise ValueError(
            f"layer: {name!r} gives a tensor of shape {tuple(value.shape)}; Grad-CAM needs a "
            "spatial map (N, C, h, w) or tokens (N, T, C)"
        )

    def pre_hook(mod: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
        if not args:
            raise ValueError(f"layer: {name!r} received no positional input to explain")
        return (to_grid(args[0]),) + tuple(args[1:])

    def hook(mod: nn.Module, args: Tuple[Any, ...], out: Any) -> Any:
        if isinstance(out, tuple) and out and isinstance(out[0], Tensor):  # e.g. HF 4.x layers
            return (to_grid(out[0]),) + tuple(out[1:])
        return to_grid(out)

    def start(mod: nn.Module, args: Any) -> None:  # the call count is per forward pass
        calls[0] = 0
        finished[0] = False

    def end(mod: nn.Module, args: Any, out: Any) -> None:
        finished[0] = True

    finished = [False]
    handles = []
    try:
        handles.append(model.register_forward_pre_hook(start))
        handles.append(model.register_forward_hook(end))
        if attribute_to_layer_input:
            handles.append(module.register_forward_pre_hook(pre_hook))
        else:
            handles.append(module.register_forward_hook(hook))
        raw = LayerGradCam(get_adapter(model).forward_logits(), view).attribute(
            inputs,
            target=target,
            additional_forward_args=additional_forward_args,
            relu_attributions=relu_attributions,
        )
    except Exception as exc:
        if finished[0] and calls[0] == 0:
            raise ValueError(f"layer: {name!r} did not run during the forward pass") from exc
        raise
    finally:
        for h in handles:
            h.remove()
    raw = raw.detach()
    maps = LayerAttribution.interpolate(raw, hw, interpolate_mode=interpolate_mode)
    options: Dict[str, Any] = {
        "layer": name,
        "relu_attributions": relu_attributions,
        "attribute_to_layer_input": attribute_to_layer_input,
        "interpolate_mode": interpolate_mode,
        **info,
    }
    return maps, raw, None, options


register_method("gradcam", gradcam)

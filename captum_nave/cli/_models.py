"""Model loading for the subcommands: one-line errors in terms of the command-line flags."""

from __future__ import annotations

from typing import Any, Dict, NoReturn, Optional, Sequence, Tuple

#: Help text of ``--model`` shared by the subcommands.
MODEL_HELP = (
    "efficientnet_lite0 (default, ImageNet weights, works offline), a timm name "
    "(resnet50, vit_small_patch14_reg4_dinov2.lvd142m), tv:<torchvision name>, "
    "hf:<Hugging Face repo> (hf:facebook/dinov2-with-registers-small; needs captum-nave[hf]) "
    "or hub:<owner/repo>:<entry> (hub:facebookresearch/dinov2:dinov2_vits14_reg)"
)


def _fail(msg: str) -> NoReturn:
    from captum_nave.cli import CLIError

    raise CLIError(msg)


def load_model_cli(
    name: str, *, pretrained: bool, device: Any = None, flag: str = "--model"
) -> Tuple[Any, Dict[str, Any]]:
    """:func:`captum_nave.models.load_model`, with user mistakes as one-line CLIErrors.

    An unknown name names ``flag``; unavailable weights (offline) name what could not
    be fetched and suggest ``--no-pretrained``.
    """
    from captum_nave import models

    try:
        return models.load_model(name, pretrained=pretrained, device=device)
    except models.WeightsUnavailableError as exc:
        _fail(exc.cli_message())
    except (ValueError, TypeError) as exc:
        _fail(f"{flag}: {' '.join(str(exc).split())}")


def check_input_size(model: Any, size: Sequence[int], name: str, flag: str = "--size") -> None:
    """Refuse an input size the model cannot take (fixed-size ViTs), naming ``flag``."""
    from captum_nave.adapters import get_adapter

    fixed: Optional[Tuple[int, int]] = get_adapter(model).input_size()
    if fixed is not None and tuple(fixed) != tuple(size):
        _fail(
            f"{flag}: model {name!r} only accepts {fixed[0]}x{fixed[1]} inputs, got "
            f"{size[0]}x{size[1]}"
        )


def class_scores(model: Any, x: Any) -> Any:
    """The model's class scores ``(N, K)`` for ``x`` without gradients (``ModelOutput`` unwrapped)."""
    import torch

    from captum_nave.adapters import logits_function

    with torch.no_grad():
        return logits_function(model)(x)

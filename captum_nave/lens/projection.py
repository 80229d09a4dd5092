"""The class-embedding lens: every block's tokens projected onto the classes.

Vilas, Schaumlöffel & Roig ("Analyzing Vision Transformers for Image Classification in
Class Embedding Space", NeurIPS 2023) read the hidden tokens of any block through the
model's final norm and classifier head (the class embeddings) and ask when image
tokens start to carry the class. :func:`class_lens` does this for every block and
token of a ViT (which norm and head, for CLS, average-pool and register models:
:class:`~captum_nave.lens.LensSpec`) and keeps, per layer, image and token, the logit
of the explained class, its rank among all classes (0 = the top class) and the top
class. :class:`LensResult` then gives

* **identifiability** per layer of a token group (patch tokens, CLS, each register):
  the fraction of tokens that rank the class within the top ``k`` (``k = 1``: the
  class is the token's top class);
* per **NAVE segment** (segments mapped to the patch grid by majority vote): the
  fraction of its tokens that identify the class at each layer, and the first layer
  from which the segment identifies the class (at least ``threshold`` of its tokens,
  at that layer and every later one);
* figures: identifiability per layer, a segment x layer heatmap, and the tokens of one
  layer on the image (:mod:`captum_nave.lens.plots`).

Only block outputs are read (forward hooks, removed afterwards, also on failure); the
model is never modified. Memory is ``O(layers x images x tokens)``: the class scores of
a token are reduced to the three numbers above as soon as they are computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._spec import LensSpec, lens_spec

__all__ = ["LensResult", "class_lens", "segments_on_grid"]


@dataclass
class LensResult:
    """Result of :func:`class_lens`.

    Attributes
    ----------
    logit : Tensor of shape (L, N, T), float32
        Score of the explained class for every block (layer), image and token
        (``T`` = prefix tokens + patch tokens, in the model's order).
    rank : LongTensor of shape (L, N, T)
        Number of classes scored higher than the explained class (0: it is the top class).
    top : LongTensor of shape (L, N, T)
        The top class of every token.
    target : LongTensor (N,)
    grid : (int, int)
        Patch grid ``(h, w)``.
    spec : LensSpec
        The blocks, norm, head and token layout used.
    num_classes : int
    model_logits : Tensor of shape (N, K)
        The model's own output, for reference.
    config : dict
    """

    logit: Tensor
    rank: Tensor
    top: Tensor
    target: Tensor
    grid: Tuple[int, int]
    spec: LensSpec
    num_classes: int
    model_logits: Tensor
    config: Dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.rank.shape[0])

    @property
    def patch_slice(self) -> slice:
        return slice(self.spec.layout.num_prefix_tokens, None)

    def token_groups(self) -> Dict[str, List[int]]:
        """Token positions per group: ``"patches"``, ``"cls"`` and ``"register r"`` (when present)."""
        lay = self.spec.layout
        groups: Dict[str, List[int]] = {"patches": list(range(lay.num_prefix_tokens, self.rank.shape[2]))}
        if lay.has_cls:
            groups["cls"] = [int(lay.cls_index)]  # type: ignore[arg-type]
        for r, idx in enumerate(lay.register_indices):
            groups[f"register {r}"] = [int(idx)]
        return groups

    def identifiable(self, top_k: int = 1) -> Tensor:
        """BoolTensor (L, N, T): the class is within the token's top ``top_k`` classes."""
        if isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 1:
            raise ValueError(f"top_k: expected an int >= 1, got {top_k!r}")
        return self.rank < int(top_k)

    def identifiability(self, group: str = "patches", top_k: int = 1, per_image: bool = False) -> Tensor:
        """Fraction of the group's tokens that identify the class, per layer.

        Parameters
        ----------
        group : str
            ``"patches"``, ``"cls"``, ``"register r"`` or ``"registers"`` (all registers).
        top_k : int, default 1
        per_image : bool, default False
            Return (L, N) instead of the mean over images (L,).

        Returns
        -------
        Tensor of shape (L,) or (L, N), float64
        """
        groups = self.token_groups()
        if group == "registers":
            idx = [i for k, v in groups.items() if k.startswith("register ") for i in v]
        else:
            idx = groups.get(group, [])
        if not idx:
            raise ValueError(f"group: expected one of {sorted(groups) + (['registers'] if self.spec.layout.num_registers else [])}, got {group!r}")
        frac = self.identifiable(top_k)[:, :, idx].to(torch.float64).mean(dim=2)
        return frac if per_image else frac.mean(dim=1)

    def patch_map(self, layer: int, what: str = "rank") -> Tensor:
        """Per-patch values of one layer on the grid: (N, h, w).

        ``what``: ``"rank"`` (LongTensor), ``"logit"`` or ``"identifiable"`` (bool).
        """
        li = self._layer(layer)
        src = {"rank": self.rank, "logit": self.logit, "identifiable": self.rank == 0}.get(what)
        if src is None:
            raise ValueError(f"what: expected 'rank', 'logit' or 'identifiable', got {what!r}")
        h, w = self.grid
        return src[li][:, self.patch_slice].reshape(-1, h, w)

    def segment_identifiability(self, segments: Tensor, top_k: int = 1) -> Tuple[Tensor, Tensor]:
        """Fraction of every segment's patch tokens that identify the class, per layer.

        Parameters
        ----------
        segments : LongTensor of shape (N, 1, H, W) or (N, h, w)
            NAVE segments at input resolution (mapped to the patch grid by majority vote,
            :func:`segments_on_grid`) or already on the patch grid.
        top_k : int, default 1

        Returns
        -------
        fraction : Tensor of shape (N, S, L), float64
            NaN for segment ids with no patch in an image.
        patches : LongTensor of shape (N, S)
            Patch tokens per segment.
        """
        grid_lab = self._grid_labels(segments)
        n = grid_lab.shape[0]
        lab = grid_lab.reshape(n, -1)
        s = int(lab.max()) + 1
        ident = self.identifiable(top_k)[:, :, self.patch_slice].to(torch.float64)  # (L, N, P)
        counts = torch.zeros(n, s, dtype=torch.long)
        counts.scatter_add_(1, lab, torch.ones_like(lab))
        sums = torch.zeros(self.n_layers, n, s, dtype=torch.float64)
        sums.scatter_add_(2, lab[None].expand(self.n_layers, -1, -1), ident)
        frac = sums / counts[None].clamp_min(1)
        frac = torch.where(counts[None] > 0, frac, torch.full_like(frac, float("nan")))
        return frac.permute(1, 2, 0).contiguous(), counts

    def segment_first_layer(self, segments: Tensor, threshold: float = 0.5, top_k: int = 1) -> Tensor:
        """First layer from which each segment identifies the class (LongTensor (N, S)).

        A segment identifies the class at a layer when at least ``threshold`` of its
        patch tokens do; the result is the first layer ``l`` such that this holds at
        ``l`` and at every later layer; -1 when it never does (or the segment is absent).
        """
        if isinstance(threshold, bool) or not isinstance(threshold, Real) or not 0 < float(threshold) <= 1:
            raise ValueError(f"threshold: expected a number in (0, 1], got {threshold!r}")
        frac, _ = self.segment_identifiability(segments, top_k)
        ok = frac >= float(threshold)  # NaN -> False
        # holds from l on: reverse cumulative AND
        tail = torch.flip(torch.cummin(torch.flip(ok.to(torch.int8), dims=[2]), dim=2).values, dims=[2]).bool()
        first = torch.where(tail.any(dim=2), tail.to(torch.int8).argmax(dim=2), torch.full(tail.shape[:2], -1))
        return first.long()

    def plot_identifiability(self, **kw: Any) -> Tuple[Any, Any]:
        """See :func:`captum_nave.lens.plots.plot_identifiability`."""
        from .plots import plot_identifiability

        return plot_identifiability(self, **kw)

    def _layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, Integral) or not -self.n_layers <= layer < self.n_layers:
            raise ValueError(f"layer: expected a block index in [{-self.n_layers}, {self.n_layers - 1}], got {layer!r}")
        return int(layer) % self.n_layers

    def _grid_labels(self, segments: Tensor) -> Tensor:
        if not isinstance(segments, Tensor) or segments.is_floating_point() or segments.dtype == torch.bool:
            raise TypeError(f"segments: expected an integer label map, got {getattr(segments, 'dtype', type(segments).__name__)}")
        h, w = self.grid
        n = self.rank.shape[1]
        if segments.dim() == 3 and tuple(segments.shape) == (n, h, w):
            return segments.detach().cpu().long()
        if segments.dim() == 4 and segments.shape[:2] == (n, 1):
            return segments_on_grid(segments, self.grid)
        raise ValueError(
            f"segments: expected a label map ({n}, 1, H, W) or the patch grid ({n}, {h}, {w}), got {tuple(segments.shape)}"
        )


def segments_on_grid(segments: Tensor, grid: Sequence[int]) -> Tensor:
    """Majority segment id of every patch: (N, 1, H, W) -> LongTensor (N, h, w).

    The input is split into ``h x w`` equal cells (adaptive average pooling of the
    one-hot maps); ties go to the smaller id.
    """
    seg = segments.detach().cpu().long()[:, 0]
    k = int(seg.max()) + 1
    onehot = F.one_hot(seg, k).permute(0, 3, 1, 2).to(torch.float64)
    share = F.adaptive_avg_pool2d(onehot, (int(grid[0]), int(grid[1])))
    return share.argmax(dim=1)


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"block output: expected a Tensor (N, T, D) or a tuple starting with one, got {type(out).__name__}")


def class_lens(
    model: nn.Module,
    inputs: Tensor,
    target: Any = "auto",
    *,
    spec: Optional[LensSpec] = None,
    batch_size: int = 16,
) -> LensResult:
    """Project every block's tokens through the final norm and the head (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        A ViT classifier whose head reads one token or the token average (timm
        ``VisionTransformer`` with ``global_pool`` ``"token"`` or ``"avg"``, registers
        included; Hugging Face ``ViTForImageClassification``; others through ``spec``).
        Call ``.eval()`` first; the model is never modified and every hook is removed, also on failure.
    inputs : Tensor of shape (N, C, H, W)
    target : "auto", int, sequence of int or integer Tensor (N,)
        The class followed; ``"auto"``: the model's prediction.
    spec : LensSpec, optional
        Blocks, norm, head and token layout; read from the model by default
        (:func:`~captum_nave.lens.lens_spec`).
    batch_size : int, default 16
        Images per forward pass.

    Returns
    -------
    LensResult

    Examples
    --------
    >>> lens = class_lens(vit, x)                        # the predicted class
    >>> lens.identifiability("patches")                  # (L,): share of patch tokens with the class on top
    >>> lens.identifiability("cls")[-1]                  # 1.0: the last CLS projection is the prediction
    >>> lens.segment_first_layer(seg)                    # (N, K): from which block each NAVE segment carries it
    """
    from captum_nave.activations import preserve_model_state
    from captum_nave.adapters import output_logits
    from captum_nave.attribution.registry import resolve_target

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point() or inputs.shape[0] == 0:
        got = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"inputs: expected a non-empty float tensor of shape (N, C, H, W), got {got}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    spec = spec if spec is not None else lens_spec(model)
    if not isinstance(spec, LensSpec):
        raise TypeError(f"spec: expected a LensSpec, got {type(spec).__name__}")
    x = inputs.detach()
    layers = len(spec.blocks)
    logit_l, rank_l, top_l, outs = [], [], [], []
    target_t: Optional[Tensor] = None
    auto = target is None or (isinstance(target, str) and target.strip().lower() == "auto")
    with preserve_model_state(model), torch.no_grad():
        for start in range(0, x.shape[0], int(batch_size)):
            xb = x[start : start + int(batch_size)]
            captured: List[Optional[Tensor]] = [None] * layers

            def hook_for(i: int) -> Any:
                def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
                    captured[i] = _first_tensor(out).detach()
                return hook

            handles = [b.register_forward_hook(hook_for(i)) for i, b in enumerate(spec.blocks)]
            try:
                logits = model(xb)
            finally:
                for h in handles:
                    h.remove()
            logits = output_logits(model, logits)  # a Hugging Face ModelOutput -> its logits
            if not isinstance(logits, Tensor) or logits.dim() != 2:
                raise TypeError(f"model: expected class scores (N, K), got {getattr(logits, 'shape', type(logits).__name__)}")
            outs.append(logits.float().cpu())
            if any(c is None for c in captured):
                raise ValueError("spec: some blocks did not run in the forward pass; check LensSpec.blocks")
            if auto:
                t = logits.argmax(dim=1)
            else:
                if target_t is None:  # one class per image of the whole batch, checked once
                    target_t = resolve_target(target, logits[:1].expand(x.shape[0], -1))
                t = target_t[start : start + xb.shape[0]]
            lb, rb, pb = [], [], []
            for z in captured:
                scores = spec.project(z)  # (B, T, K)
                tl = scores.gather(2, t.to(scores.device)[:, None, None].expand(-1, scores.shape[1], 1))
                lb.append(tl[..., 0].float().cpu())
                rb.append((scores > tl).sum(dim=2).cpu())
                pb.append(scores.argmax(dim=2).cpu())
            logit_l.append(torch.stack(lb))
            rank_l.append(torch.stack(rb))
            top_l.append(torch.stack(pb))
    model_logits = torch.cat(outs)
    target_final = resolve_target(target, model_logits).cpu()
    n_tokens = logit_l[0].shape[2]
    grid = spec.layout.grid(tuple(x.shape[-2:]), num_tokens=n_tokens)
    return LensResult(
        logit=torch.cat(logit_l, dim=1), rank=torch.cat(rank_l, dim=1), top=torch.cat(top_l, dim=1),
        target=target_final, grid=grid, spec=spec, num_classes=int(model_logits.shape[1]),
        model_logits=model_logits, config={"pooling": spec.pooling, "source": spec.source},
    )

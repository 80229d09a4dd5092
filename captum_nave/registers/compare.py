"""Compare a ViT without registers with one with registers on the same images.

:func:`compare_registers` runs every measure of :mod:`captum_nave.registers` on
both models and returns a :class:`RegisterComparison` with per-image values,
paired aggregates (mean difference with a bootstrap confidence interval), set-level
CKA values, NAVE agreement with its seed noise floor, optional CorLoc with a
McNemar test, and the side-by-side figure.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch import Tensor, nn

from .agreement import label_agreement, nave_grid_labels, outlier_cluster_share
from .attention import attention_entropy, attention_masses
from .capture import TokenStatistics, collect_token_statistics
from .layout import ViTLayout, vit_adapter
from .norms import OutlierReport, detect_outliers, outlier_report
from .stats import mcnemar_test, paired_bootstrap_ci

from .comparison import MEASURES, AggregateRow, CorLocComparison, RegisterComparison

__all__ = ["compare_registers", "RegisterComparison", "AggregateRow", "CorLocComparison"]

# ----------------------------------------------------------------------------- main
def compare_registers(
    model_a: nn.Module,
    model_b: nn.Module,
    images: Tensor,
    *,
    images_b: Optional[Tensor] = None,
    layout_a: Optional[ViTLayout] = None,
    layout_b: Optional[ViTLayout] = None,
    names: Tuple[str, str] = ("without registers", "with registers"),
    layer: int = -1,
    n_clusters: int = 5,
    seeds: Tuple[int, int] = (0, 1),
    outlier_method: str = "robust",
    outlier_k: float = 5.0,
    outlier_threshold: Optional[float] = None,
    outlier_min_ratio: Optional[float] = 2.0,
    outlier_cluster_fraction: float = 0.5,
    boxes: Optional[Sequence[Any]] = None,
    corloc_strategy: str = "inner",
    corloc_protocol: Any = None,
    mcnemar_exact: bool = True,
    n_boot: int = 2000,
    confidence: float = 0.95,
    random_state: int = 0,
    attention_method: str = "auto",
    batch_size: int = 16,
    display_images: Optional[Tensor] = None,
    lens: bool = True,
) -> RegisterComparison:
    """Run every register measure on two ViTs and compare them image by image.

    Parameters
    ----------
    model_a, model_b : nn.Module
        Usually a ViT without registers (A) and its counterpart with registers (B); any
        pair of ViTs works (with or without CLS, different patch sizes). Neither model is
        changed (mode, ``requires_grad``, buffers, ``fused_attn``); call ``.eval()`` first.
    images : Tensor of shape (N, 3, H, W)
        Preprocessed input of model A (and of model B unless ``images_b``).
    images_b : Tensor of shape (N, 3, H', W'), optional
        Input of model B when it needs other preprocessing or size.
    layout_a, layout_b : ViTLayout, optional
        Token layouts; read from the models by their adapters when omitted
        (:mod:`captum_nave.adapters`).
    names : (str, str)
        Display names.
    layer : int, default -1
        Block whose output / attention / CLS update is measured (per model; -1 = last).
    n_clusters : int, default 5
        NAVE K (the paper's value).
    seeds : (int, int), default (0, 1)
        k-means seeds; the first gives the maps compared across models, the ARI
        between the two is the noise floor.
    outlier_method, outlier_k, outlier_threshold, outlier_min_ratio
        High-norm token rule, see :func:`captum_nave.registers.norms.detect_outliers`.
    outlier_cluster_fraction : float, default 0.5
        A NAVE cluster is "dominated by outliers" above this share of outlier tokens.
    boxes : sequence of N arrays of shape (M_i, 4), optional
        Ground-truth boxes ``(x_min, y_min, x_max, y_max)`` in pixels of ``images``;
        enables CorLoc with :class:`captum_nave.evaluation.corloc.CorLocProtocol`
        (scaled to ``images_b`` when its size differs).
    corloc_strategy : {"inner", "outer"}, default "inner"
    corloc_protocol : CorLocProtocol or {"authors", "clean"}, optional
        Protocol constants and conventions (default: the paper's constants with the
        authors' conventions; scale ``min_area`` / ``border`` for small images). Recorded
        in ``config["corloc_protocol"]`` and stated in :meth:`to_markdown`.
    mcnemar_exact : bool, default True
        Exact binomial McNemar test, else chi-square with continuity correction.
    n_boot, confidence, random_state
        Bootstrap of the paired differences.
    attention_method : {"auto", "qkv", "eager"}
        See :func:`captum_nave.registers.capture.collect_token_statistics`.
    batch_size : int, default 16
    display_images : Tensor of shape (N, 3, H, W) in [0, 1], optional
        Images for the figure; default: ``images`` min-max scaled per image.
    lens : bool, default True
        Run the class-embedding lens (:func:`captum_nave.lens.class_lens`) on every
        model that has a classifier head and add its ``lens_*`` measures.

    Returns
    -------
    RegisterComparison

    Examples
    --------
    >>> import timm, torch
    >>> kw = dict(pretrained=False, img_size=64, depth=4, embed_dim=64, num_heads=2)
    >>> plain = timm.create_model("vit_small_patch16_224", **kw).eval()
    >>> regs = timm.create_model("vit_small_patch16_224", reg_tokens=4, **kw).eval()
    >>> res = compare_registers(plain, regs, torch.randn(8, 3, 64, 64), n_clusters=3)
    >>> print(res.to_markdown())
    >>> fig, axes = res.plot([0, 1])          # axes.shape == (2, 7)
    """
    for nm, m in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{nm}: expected an nn.Module, got {type(m).__name__}")
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(
            "images: expected a tensor of shape (N, C, H, W), got "
            f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}"
        )
    xb = images if images_b is None else images_b
    if not isinstance(xb, Tensor) or xb.dim() != 4 or xb.shape[0] != images.shape[0]:
        raise ValueError(
            f"images_b: expected a tensor of shape ({images.shape[0]}, C, H, W) like images, got "
            f"{tuple(xb.shape) if isinstance(xb, Tensor) else type(xb).__name__}"
        )
    if not (isinstance(names, (tuple, list)) and len(names) == 2 and all(isinstance(s, str) for s in names)):
        raise TypeError(f"names: expected two strings, got {names!r}")
    if not (isinstance(seeds, (tuple, list)) and len(seeds) == 2 and all(isinstance(s, int) for s in seeds)) or seeds[0] == seeds[1]:
        raise ValueError(f"seeds: expected two different ints, got {seeds!r}")
    if corloc_strategy not in ("inner", "outer"):
        raise ValueError(f"corloc_strategy: expected 'inner' or 'outer', got {corloc_strategy!r}")
    corloc_protocol = _as_protocol(corloc_protocol)
    n = images.shape[0]
    if boxes is not None and len(boxes) != n:
        raise ValueError(f"boxes: expected one array of boxes per image ({n}), got {len(boxes)}")

    adapters = [vit_adapter(model_a, layout_a), vit_adapter(model_b, layout_b)]
    layouts = [a.layout for a in adapters]
    inputs = [images, xb]
    models = [model_a, model_b]
    okw = dict(method=outlier_method, k=outlier_k, threshold=outlier_threshold, min_ratio=outlier_min_ratio)

    per: Dict[str, List[np.ndarray]] = {m: [] for m in MEASURES}
    stats_l: List[TokenStatistics] = []
    outl_l: List[OutlierReport] = []
    nave_l: List[Any] = []
    layers: List[int] = []
    set_level: Dict[str, List[float]] = {}
    reg_share: List[Optional[np.ndarray]] = []
    cls_cos: List[Optional[np.ndarray]] = []
    hits: List[np.ndarray] = []
    lens_l: List[Any] = []

    for k in range(2):
        model, x, lay = models[k], inputs[k], layouts[k]
        st = collect_token_statistics(
            model, x, adapters[k], attention_layers="all", decompose_layers=(layer,),
            method=attention_method, batch_size=batch_size,
        )
        bl = st.block_index(layer)
        rep = outlier_report(st.block_norms, lay, **okw)
        npfx = lay.num_prefix_tokens
        in_mask = detect_outliers(st.norms[:, bl, npfx:], **okw)  # tokens entering block bl
        att = st.attention_at(bl)
        masses = attention_masses(att, lay, in_mask)
        first = rep.first_layer.double().numpy()
        first[first < 0] = np.nan
        vals: Dict[str, np.ndarray] = {
            "outlier_fraction": rep.fraction[:, bl].numpy(),
            "max_median_ratio": rep.max_median_ratio[:, bl].double().numpy(),
            "first_outlier_layer": first,
            "max_register_ratio": rep.register_ratio[:, bl].max(dim=-1).values.double().numpy()
            if lay.num_registers else np.full(n, np.nan),
            "attn_entropy": attention_entropy(att.mean(dim=1), lay).numpy(),
            "attn_entropy_heads": attention_entropy(att, lay).mean(dim=1).numpy(),
            "mass_cls": masses["cls"].double().numpy() if lay.has_cls else np.full(n, np.nan),
            "mass_registers": masses["registers"].double().numpy(),
            "mass_patches": masses["patches"].double().numpy(),
            "mass_outlier_patches": masses["outlier_patches"].double().numpy(),
        }
        dec = st.decompositions.get(bl)
        if dec is not None:
            nr, co = dec.norms(), dec.cosines()
            vals.update(
                norm_skip=nr["skip"].numpy(), norm_patches=nr["patches"].numpy(),
                norm_registers=nr["registers"].numpy() if lay.num_registers else np.full(n, np.nan),
                cos_patches_attn=co["patches_vs_attn"].numpy(),
                cos_registers_attn=co["registers_vs_attn"].numpy() if lay.num_registers else np.full(n, np.nan),
                cos_skip_residual=co["skip_vs_residual"].numpy(),
                cos_patches_residual=co["patches_vs_residual"].numpy(),
            )
            for key, v in dec.cka().items():
                if "registers" in key and not lay.num_registers:
                    v = float("nan")
                set_level.setdefault(f"cka_{key}", [float("nan"), float("nan")])[k] = v
        r0 = nave_grid_labels(model, x, lay, layer=bl, n_clusters=n_clusters, random_state=seeds[0])
        r1 = nave_grid_labels(model, x, lay, layer=bl, n_clusters=n_clusters, random_state=seeds[1])
        vals["nave_seed_ari"] = label_agreement(r0.grid_labels, r1.grid_labels)["ari"]
        vals["outlier_cluster_share"] = outlier_cluster_share(
            r0.grid_labels, rep.mask[:, bl], min_fraction=outlier_cluster_fraction
        )
        if boxes is not None:
            hits.append(_corloc_hits(r0.segments, boxes, images.shape[-2:], x.shape[-2:],
                                     corloc_strategy, corloc_protocol))
            vals["corloc_hit"] = hits[-1].astype(np.float64)
        lens_l.append(_lens(model, x, batch_size) if lens else None)
        if lens_l[-1] is not None:
            from captum_nave.lens.summary import image_measures

            vals.update(image_measures(lens_l[-1], bl))
        for m in MEASURES:
            per[m].append(np.asarray(vals.get(m, np.full(n, np.nan)), dtype=np.float64))
        reg_share.append(rep.register_high.double().mean(dim=0).numpy() if lay.num_registers else None)
        cc = st.cls_layer_cosine()
        cls_cos.append(None if cc is None else cc.mean(dim=0).numpy())
        stats_l.append(st)
        outl_l.append(rep)
        nave_l.append(r0)
        layers.append(bl)

    agree = label_agreement(nave_l[0].grid_labels, nave_l[1].grid_labels)
    pair = {"ari_between_models": agree["ari"], "nmi_between_models": agree["nmi"]}
    per_image = {m: (v[0], v[1]) for m, v in per.items()}
    aggregated: List[AggregateRow] = []
    for m, (va, vb) in per_image.items():
        if np.all(np.isnan(va)) and np.all(np.isnan(vb)):
            continue
        ci = paired_bootstrap_ci(va, vb, n_boot=n_boot, confidence=confidence, random_state=random_state)
        aggregated.append(AggregateRow(m, _nanmean(va), _nanmean(vb), ci, MEASURES[m]))
    for key, (ca, cb) in set_level.items():
        aggregated.append(AggregateRow(key, ca, cb, None, "linear CKA over the image set"))

    corloc = None
    if boxes is not None:
        corloc = CorLocComparison(
            hits_a=hits[0], hits_b=hits[1], corloc_a=float(hits[0].mean()), corloc_b=float(hits[1].mean()),
            mcnemar=mcnemar_test(hits[0], hits[1], exact=mcnemar_exact), strategy=corloc_strategy,
        )

    display = display_images if display_images is not None else _minmax(images)
    if display.shape[0] != n or display.dim() != 4 or display.shape[1] != 3:
        raise ValueError(
            f"display_images: expected shape ({n}, 3, H, W) with values in [0, 1], got {tuple(display.shape)}"
        )
    config = dict(
        names=tuple(names), layer=layer, n_clusters=n_clusters, seeds=tuple(seeds),
        outlier_method=outlier_method, outlier_k=outlier_k, outlier_threshold=outlier_threshold,
        outlier_min_ratio=outlier_min_ratio, outlier_cluster_fraction=outlier_cluster_fraction,
        corloc_strategy=corloc_strategy if boxes is not None else None,
        corloc_protocol=corloc_protocol.to_dict() if boxes is not None else None,
        mcnemar_exact=mcnemar_exact,
        n_boot=n_boot, confidence=confidence, random_state=random_state,
        attention_method=(stats_l[0].method, stats_l[1].method),
        attention_query=(stats_l[0].attention_query, stats_l[1].attention_query),
        layouts=(layouts[0], layouts[1]),
    )
    return RegisterComparison(
        names=(names[0], names[1]),
        layer=(layers[0], layers[1]),
        per_image=per_image,
        pair=pair,
        aggregated=aggregated,
        set_level={k: (v[0], v[1]) for k, v in set_level.items()},
        register_high_share=(reg_share[0], reg_share[1]),
        cls_layer_cosine=(cls_cos[0], cls_cos[1]),
        corloc=corloc,
        stats=(stats_l[0], stats_l[1]),
        outliers=(outl_l[0], outl_l[1]),
        nave=(nave_l[0], nave_l[1]),
        display=display.detach().float().cpu(),
        config=config,
        lens=(lens_l[0], lens_l[1]),
    )


def _lens(model: nn.Module, x: Tensor, batch_size: int) -> Any:
    """The class-embedding lens of a ViT classifier, or None without a classifier head."""
    from captum_nave.lens import class_lens
    from captum_nave.lens.summary import lens_available

    return class_lens(model, x, batch_size=batch_size) if lens_available(model) else None


def _nanmean(v: np.ndarray) -> float:
    v = np.asarray(v, dtype=np.float64)
    ok = ~np.isnan(v)
    return float(v[ok].mean()) if ok.any() else float("nan")


def _minmax(x: Tensor) -> Tensor:
    x = x.detach().float().cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def _as_protocol(protocol: Any) -> Any:
    """``corloc_protocol`` as a :class:`CorLocProtocol` (None: the paper's, authors' conventions)."""
    from captum_nave.evaluation.corloc import as_protocol

    return as_protocol(protocol, "corloc_protocol")


def _corloc_hits(
    segments: Tensor,
    boxes: Sequence[Any],
    hw_boxes: Sequence[int],
    hw_model: Sequence[int],
    strategy: str,
    protocol: Any,
) -> np.ndarray:
    proto = _as_protocol(protocol)
    sy = float(hw_model[0]) / float(hw_boxes[0])
    sx = float(hw_model[1]) / float(hw_boxes[1])
    out = np.zeros(segments.shape[0], dtype=bool)
    for i in range(segments.shape[0]):
        gt = np.asarray(boxes[i], dtype=np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])
        sel = proto.evaluate(segments[i, 0].cpu(), gt, strategies=(strategy,))
        out[i] = bool(sel[strategy].correct)
    return out

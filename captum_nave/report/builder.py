"""Build the self-contained HTML audit report: compute everything, then render it.

:func:`collect_report` runs NAVE (several k-means seeds), the attribution methods, the
per-segment relevance and ablation scores, the optional register comparison and CorLoc
evaluation, and records what is needed to reproduce the run. :func:`render_report`
turns the collected :class:`ReportData` into one HTML string (see
:mod:`captum_nave.report.sections`), and :func:`build_report` does both and writes the
file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from captum_nave._validation import check_bool, check_int

from .. import distributed as dist_utils
from ..data import shard_indices
from .data import CorLocRun, ModelRun, ReportData
from .environment import package_versions, platform_info, tensor_sha256
from .inputs import _check_choice_list, _check_seeds, _parse_images, _parse_models, _parse_size, transform_boxes
from .model_run import _add_faithfulness, _model_device, _model_run
from .shards import gather_model_run, shard_target

__all__ = [
    "DEFAULT_METHODS",
    "ModelRun",
    "CorLocRun",
    "ReportData",
    "collect_report",
    "render_report",
    "build_report",
]

#: Methods of a report by default, in panel order.
DEFAULT_METHODS: Tuple[str, ...] = ("nave", "gradcam", "ig", "lrp")



def collect_report(
    images: Any,
    models: Any,
    *,
    image_names: Optional[Sequence[str]] = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    layers: Any = None,
    n_clusters: int = 5,
    seeds: Sequence[int] = (0, 1, 2),
    size: Any = None,
    crop: bool = True,
    target: Any = "auto",
    class_names: Any = None,
    method_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
    importance: bool = True,
    faithfulness: bool = True,
    faithfulness_options: Optional[Mapping[str, Any]] = None,
    lens: bool = True,
    register_pair: Optional[Tuple[str, str]] = None,
    register_options: Optional[Mapping[str, Any]] = None,
    boxes: Optional[Sequence[Any]] = None,
    corloc_protocol: Any = None,
    title: str = "captum-nave report",
    on_error: str = "raise",
    progress: Optional[bool] = None,
    extra_config: Optional[Mapping[str, Any]] = None,
) -> ReportData:
    """Compute everything the report shows (see :func:`build_report` for the parameters).

    Under ``torchrun`` every rank computes the per-image results of its images
    (``i % world == rank``) for every model, and then the faithfulness measures
    (deletion / insertion curves, localisation, the randomisation check) of the same
    images on the merged maps; both are merged in image order on every rank, into what
    one process computes, so every rank returns the same data. The set-level sections
    follow on the merged results on every rank: the class-embedding lens (one forward
    pass over all images), the register comparison and CorLoc are not split.
    """
    from captum_nave.adapters import get_adapter
    from captum_nave.attribution import available_methods
    from captum_nave.lens import class_lens
    from captum_nave.lens.summary import lens_available
    from captum_nave.models import default_layers, normalize, resize_images

    t_start = time.perf_counter()
    if not isinstance(title, str):
        raise TypeError(f"title: expected a str, got {type(title).__name__}")
    if on_error not in ("raise", "record"):
        raise ValueError(f"on_error: expected 'raise' or 'record', got {on_error!r}")
    method_list = _check_choice_list(methods, "methods")
    if "nave" not in method_list:
        raise ValueError(f"methods: expected 'nave' among the methods (the report explains NAVE), got {method_list!r}")
    known = set(available_methods()) | {"nave"}
    unknown = [m for m in method_list if m not in known]
    if unknown:
        raise ValueError(f"methods: expected names from {sorted(known)}, got unknown {unknown!r}")
    seed_list = _check_seeds(seeds)
    n_clusters = check_int(n_clusters, "n_clusters", low=2)
    opts: Dict[str, Dict[str, Any]] = {}
    if method_options is not None:
        if not isinstance(method_options, Mapping):
            raise TypeError(f"method_options: expected a mapping method -> options, got {type(method_options).__name__}")
        for k, v in method_options.items():
            key = str(k).strip().lower()
            if key not in known:
                raise ValueError(f"method_options: unknown method {k!r}; expected one of {sorted(known)}")
            if not isinstance(v, Mapping):
                raise TypeError(f"method_options[{k!r}]: expected a mapping of options, got {type(v).__name__}")
            opts[key] = dict(v)
    check_bool(crop, "crop")
    check_bool(faithfulness, "faithfulness")
    check_bool(lens, "lens")
    from .faithfulness import check_faithfulness_options

    faith_opts = check_faithfulness_options(faithfulness_options)

    raw_images, names = _parse_images(images, image_names)
    specs = _parse_models(models)
    n = len(raw_images)
    target_size = _parse_size(size)
    if target_size is None:
        shapes = {tuple(t.shape[-2:]) for t in raw_images}
        if isinstance(images, Tensor) and len(shapes) == 1:
            target_size = shapes.pop()  # type: ignore[assignment]
        else:
            first = specs[0][2].get("input_size")
            target_size = (int(first[0]), int(first[1])) if first else (224, 224)
    x01 = torch.cat([resize_images(t, target_size, crop=crop) for t in raw_images])
    sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in raw_images]

    names_of_models = [s[0] for s in specs]
    if register_pair is not None:
        if not (isinstance(register_pair, (tuple, list)) and len(register_pair) == 2 and all(isinstance(v, str) for v in register_pair)):
            raise TypeError(f"register_pair: expected two model names, got {register_pair!r}")
        for nm in register_pair:
            if nm not in names_of_models:
                raise ValueError(f"register_pair: expected names of the report's models {names_of_models}, got {nm!r}")
        if register_pair[0] == register_pair[1]:
            raise ValueError(f"register_pair: expected two different models, got {tuple(register_pair)!r}")

    report_boxes: Optional[List[np.ndarray]] = None
    if boxes is not None:
        if isinstance(boxes, (str, bytes)) or not isinstance(boxes, Sequence) or len(boxes) != n:
            raise ValueError(f"boxes: expected one array of boxes (M, 4) per image ({n}), got {boxes!r}")
        report_boxes = [
            transform_boxes(b if b is not None else np.zeros((0, 4)), sizes[i], target_size, crop)
            for i, b in enumerate(boxes)
        ]

    layers_of: Dict[str, Any] = {}
    if isinstance(layers, Mapping):
        for k in layers:
            if k not in names_of_models:
                raise ValueError(f"layers: unknown model name {k!r}; models are {names_of_models}")
        layers_of = dict(layers)

    for name, module, _ in specs:
        fixed = get_adapter(module).input_size() if isinstance(module, nn.Module) else None
        if fixed is not None and tuple(fixed) != tuple(target_size):
            raise ValueError(
                f"size: model {name!r} only accepts {fixed[0]}x{fixed[1]} inputs, got "
                f"{target_size[0]}x{target_size[1]}; pass size={fixed[0]}"
            )

    show = (progress if progress is not None else False) and dist_utils.is_main_process()
    collected_warnings: List[str] = []
    runs: List[ModelRun] = []
    inputs_of: Dict[str, Tensor] = {}
    from tqdm.auto import tqdm

    steps = (len(specs) * (len(method_list) + int(importance) + int(faithfulness)) + int(register_pair is not None)
             + int(report_boxes is not None))
    bar = tqdm(total=steps, desc="report", unit="step", disable=not show)
    try:
        world = dist_utils.get_world_size()
        for name, model, info in specs:
            spec_layers = layers_of.get(name, layers if not isinstance(layers, Mapping) else None)
            if spec_layers is None:
                spec_layers = info.get("default_layers") or default_layers(model)
            if not spec_layers:
                raise ValueError(f"layers: model {name!r} has no default layers; name them with layers=")
            common = dict(
                layers=spec_layers, methods=method_list, opts=opts, seeds=seed_list, n_clusters=n_clusters,
                class_names=class_names, importance=importance, on_error=on_error, bar=bar,
                warnings_out=collected_warnings,
            )
            idx: Optional[List[int]] = None  # torchrun: this rank's images
            if world == 1:
                run = _model_run(name, model, info, x01, names, target, **common)
            else:  # torchrun: every rank explains its images; the parts are merged in image order
                idx = shard_indices(n, world, dist_utils.get_rank())
                mine: List[str] = []
                part, error = None, None
                try:
                    if idx:
                        common["warnings_out"] = mine
                        part = _model_run(name, model, info, x01[idx], [names[i] for i in idx],
                                          shard_target(target, idx, n), **common)
                except Exception as exc:  # raised on every rank by check_all_ok
                    error = exc
                dist_utils.check_all_ok(error)
                run, texts = gather_model_run(part, idx, n, mine)
                collected_warnings.extend(t for t in texts if t not in collected_warnings)
            # the set-level work below: the model's inputs (all images), normalised once
            device = _model_device(model)
            x = normalize(x01, info).to(device)
            if register_pair is not None and name in register_pair:
                inputs_of[name] = x
            if faithfulness:
                _add_faithfulness(run, model, x, x01, names, n_clusters=n_clusters, seed=seed_list[0], opts=opts,
                                  boxes=report_boxes, faith_opts=faith_opts, on_error=on_error,
                                  warnings_out=collected_warnings, indices=idx)  # split like the run
                bar.update(1)
            if lens and lens_available(model):
                t0 = time.perf_counter()
                run.lens = class_lens(model, x, run.targets.to(device))
                run.timings["lens"] = time.perf_counter() - t0
            runs.append(run)

        register = None
        if register_pair is not None:
            from captum_nave.registers import compare_registers

            a, b = register_pair
            model_of = {nm: m for nm, m, _ in specs}
            ropts = dict(register_options or {})
            ropts.setdefault("n_clusters", n_clusters)
            ropts.setdefault("seeds", (seed_list[0], seed_list[1]) if len(seed_list) >= 2 else (seed_list[0], seed_list[0] + 1))
            if report_boxes is not None and all(len(bx) > 0 for bx in report_boxes):
                ropts.setdefault("boxes", report_boxes)
                if corloc_protocol is not None:
                    ropts.setdefault("corloc_protocol", corloc_protocol)
            t0 = time.perf_counter()
            register = compare_registers(
                model_of[a], model_of[b], inputs_of[a], images_b=inputs_of[b], names=(a, b),
                display_images=x01, **ropts,
            )
            register_time = time.perf_counter() - t0
            bar.update(1)

        corloc_run = None
        if report_boxes is not None:
            corloc_run = _run_corloc(x01, runs, report_boxes, corloc_protocol, n_clusters)
            bar.update(1)
    finally:
        bar.close()

    total = time.perf_counter() - t_start
    timings_all = {"total": total}
    if register_pair is not None:
        timings_all["register comparison"] = register_time
    config: Dict[str, Any] = {
        "title": title,
        "methods": method_list,
        "n_clusters": n_clusters,
        "seeds": seed_list,
        "image size": list(target_size),
        "crop": crop,
        "target": target if isinstance(target, (str, int)) or target is None else [int(t) for t in torch.as_tensor(target).reshape(-1)],
        "layers": {r.name: r.layers for r in runs},
        "method options": {m: {k: _plain(v) for k, v in o.items()} for m, o in opts.items()},
        "segment importance": "FeatureAblation, baseline 0 (normalised input)" if importance else False,
        "faithfulness": {k: _plain(v) for k, v in faith_opts.items()} if faithfulness else False,
        "class-embedding lens": [r.name for r in runs if r.lens is not None] if lens else False,
        "register pair": list(register_pair) if register_pair is not None else None,
        "register options": {k: _plain(v) for k, v in (register_options or {}).items()},
        "boxes given": boxes is not None,
        "corloc protocol": corloc_run.protocol if corloc_run is not None else None,
        "on_error": on_error,
        "nave config": {r.name: {k: _plain(v) for k, v in r.nave.config.items()} for r in runs},
    }
    if dist_utils.get_world_size() > 1:
        config["processes"] = f"{dist_utils.get_world_size()} (torchrun; images split by index modulo the rank)"
    if extra_config:
        config.update({str(k): _plain(v) for k, v in extra_config.items()})
    return ReportData(
        title=title,
        images=x01,
        image_names=names,
        image_sizes=sizes,
        image_sha256=[tensor_sha256(x01[i]) for i in range(n)],
        methods=method_list,
        runs=runs,
        register=register,
        corloc=corloc_run,
        config=config,
        versions=package_versions(),
        platform=platform_info(),
        timings=timings_all,
        warnings=collected_warnings,
    )


def _plain(v: Any) -> Any:
    """JSON-friendly version of a configuration value."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(i) for i in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(i) for k, i in v.items()}
    if isinstance(v, Tensor):
        return f"Tensor{tuple(v.shape)}" if v.numel() > 8 else v.tolist()
    if isinstance(v, np.ndarray):
        return f"ndarray{v.shape}" if v.size > 8 else v.tolist()
    if hasattr(v, "to_dict"):
        try:
            return _plain(v.to_dict())
        except Exception:  # noqa: BLE001 - only for display
            pass
    return repr(v)


def _run_corloc(
    x01: Tensor, runs: List[ModelRun], boxes: List[np.ndarray], protocol: Any, n_clusters: int
) -> CorLocRun:
    from captum_nave.evaluation import CorLocProtocol, slic_labels

    proto = protocol if protocol is not None else CorLocProtocol()
    if not isinstance(proto, CorLocProtocol):
        raise TypeError(f"corloc_protocol: expected a CorLocProtocol, got {type(proto).__name__}")
    idx = [i for i, b in enumerate(boxes) if len(b) > 0]
    selections: Dict[str, List[Dict[str, Any]]] = {}
    for run in runs:
        seg = run.nave.segments.cpu()
        selections[run.name] = [proto.evaluate(seg[i, 0], boxes[i]) for i in idx]
    uint8 = (x01.permute(0, 2, 3, 1).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    selections["SLIC"] = [proto.evaluate(slic_labels(uint8[i], n_segments=n_clusters), boxes[i]) for i in idx]
    return CorLocRun(
        image_indices=idx,
        boxes=[boxes[i] for i in idx],
        selections=selections,
        protocol=proto.to_dict(),
        n_without_boxes=len(boxes) - len(idx),
    )


# --------------------------------------------------------------------------- render / build
def render_report(data: ReportData, *, dpi: float = 80) -> str:
    """The HTML document of a report (one self-contained string).

    Parameters
    ----------
    data : ReportData
        From :func:`collect_report`.
    dpi : float
        Resolution of the embedded figures.
    """
    from .sections import render

    if not isinstance(data, ReportData):
        raise TypeError(f"data: expected a ReportData, got {type(data).__name__}")
    return render(data, dpi=dpi)


def build_report(
    images: Any,
    models: Any,
    *,
    out_path: Union[str, "os.PathLike[str]"],
    image_names: Optional[Sequence[str]] = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    layers: Any = None,
    n_clusters: int = 5,
    seeds: Sequence[int] = (0, 1, 2),
    size: Any = None,
    crop: bool = True,
    target: Any = "auto",
    class_names: Any = None,
    method_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
    importance: bool = True,
    faithfulness: bool = True,
    faithfulness_options: Optional[Mapping[str, Any]] = None,
    lens: bool = True,
    register_pair: Optional[Tuple[str, str]] = None,
    register_options: Optional[Mapping[str, Any]] = None,
    boxes: Optional[Sequence[Any]] = None,
    corloc_protocol: Any = None,
    title: str = "captum-nave report",
    on_error: str = "raise",
    progress: Optional[bool] = None,
    extra_config: Optional[Mapping[str, Any]] = None,
    dpi: float = 80,
) -> Path:
    """Write ONE self-contained HTML audit report for images x models.

    The file has no external resources (figures are embedded as base64 PNG data URIs,
    CSS is inline, there is no JavaScript, and a Content-Security-Policy forbids scripts
    and remote loads); every user-provided string is HTML-escaped. Sections:

    * **Overview**: images, models, the class explained for each image;
    * **Side by side**: per model, image | NAVE | Grad-CAM | IG | LRP for every image,
      with each method's options and convergence deltas;
    * **Per-segment relevance**: per model and image, each NAVE segment's area share,
      its share of every attribution map's absolute relevance and its density (share /
      area), and the drop of the target score when the segment is ablated;
    * **Faithfulness** (``faithfulness``): deletion / insertion AUC of every map with
      pixels, NAVE segments (by each map's relevance mass and by segment importance),
      SLIC superpixels and a grid as units, against a random map; the cascading
      model-randomisation check of every method (NAVE included); pointing game and
      energy in box when ``boxes`` are given (:mod:`captum_nave.evaluation.faithfulness`);
    * **Class-embedding lens** (``lens``, ViTs with a classifier head): every block's
      tokens projected through the final norm and the head onto the classes; from which
      block patch tokens, CLS, registers and each NAVE segment carry the explained class
      (:mod:`captum_nave.lens`);
    * **Stability**: mean pairwise ARI of the NAVE maps over the k-means ``seeds`` and
      the paper's Fig. 4 (mean segment colour over seeds);
    * **Register comparison** (``register_pair``): :func:`captum_nave.registers.compare_registers`
      on the two models (table and figure);
    * **CorLoc** (``boxes``): the paper's protocol (:mod:`captum_nave.evaluation`) on the
      NAVE map of every model and on SLIC, per strategy, with per-image IoUs;
    * **Reproducibility**: the full configuration, package versions, platform, model
      weight hashes (checked unchanged after the run), image hashes, seeds and timings.

    Parameters
    ----------
    images : Tensor (N, 3, H, W) in [0, 1], sequence of (3, H, W) tensors / file paths, or mapping name -> image
        Images before normalisation. They are resized to ``size`` (see ``crop``).
    models : nn.Module, mapping name -> model, or sequence of models / (name, model) pairs
        A model may be given as ``(model, info)`` with the ``info`` dict of
        :func:`captum_nave.models.load_model` (``mean``, ``std``, ``default_layers``,
        ``input_size``, ...). Without ``info`` the normalisation is the timm
        ``pretrained_cfg``'s or ImageNet's. Models are used as they are (call ``.eval()``
        first) and never modified.
    out_path : str or path-like
        The HTML file to write (missing folders are created; written to a temporary file
        in the same folder and renamed). A folder is refused before anything is computed.
    image_names : sequence of str, optional
        Default: mapping keys, file stems, or ``"image i"``.
    methods : sequence of str, default ("nave", "gradcam", "ig", "lrp")
        ``"nave"`` plus any of :func:`captum_nave.attribution.available_methods`.
    layers : layer specs, or mapping model name -> layer specs, optional
        NAVE layers; default: ``info["default_layers"]`` or
        :func:`captum_nave.models.default_layers`.
    n_clusters : int, default 5
    seeds : sequence of int, default (0, 1, 2)
        k-means seeds; the first gives the maps shown, all give the stability.
    size : int or (int, int), optional
        Report image size; default: the batch's size for a tensor, else the first
        model's ``info["input_size"]``, else 224.
    crop : bool, default True
        Resize keeping the aspect ratio and centre-crop (True) or squash (False).
    target : "auto", int, or one int per image
        Class explained; ``"auto"``: each model's prediction.
    class_names : sequence, mapping, callable or None
        Display names of classes; default: ImageNet names for pretrained 1000-class
        models, else ``"class k"``.
    method_options : mapping method -> dict, optional
        Options for :func:`captum_nave.attribution.attribute` (e.g.
        ``{"ig": {"n_steps": 32, "internal_batch_size": 16}}``) and for NAVE
        (``{"nave": {"resolution": "input"}}``).
    importance : bool, default True
        Score every segment by ablation (:func:`captum_nave.attribution.segment_importance`).
    faithfulness : bool, default True
        Add the Faithfulness section.
    lens : bool, default True
        Add the Class-embedding lens section for ViT models with a classifier head.
    faithfulness_options : mapping, optional
        Settings of the Faithfulness section (defaults in
        :data:`captum_nave.report.faithfulness.DEFAULT_FAITHFULNESS`): ``n_steps`` (20),
        ``baseline`` (``"blur"``), ``blur_sigma``, ``output`` (``"probability"``),
        ``rankings``, ``slic_segments`` (50), ``grid`` ((4, 4)), ``tolerance`` (pointing
        game, 0 px), ``batch_size`` (32), ``randomisation_stages`` (4 stages spread over
        the cascade; ``None`` or ``True``: every stage; ``0``: no randomisation check).
    register_pair : (str, str), optional
        Names of a ViT without and one with registers among ``models``.
    register_options : mapping, optional
        Extra arguments of :func:`captum_nave.registers.compare_registers`.
    boxes : sequence of N arrays (M_i, 4), optional
        Ground-truth boxes ``(x_min, y_min, x_max, y_max)`` in pixels of each ORIGINAL
        image; mapped through the resize / crop. Enables the CorLoc section.
    corloc_protocol : CorLocProtocol, optional
        Protocol constants (default: the paper's; scale ``min_area`` and ``border`` for
        small images).
    title : str
    on_error : {"raise", "record"}, default "raise"
        What to do when an attribution method fails on a model: raise, or record the
        error in the report (and warn) and go on.
    progress : bool, optional
        Show a progress bar (default: no).
    extra_config : mapping, optional
        Additional entries of the configuration table (e.g. the command line).
    dpi : float, default 80
        Resolution of the embedded figures.

    Returns
    -------
    pathlib.Path
        The file written.

    Examples
    --------
    >>> from captum_nave.models import load_model, sample_images
    >>> from captum_nave.report import build_report
    >>> model, info = load_model()                        # offline EfficientNet-Lite0
    >>> path = build_report(sample_images(), {"efficientnet_lite0": (model, info)},
    ...                     out_path="report.html", size=160,
    ...                     method_options={"ig": {"n_steps": 16}})
    """
    from captum_nave.files import write_text

    path = Path(os.fspath(out_path))
    if path.is_dir():  # checked before hours of computing, not after
        raise IsADirectoryError(f"out_path: {os.fspath(path)!r} is a folder, expected an HTML file name")
    data = collect_report(
        images, models, image_names=image_names, methods=methods, layers=layers,
        n_clusters=n_clusters, seeds=seeds, size=size, crop=crop, target=target,
        class_names=class_names, method_options=method_options, importance=importance,
        faithfulness=faithfulness, faithfulness_options=faithfulness_options, lens=lens, register_pair=register_pair, register_options=register_options, boxes=boxes,
        corloc_protocol=corloc_protocol, title=title, on_error=on_error, progress=progress,
        extra_config=extra_config,
    )

    def write() -> Path:  # once, by rank 0 under torchrun; every rank returns when it is written
        text = render_report(data, dpi=dpi)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text, param="out_path", newline=None)
        return path

    return dist_utils.run_on_main(write)

"""What a report computes: the per-model run, the CorLoc run and the whole report's data."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from torch import Tensor


# --------------------------------------------------------------------------- results
@dataclass
class ModelRun:
    """Everything computed for one model.

    Attributes
    ----------
    name : str
        Display name (user-provided, escaped when rendered).
    info : dict
        ``mean``, ``std``, ``source``, ``pretrained``, ``num_classes`` as used.
    layers : list of str
        Layers NAVE clusters.
    weights_sha256 : str
        :func:`captum_nave.models.state_dict_sha256` before the run.
    weights_unchanged : bool
        The hash after the run equals the hash before.
    targets : LongTensor of shape (N,)
        Class explained per image.
    target_names : list of str
        Display name of each target class.
    target_probs : Tensor of shape (N,)
        Softmax probability of the target class.
    nave : NaveResult
        NAVE result of the first seed.
    seed_maps : LongTensor of shape (R, N, 1, H, W)
        NAVE segments for every seed.
    stability : list of float or None
        Mean pairwise ARI over seeds per image (``None`` with a single seed).
    attributions : dict of str to AttributionResult
        Per method other than ``"nave"``, in the requested order.
    errors : dict of str to str
        Methods that failed (``on_error="record"``), with the error message.
    relevance : dict of str to SegmentRelevanceTable
        Per attribution method, the split of its map over the NAVE segments.
    importance : Tensor of shape (N, K) or None
        Drop of the target score when each NAVE segment is ablated (FeatureAblation).
    faithfulness : FaithfulnessAudit or None
        Deletion / insertion AUCs of every map (:mod:`captum_nave.evaluation.faithfulness`).
    randomisation : RandomisationResult or None
        Cascading model-randomisation check of every method, NAVE included.
    lens : LensResult or None
        Class-embedding lens (:func:`captum_nave.lens.class_lens`) of a ViT with a
        classifier head, for the explained classes.
    timings : dict of str to float
        Seconds per stage (``nave``, each method, ``relevance``, ``importance``,
        ``faithfulness curves``, ``randomisation``); under torchrun the slowest rank's.
    """

    name: str
    info: Dict[str, Any]
    layers: List[str]
    weights_sha256: str
    weights_unchanged: bool
    targets: Tensor
    target_names: List[str]
    target_probs: Tensor
    nave: Any
    seed_maps: Tensor
    stability: Optional[List[float]]
    attributions: Dict[str, Any] = field(default_factory=dict)
    errors: Dict[str, str] = field(default_factory=dict)
    relevance: Dict[str, Any] = field(default_factory=dict)
    importance: Optional[Tensor] = None
    faithfulness: Any = None
    randomisation: Any = None
    lens: Any = None
    timings: Dict[str, float] = field(default_factory=dict)


@dataclass
class CorLocRun:
    """CorLoc of every model (and the SLIC baseline) on the images with boxes.

    Attributes
    ----------
    image_indices : list of int
        Images with at least one box inside the report's crop.
    boxes : list of ndarray of shape (M, 4)
        Ground-truth boxes in report pixels (after resizing / cropping), per image.
    selections : dict of str to list of dict
        ``{method name: [{"inner": Selection, "outer": Selection}, ...]}`` in the order
        of ``image_indices``; method names are the model names and ``"SLIC"``.
    protocol : dict
        The protocol constants.
    n_without_boxes : int
        Images left out because they had no box (or none inside the crop).
    """

    image_indices: List[int]
    boxes: List[np.ndarray]
    selections: Dict[str, List[Dict[str, Any]]]
    protocol: Dict[str, Any]
    n_without_boxes: int

    def corloc(self, method: str, strategy: str) -> float:
        """Fraction of images correctly localised by ``method`` with ``strategy``."""
        sel = self.selections[method]
        return float(np.mean([s[strategy].correct for s in sel])) if sel else math.nan

    def mean_iou(self, method: str, strategy: str) -> float:
        """Mean reported IoU of ``method`` with ``strategy``."""
        sel = self.selections[method]
        return float(np.mean([s[strategy].iou for s in sel])) if sel else math.nan


@dataclass
class ReportData:
    """Everything a report shows; produced by :func:`collect_report`.

    Attributes
    ----------
    title : str
    images : Tensor of shape (N, 3, H, W), values in [0, 1]
        The images as the models saw them (before normalisation).
    image_names : list of str
    image_sizes : list of (int, int)
        Original (H, W) of every image before resizing.
    image_sha256 : list of str
        Hash of every resized image tensor.
    methods : list of str
    runs : list of ModelRun
    register : RegisterComparison or None
    corloc : CorLocRun or None
    config : dict
        The full configuration of the call.
    versions : dict
    platform : dict
    timings : dict of str to float
    warnings : list of str
        Warnings raised while computing (also emitted with :mod:`warnings`).
    """

    title: str
    images: Tensor
    image_names: List[str]
    image_sizes: List[Tuple[int, int]]
    image_sha256: List[str]
    methods: List[str]
    runs: List[ModelRun]
    register: Any
    corloc: Optional[CorLocRun]
    config: Dict[str, Any]
    versions: Dict[str, Optional[str]]
    platform: Dict[str, str]
    timings: Dict[str, float]
    warnings: List[str] = field(default_factory=list)

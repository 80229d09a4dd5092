"""CorLoc object-extraction evaluation (the paper's proxy task, Tables 1-6).

* :mod:`~captum_nave.evaluation.corloc` -- the protocol: components, filters,
  oracle selection, reported IoU, CorLoc, with the authors' conventions
  (default) or clean float ones.
* :mod:`~captum_nave.evaluation.boxes` -- inner / outer boxes and IoU.
* :mod:`~captum_nave.evaluation.datasets` -- Pascal VOC, COCO JSON and
  folder + JSON readers.
* :mod:`~captum_nave.evaluation.segmenters` -- NAVE as a segmenter (image
  normalisation and padding as the authors' script).
* :mod:`~captum_nave.evaluation.baselines` -- SLIC and grid baselines.
* :mod:`~captum_nave.evaluation.runner` -- resumable, shardable runner with
  CSV / Markdown reports and multi-model comparison tables.

Examples
--------
>>> from captum_nave.evaluation import read_voc, NaveSegmenter, SlicSegmenter, run_corloc
>>> data = read_voc("VOCdevkit/VOC2007", split="trainval")
>>> methods = {"resnet50": NaveSegmenter(model.eval(), ["layer4"]), "slic": SlicSegmenter()}
>>> summary = run_corloc(data, methods, "out/voc07", strategies=("inner", "outer"))
>>> summary.corloc("resnet50", "inner")
"""

from .baselines import GridSegmenter, SlicSegmenter, grid_labels, slic_labels
from .corloc import (
    CONVENTIONS,
    STRATEGIES,
    Component,
    CorLocProtocol,
    Selection,
    as_protocol,
    authors_box_iou,
    box_iou,
    corloc,
    extract_components,
    inner_box,
    outer_box,
    select_component,
)
from .datasets import (
    DATASET_FORMATS,
    BoxDataset,
    ImageRecord,
    load_image,
    read_coco,
    read_dataset,
    read_folder,
    read_voc,
)
from .runner import (
    CorLocSummary,
    MethodScore,
    comparison_table,
    merge_runs,
    read_records,
    run_corloc,
    summarize_records,
    write_reports,
)
from .segmenters import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NaveSegmenter,
    Segmenter,
    padded_size,
    prepare_image,
)

__all__ = [
    "STRATEGIES",
    "CONVENTIONS",
    "Component",
    "CorLocProtocol",
    "Selection",
    "as_protocol",
    "box_iou",
    "authors_box_iou",
    "corloc",
    "extract_components",
    "inner_box",
    "outer_box",
    "select_component",
    "DATASET_FORMATS",
    "BoxDataset",
    "ImageRecord",
    "load_image",
    "read_coco",
    "read_dataset",
    "read_folder",
    "read_voc",
    "Segmenter",
    "NaveSegmenter",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "padded_size",
    "prepare_image",
    "SlicSegmenter",
    "GridSegmenter",
    "slic_labels",
    "grid_labels",
    "CorLocSummary",
    "MethodScore",
    "run_corloc",
    "merge_runs",
    "read_records",
    "summarize_records",
    "comparison_table",
    "write_reports",
]

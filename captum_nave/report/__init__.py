"""Self-contained HTML audit reports: NAVE beside Grad-CAM / IG / LRP, and more.

:func:`build_report` computes and writes ONE HTML file (figures embedded as base64 PNG,
inline CSS, no scripts, no external resources, every user string escaped) with the
side-by-side grids, per-segment relevance tables, stability across seeds, an optional
register comparison and CorLoc table, and a reproducibility section.
:func:`collect_report` / :func:`render_report` split the computation from the HTML.

Examples
--------
>>> from captum_nave.models import load_model, sample_images
>>> from captum_nave.report import build_report
>>> model, info = load_model()
>>> build_report(sample_images(), {"efficientnet_lite0": (model, info)}, out_path="report.html")
"""

from .builder import (
    DEFAULT_METHODS,
    CorLocRun,
    ModelRun,
    ReportData,
    build_report,
    collect_report,
    render_report,
)
from .inputs import transform_boxes
from .escaping import Markup, escape
from .sections import SECTION_IDS

__all__ = [
    "DEFAULT_METHODS",
    "SECTION_IDS",
    "CorLocRun",
    "Markup",
    "ModelRun",
    "ReportData",
    "build_report",
    "collect_report",
    "escape",
    "render_report",
    "transform_boxes",
]

"""The report's "Class-embedding lens" section (ViT models with a classifier head).

Every block's tokens are projected through the model's final norm and head onto the
classes (:func:`captum_nave.lens.class_lens`): the table gives, per block, the share
of patch tokens, of the CLS token and of the register tokens whose top class is the
explained one; a second table gives, per image and NAVE segment, the first block from
which the segment carries the class; the figure shows both and the last block's tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List

from .escaping import Markup, tag

if TYPE_CHECKING:  # pragma: no cover
    from .data import ReportData

__all__ = ["render_lens", "READING"]

READING = (
    "How to read this: following Vilas et al. (NeurIPS 2023), the tokens after every block are passed through the "
    "model's final norm and classifier head as if each were the feature the model classifies. A token 'identifies' "
    "the explained class when that class gets its highest score. The share of patch tokens that do shows from which "
    "block the image tokens carry the class; a NAVE segment identifies the class from the first block on which at "
    "least half of its tokens do, and keep doing so in every later block (-1: never). With registers, a high share "
    "for the register tokens means they hold the class (Lappe & Giese: the CLS output then reads the registers)."
)


def render_lens(data: "ReportData", dpi: float) -> Markup:
    """The section (id ``lens``)."""
    from captum_nave.lens.plots import plot_lens_overview
    from captum_nave.lens.summary import layer_rows, segment_rows

    from .sections import _fig_uri, _figure, _num, _section, _table, _td

    runs = [r for r in data.runs if getattr(r, "lens", None) is not None]
    parts: List[Any] = [tag("p", READING)]
    rows = []
    for run in runs:
        for r in layer_rows(run.lens, run.name):
            rows.append([_td(run.name, "text"), _td(r["layer"]), _td(_num(r["patches"])), _td(_num(r["cls"])),
                         _td(_num(r["registers"]))])
    parts.append(_table(["model", "block", "patch tokens", "CLS token", "register tokens"], rows,
                        caption="Share of tokens whose top class is the explained class, per block (mean over images).",
                        text_cols=(0,), id_="lens-table"))
    srows = []
    for run in runs:
        for r in segment_rows(run.lens, run.nave.segments, model=run.name, image_names=data.image_names):
            srows.append([_td(run.name, "text"), _td(r["image_name"], "text"), _td(r["segment"]), _td(r["tokens"]),
                          _td(r["first_layer"]), _td(_num(r["last_layer_share"]))])
    parts.append(tag("details", tag("summary", "Per NAVE segment: the first block from which it identifies the class"),
                     _table(["model", "image", "segment", "patch tokens", "first block (-1: never)",
                             "share at the last block"], srows, text_cols=(0, 1), id_="lens-segments-table")))
    for run in runs:
        fig, _ = plot_lens_overview(run.lens, data.images[0], run.nave.segments, 0, name=run.name)
        parts.append(_figure(_fig_uri(fig, dpi), f"class-embedding lens ({run.name})",
                             f"{run.name}: identifiability per block (left), per NAVE segment of "
                             f"{data.image_names[0]} (middle; dots: first identifying block), and the last block's "
                             "tokens (right; bright: the explained class is the token's top class)."))
    return _section("lens", "Class-embedding lens", *parts)

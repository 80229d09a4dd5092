"""CorLoc summaries: scores per method and strategy, Markdown tables."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .corloc import CorLocProtocol, _check_strategies

__all__ = ["MethodScore", "CorLocSummary", "summarize_records", "comparison_table"]


@dataclass(frozen=True)
class MethodScore:
    """CorLoc of one method with one strategy on one dataset.

    Attributes
    ----------
    dataset, method, strategy : str
    n_images : int
        Images evaluated.
    corloc : float
        Fraction of images with reported IoU ``>=`` the threshold (NaN if none).
    mean_iou : float
        Mean reported IoU (outer box of the selected component).
    n_no_component : int
        Images where no component survived the filters (counted as misses; the
        authors' script crashes on them).
    """

    dataset: str
    method: str
    strategy: str
    n_images: int
    corloc: float
    mean_iou: float
    n_no_component: int


@dataclass
class CorLocSummary:
    """Scores of every method and strategy on one dataset.

    Attributes
    ----------
    dataset : str
    methods : list of str
        In run order.
    strategies : tuple of str
    scores : list of MethodScore
    n_expected : int
        Images of the dataset assigned to the run (all shards).
    n_skipped : int
        Images of the dataset left out by the reader (no boxes).
    protocol : dict
        The protocol: ``conventions`` ("authors" or "clean") and constants.
    complete : bool
        Every method has a record for every expected image.
    n_outside_boxes : int
        Ground-truth boxes that leave their image, used as annotated.
    """

    dataset: str
    methods: List[str]
    strategies: Tuple[str, ...]
    scores: List[MethodScore]
    n_expected: int
    n_skipped: int
    protocol: Dict[str, Any]
    complete: bool = True
    n_outside_boxes: int = 0

    def score(self, method: str, strategy: str) -> MethodScore:
        """The :class:`MethodScore` of ``method`` with ``strategy``."""
        for s in self.scores:
            if s.method == method and s.strategy == strategy:
                return s
        raise KeyError(f"no score for method={method!r}, strategy={strategy!r}")

    def corloc(self, method: str, strategy: str) -> float:
        """CorLoc (fraction in [0, 1]) of ``method`` with ``strategy``."""
        return self.score(method, strategy).corloc

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable representation."""
        d = asdict(self)
        d["strategies"] = list(self.strategies)
        return d

    def to_markdown(self) -> str:
        """Markdown table: rows methods, columns strategies (CorLoc % and mean IoU).

        The caption states the protocol (conventions and constants), the images
        evaluated and skipped, and that images without a surviving component are
        misses (column "no component").
        """
        protocol = CorLocProtocol.from_dict(dict(self.protocol))
        outside = (
            f" {self.n_outside_boxes} ground-truth box(es) leave their image and are used as annotated."
            if self.n_outside_boxes
            else ""
        )
        lines = [
            f"## CorLoc on {self.dataset}",
            "",
            "CorLoc (%) = share of images whose selected component's outer box reaches the IoU "
            f"threshold with the matched ground-truth box; {protocol.describe()}. "
            f"Images: {self.n_expected} evaluated, {self.n_skipped} skipped (no boxes); images "
            "where no component survives the filters count as misses (column 'no component')."
            + outside
            + ("" if self.complete else " **Incomplete: some records are missing.**"),
            "",
        ]
        head = ["method"] + [f"{s} CorLoc" for s in self.strategies]
        head += [f"{s} mean IoU" for s in self.strategies] + ["images", "no component"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for m in self.methods:
            row = [m]
            row += [_pct(self.corloc(m, s)) for s in self.strategies]
            row += [_num(self.score(m, s).mean_iou) for s in self.strategies]
            first = self.score(m, self.strategies[0])
            row += [str(first.n_images), str(first.n_no_component)]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines) + "\n"


def _pct(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100.0 * v:.1f}"


def _num(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f}"


def summarize_records(
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    dataset: str,
    strategies: Sequence[str],
    protocol: Mapping[str, Any],
    n_expected: Optional[int] = None,
    n_skipped: int = 0,
    n_outside_boxes: int = 0,
) -> CorLocSummary:
    """Aggregate per-image records into a :class:`CorLocSummary`.

    Parameters
    ----------
    records : mapping of method name to list of records
        As written by :func:`run_corloc` (see :func:`read_records`).
    dataset : str
    strategies : sequence of str
    protocol : mapping
        Protocol constants, for the table caption.
    n_expected : int, optional
        Images each method should have; ``complete`` is False when one has fewer.
    n_skipped : int, default 0
    n_outside_boxes : int, default 0
    """
    strategies = _check_strategies(strategies)
    scores: List[MethodScore] = []
    complete = True
    for method, recs in records.items():
        if n_expected is not None and len(recs) < n_expected:
            complete = False
        for s in strategies:
            correct = [bool(r[s]["correct"]) for r in recs]
            ious = [float(r[s]["iou"]) for r in recs]
            scores.append(
                MethodScore(
                    dataset=dataset,
                    method=method,
                    strategy=s,
                    n_images=len(recs),
                    corloc=float(np.mean(correct)) if correct else math.nan,
                    mean_iou=float(np.mean(ious)) if ious else math.nan,
                    n_no_component=sum(1 for r in recs if r[s]["component"] < 0),
                )
            )
    return CorLocSummary(
        dataset=dataset,
        methods=list(records),
        strategies=strategies,
        scores=scores,
        n_expected=n_expected if n_expected is not None else max((len(v) for v in records.values()), default=0),
        n_skipped=n_skipped,
        protocol=dict(protocol),
        complete=complete,
        n_outside_boxes=n_outside_boxes,
    )


def comparison_table(summaries: Sequence[CorLocSummary], *, metric: str = "corloc") -> str:
    """Markdown comparison like the paper's Table 3 / 5.

    Rows are ``method (strategy)``, columns are datasets; cells are CorLoc (%)
    or mean IoU. With a single dataset this is the same information as
    :meth:`CorLocSummary.to_markdown` in the paper's layout.

    Parameters
    ----------
    summaries : sequence of CorLocSummary
        One per dataset (methods may differ; missing cells show ``-``).
    metric : {"corloc", "mean_iou"}, default "corloc"
    """
    if metric not in ("corloc", "mean_iou"):
        raise ValueError(f"metric: expected 'corloc' or 'mean_iou', got {metric!r}")
    datasets = [s.dataset for s in summaries]
    rows: List[Tuple[str, str]] = []
    for s in summaries:
        for m in s.methods:
            for st in s.strategies:
                if (m, st) not in rows:
                    rows.append((m, st))
    head = ["method (strategy)"] + datasets
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, st in rows:
        cells = [f"{m} ({st}-box)"]
        for s in summaries:
            try:
                sc = s.score(m, st)
            except KeyError:
                cells.append("-")
                continue
            cells.append(_pct(sc.corloc) if metric == "corloc" else _num(sc.mean_iou))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

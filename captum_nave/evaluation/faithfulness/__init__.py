"""Which explanation to trust: faithfulness measures for attribution maps and NAVE segments.

* :mod:`.curves` -- deletion and insertion curves with their AUC, ranking pixels or
  units (NAVE segments, SLIC superpixels, grid cells; :mod:`.units`) by a map's
  relevance or by scores per unit, with blur / mean / zero baselines;
* :mod:`.randomisation` -- the model-randomisation sanity check (Adebayo et al. 2018):
  cascading or independent re-initialisation, Spearman rank correlation of the
  absolute maps and SSIM against the trained model's maps (NAVE: ARI of segments);
* :mod:`.localisation` -- pointing game and energy inside ground-truth boxes;
* :mod:`.audit` -- all of it for several maps of one model, as one table (CSV,
  Markdown) with the curves figure (:mod:`.plots`).

Reading the numbers: a faithful map has a *low* deletion AUC (removing what it ranks
first destroys the prediction quickly) and a *high* insertion AUC (putting it back
first restores the prediction quickly), and both should beat the random map; its
similarity to the trained model's map should fall towards 0 as the model is
randomised.

Examples
--------
>>> from captum_nave.attribution import attribute, segment_importance
>>> from captum_nave.evaluation.faithfulness import faithfulness_audit, randomisation_check
>>> maps = {m: attribute(m, model, x, target=t).maps for m in ("gradcam", "ig", "lrp")}
>>> audit = faithfulness_audit(model, x, maps, t, segments=seg, images=x01,
...                            segment_scores={"segment_importance": segment_importance(model, x, seg, t)})
>>> print(audit.to_markdown())
>>> sanity = randomisation_check(model, x, t, methods=["gradcam", "ig", "lrp"], stages=4)
"""

from .audit import CSV_COLUMNS, RANDOM_METHOD, RANKINGS, FaithfulnessAudit, faithfulness_audit, random_maps
from .curves import (
    BASELINES,
    MODES,
    PerturbationCurves,
    perturbation_baseline,
    perturbation_curve,
    pixel_order,
    trapezoid_auc,
    unit_order,
)
from .localisation import box_masks, energy_in_box, pointing_game
from .plots import plot_perturbation_curves, plot_randomisation
from .randomisation import (
    RandomisationResult,
    cascade_stages,
    map_ssim,
    randomisation_check,
    rank_correlation,
    reinitialise,
)
from .units import grid_units, slic_units

__all__ = [
    "BASELINES",
    "CSV_COLUMNS",
    "MODES",
    "RANDOM_METHOD",
    "RANKINGS",
    "FaithfulnessAudit",
    "PerturbationCurves",
    "RandomisationResult",
    "box_masks",
    "cascade_stages",
    "energy_in_box",
    "faithfulness_audit",
    "grid_units",
    "map_ssim",
    "perturbation_baseline",
    "perturbation_curve",
    "pixel_order",
    "plot_perturbation_curves",
    "pointing_game",
    "plot_randomisation",
    "random_maps",
    "randomisation_check",
    "rank_correlation",
    "reinitialise",
    "slic_units",
    "trapezoid_auc",
    "unit_order",
]

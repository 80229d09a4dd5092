"""Register vs no-register comparison of Vision Transformers.

Registers (Darcet et al., ICLR 2024) absorb the high-norm artefact tokens that large
ViTs otherwise create in background patches; Lappe & Giese (arXiv 2505.05892) show that
the CLS output may then be dominated by what it reads from the registers. This package
measures both effects on any pair of ViTs and on the same images:

* :mod:`.layout`: token layout (CLS, registers, patch grid) read from timm, torch-hub
  DINOv2 or Hugging Face models, or described by hand with :class:`ViTLayout`;
* :mod:`.capture`: one pass recording token norms, CLS attention rows (recomputed from
  q / k, so the fused SDPA path is fine) and CLS decompositions;
* :mod:`.norms`: high-norm outlier tokens (fixed or robust threshold), first layer with
  outliers, registers with high norms;
* :mod:`.attention`: attention maps, entropy, masses on CLS / registers / patches /
  outlier patches;
* :mod:`.decomposition`: CLS update split into skip, patch, register contributions;
  cosine and linear CKA;
* :mod:`.agreement`: NAVE agreement between models (ARI / NMI) with the seed noise floor,
  clusters dominated by outlier tokens;
* :mod:`.stats`: McNemar's test and the paired bootstrap;
* :mod:`.compare`: :func:`compare_registers`, tables and the figure.
"""

from .agreement import label_agreement, nave_grid_labels, outlier_cluster_share
from .attention import attention_entropy, attention_map, attention_masses
from .capture import TokenStatistics, collect_token_statistics
from .compare import AggregateRow, CorLocComparison, RegisterComparison, compare_registers
from .decomposition import ClsDecomposition, cosine, decompose_cls, linear_cka
from .layout import ViTLayout, vit_adapter, vit_layout
from .norms import OutlierReport, detect_outliers, norm_map, outlier_report, robust_threshold
from .stats import BootstrapCI, McNemarResult, mcnemar_test, paired_bootstrap_ci

__all__ = [
    "compare_registers",
    "RegisterComparison",
    "AggregateRow",
    "CorLocComparison",
    "ViTLayout",
    "vit_layout",
    "vit_adapter",
    "collect_token_statistics",
    "TokenStatistics",
    "detect_outliers",
    "robust_threshold",
    "outlier_report",
    "OutlierReport",
    "norm_map",
    "attention_map",
    "attention_entropy",
    "attention_masses",
    "decompose_cls",
    "ClsDecomposition",
    "linear_cka",
    "cosine",
    "nave_grid_labels",
    "label_agreement",
    "outlier_cluster_share",
    "mcnemar_test",
    "McNemarResult",
    "paired_bootstrap_ci",
    "BootstrapCI",
]

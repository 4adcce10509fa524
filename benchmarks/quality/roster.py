"""Which models the benchmark knows, how they are labelled and ordered, and the cut-offs it
reports."""

from bivrec_tf.presets import ABLATIONS, BASELINES, DESIGN_ABLATIONS, VARIANTS

# `late_fusion` is not a preset: the `id_only` and `mm_only` runs of the same seed, fused.
LATE_FUSION = "late_fusion"
ALL_MODELS = ("bivrec",) + BASELINES + (LATE_FUSION,) + ABLATIONS + VARIANTS
ORDER = (*BASELINES, LATE_FUSION, "bivrec", *ABLATIONS, *VARIANTS, *DESIGN_ABLATIONS)
DEFAULT_MODELS = {
  "standard": ALL_MODELS,
  "cold": ("bivrec", "sasrec", "mm_seq"),
  "noise": ("bivrec", "mm_seq"),
  "cost": ("bivrec", "sasrec"),
}
LABELS = {
  "bivrec": "BivRec",
  "bivrec_design": "BivRec, DESIGN.md formulation (all modules on)",
  "sasrec": "SASRec",
  "comirec_sa": "ComiRec-SA",
  "mm_seq": "MM-seq (ID-free SASRec)",
  LATE_FUSION: "Late fusion (ID view and MM view trained separately)",
  "id_only": "BivRec, ID view only",
  "mm_only": "BivRec, MM view only",
  "single_interest": "BivRec, one interest per view (module 2 off)",
  "no_cross_view": "BivRec, no cross-view losses (module 3 off)",
  "multi_scale": "BivRec + multi-scale (P={1,2,4})",
  "encoder": "BivRec + Transformer block",
  "gaussian": "BivRec + Gaussian prior",
  "cluster": "BivRec + cluster rounds (R=2)",
  "no_sem": "BivRec, no L_sem",
  "no_alloc": "BivRec, no L_alloc",
  "design_id_only": "DESIGN formulation, ID view only",
  "design_mm_only": "DESIGN formulation, MM view only",
  "design_single_scale": "DESIGN formulation, single scale (P={1})",
  "design_no_gaussian": "DESIGN formulation, no Gaussian prior",
  "design_no_cluster": "DESIGN formulation, no cluster rounds (R=0)",
  "design_no_sem": "DESIGN formulation, no L_sem",
  "design_no_alloc": "DESIGN formulation, no L_alloc",
}
KS = (10, 20, 50)
COLUMNS = [f"{m}@{k}" for m in ("recall", "ndcg") for k in KS]

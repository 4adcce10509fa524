"""Named model variants: the in-project baselines and BivRec's ablations, as config overrides.

Every variant is the same BivRecModel with switches (DESIGN.md section 3), never a copied model.

The project default (`bivrec`, the `Config()` defaults) is the formulation that won on validation
data (docs/results.md, "Choosing the default formulation"): both views, both cross-view losses, and
in each view K attention queries over single-item tokens (patch sizes {1}, no Transformer block,
no Gaussian prior, no cluster rounds). `bivrec_design` switches every module of DESIGN.md section 3
back on (patch sizes {1, 2, 4}, one Transformer block, Gaussian prior, R = 2 cluster rounds).

- Baselines: `sasrec` (SASRec, Kang & McAuley 2018: ID-only, two causal pre-LN Transformer blocks
  over single items with learned positions, dropout 0.5, one head, read out at the most recent
  position; compared with the published model point by point in docs/model.md), `comirec_sa`
  (ID-only, K attention queries over item tokens: the default's ID view trained alone), `mm_seq`
  (the same SASRec encoder on the multimodal item tower only, ID-free).
- `ABLATIONS` switch one part of the default off (`id_only`, `mm_only`, `no_sem`, `no_alloc`), a
  whole module off (`single_interest`: module 2, K = 1; `no_cross_view`: module 3, both
  cross-view losses) or one DESIGN.md module back on (`multi_scale`, `encoder`, `gaussian`,
  `cluster`). `id_only` + `mm_only` of the same seed, fused, are the `late_fusion` baseline of
  the quality benchmark.
- `DESIGN_ABLATIONS` (`design_<switch>`) switch one part of `bivrec_design` off: the ablations of
  DESIGN.md section 3 (id-only, mm-only, single scale, no Gaussian prior, no cluster rounds, no
  L_sem, no L_alloc).
"""

from typing import Dict

from bivrec_tf.config import Config

# SASRec's encoder (docs/model.md, "SASRec: published vs ours"). Dropout 0.5: the paper's rate for
# its sparse datasets (0.2 for the dense MovieLens-1M); the data here are sparse (17 actions per
# user on the default data, 7 on Scientific) and on the default data 0.5 scored higher on
# validation than 0.2 (docs/model.md).
_SASREC = {
  "patch_sizes": (1,),
  "patch_mode": "tokens",
  "num_interests": 1,
  "readout": "last",
  "encoder_layers": 2,
  "causal": True,
  "num_heads": 1,
  "dropout": 0.5,
  "gaussian_prior": False,
  "cluster_rounds": 0,
}
_DESIGN = {
  "patch_sizes": (1, 2, 4),
  "encoder_layers": 1,
  "gaussian_prior": True,
  "cluster_rounds": 2,
}
_DESIGN_LOSS = {"sem_mode": "contrast", "lambda_sem": 0.1}  # DESIGN.md's L_sem and its weight

# Switches, each a (section -> fields) override.
_OFF = {
  "id_only": {"model": {"views": ("id",)}},
  "mm_only": {"model": {"views": ("mm",)}},
  "no_sem": {"loss": {"lambda_sem": 0.0}},
  "no_alloc": {"loss": {"lambda_alloc": 0.0}},
}
# Whole modules off: module 2 = one interest per view (no decomposition), module 3 = neither
# cross-view loss (two independent encoders trained side by side, fused at inference).
_MODULE_OFF = {
  "single_interest": {"model": {"num_interests": 1}},
  "no_cross_view": {"loss": {"lambda_sem": 0.0, "lambda_alloc": 0.0}},
}
_DESIGN_OFF = {
  **_OFF,
  "single_scale": {"model": {"patch_sizes": (1,)}},
  "no_gaussian": {"model": {"gaussian_prior": False}},
  "no_cluster": {"model": {"cluster_rounds": 0}},
}
_ON = {
  "multi_scale": {"model": {"patch_sizes": _DESIGN["patch_sizes"]}},
  "encoder": {"model": {"encoder_layers": _DESIGN["encoder_layers"]}},
  "gaussian": {"model": {"gaussian_prior": True}},
  "cluster": {"model": {"cluster_rounds": _DESIGN["cluster_rounds"]}},
}


def _merge(base: dict, extra: dict) -> dict:
  return {s: {**base.get(s, {}), **extra.get(s, {})} for s in {*base, *extra}}


PRESETS: Dict[str, dict] = {
  "bivrec": {},
  "bivrec_design": {"model": _DESIGN, "loss": _DESIGN_LOSS},
  "sasrec": {"model": {"views": ("id",), **_SASREC}},
  "comirec_sa": {
    "model": {
      "views": ("id",),
      "patch_sizes": (1,),
      "encoder_layers": 0,
      "gaussian_prior": False,
      "cluster_rounds": 0,
    }
  },
  "mm_seq": {"model": {"views": ("mm",), **_SASREC}},
  **_OFF,
  **_MODULE_OFF,
  **_ON,
  **{
    f"design_{name}": _merge({"model": _DESIGN, "loss": _DESIGN_LOSS}, o)
    for name, o in _DESIGN_OFF.items()
  },
}

BASELINES = ("sasrec", "comirec_sa", "mm_seq")
ABLATIONS = (
  "id_only",
  "mm_only",
  "single_interest",
  "no_cross_view",
  "multi_scale",
  "encoder",
  "gaussian",
  "cluster",
  "no_sem",
  "no_alloc",
)
VARIANTS = ("bivrec_design",)
DESIGN_ABLATIONS = tuple(
  f"design_{name}"
  for name in (
    "id_only",
    "mm_only",
    "single_scale",
    "no_gaussian",
    "no_cluster",
    "no_sem",
    "no_alloc",
  )
)


def apply_preset(cfg: Config, name: str) -> Config:
  """`cfg` with the overrides of preset `name`."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return cfg.replace(**PRESETS[name])

"""Named model variants: the in-project baselines and BivRec's ablations, as config overrides.

Every variant is the same BivRecModel with switches (DESIGN.md section 3), never a copied model:

- `sasrec`: ID-only Transformer over single items, one interest read from the most recent
  position (SASRec-style).
- `comirec_sa`: ID-only multi-interest extraction by K learned attention queries over item tokens,
  no Transformer, no temporal prior, no clustering (ComiRec-SA-style).
- `mm_seq`: the SASRec-style model on the multimodal item tower only (ID-free).
- `id_only`, `mm_only`, `single_scale`, `no_gaussian`, `no_cluster`, `no_sem`, `no_alloc`:
  BivRec with one part switched off.
- `bivrec_sa`: a variant, not an ablation: both views and both cross-view losses, each view with
  the ComiRec-SA extractor (no Transformer, single scale, no Gaussian prior, no cluster rounds).
  In docs/results.md (quality report) it is the best model on the embedded default and on
  Amazon Scientific, on validation and test NDCG@20, at a quarter of BivRec's training time.
"""

from typing import Dict

from bivrec_tf.config import Config

_SINGLE = {"patch_sizes": (1,), "num_interests": 1, "readout": "last",
           "gaussian_prior": False, "cluster_rounds": 0}

PRESETS: Dict[str, dict] = {
    "bivrec": {},
    "sasrec": {"model": {"views": ("id",), **_SINGLE}},
    "comirec_sa": {"model": {"views": ("id",), "patch_sizes": (1,), "encoder_layers": 0,
                             "gaussian_prior": False, "cluster_rounds": 0}},
    "mm_seq": {"model": {"views": ("mm",), **_SINGLE}},
    "id_only": {"model": {"views": ("id",)}},
    "mm_only": {"model": {"views": ("mm",)}},
    "single_scale": {"model": {"patch_sizes": (1,)}},
    "no_gaussian": {"model": {"gaussian_prior": False}},
    "no_cluster": {"model": {"cluster_rounds": 0}},
    "no_sem": {"loss": {"lambda_sem": 0.0}},
    "no_alloc": {"loss": {"lambda_alloc": 0.0}},
    "bivrec_sa": {"model": {"patch_sizes": (1,), "encoder_layers": 0, "gaussian_prior": False,
                            "cluster_rounds": 0}},
}

BASELINES = ("sasrec", "comirec_sa", "mm_seq")
ABLATIONS = ("id_only", "mm_only", "single_scale", "no_gaussian", "no_cluster", "no_sem",
             "no_alloc")
VARIANTS = ("bivrec_sa",)


def apply_preset(cfg: Config, name: str) -> Config:
  """`cfg` with the overrides of preset `name`."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return cfg.replace(**PRESETS[name])

"""Every knob of BivRec-TF in one frozen dataclass tree.

`Config` is saved as JSON into each run directory and each export, and every leaf field is a flag of
`python -m bivrec_tf.train` (`--num-interests 8`, `--patch-sizes 1,2,4`, `--gaussian-prior`).
Field names follow the paper's terms (DESIGN.md section 3). Invalid values raise `ValueError`
naming the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from typing import Any, Optional, Tuple

VIEWS = ("id", "mm")
TABLE_DTYPES = ("float32", "bfloat16", "float16")  # storage of the served item tables
# L_sem's forms (`LossConfig.sem_mode`, several joined by '+')
SEM_MODES = (
  "contrast",
  "mutual",
  "mutual_nt",
  "ensemble",
  "guided",
  "soft_guided",
  "batch_guided",
  "val_guided",
  "probe_guided",
  "cross",
  "fused",
  "item",
)


def _fail(field: str, value: Any, why: str) -> None:
  raise ValueError(f"config field `{field}` = {value!r}: {why}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the data comes from and how histories are cut."""

  data: str = "synthetic"  # "synthetic" (embedded default) or a prepared dataset directory
  data_cache: str = "data_cache"  # where the embedded default dataset is generated and cached
  max_len: Optional[int] = None  # history length L; None = dataset's recommended_max_len, else 50
  modalities: Optional[Tuple[str, ...]] = None  # MM-view modalities; None = all in the dataset
  data_seed: int = 0  # seed of the embedded default dataset

  def validate(self) -> None:
    if self.max_len is not None and self.max_len < 1:
      _fail("max_len", self.max_len, "must be a positive integer")
    if self.modalities is not None and not self.modalities:
      _fail("modalities", self.modalities, "must name at least one modality (or be unset)")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The two views and the three BivRec modules."""

  views: Tuple[str, ...] = VIEWS  # ablations: ("id",) = id-only, ("mm",) = mm-only
  dim: int = 64  # d
  # The defaults of modules 1 and 2 are the formulation that won on validation data on both
  # datasets (docs/results.md, "Choosing the default formulation"): K attention queries over
  # single-item tokens. DESIGN.md section 3 in full (preset `bivrec_design`): patch_sizes 1,2,4,
  # encoder_layers 1, gaussian_prior, cluster_rounds 2.
  # Module 1: Multi-scale Interest Embedding.
  patch_sizes: Tuple[int, ...] = (1,)  # P, e.g. (1, 2, 4); (1,) = single scale
  encoder_layers: int = 0  # pre-LN Transformer blocks over the tokens
  # causal self-attention in those blocks: token t sees tokens <= t only (SASRec); needs patch_sizes
  # (1,), encoder_layers>=1
  causal: bool = False
  num_heads: int = 2
  # acts only in the Transformer blocks (on the attention and FFN outputs of each block): no effect
  # with encoder_layers = 0, the default
  dropout: float = 0.1
  # Module 2: Intra-View Interest Decomposition.
  num_interests: int = 4  # K
  # a learned user-independent query g_v per view added to every interest when scoring,
  # s_k(i) = (u_k + g_v) . e_v(i) / tau, a place for the direction every user's interests share
  # (the interest diagnostics measure the u_k; alone it does not draw that direction out of them,
  # loss.lambda_centre does). Off = DESIGN.md (docs/model.md, session 17)
  global_query: bool = False
  # K of the MM view alone (0 = num_interests): its interests are the more alike on every dataset
  # measured; K = 2 halves its scoring FLOPs, not its time (docs/performance.md, session 17)
  mm_num_interests: int = 0
  # d of the MM view alone (0 = dim): its tower, tokens and interests. The ID view keeps dim, so the
  # MM view is the cheaper one and a two-view step can cost less than two ID-view steps
  # (docs/performance.md, session 19). Views meet only through scores, so their d may differ;
  # the cross-view forms that compare vectors across views (sem_mode "cross", "item") need one d
  mm_dim: int = 0
  gaussian_prior: bool = False  # the Gaussian temporal prior of each interest's attention
  sigma_init: float = 0.25  # initial Gaussian width sigma_k
  # "fixed": DESIGN.md's prior on tau = distance / max_len; "gated": tau relative to the user's own
  # history span and the prior scaled by a learned gate softplus(beta_k) (starts ~0.1)
  prior_mode: str = "fixed"
  # interest queries: "normal" (stddev 0.05) or "orthogonal" (orthonormal rows at unit scale:
  # distinct from the start)
  interest_init: str = "normal"
  # interest values: "shared" (one W_V, DESIGN.md) or "per_interest" (interest k maps its pooled
  # tokens through its own W_V^k: distinct interests even over the same few items) or
  # "shared+per_interest" (W_V + W_V^k)
  interest_values: str = "shared"
  # what module 2's seeding attention reads to pick tokens: "tokens" (the module-1 tokens, recency
  # included) or "content" (the tokens without their recency term: queries pick items by what they
  # are; needs encoder_layers 0)
  interest_keys: str = "tokens"
  # interest 0 is the most recent item's token itself (its seed, with cluster rounds), the other
  # K - 1 attend (needs K >= 2 and interest_values "shared")
  recent_interest: bool = False
  # MIND's dynamic interest number (Li et al. 2019): a user with n history items has
  # K_u = max(1, min(K, floor(log2 n))) interests; the other K - K_u slots repeat interest 0, so
  # the max over interests (training, ranking, serving) reads only the K_u, and the diagnostics
  # count only them. Off = every user has K.
  adaptive_interests: bool = False
  # module 1: "tokens" (every scale's patches are tokens) or "context" (item tokens only, each
  # enriched with the patches that contain it: same T as one scale)
  patch_mode: str = "tokens"
  # R cluster-attention refinement rounds (with R = 0 the allocation A for L_alloc is the seeding
  # attention)
  cluster_rounds: int = 0
  # "interests" (module 2) or "last": the most recent item's encoder output as the single interest
  # (SASRec's read-out; needs patch_sizes (1,) and num_interests 1, builds no module-2 weights)
  readout: str = "interests"
  # training read-out: "max" over interests per candidate, "target": the interest nearest the target
  # scores all candidates (label-aware, ComiRec), "max+target": both retrieval losses, or "lse": a
  # soft max, t log sum_k exp(s_k / t) with t = routing_temperature, so every interest gets
  # gradient in proportion to its softmax weight (-> "max" as t -> 0); inference uses the max
  routing: str = "max"
  routing_temperature: float = 1.0  # t of routing "lse" (in units of the logits s_k)
  # training augmentation: each history item but the most recent becomes padding with this
  # probability, drawn for each view apart ("independent": the views read different histories of
  # the same user, and L_sem distils one into the other across them) or once for both ("shared");
  # 0 = off, inference never drops
  history_dropout: float = 0.0
  history_dropout_views: str = "independent"
  # the MM item tower's fusion of its modalities: "mlp" (DESIGN.md: Dense_d(GELU(Dense_2d(concat z)))
  # + mean z) or "mean" (mean z only: no fusion MLP, a cheaper tower)
  mm_fusion: str = "mlp"
  mm_fusion_hidden: int = 0  # hidden width of that MLP; 0 = 2d (DESIGN.md), narrower is cheaper
  # Recommendation similarity.
  similarity: str = "cosine"  # "cosine" or "dot"
  tau_rec: float = 0.07
  # How the two views' scores are fused (evaluation, w tuning, export): "score" (DESIGN.md:
  # s = w s_id + (1 - w) s_mm, each view's max over its own interests) or "interest" (interest k
  # of both views scores an item together: s = max_k [w s_id,k + (1 - w) s_mm,k]); cold items are
  # scored by the MM view alone either way
  fusion: str = "score"

  def for_view(self, view: str) -> "ModelConfig":
    """The settings view `view` is built from: the MM view's K is `mm_num_interests` and its d
    `mm_dim` when set."""
    own = {}
    if view == "mm" and self.mm_num_interests not in (0, self.num_interests):
      own["num_interests"] = self.mm_num_interests
    if view == "mm" and self.mm_dim not in (0, self.dim):
      own["dim"] = self.mm_dim
    if not own:
      return self
    return dataclasses.replace(self, **own, mm_num_interests=0, mm_dim=0)

  def validate(self) -> None:
    if (
      not self.views
      or any(v not in VIEWS for v in self.views)
      or len(set(self.views)) != len(self.views)
    ):
      _fail("views", self.views, f"must be a non-empty subset of {VIEWS}")
    if self.dim < 1:
      _fail("dim", self.dim, "must be a positive integer")
    if not self.patch_sizes or any(p < 1 for p in self.patch_sizes):
      _fail("patch_sizes", self.patch_sizes, "must be positive integers")
    if len(set(self.patch_sizes)) != len(self.patch_sizes):
      _fail("patch_sizes", self.patch_sizes, "must not repeat a size")
    if self.encoder_layers < 0:
      _fail("encoder_layers", self.encoder_layers, "must be >= 0")
    if self.num_heads < 1 or self.dim % self.num_heads:
      _fail("num_heads", self.num_heads, f"must be >= 1 and divide dim={self.dim}")
    if self.mm_dim < 0:
      _fail("mm_dim", self.mm_dim, "must be >= 0 (0 = dim)")
    if self.mm_dim and self.mm_dim % self.num_heads:
      _fail("mm_dim", self.mm_dim, f"must be divisible by num_heads={self.num_heads}")
    if not 0.0 <= self.dropout < 1.0:
      _fail("dropout", self.dropout, "must be in [0, 1)")
    if self.num_interests < 1:
      _fail("num_interests", self.num_interests, "K must be >= 1")
    if self.mm_num_interests < 0:
      _fail("mm_num_interests", self.mm_num_interests, "must be >= 0 (0 = num_interests)")
    if self.mm_num_interests and self.readout != "interests":
      _fail("mm_num_interests", self.mm_num_interests, "needs readout 'interests' (module 2)")
    if self.mm_num_interests not in (0, self.num_interests) and self.fusion == "interest":
      _fail(
        "mm_num_interests",
        self.mm_num_interests,
        "fusion 'interest' pairs interest k of both views: needs the same K in both",
      )
    if self.sigma_init <= 0.05:
      _fail("sigma_init", self.sigma_init, "must be > 0.05 (the width floor)")
    if self.prior_mode not in ("fixed", "gated"):
      _fail("prior_mode", self.prior_mode, "must be 'fixed' or 'gated'")
    if self.interest_init not in ("normal", "orthogonal"):
      _fail("interest_init", self.interest_init, "must be 'normal' or 'orthogonal'")
    if self.interest_values not in ("shared", "per_interest", "shared+per_interest"):
      _fail(
        "interest_values",
        self.interest_values,
        "must be 'shared', 'per_interest' or 'shared+per_interest'",
      )
    if self.interest_keys not in ("tokens", "content"):
      _fail("interest_keys", self.interest_keys, "must be 'tokens' or 'content'")
    if self.interest_keys == "content" and self.encoder_layers:
      _fail(
        "interest_keys",
        self.interest_keys,
        "'content' needs encoder_layers = 0 (a Transformer block mixes the recency back in)",
      )
    if self.recent_interest and (
      min(self.num_interests, self.mm_num_interests or self.num_interests) < 2
      or self.interest_values != "shared"
    ):
      _fail(
        "recent_interest",
        self.recent_interest,
        "needs num_interests >= 2 and interest_values 'shared'",
      )
    if self.adaptive_interests and self.readout != "interests":
      _fail("adaptive_interests", self.adaptive_interests, "needs readout 'interests' (module 2)")
    if self.patch_mode not in ("tokens", "context"):
      _fail("patch_mode", self.patch_mode, "must be 'tokens' or 'context'")
    if self.cluster_rounds < 0:
      _fail("cluster_rounds", self.cluster_rounds, "R must be >= 0")
    if self.readout not in ("interests", "last"):
      _fail("readout", self.readout, "must be 'interests' or 'last'")
    if self.readout == "last" and (self.num_interests != 1 or tuple(self.patch_sizes) != (1,)):
      _fail(
        "readout",
        self.readout,
        "'last' needs num_interests=1 and patch_sizes (1,) (one "
        "token per item, the most recent last)",
      )
    if self.causal and (tuple(self.patch_sizes) != (1,) or self.encoder_layers < 1):
      _fail(
        "causal",
        self.causal,
        "causal attention needs patch_sizes (1,) (one token per item) "
        "and encoder_layers >= 1 (it acts in the Transformer blocks)",
      )
    if self.routing not in ("max", "target", "max+target", "lse"):
      _fail("routing", self.routing, "must be 'max', 'target', 'max+target' or 'lse'")
    if not (self.routing_temperature > 0 and math.isfinite(self.routing_temperature)):
      _fail("routing_temperature", self.routing_temperature, "must be a finite number > 0")
    if self.routing_temperature != 1.0 and self.routing != "lse":
      _fail("routing_temperature", self.routing_temperature, "is read by routing 'lse' only")
    if not 0.0 <= self.history_dropout < 1.0:
      _fail("history_dropout", self.history_dropout, "must be in [0, 1)")
    if self.history_dropout_views not in ("independent", "shared"):
      _fail(
        "history_dropout_views", self.history_dropout_views, "must be 'independent' or 'shared'"
      )
    if self.mm_fusion not in ("mlp", "mean"):
      _fail("mm_fusion", self.mm_fusion, "must be 'mlp' or 'mean'")
    if self.mm_fusion_hidden < 0:
      _fail("mm_fusion_hidden", self.mm_fusion_hidden, "must be >= 0 (0 = 2 dim)")
    if self.similarity not in ("cosine", "dot"):
      _fail("similarity", self.similarity, "must be 'cosine' or 'dot'")
    if not self.tau_rec > 0:
      _fail("tau_rec", self.tau_rec, "temperature must be > 0")
    if self.fusion not in ("score", "interest"):
      _fail("fusion", self.fusion, "must be 'score' or 'interest'")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Retrieval and cross-view losses."""

  num_negatives: int = 256  # items sampled per batch from the catalogue
  # coarse semantic-similarity loss weight; 0 = ablation. 3 since 2026-11-27 late (docs/results.md,
  # "Current state (2026-11-27, late)": fused validation level with 1, each view's own higher)
  lambda_sem: float = 3.0
  # L_sem's weight grows linearly from 0 over the first N training steps (0 = full weight from
  # the first step)
  sem_warmup_steps: int = 0
  # L_sem's weight falls linearly from 1 to 0 over this many epochs (0 = off): teach, then free
  sem_decay_epochs: float = 0.0
  lambda_alloc: float = 1.0  # fine allocation-similarity loss weight; 0 = ablation
  # interest-diversity penalty: mean of relu(cos - div_margin)^2 over pairs of a user's K interests
  # (off-diagonal of U U^T)
  lambda_div: float = 0.0
  div_margin: float = 0.0  # cosines below the margin are free (0 = plain squared cosine)
  # centring penalty (needs model.global_query): lambda ||mean over the batch's users and K of the
  # unit interests u_k||^2 per view, so the direction every user shares moves into g_v
  lambda_centre: float = 0.0
  tau_c: float = 0.1  # semantic contrastive temperature
  # The default L_sem is "probe_guided" (since session 16; docs/results.md, "Session 16"): mutual
  # distillation at weight 3 where each direction teaches while the teaching probe finds it agrees
  # with held-out data; it was "mutual" (docs/results.md, "Interests, module 3 and late fusion")
  # until long ID-dominated histories showed the MM view dragging the ID view (-11 % against late
  # fusion). DESIGN.md's is "contrast", 0.1.
  # ("val_guided" with guide_margin 0.75 / guide_power 20 / guide_students "id" was the default
  # for part of session 15 and was reverted: it fixes long ID-dominated histories but costs 6 %
  # on `synthetic:drift`; docs/results.md, "Session 15".)
  # L_sem: "contrast" (DESIGN.md: InfoNCE between the views' pooled interests), "mutual" (each
  # view's next-item distribution over the candidates distils into the other's), "guided"
  # (mutual, but per example only the view that gives the target the higher probability teaches),
  # "soft_guided" (mutual, each direction weighted per example by the teacher's share of the two
  # views' target probability, p_T(t) / (p_id(t) + p_mm(t)): mutual where they are equally right),
  # "batch_guided" (mutual, but a teacher weaker than its student on the batch, by the views' mean
  # target probabilities P_T < P_S, is discounted by (P_T / P_S)^guide_power), "val_guided" (the
  # same with each view's validation NDCG@monitor_k of the last epoch instead of P: held-out
  # quality, which an ID view that fits its training batches best does not fake),
  # "mutual_nt" (mutual, over the non-target candidates only: the target column masked out),
  # "ensemble" (both views distil into the stop-gradient distribution of their ensemble, the fused
  # score at w = 1/2), "cross" (each view's interests predict the target in the other view's item
  # space), "fused" (the retrieval loss on the fused score 1/2 (s_id + s_mm): each view learns
  # what the other misses), "item" (each candidate item's ID vector contrasted with its MM
  # vector) or "probe_guided" (mutual, each direction gated by the teaching probe, below);
  # several joined by '+' are summed ("mutual+item")
  sem_mode: str = "probe_guided"
  # L_alloc: "mse" (DESIGN.md) or "cka" (1 - centred kernel alignment of the co-allocations:
  # scale-free, uniform != 0)
  alloc_mode: str = "mse"
  tau_kd: float = 1.0  # temperature of the distillation forms ("mutual", "*guided", ...)
  # g of "batch_guided" / "val_guided": how fast a weaker teacher is discounted
  guide_power: float = 1.0
  # m of "batch_guided" / "val_guided": a teacher is discounted only below m times its student's
  # quality, by (q_T / (m q_S))^guide_power (1 = any weaker teacher; < 1 leaves close views on
  # plain mutual distillation)
  guide_margin: float = 1.0
  # the views whose teacher "batch_guided" / "val_guided" / "probe_guided" may discount: "both",
  # "id" (the MM view always learns from the ID view in full) or "mm"
  guide_students: str = "both"
  # "val_guided": the directions guide_students judges stay silent until the first validation
  # (instead of distilling as "mutual" during the first epoch)
  guide_wait: bool = False
  # Every probe_every optimizer steps (0 = never), a probe measures for each view v the cosine
  # between the gradient on v's encoder of its distillation from the other view (a training batch)
  # and of v's own retrieval loss on a batch of *validation* examples: > 0 when what the teacher
  # asks for also lowers the student's held-out loss (first order). Logged as `align_<v>` (epoch
  # means; `align_new_<v>`, `align_rec_<v>`, `gap_<v>`, `probe_share` beside it) under every
  # strategy but parameter servers; "probe_guided" gates each judged direction by
  # `align_new_<v>` (or `align_<v>`, probe_signal below); bivrec_tf/teaching_probe.py
  probe_every: int = 20
  # examples in each of the probe's two batches (training, held out; the valid split's size if
  # smaller): the probe's cost does not grow with the training batch
  probe_batch: int = 256
  # "probe_guided": a direction teaches (mutual's weight 1/2) while the moving average of its
  # alignments, s <- m s + (1 - m) align, is > probe_margin, and is silent otherwise
  probe_momentum: float = 0.9
  # what "probe_guided" averages: "new" (align_new_<v>: the teaching's agreement with the held-out
  # gradient beyond the student's own training gradient), "raw" (align_<v>) or "fused"
  # (align_fused_<v>: as "new", against the held-out gradient of the fused retrieval loss on v's
  # encoder: does the teaching help the fusion, not only the student; a fourth probe gradient)
  probe_signal: str = "new"
  # a "probe_guided" direction teaches while its moving average is > probe_margin: a clear
  # agreement, not one that flickers around 0 (0.015 since session 20, docs/results.md "Session
  # 20": validation +4.4 % on the default data, +2.3 % on `synthetic:long`, level on the real
  # datasets, -1.1 % on `synthetic:long-drift`; 0 = any agreement, sessions 16-19)
  probe_margin: float = 0.015
  # > 0: the "probe_guided" gate is a ramp instead of a step: a direction's weight rises linearly
  # from 0 at probe_margin - probe_ramp / 2 to 1 at probe_margin + probe_ramp / 2 (0 = the step)
  probe_ramp: float = 0.0
  # "mutual": the weight of the ID -> MM direction (the MM view as the student) relative to the
  # MM -> ID one; 1 = symmetric (the default), 0 = only the ID view learns from the other
  sem_to_mm: float = 1.0
  # weight of the retrieval loss on the interest-level fused score at w = 1/2,
  # max_k (s_id,k + s_mm,k) / 2: interest k of both views must predict the target together, which
  # aligns the views' interest indices (what `ModelConfig.fusion` "interest" scores); 0 = off
  lambda_joint: float = 0.0
  # weight of the mixture-of-experts likelihood of the target, -log(p_id(t) / 2 + p_mm(t) / 2)
  # over each view's retrieval softmax: each view's gradient is weighted by its responsibility
  # for the example, so the views may specialise on the users they already serve better (what a
  # probability mixture of two views trained apart exploits; docs/results.md, "Session 13"); 0 = off
  lambda_mix: float = 0.0

  def validate(self) -> None:
    if self.num_negatives < 0:
      _fail("num_negatives", self.num_negatives, "must be >= 0")
    if not -1.0 <= self.div_margin < 1.0:
      _fail("div_margin", self.div_margin, "must be in [-1, 1)")
    modes = self.sem_mode.split("+")
    if not all(m in SEM_MODES for m in modes) or len(set(modes)) != len(modes):
      _fail(
        "sem_mode",
        self.sem_mode,
        f"must be one of {', '.join(map(repr, SEM_MODES))}, or several of them joined by '+' "
        "(summed)",
      )
    if self.alloc_mode not in ("mse", "cka"):
      _fail("alloc_mode", self.alloc_mode, "must be 'mse' or 'cka'")
    if not self.tau_kd > 0:
      _fail("tau_kd", self.tau_kd, "temperature must be > 0")
    if self.sem_to_mm != 1.0 and "mutual" not in modes:
      _fail("sem_to_mm", self.sem_to_mm, "weights a direction of sem_mode 'mutual' only")
    if not (self.guide_power > 0 and math.isfinite(self.guide_power)):
      _fail("guide_power", self.guide_power, "must be a finite number > 0")
    if not 0 < self.guide_margin <= 1:
      _fail("guide_margin", self.guide_margin, "must be in (0, 1]")
    if self.guide_students not in ("both", "id", "mm"):
      _fail("guide_students", self.guide_students, "must be 'both', 'id' or 'mm'")
    if self.guide_wait and "val_guided" not in modes:
      _fail("guide_wait", self.guide_wait, "is read by sem_mode 'val_guided' only")
    guided = ("batch_guided", "val_guided")
    only = {"guide_students": (*guided, "probe_guided"), "probe_ramp": ("probe_guided",)}
    for f in dataclasses.fields(self):  # set away from its default but read by no active mode
      readers = only.get(f.name, guided if f.name.startswith("guide_") else None)
      if readers and getattr(self, f.name) != f.default:
        if not set(readers) & set(modes):
          _fail(
            f.name,
            getattr(self, f.name),
            f"is read by sem_mode {' / '.join(map(repr, readers))} only",
          )
    if self.probe_every < 0:
      _fail("probe_every", self.probe_every, "must be >= 0 (0 = no probe)")
    if self.probe_batch < 1:
      _fail("probe_batch", self.probe_batch, "must be >= 1")
    if "probe_guided" in modes and self.probe_every == 0:
      _fail("probe_every", self.probe_every, "sem_mode 'probe_guided' needs a probe (> 0 steps)")
    if self.probe_signal not in ("new", "raw", "fused"):
      _fail("probe_signal", self.probe_signal, "must be 'new', 'raw' or 'fused'")
    if not -1.0 <= self.probe_margin < 1.0:  # an alignment is a cosine (NaN fails too)
      _fail("probe_margin", self.probe_margin, "must be in [-1, 1)")
    if not (self.probe_ramp >= 0 and math.isfinite(self.probe_ramp)):
      _fail("probe_ramp", self.probe_ramp, "must be a finite number >= 0 (0 = a step)")
    if not 0 <= self.probe_momentum < 1:
      _fail("probe_momentum", self.probe_momentum, "must be in [0, 1)")
    if self.sem_warmup_steps < 0:
      _fail("sem_warmup_steps", self.sem_warmup_steps, "must be >= 0")
    if not self.sem_decay_epochs >= 0:  # (NaN fails too)
      _fail("sem_decay_epochs", self.sem_decay_epochs, "must be >= 0 (0 = off)")
    for name in (
      "lambda_sem",
      "lambda_alloc",
      "lambda_div",
      "lambda_centre",
      "sem_to_mm",
      "lambda_joint",
      "lambda_mix",
    ):
      value = getattr(self, name)
      if not (value >= 0 and math.isfinite(value)):
        _fail(name, value, "must be a finite number >= 0")
    if not self.tau_c > 0:
      _fail("tau_c", self.tau_c, "temperature must be > 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation, early stopping, distribution and run outputs."""

  # at most this many epochs; early stopping (patience) ends almost every run well before it. 40
  # since 2026-11-27 night (was 20, where a default run on the default data peaked at the last
  # epoch; with 40 it stops at epoch 23, best 20: docs/results.md)
  epochs: int = 40
  batch_size: int = 256  # global batch size (all replicas together)
  learning_rate: float = 2e-3
  # > 0: Adam keeps an exponential moving average of the weights (`use_ema`, this momentum per
  # step); validation, the best checkpoint, the metrics and the export use the average
  ema_momentum: float = 0.0
  patience: int = 3  # epochs without val NDCG@20 gain before stopping; 0 = never
  # which weights a two-view run keeps: "joint" (the epoch of the best fused validation NDCG@20)
  # or "per_view" (each view's weights from the epoch of its own best validation NDCG@20, kept
  # when that composite's fused validation score is higher; early stopping then waits until
  # neither the fused score nor either view has improved for `patience` epochs)
  view_selection: str = "joint"
  jit_compile: bool = True
  strategy: str = "auto"  # auto|default|mirrored|multi_worker|parameter_server
  logical_cpus: int = 0  # >1: split the CPU into logical devices (try `mirrored`)
  local_cluster: str = ""  # "WORKERS,PS": in-process cluster (try `parameter_server`)
  seed: int = 42
  run_dir: Optional[str] = None  # default runs/<timestamp>
  steps_per_execution: int = 1

  def validate(self) -> None:
    if self.epochs < 1:
      _fail("epochs", self.epochs, "must be >= 1")
    if self.batch_size < 2:
      _fail("batch_size", self.batch_size, "must be >= 2 (in-batch negatives)")
    if not self.learning_rate > 0:
      _fail("learning_rate", self.learning_rate, "must be > 0")
    if not 0.0 <= self.ema_momentum < 1.0:
      _fail("ema_momentum", self.ema_momentum, "must be in [0, 1) (0 = no weight averaging)")
    if self.patience < 0:
      _fail("patience", self.patience, "must be >= 0")
    if self.view_selection not in ("joint", "per_view"):
      _fail("view_selection", self.view_selection, "must be 'joint' or 'per_view'")
    if self.strategy not in ("auto", "default", "mirrored", "multi_worker", "parameter_server"):
      _fail("strategy", self.strategy, "unknown strategy")
    if self.logical_cpus < 0:
      _fail("logical_cpus", self.logical_cpus, "must be >= 0")
    if self.local_cluster:
      parts = self.local_cluster.split(",")
      if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        _fail("local_cluster", self.local_cluster, "must be 'WORKERS,PS' with both >= 1")
    if self.steps_per_execution < 1:
      _fail("steps_per_execution", self.steps_per_execution, "must be >= 1")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Full-ranking evaluation (DESIGN.md section 5)."""

  ks: Tuple[int, ...] = (10, 20, 50)
  monitor_k: int = 20  # early stopping / fusion tuning on NDCG@monitor_k
  # w in linspace(0, 1, fusion_grid) One setting for offline metrics, fusion tuning and serving:
  # never rank an item of the user's whole earlier history. None = auto: exclude when fewer than
  # `repeat_threshold` of the train targets are repeats of the user's history
  # (evaluate.resolve_history_exclusion; flags --exclude-history / --no-exclude-history force it).
  # docs/data.md, "Repeat items".
  fusion_grid: int = 11
  exclude_history: Optional[bool] = None
  repeat_threshold: float = 0.05  # auto: exclude when the train repeat rate is below this
  eval_batch_size: int = 512  # users per evaluation batch
  item_chunk: int = 20_000  # items scored at once (full ranking in chunks)

  def validate(self) -> None:
    if not self.ks or any(k < 1 for k in self.ks):
      _fail("ks", self.ks, "must be positive integers")
    if self.monitor_k not in self.ks:
      _fail("monitor_k", self.monitor_k, f"must be one of ks={self.ks}")
    if self.fusion_grid < 2:
      _fail("fusion_grid", self.fusion_grid, "must be >= 2")
    if not (self.exclude_history is None or isinstance(self.exclude_history, bool)):
      _fail("exclude_history", self.exclude_history, "must be true, false or null (auto)")
    if not 0.0 <= self.repeat_threshold <= 1.0:
      _fail("repeat_threshold", self.repeat_threshold, "must be a share in [0, 1]")
    if self.eval_batch_size < 1:
      _fail("eval_batch_size", self.eval_batch_size, "must be >= 1")
    if self.item_chunk < 1:
      _fail("item_chunk", self.item_chunk, "must be >= 1")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """SavedModel export (DESIGN.md section 6)."""

  export: bool = True
  export_base: str = "saved_models"
  model_name: str = "bivrec"
  top_k: int = 10
  # storage of the served item tables: float32, bfloat16 or float16 (scored in float32)
  table_dtype: str = "float32"

  def validate(self) -> None:
    if self.top_k < 1:
      _fail("top_k", self.top_k, "must be >= 1")
    if self.table_dtype not in TABLE_DTYPES:
      _fail("table_dtype", self.table_dtype, f"must be one of {TABLE_DTYPES}")
    if not self.model_name or "/" in self.model_name:
      _fail("model_name", self.model_name, "must be a non-empty name without '/'")


@dataclasses.dataclass(frozen=True)
class Config:
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  loss: LossConfig = LossConfig()
  train: TrainConfig = TrainConfig()
  eval: EvalConfig = EvalConfig()
  export: ExportConfig = ExportConfig()

  def __post_init__(self):
    for section in dataclasses.fields(self):
      getattr(self, section.name).validate()
    m = self.model
    if self.loss.lambda_centre > 0 and not m.global_query:
      _fail(
        "lambda_centre",
        self.loss.lambda_centre,
        "needs model.global_query (the shared direction moves into g_v)",
      )
    crossing = {"cross", "item"} & set(self.loss.sem_mode.split("+"))
    if m.mm_dim not in (0, m.dim) and crossing:
      _fail(
        "mm_dim",
        m.mm_dim,
        f"sem_mode {sorted(crossing)} compares vectors across the views: needs mm_dim = dim",
      )
    if m.mm_num_interests not in (0, m.num_interests) and self.loss.lambda_joint > 0:
      _fail(
        "mm_num_interests",
        m.mm_num_interests,
        "lambda_joint pairs interest k of both views: needs the same K in both",
      )

  def replace(self, **sections_fields: Any) -> "Config":
    """`cfg.replace(model={"num_interests": 8})` -> a new validated Config."""
    updated = {}
    for name, fields in sections_fields.items():
      updated[name] = dataclasses.replace(getattr(self, name), **fields)
    return dataclasses.replace(self, **updated)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, raw: dict) -> "Config":
    sections = {}
    for section in dataclasses.fields(cls):
      section_cls = section.default.__class__
      values = dict(raw.get(section.name, {}))
      known = {f.name: f for f in dataclasses.fields(section_cls)}
      for key in values:
        if key not in known:
          raise ValueError(f"config field `{section.name}.{key}` is unknown")
      for key, value in list(values.items()):
        if isinstance(value, list):
          values[key] = tuple(value)
      sections[section.name] = section_cls(**values)
    return cls(**sections)

  @classmethod
  def from_json(cls, text: str) -> "Config":
    return cls.from_dict(json.loads(text))


# --- command-line flags -----------------------------------------------------------------------


def _flag(name: str) -> str:
  return "--" + name.replace("_", "-")


def _leaf_type(annotation: Any):
  """(parser, is_bool, is_tuple) for a field annotation such as Optional[Tuple[int, ...]]."""
  text = str(annotation)
  base = text.replace("typing.", "").replace("Optional[", "").rstrip("]")
  is_tuple = "Tuple" in text
  if "bool" in base:
    return None, True, False
  if "int" in base:
    elem = int
  elif "float" in base:
    elem = float
  else:
    elem = str
  if is_tuple:
    return (lambda s: tuple(elem(x) for x in s.split(",") if x.strip())), False, True
  if "Optional" in text:
    return (lambda s: None if s.lower() in ("none", "") else elem(s)), False, False
  return elem, False, False


def add_flags(parser: argparse.ArgumentParser) -> None:
  """Adds one flag per leaf field of Config; defaults shown by --help."""
  for section in dataclasses.fields(Config):
    group = parser.add_argument_group(section.name)
    section_cls = section.default.__class__
    hints = typing.get_type_hints(section_cls)
    for field in dataclasses.fields(section_cls):
      parse, is_bool, is_tuple = _leaf_type(hints[field.name])
      default = field.default
      shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
      dest = f"{section.name}__{field.name}"
      if is_bool:
        group.add_argument(
          _flag(field.name),
          dest=dest,
          action=argparse.BooleanOptionalAction,
          default=None,
          help=f"(default: {shown})",
        )
      else:
        group.add_argument(
          _flag(field.name),
          dest=dest,
          type=parse,
          default=None,
          metavar=field.name.upper(),
          help=f"(default: {shown})",
        )


def from_flags(args: argparse.Namespace, base: Optional[Config] = None) -> Config:
  """Config from parsed flags: unset flags keep `base`'s (default) values."""
  base = base or Config()
  updates: dict = {}
  for key, value in vars(args).items():
    if "__" not in key or value is None:
      continue
    section, field = key.split("__", 1)
    updates.setdefault(section, {})[field] = value
  return base.replace(**updates)

"""Late fusion: an ID-only and an MM-only model, trained separately, scored as one two-view model.

The baseline that tells whether BivRec's joint training earns anything: both views trained alone
(presets `id_only` and `mm_only`), then fused by BivRec's own rule, s = w s_id + (1 - w) s_mm with
cold items scored s_mm, w tuned on validation. Always the score-level rule: interest-level fusion
(`ModelConfig.fusion` "interest") pairs interest k of one view with interest k of the other, which
only joint training (`LossConfig.lambda_joint`) aligns; separately trained views' interest indices
mean nothing to each other. `LateFusion` exposes what `evaluate.Ranker` and the
diagnostics read from a `BivRecModel` (view names, queries, item tables, cold mask), so the same
evaluation code ranks it.
"""

import tensorflow as tf


class LateFusion:
  """Two single-view models as one two-view scorer.

  Args: id_model, mm_model: trained `BivRecModel`s with views ("id",) and ("mm",), over the same
    vocabulary and with the same `tau_rec`.
  """

  view_names = ("id", "mm")

  def __init__(self, id_model, mm_model):
    if id_model.view_names != ("id",) or mm_model.view_names != ("mm",):
      raise ValueError(
        "late fusion needs an ID-only and an MM-only model, got views "
        f"{id_model.view_names} and {mm_model.view_names}"
      )
    if id_model.vocab_size != mm_model.vocab_size:
      raise ValueError(f"vocabulary sizes differ: {id_model.vocab_size} vs {mm_model.vocab_size}")
    if id_model.config.model.tau_rec != mm_model.config.model.tau_rec:
      raise ValueError("the two models must share tau_rec (the fusion rule mixes their scores)")
    self.models = {"id": id_model, "mm": mm_model}
    self.config = id_model.config.replace(model={"fusion": "score"})  # see the module docstring
    self.vocab_size = id_model.vocab_size
    self.cold = id_model.cold
    self.views = {"id": id_model.views["id"], "mm": mm_model.views["mm"]}

  def queries(self, history):
    """{view: U `[B, K, d]`}, each from its own model."""
    return {v: m.queries(history)[v] for v, m in self.models.items()}

  def item_table(self, view: str) -> tf.Tensor:
    return self.models[view].item_table(view)

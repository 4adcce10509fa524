"""BivRec layers, one paper concept per file (DESIGN.md section 3)."""

from bivrec_tf.layers.cross_view import (
  AllocationStats,
  SemanticHead,
  allocation_cka_loss,
  allocation_loss,
  item_alignment_loss,
  ensemble_distillation_loss,
  guided_distillation_loss,
  batch_guided_distillation_loss,
  discounted_teacher_weights,
  judged_teacher_weights,
  weighted_distillation_loss,
  soft_guided_distillation_loss,
  mutual_distillation_loss,
  non_target_distillation_loss,
  semantic_loss,
)
from bivrec_tf.layers.interests import (
  ClusterAttention,
  GaussianAttention,
  InterestDecomposition,
  interest_similarity,
  paired_users,
)
from bivrec_tf.layers.patching import MultiScaleInterestEmbedding, TransformerBlock
from bivrec_tf.layers.towers import IdTower, MultimodalTower

__all__ = [
  "AllocationStats",
  "ClusterAttention",
  "GaussianAttention",
  "IdTower",
  "InterestDecomposition",
  "MultiScaleInterestEmbedding",
  "MultimodalTower",
  "SemanticHead",
  "TransformerBlock",
  "allocation_cka_loss",
  "allocation_loss",
  "interest_similarity",
  "paired_users",
  "item_alignment_loss",
  "ensemble_distillation_loss",
  "guided_distillation_loss",
  "batch_guided_distillation_loss",
  "discounted_teacher_weights",
  "judged_teacher_weights",
  "weighted_distillation_loss",
  "soft_guided_distillation_loss",
  "mutual_distillation_loss",
  "non_target_distillation_loss",
  "semantic_loss",
]

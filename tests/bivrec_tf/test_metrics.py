"""Full-ranking metrics against hand-computed values (DESIGN.md section 5)."""

import math

import numpy as np
import pytest

from bivrec_tf.evaluate import rank_metrics


def test_single_target_metrics_match_hand_computation():
  topk = np.array([[5, 7, 9, 2], [3, 4, 6, 8]])
  targets = np.array([[9], [11]])  # user 0 hit at rank 3; user 1 missed
  m = rank_metrics(topk, targets, ks=(2, 4))
  assert m["recall@2"] == 0.0 and m["hitrate@2"] == 0.0 and m["mrr@2"] == 0.0
  assert m["recall@4"] == pytest.approx(0.5)
  assert m["hitrate@4"] == pytest.approx(0.5)
  assert m["mrr@4"] == pytest.approx((1 / 3) / 2)
  assert m["ndcg@4"] == pytest.approx((1 / math.log2(4)) / 2)


def test_multi_target_metrics_match_hand_computation():
  topk = np.array([[5, 7, 9, 2, 4]])
  targets = np.array([[7, 4, 13, 0]])  # 0 = padding; hits at ranks 2 and 5; 3 targets
  m = rank_metrics(topk, targets, ks=(3, 5))
  assert m["recall@3"] == pytest.approx(1 / 3)
  assert m["recall@5"] == pytest.approx(2 / 3)
  dcg5 = 1 / math.log2(3) + 1 / math.log2(6)
  idcg5 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
  assert m["ndcg@5"] == pytest.approx(dcg5 / idcg5)
  idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
  assert m["ndcg@3"] == pytest.approx((1 / math.log2(3)) / idcg3)
  assert m["mrr@5"] == pytest.approx(0.5)
  assert m["hitrate@3"] == 1.0


def test_ideal_dcg_uses_min_of_targets_and_k():
  topk = np.array([[7, 8, 9]])
  targets = np.array([[7, 8, 9, 10, 11]])
  m = rank_metrics(topk, targets, ks=(2,))
  assert m["ndcg@2"] == pytest.approx(1.0)  # two hits in two slots is ideal
  assert m["recall@2"] == pytest.approx(2 / 5)


def test_duplicate_targets_count_once_and_users_without_targets_are_skipped():
  topk = np.array([[7, 8], [7, 8]])
  targets = np.array([[7, 7], [0, 0]])
  m = rank_metrics(topk, targets, ks=(2,))
  assert m["recall@2"] == 1.0 and m["ndcg@2"] == pytest.approx(1.0)

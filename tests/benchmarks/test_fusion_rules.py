"""The post-hoc fusion-rule screen: its tie handling and its rules' formulas."""

import numpy as np

from benchmarks.fusion_rules import agreement, fused_scores, ndcg_at, target_rank


def test_ties_count_against_the_target_unless_optimistic():
  fused = np.array([[0.0, 0.0, 2.0, 2.0, 1.0]])  # items 0-1 padding, 2 and 3 tie
  target = np.array([3])
  assert target_rank(fused, target)[0] == 0  # optimistic: only strictly higher items count
  worse_on_tie_break = np.array([[0.0, 0.0, 5.0, 1.0, 0.0]])
  assert target_rank(fused, target, worse_on_tie_break)[0] == 1
  better_on_tie_break = np.array([[0.0, 0.0, 1.0, 5.0, 0.0]])
  assert target_rank(fused, target, better_on_tie_break)[0] == 0
  assert ndcg_at(np.array([0, 1, 25])) == (1.0 + 1.0 / np.log2(3.0) + 0.0) / 3


def test_rank_rule_is_truncated_reciprocal_rank_fusion_with_cold_items_ranked_by_mm():
  s_id = np.array([[0.0, 0.0, 3.0, 2.0, 1.0, 9.0]])
  s_mm = np.array([[0.0, 0.0, 1.0, 3.0, 2.0, 0.5]])
  mask = np.zeros_like(s_id, bool)
  mask[:, :2] = True
  cold = np.array([False, False, False, False, False, True])
  out = fused_scores("rank", s_id, s_mm, 0.25, mask, cold, constant=1.0, depth=2)
  # ID ranks without the cold item: 2 -> 0, 3 -> 1, 4 -> 2 (truncated to 2); MM ranks:
  # 3 -> 0, 4 -> 1, 2 -> 2, 5 -> 3 (both truncated to 2).
  expected = [0.25 / 1 + 0.75 / 3, 0.25 / 2 + 0.75 / 1, 0.25 / 3 + 0.75 / 2, 1.0 / 3]
  np.testing.assert_allclose(out[0, 2:], expected)
  assert np.all(np.isneginf(out[0, :2]))


def test_score_rule_is_the_projects_rule():
  s_id = np.array([[0.0, 0.0, 1.0, 4.0]])
  s_mm = np.array([[0.0, 0.0, 3.0, 2.0]])
  mask = np.array([[True, True, False, False]])
  cold = np.array([False, False, False, True])
  out = fused_scores("score", s_id, s_mm, 0.3, mask, cold)
  np.testing.assert_allclose(out[0, 2:], [0.3 * 1.0 + 0.7 * 3.0, 2.0])


def test_agreement_measures_how_alike_the_views_rank_each_user():
  # Three users, catalogue of 2 padding rows + 3 items; targets 2, 3, 4.
  mask = np.zeros((3, 5), bool)
  mask[:, :2] = True
  cold = np.zeros(5, bool)
  target = np.array([2, 3, 4])
  s_id = np.array([[0, 0, 3.0, 2.0, 1.0]] * 3)  # ID ranks item 2 first, then 3, then 4
  s_mm = np.array([[0, 0, 1.0, 3.0, 2.0], [0, 0, 1.0, 3.0, 2.0], [0, 0, 1.0, 2.0, 3.0]])
  splits = {"test": (s_id, s_mm, target, mask, cold)}
  a = agreement(splits)
  # Every target is in both top 20 (three items): no user is hit by one view only.
  assert a["one_view_hits"] == 0.0
  ndcg = lambda r: 1.0 / np.log2(r + 2.0)  # noqa: E731
  per_id, per_mm = [ndcg(0), ndcg(1), ndcg(2)], [ndcg(2), ndcg(0), ndcg(0)]
  np.testing.assert_allclose(a["oracle"], np.mean(np.maximum(per_id, per_mm)))
  np.testing.assert_allclose(a["ndcg_correlation"], np.corrcoef(per_id, per_mm)[0, 1])
  assert a["ndcg_correlation"] < 0  # the views are right for different users here

"""Two-stage retrieval (serving/two_stage.py, serving/ann_index.py): with an index that finds
every item, the answer is the export's own; the fusion, cold, retire and history rules are the
export's; interests come from a SavedModel or over REST from the version the index was built
from."""

import json

import numpy as np
import pytest
import tensorflow as tf

from serving import local_server, two_stage
from serving.ann_index import ItemIndex
from serving.client import pad_histories
from tests.serving import models as tiny

HISTORIES = [
  ["item-3", "item-9", "item-12", "item-30"],
  ["item-1", "item-1", "never-seen", "item-7"],
  ["item-39", "", ""],
  ["unknown", ""],  # no known item: the export's popular items
]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  base = tmp_path_factory.mktemp("models")
  path = tiny.export_tiny(base, "bivrec", seed=1)
  loaded = tf.saved_model.load(str(path))
  interests = two_stage.saved_model_interests(path, ("id", "mm"))
  return path, loaded, interests, two_stage.index_from_export(path, spec="Flat")


def _rebuilt(index, spec="Flat", **kwargs):
  """The same items and settings in a new index (other spec, flags)."""
  fields = dict(servable=index.servable, popular=index.popular)
  fields.update(popular_scores=index.popular_scores, spec=spec, **kwargs)
  return ItemIndex.build(
    index.item_ids, index.vectors, index.cold, index.fusion_weight, index.tau_rec, **fields
  )


def _served(loaded, histories):
  out = loaded.signatures["serving_default"](history=tf.constant(pad_histories(histories)))
  return out["item_ids"].numpy().astype(str), out["scores"].numpy()


@pytest.mark.parametrize("spec,nprobe", [("Flat", 1), ("IVF4,Flat", 4)])
def test_an_index_that_finds_every_item_answers_as_the_export(export, spec, nprobe):
  _, loaded, interests, flat = export
  index = flat if spec == "Flat" else _rebuilt(flat, spec, nprobe=nprobe)
  assert index.info["spec"] == spec
  # Warm items in the joined [e_id, e_mm] index, cold items (scored s_mm alone) in an MM index.
  assert index.cold.sum() == 5 and index.ann["cold"].ntotal == 5
  assert index.ann["fused"].ntotal == tiny.NUM_ITEMS - 5 and index.ann["fused"].d == 2 * tiny.DIM
  retriever = two_stage.TwoStageRetriever(index, interests, candidates=tiny.NUM_ITEMS)
  ids, scores = retriever.recommend(HISTORIES, k=tiny.TOP_K)
  want_ids, want_scores = _served(loaded, HISTORIES)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
  assert set(ids[0]) & {f"item-{i}" for i in range(5)}, "a cold item ranks in the top k"
  # k is free in two stages (the export's is fixed): the first TOP_K are the same.
  more, _ = retriever.recommend(HISTORIES[:1], k=3 * tiny.TOP_K)
  assert more.shape == (1, 3 * tiny.TOP_K) and list(more[0, : tiny.TOP_K]) == list(want_ids[0])


def test_interest_level_fusion_searches_matching_interest_pairs_and_answers_as_the_export(
  tmp_path,
):
  # ModelConfig.fusion "interest": the export scores max_k [w s_id,k + (1 - w) s_mm,k]; the index
  # takes the rule from the export's metadata and searches the K joined queries k = j.
  path = tiny.export_tiny(
    tmp_path, "bivrec", seed=2, model_fields={"fusion": "interest", "interest_init": "orthogonal"}
  )
  loaded = tf.saved_model.load(str(path))
  index = two_stage.index_from_export(path, spec="Flat")
  assert index.fusion == "interest"
  interests = two_stage.saved_model_interests(path, ("id", "mm"))
  queries = index.queries(interests(pad_histories(HISTORIES[:1])))
  assert queries["fused"].shape == (1, tiny.NUM_INTERESTS, 2 * tiny.DIM)
  for candidates in (tiny.NUM_ITEMS, tiny.TOP_K + len(HISTORIES[0])):
    retriever = two_stage.TwoStageRetriever(index, interests, candidates=candidates)
    ids, scores = retriever.recommend(HISTORIES, k=tiny.TOP_K)
    want_ids, want_scores = _served(loaded, HISTORIES)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
  saved_dir = index.save(tmp_path / "index")
  assert ItemIndex.load(saved_dir).fusion == "interest"
  # An index.json written before the field existed reads as the score-level rule.
  meta = json.loads((saved_dir / "index.json").read_text())
  del meta["fusion"]
  (saved_dir / "index.json").write_text(json.dumps(meta))
  assert ItemIndex.load(saved_dir).fusion == "score"
  with pytest.raises(ValueError, match="fusion"):
    _rebuilt(index, fusion="nearest")


def test_k_plus_history_candidates_per_joined_query_find_the_exact_top_k(export):
  """The fused score of a warm item is its best joined-query score, so an exact index searched
  for k + |history| items per query finds the exact fused top k (views searched separately do
  not guarantee this)."""
  _, loaded, interests, index = export
  for history in HISTORIES[:3]:
    retriever = two_stage.TwoStageRetriever(index, interests, tiny.TOP_K + len(history))
    ids, scores = retriever.recommend([history], k=tiny.TOP_K)
    want_ids, want_scores = _served(loaded, [history])
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def _brute_force(index, queries, history_rows, k):
  """Every servable item not in the history, fused as the export fuses, best k rows."""
  rows = np.flatnonzero(index.servable)
  rows = rows[~np.isin(rows, history_rows)]
  s = two_stage.fused_scores(queries, index, rows)
  return rows[np.argsort(-s, kind="stable")[:k]]


def test_retired_items_are_never_returned_and_histories_with_them_still_answer(export):
  _, loaded, interests, index = export
  first, _ = _served(loaded, HISTORIES[:1])
  retired = index.rows(first[0][:3])  # the export's three best answers
  servable = index.servable.copy()
  servable[retired] = False
  index = _rebuilt(index, servable=servable)
  assert index.ann["fused"].ntotal + index.ann["cold"].ntotal == tiny.NUM_ITEMS - 3
  retriever = two_stage.TwoStageRetriever(index, interests, candidates=tiny.NUM_ITEMS)
  histories = HISTORIES[:2] + [list(first[0][:3])]  # the last one is all retired items
  ids, scores = retriever.recommend(histories, k=tiny.TOP_K)
  assert not set(ids.ravel()) & set(first[0][:3])
  assert np.isfinite(scores).all() and (ids != "").all()
  queries = interests(pad_histories(histories))
  for b, history in enumerate(histories):
    want = _brute_force(
      index, {v: q[b] for v, q in queries.items()}, index.rows(history), tiny.TOP_K
    )
    np.testing.assert_array_equal(index.rows(ids[b]), want)


def test_few_candidates_per_interest_still_obey_the_rules(export):
  """An ANN stage that finds little: fewer than k survivors are padded, never filled with
  history or retired items."""
  _, _, interests, index = export
  retriever = two_stage.TwoStageRetriever(index, interests, candidates=1)
  ids, scores = retriever.recommend(HISTORIES[:1], k=tiny.NUM_ITEMS)
  found = ids[0][ids[0] != ""]
  assert 1 <= len(found) <= tiny.NUM_INTERESTS**2 + tiny.NUM_INTERESTS  # joined pairs + cold
  assert not set(found) & set(HISTORIES[0])
  assert np.isneginf(scores[0][len(found) :]).all() and np.isfinite(scores[0][: len(found)]).all()
  assert (np.diff(scores[0][: len(found)]) <= 0).all()


def test_saved_index_loads_back_and_answers_the_same_over_rest(export, tmp_path, capsys):
  path, loaded, _, _ = export
  out = tmp_path / "ann"
  assert two_stage.main(["build", "--export", str(path), "--out", str(out), "--threads", "1"]) == 0
  assert "40 items, Flat" in capsys.readouterr().out
  meta = json.loads((out / "index.json").read_text())
  assert meta["version"] == 1 and meta["model_name"] == "bivrec" and meta["fusion_weight"] == 0.6
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
  # An existing directory is never replaced.
  assert two_stage.main(["build", "--export", str(path), "--out", str(out)]) == 2
  assert "already exists" in capsys.readouterr().err

  http, poller = local_server.start("bivrec", str(path.parent), port=0, poll_wait_seconds=0.2)
  try:
    url = f"http://127.0.0.1:{http.port}"
    index = ItemIndex.load(out)
    over_rest = two_stage.rest_interests(url, "bivrec", index.info["version"], index.views)
    ids, scores = two_stage.TwoStageRetriever(index, over_rest, tiny.NUM_ITEMS).recommend(
      HISTORIES, tiny.TOP_K
    )
    want_ids, want_scores = _served(loaded, HISTORIES)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    args = ["query", "--index", str(out), "--url", url, "--history", *HISTORIES[0], "--k", "3"]
    assert two_stage.main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in printed[1:]] == list(want_ids[0][:3])
  finally:
    http.shutdown()
    http.server_close()
    poller.stop()


def test_bad_input_gets_one_line_errors(export, tmp_path, capsys):
  path, _, interests, index = export
  assert two_stage.main(["query", "--index", str(tmp_path / "none"), "--export", str(path)]) == 2
  assert "index.json not found" in capsys.readouterr().err
  assert two_stage.main(["build", "--export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
  assert "is " + str(tmp_path) + " an export version directory" in capsys.readouterr().err
  with pytest.raises(ValueError, match="cold has 3 rows but there are 40 item ids"):
    ItemIndex.build(index.item_ids, index.vectors, index.cold[:3], 0.5, 0.07, spec="Flat")
  with pytest.raises(ValueError, match="candidates = 0 must be >= 1"):
    two_stage.TwoStageRetriever(index, interests, candidates=0)


def test_a_one_view_index_ranks_by_that_view_alone():
  """A one-view export: one index named after the view, cold flags unused, exact re-ranking."""
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(300, 8)).astype(np.float32)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  cold = rng.random(300) < 0.2
  ids = [f"x{i}" for i in range(300)]
  index = ItemIndex.build(ids, {"mm": vectors}, cold, fusion_weight=0.6, tau_rec=0.1, spec="Flat")
  assert list(index.ann) == ["mm"] and index.ann["mm"].ntotal == 300
  queries = {"mm": rng.normal(size=(2, 3, 8)).astype(np.float32)}
  seen = [index.rows(["x5", "x7", "nope"]), index.rows(["x1"])]
  rows, scores = two_stage.TwoStageRetriever(index, None, candidates=20).rank(queries, seen, 10)
  for b in range(2):
    s = (queries["mm"][b] @ vectors.T).max(axis=0) / np.float32(0.1)
    s[seen[b][seen[b] >= 0]] = -np.inf
    want = np.argsort(-s, kind="stable")[:10]
    np.testing.assert_array_equal(rows[b], want)
    np.testing.assert_allclose(scores[b], s[want], rtol=1e-5)

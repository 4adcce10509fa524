"""Full-ranking evaluation in item chunks equals one pass over the catalogue."""

import numpy as np

from bivrec_tf.config import Config
from bivrec_tf.evaluate import Ranker
from bivrec_tf.model import BivRecModel


def test_chunked_full_ranking_equals_unchunked():
  v = 103
  rng = np.random.default_rng(0)
  cfg = Config().replace(model={"dim": 8, "num_interests": 2})
  seen = rng.random(v) > 0.2  # some cold items: the fused rule scores them by the MM view
  model = BivRecModel(cfg, v, 10, {"text": rng.normal(size=(v, 5)).astype(np.float32)},
                      {"text": np.ones(v, bool)}, item_counts=rng.integers(0, 5, v),
                      seen_in_train=seen)
  history = rng.integers(0, v, (6, 10))
  weights = [0.0, 0.3, 1.0]
  for exclude in (False, True):
    whole = Ranker(model, kmax=20, item_chunk=10_000, exclude_history=exclude).topk(history,
                                                                                      weights)
    chunked = Ranker(model, kmax=20, item_chunk=7, exclude_history=exclude).topk(history, weights)
    assert whole.keys() == chunked.keys() and len(whole) == 5
    for name in whole:
      np.testing.assert_array_equal(whole[name], chunked[name])
      assert np.all(whole[name] >= 2)  # padding / OOV never ranked
      if exclude:
        for row, h in zip(whole[name], history):
          assert not set(row) & set(h[h >= 2])

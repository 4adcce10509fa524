"""Living catalogues (`python -m bivrec_tf.catalogue`): items added, retired and updated in a
served model without retraining.

One chain of versions of a tiny random-weight export (tests/serving/models.py) is written while
a local server polls the model directory under a steady stream of requests: v1 the export, v2
adds items scored by the cold rule, v3 retires items, v4 updates an item's features. Each test
checks one property of that chain (imputed ID vectors are checked on the change itself: they are
scored by the warm items' rule, which the chain already serves).
"""

import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from bivrec_tf import export as export_lib
from bivrec_tf.catalogue import __main__ as cli
from bivrec_tf.catalogue import ops
from bivrec_tf.catalogue.features import TextInput, read_new_features
from bivrec_tf.catalogue.impute import fit_id_map
from bivrec_tf.catalogue.version import load_version
from bivrec_tf.model import FIRST_ITEM
from input_pipelines.errors import run_cli
from input_pipelines.prepared import standardize
from input_pipelines.text_encoders import hashing_encode
from serving import local_server
from tests.serving import models as tiny

W = 0.6
MOMENTS = {  # the standardization the (pretend) training data recorded
  "text": {"mean": [0.5] * 6, "std": [2.0] * 6},
  "image": {"mean": [-1.0, 0.0, 1.0, 2.0], "std": [0.5, 1.0, 1.5, 3.0]},
}
NEW = ["new-0", "new-1", "new-2"]
RETIRED = [f"item-{i}" for i in range(0, 40, 2)]  # half the items, the most popular among them


def _raw(standardized, moments):
  """The raw row that standardizes to `standardized` (float64, so the round trip is exact)."""
  return np.asarray(standardized, np.float64) * moments["std"] + moments["mean"]


def _write_features(directory, name, ids, rows):
  np.save(directory / f"{name}.npy", np.asarray(rows, np.float64))
  (directory / f"{name}.ids.txt").write_text("".join(f"{x}\n" for x in ids))
  return f"{name}={directory / f'{name}.npy'}:{directory / f'{name}.ids.txt'}"


def _cli(*argv):
  """Runs the CLI in-process like `python -m bivrec_tf.catalogue`; -> exit status."""
  return run_cli(cli.main, [str(a) for a in argv])


class Load(threading.Thread):
  """Unversioned predict requests in a loop; counts the failed ones."""

  def __init__(self, url):
    super().__init__(daemon=True)
    self.url, self.stop, self.ok, self.failed = url, threading.Event(), 0, []
    self.body = json.dumps({"instances": [["item-3", "item-9", "new-0"]]}).encode()

  def run(self):
    while not self.stop.is_set():
      req = urllib.request.Request(f"{self.url}/v1/models/bivrec:predict", data=self.body)
      try:
        with urllib.request.urlopen(req, timeout=30) as resp:
          json.loads(resp.read())
        self.ok += 1
      except (urllib.error.URLError, OSError, ValueError) as err:
        self.failed.append(repr(err))
      time.sleep(0.02)  # a steady stream, not a CPU hog next to the exports


def _served_version(url):
  with urllib.request.urlopen(f"{url}/v1/models/bivrec", timeout=30) as resp:
    states = json.loads(resp.read())["model_version_status"]
  return max(int(s["version"]) for s in states if s["state"] == "AVAILABLE")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("catalogue")
  base = tmp / "models"
  model = tiny.tiny_model(seed=0)
  meta = {"dataset": {"modalities": {m: {"standardization": v} for m, v in MOMENTS.items()}}}
  export_lib.export_model(model, tiny.vocab(), W, str(base), "bivrec", tiny.TOP_K, metadata=meta)
  model_dir = base / "bivrec"
  http, poller = local_server.start("bivrec", str(model_dir), port=0, poll_wait_seconds=0.2)
  url = f"http://127.0.0.1:{http.port}"
  load = Load(url)
  load.start()
  features = {m: np.asarray(t.numpy()) for m, t in model.views["mm"].tower.tables.items()}
  present = {
    m: np.asarray(p.numpy()) > 0.5 for m, p in model.views["mm"].tower.present_masks.items()
  }
  # new-0 is a twin of the cold item-3 (same features); new-1, new-2 are new.
  rng = np.random.default_rng(7)
  twin = FIRST_ITEM + 3
  text = [features["text"][twin], rng.normal(size=6), rng.normal(size=6)]
  image_ids = ["new-0", "new-2"] if present["image"][twin] else ["new-2"]
  image = ([features["image"][twin]] if present["image"][twin] else []) + [rng.normal(size=4)]
  specs = [
    _write_features(tmp, "text", NEW, _raw(text, MOMENTS["text"])),
    _write_features(tmp, "image", image_ids, _raw(image, MOMENTS["image"])),
  ]
  swaps = []

  def step(*argv):
    assert _cli(*argv, "--model-dir", model_dir) == 0
    version = max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    deadline = time.time() + 60
    while _served_version(url) != version and time.time() < deadline:
      time.sleep(0.1)
    swaps.append(_served_version(url))

  step("add", "--features", specs[0], "--features", specs[1])  # v2
  step("retire", *RETIRED[:-1], "--ids", _ids_file(tmp, RETIRED[-1:]))  # v3
  update = _write_features(tmp, "update", ["item-7"], _raw([rng.normal(size=6)], MOMENTS["text"]))
  step("update", "--features", update.replace("update=", "text="))  # v4
  load.stop.set()
  load.join()
  http.shutdown()
  http.server_close()
  poller.stop()
  versions = {v: tf.saved_model.load(str(model_dir / str(v))) for v in range(1, 5)}
  yield {
    "dir": model_dir,
    "tmp": tmp,
    "model": model,
    "saved": versions,
    "load": load,
    "swaps": swaps,
    "specs": specs,
  }


def _ids_file(directory, ids):
  path = directory / "retire.txt"
  path.write_text("".join(f"{x}\n" for x in ids))
  return path


def _embeddings(saved, ids):
  out = saved.signatures["item_embeddings"](item_ids=tf.constant(ids))
  return {k: v.numpy() for k, v in out.items()}


def _recommend(saved, histories):
  out = saved.signatures["serving_default"](history=tf.constant(histories))
  return out["item_ids"].numpy().astype(str), out["scores"].numpy()


def _reference(v, history):
  """Brute force over a version's catalogue (numpy): {id: fused score} with the cold rule,
  retired and history items at -inf."""
  cat, model = v.catalogue, v.model
  index = {x: i for i, x in enumerate(cat.vocab)}
  ids = [index[x] for x in history if index.get(x, 0) >= FIRST_ITEM][-tiny.MAX_LEN :]
  row = np.array([[0] * (tiny.MAX_LEN - len(ids)) + ids], np.int64)
  tau = model.config.model.tau_rec
  s = {
    view: (q.numpy()[0] @ cat.tables[view].T).max(axis=0) / tau
    for view, q in model.queries(row).items()
  }
  fused = np.where(cat.cold, s["mm"], W * s["id"] + (1 - W) * s["mm"])
  fused[~cat.servable] = -np.inf
  fused[np.asarray(ids, np.int64) - FIRST_ITEM] = -np.inf
  return dict(zip(cat.vocab[FIRST_ITEM:], fused))


def _assert_ranked_as_reference(v, histories, ids, scores):
  """Served top-k = the reference's top-k: the same scores, each served item with its own
  reference score (ties may come in either order)."""
  for row, history in enumerate(histories):
    ref = _reference(v, history)
    best = sorted(ref.values(), reverse=True)[: tiny.TOP_K]
    np.testing.assert_allclose(scores[row], best, rtol=1e-5, atol=1e-5)
    mine = [ref[x] for x in ids[row]]
    np.testing.assert_allclose(mine, scores[row], rtol=1e-5, atol=1e-5)


def _histories(seed, n, vocab, length=4):
  rng = np.random.default_rng(seed)
  return [list(rng.choice(vocab, size=length, replace=False)) for _ in range(n)]


WARM = [f"item-{i}" for i in range(tiny.NUM_ITEMS)]


# --- add ----------------------------------------------------------------------------------------


def test_add_leaves_every_warm_item_and_user_vector_bit_identical(chain):
  v1, v2 = chain["saved"][1], chain["saved"][2]
  for key, value in _embeddings(v1, WARM).items():
    np.testing.assert_array_equal(_embeddings(v2, WARM)[key], value)
  histories = _histories(0, 20, WARM)
  for sig in ("user_interests",):
    a = v1.signatures[sig](history=tf.constant(histories))
    b = v2.signatures[sig](history=tf.constant(histories))
    for key in a:
      np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_added_items_are_ranked_by_the_cold_rule_over_the_grown_catalogue(chain):
  v2 = load_version(chain["dir"], 2)
  assert list(v2.catalogue.vocab[-3:]) == NEW and v2.catalogue.cold[-3:].all()
  np.testing.assert_array_equal(v2.catalogue.tables["id"][-3:], 0.0)  # no ID embedding
  histories = _histories(1, 30, WARM + NEW)
  ids, scores = _recommend(chain["saved"][2], histories)
  _assert_ranked_as_reference(v2, histories, ids, scores)
  assert set(ids.ravel()) & set(NEW), "no added item recommended: the check tests little"


def test_an_added_item_with_a_known_items_raw_features_gets_its_vector_and_is_recommended(chain):
  """new-0's raw features standardize (recorded moments) to cold item-3's: same MM vector, and
  wherever item-3 is recommended, new-0 is too, next to it, with its score."""
  v2 = chain["saved"][2]
  emb = _embeddings(v2, ["item-3", "new-0"])
  np.testing.assert_allclose(emb["mm_embedding"][1], emb["mm_embedding"][0], atol=1e-6)
  histories = _histories(2, 200, [x for x in WARM if x != "item-3"])
  checked = 0
  for got, score in zip(*_recommend(v2, histories)):
    got = list(got)
    if "item-3" in got[:-1]:
      assert "new-0" in got
      i, j = got.index("item-3"), got.index("new-0")
      assert abs(i - j) == 1
      np.testing.assert_allclose(score[j], score[i], atol=1e-4)
      checked += 1
  assert checked > 10, "item-3 is rarely recommended: the check tests little"


# --- retire -------------------------------------------------------------------------------------


def test_retired_items_are_never_returned_and_histories_with_them_still_answer(chain):
  v3 = chain["saved"][3]
  # 1,997 + 3 histories x top 5 = 10,000 served recommendations
  histories = _histories(3, 1997, WARM + NEW) + [
    RETIRED[:4],
    ["", "", "", ""],
    ["unknown", "", "", ""],
  ]
  ids, scores = _recommend(v3, histories)
  assert ids.size == 10_000 and not set(ids.ravel()) & set(RETIRED)
  assert (ids != "").all() and np.isfinite(scores).all()  # 23 servable items, 4 in a history
  _assert_ranked_as_reference(load_version(chain["dir"], 3), histories[:30], ids, scores)
  assert "item-0" not in ids[-1]  # the most popular item is retired: not in the fallback


def test_user_vectors_of_histories_with_retired_items_are_unchanged(chain):
  histories = [RETIRED[:4], RETIRED[4:6] + ["item-3", ""]]
  a = chain["saved"][2].signatures["user_interests"](history=tf.constant(histories))
  b = chain["saved"][3].signatures["user_interests"](history=tf.constant(histories))
  for key in a:
    np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_undo_makes_retired_items_servable_again(chain):
  v3 = load_version(chain["dir"], 3)
  _, cat, op = ops.retire_items(v3, RETIRED[:3], lambda x: ("test", None, "line"), undo=True)
  assert op["op"] == "unretire" and op["retired"] == len(RETIRED) - 3
  np.testing.assert_array_equal(~cat.servable, np.isin(cat.vocab[FIRST_ITEM:], RETIRED[3:]))


def test_retired_stay_retired_in_later_versions(chain):
  for version in (3, 4):
    cat = load_version(chain["dir"], version).catalogue
    np.testing.assert_array_equal(~cat.servable, np.isin(cat.vocab[FIRST_ITEM:], RETIRED))


# --- update -------------------------------------------------------------------------------------


def test_update_changes_only_the_updated_items_vectors(chain):
  before, after = (
    _embeddings(chain["saved"][3], WARM + NEW),
    _embeddings(chain["saved"][4], WARM + NEW),
  )
  changed = WARM.index("item-7")
  np.testing.assert_array_equal(after["id_embedding"], before["id_embedding"])
  assert not np.allclose(after["mm_embedding"][changed], before["mm_embedding"][changed])
  keep = np.arange(len(WARM + NEW)) != changed
  np.testing.assert_array_equal(after["mm_embedding"][keep], before["mm_embedding"][keep])


# --- imputed ID vectors -------------------------------------------------------------------------


def test_imputed_items_get_the_mapped_id_vector_and_the_warm_rule(chain, tmp_path):
  v2 = load_version(chain["dir"], 2)
  rows = np.random.default_rng(5).normal(size=(2, 6))
  spec = _write_features(tmp_path, "text", ["new-3", "new-4"], _raw(rows, MOMENTS["text"]))
  new = read_new_features(v2.meta, {"text": 6, "image": 4}, [spec])
  model, cat, op = ops.add_items(v2, new, "imputed")
  assert list(cat.vocab[-2:]) == ["new-3", "new-4"] and op["id_embedding"] == "imputed"
  assert cat.imputed[-2:].all() and not cat.cold[-2:].any() and not cat.imputed[:-2].any()
  trained = ~v2.catalogue.cold
  ids = np.asarray(v2.model.views["id"].tower.embeddings)[FIRST_ITEM:][trained]
  want = fit_id_map(v2.catalogue.tables["mm"][trained], ids).apply(cat.tables["mm"][-2:])
  np.testing.assert_allclose(np.asarray(model.views["id"].tower.embeddings)[-2:], want, atol=1e-6)
  unit = want / np.linalg.norm(want, axis=1, keepdims=True)
  np.testing.assert_allclose(cat.tables["id"][-2:], unit, atol=1e-6)
  for view, table in v2.catalogue.tables.items():  # every other row bit for bit
    np.testing.assert_array_equal(cat.tables[view][:-2], table)


def test_ridge_map_recovers_a_linear_relation():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(500, 8))
  w = rng.normal(size=(8, 5))
  id_map = fit_id_map(x, x @ w + 0.3)
  np.testing.assert_allclose(id_map.apply(x[:5]), x[:5] @ w + 0.3, atol=1e-2)
  assert id_map.holdout_cosine > 0.999


# --- serving ------------------------------------------------------------------------------------


def test_the_server_swapped_to_every_new_version_without_a_failed_request(chain):
  load = chain["load"]
  assert chain["swaps"] == [2, 3, 4]
  assert load.failed == [] and load.ok > 20


def test_each_version_directory_is_complete_and_records_its_change(chain):
  names = sorted(p.name for p in chain["dir"].iterdir())
  assert names == ["1", "2", "3", "4"]  # no temporary directory left
  meta = json.loads((chain["dir"] / "4" / "assets.extra" / "bivrec_metadata.json").read_text())
  assert [op["op"] for op in meta["catalogue_ops"]] == ["add", "retire", "update"]
  assert [op["from_version"] for op in meta["catalogue_ops"]] == [1, 2, 3]
  assert meta["num_items"] == 43 and meta["vocab_size"] == 45 and meta["version"] == 4


# --- bad input ----------------------------------------------------------------------------------


def _error_line(capsys, *argv):
  assert _cli(*argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("error: ")
  return err


@pytest.mark.parametrize(
  "case, expected",
  [
    ("retire-unknown", r"retire\.txt, line 1, field 'item id': item 'nope' is not in version 4"),
    ("update-unknown", r"ids\.txt, line 1, field 'item id': item 'nope' is not in version 4"),
    ("add-existing", r"ids\.txt, line 1, field 'item id': item 'item-3' is already in version 4"),
    ("add-duplicate", r"ids\.txt, line 2, field 'item id': item id 'dup' already on line 1"),
    ("dimension", r"text\.npy, field 'text': dimension mismatch: 5 values per item, .* has 6"),
    ("nan", r"ids\.txt, line 2, field 'text': NaN/Inf in dimension 3 of item 'b'"),
    ("modality", r"field 'audio': the export's MM view has no modality 'audio'"),
    ("missing", r"model directory not found: .*nowhere"),
  ],
)
def test_bad_input_is_one_line_naming_file_line_and_field_and_writes_nothing(
  chain, capsys, tmp_path, case, expected
):
  d = chain["dir"]
  rows = np.zeros((2, 6))
  if case == "retire-unknown":
    argv = ["retire", "--ids", _ids_file(tmp_path, ["nope"])]
  elif case in ("update-unknown", "add-existing", "add-duplicate", "nan"):
    ids = {"update-unknown": ["nope"], "add-existing": ["item-3"], "add-duplicate": ["dup", "dup"]}
    ids = ids.get(case, ["a", "b"])
    if case == "nan":
      rows[1, 3] = np.nan
    spec = _write_features(tmp_path, "text", ids, rows[: len(ids)])
    argv = ["update" if case == "update-unknown" else "add", "--features", spec]
  elif case == "dimension":
    argv = ["add", "--features", _write_features(tmp_path, "text", ["a", "b"], np.zeros((2, 5)))]
  elif case == "modality":
    argv = ["add", "--features", _write_features(tmp_path, "audio", ["a", "b"], rows)]
  else:
    d = tmp_path / "nowhere"
    argv = ["retire", "x"]
  err = _error_line(capsys, *argv, "--model-dir", d)
  assert __import__("re").search(expected, err), err
  assert sorted(p.name for p in chain["dir"].iterdir()) == ["1", "2", "3", "4"]


def test_hashing_text_of_a_training_item_gets_its_preparation_vector(tmp_path):
  """Item text goes through the encoder recorded in the export with the training texts' word
  frequencies, so a text that was in the training data gets exactly its prepared row."""
  corpus = ["red wool scarf", "blue cotton shirt", "red cotton socks", "green wool hat"]
  (tmp_path / "items.csv").write_text(
    "item_id,title\n" + "".join(f"i{k},{t}\n" for k, t in enumerate(corpus))
  )
  (tmp_path / "new.csv").write_text("item_id,title\nfresh,blue cotton shirt\nodd,wool wool\n")
  raw = hashing_encode(corpus, dim=16, seed=3)
  moments = {"mean": list(raw.mean(0).astype(float)), "std": list(raw.std(0).astype(float) + 1)}
  info = {"encoder": "hashing", "dim": 16, "seed": 3, "standardization": moments}
  meta = {"dataset": {"modalities": {"text": {**info, "text_file": str(tmp_path / "items.csv")}}}}
  new = read_new_features(
    meta, {"text": 16}, text=TextInput(str(tmp_path / "new.csv")), known=[f"i{k}" for k in range(4)]
  )
  assert new.ids == ["fresh", "odd"] and new.present["text"].all()
  np.testing.assert_array_equal(new.values["text"][0], standardize(raw[1:2], moments)[0])

"""The embedded default dataset (`--data synthetic`, DESIGN.md section 4).

A pure-numpy generator with planted structure in which each BivRec view has something only it
can learn:

- Items belong to latent topics and are ordered inside each topic. The modalities "text" and
  "image" are smooth random-feature maps of (topic, in-topic position) plus noise, each noisy in a
  different way: text sees the topic sharply but the position blurred, image sees the position
  sharply but the topic blurred, so the two are complementary. A share of items lack the image.
- Users mix 2-3 topics with recency: they mostly stay in the current topic and step forward
  along its order, sometimes switch to another of their topics (resuming where they left it).
  With probability `partner_prob` the next item is instead the previous item's fixed random
  "partner", a per-item mapping no feature reveals (only item IDs can learn it).
- Popularity has a long tail (Zipf topic weights; `start_beta` > 1 also biases where users enter a
  topic towards its front) and a
  share of "cold" items never occurs in train but does occur as valid/test targets: only the MM
  view can reach those.

Protocol `loo`: for a user sequence s_0..s_{n-1}, train examples are (s_0..s_{j-1}) -> s_j for
1 <= j <= n-3, valid is (s_0..s_{n-3}) -> s_{n-2}, test is (s_0..s_{n-2}) -> s_{n-1}.

Variants (history length and interest drift), each cached in its own directory:

  ensure_synthetic(seq_len=60)                  # mean sequence length 60 (default 18)
  ensure_synthetic(drift=0.3, topics=(3, 4))    # switch topic more often, more concurrent topics
  ensure_synthetic(turnover=0.02)               # users adopt new topics over time
  ensure_synthetic(**parse_synthetic_spec("synthetic:long?switch=0.3"))

`seq_len` sets `mean_len` and scales `max_len` (40 at 18) and `recommended_max_len` (20 at 18,
at most 50) in proportion unless they are given; `drift` is `switch_prob`, the chance per step
of moving to another of the user's topics; `topics` is `topics_per_user`; `turnover` is
`topic_turnover`, the chance per step that one of the user's topics is replaced by a topic the
user never had (long-range drift: the set of interests itself changes along the history). The
data spec strings of `parse_synthetic_spec` name the same knobs (`synthetic:long`,
`synthetic?mean_len=60&switch=0.1`). With no argument the default dataset is reproduced byte for
byte (same cache key, same files).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import hashlib
import json
import pathlib
import time

import numpy as np

from input_pipelines import NUM_RESERVED
from input_pipelines.prepared import write_prepared

GENERATOR_VERSION = 1

DEFAULT_PARAMS = dict(
  num_items=3000,
  num_users=1500,
  num_topics=30,
  text_dim=48,
  image_dim=32,
  min_len=8,
  max_len=40,
  mean_len=18,
  topics_per_user=(2, 3),
  switch_prob=0.15,
  partner_prob=0.2,
  max_step=10,
  cold_share=0.08,
  image_missing_share=0.05,
  topic_zipf=0.7,
  start_beta=1.0,
  text_pos_noise=0.06,
  image_topic_noise=0.6,
  feature_noise=0.15,
  recommended_max_len=20,
)

# Knobs added after the default dataset was fixed. They enter the cache key and dataset.json only
# when they differ from these values, so the default dataset (and its cache key) is unchanged.
EXTRA_DEFAULTS = dict(
  topic_turnover=0.0,
)

# Named variants for data spec strings (`synthetic:<name>`); values are ensure_synthetic kwargs.
PRESETS = {
  "default": {},
  "long": dict(seq_len=60),
  "drift": dict(drift=0.3, topics=(3, 4), turnover=0.02),
  "long-drift": dict(seq_len=60, drift=0.3, topics=(3, 4), turnover=0.02),
}

# Spec-string keys -> ensure_synthetic keyword arguments.
SPEC_ALIASES = {
  "seq_len": "seq_len",
  "len": "seq_len",
  "mean_len": "mean_len",
  "drift": "drift",
  "switch": "drift",
  "switch_prob": "drift",
  "topics": "topics",
  "topics_per_user": "topics",
  "turnover": "turnover",
  "topic_turnover": "turnover",
}


def _params(params: dict) -> dict:
  unknown = set(params) - set(DEFAULT_PARAMS) - set(EXTRA_DEFAULTS)
  if unknown:
    raise TypeError(f"unknown synthetic generator parameters: {sorted(unknown)}")
  p = {**DEFAULT_PARAMS, **EXTRA_DEFAULTS, **params}
  p["topics_per_user"] = tuple(int(x) for x in p["topics_per_user"])
  if not 0.0 <= p["switch_prob"] <= 1.0 or not 0.0 <= p["topic_turnover"] <= 1.0:
    raise ValueError("switch_prob and topic_turnover must be in [0, 1]")
  if p["num_items"] < 2 * p["num_topics"]:
    raise ValueError("num_items must be at least 2 * num_topics")
  if not 1 <= p["topics_per_user"][0] <= p["topics_per_user"][1] <= p["num_topics"]:
    raise ValueError("topics_per_user must be (lo, hi) with 1 <= lo <= hi <= num_topics")
  if p["min_len"] < 4 or p["max_len"] < p["min_len"]:
    raise ValueError("need 4 <= min_len <= max_len (loo needs >= 2 train items)")
  if p["topic_turnover"] > 0 and p["topics_per_user"][1] >= p["num_topics"]:
    raise ValueError("topic_turnover needs topics_per_user < num_topics (no new topic left)")
  return p


def _recorded(p: dict) -> dict:
  """The params written to dataset.json and hashed into the cache key: every DEFAULT_PARAMS
  entry, and the EXTRA_DEFAULTS entries only where they differ from their default."""
  out = {k: p[k] for k in DEFAULT_PARAMS}
  out["topics_per_user"] = list(p["topics_per_user"])
  out.update({k: p[k] for k, v in EXTRA_DEFAULTS.items() if p[k] != v})
  return out


def variant_params(seq_len=None, drift=None, topics=None, turnover=None, **params) -> dict:
  """Generator params from the user-facing knobs (explicit generator params win).

  seq_len: mean sequence length (`mean_len`); `max_len` and `recommended_max_len` are scaled
    in proportion to their defaults (40 and 20 at 18) unless given.
  drift: probability per step of switching to another of the user's topics (`switch_prob`).
  topics: concurrent topics per user, an int or (lo, hi) (`topics_per_user`).
  turnover: probability per step that one of the user's topics is replaced by a new one
    (`topic_turnover`).
  """
  out = dict(params)
  if seq_len is not None:
    seq_len = float(seq_len)
    if seq_len < DEFAULT_PARAMS["min_len"]:
      raise ValueError(f"seq_len must be at least min_len ({DEFAULT_PARAMS['min_len']})")
    ratio = seq_len / DEFAULT_PARAMS["mean_len"]
    out.setdefault("mean_len", int(round(seq_len)))
    out.setdefault(
      "max_len", max(int(round(DEFAULT_PARAMS["max_len"] * ratio)), DEFAULT_PARAMS["min_len"])
    )
    rec = 4 * int(round(DEFAULT_PARAMS["recommended_max_len"] * ratio / 4))
    out.setdefault("recommended_max_len", int(min(50, max(8, rec))))
  if drift is not None:
    out.setdefault("switch_prob", float(drift))
  if topics is not None:
    lo, hi = (topics, topics) if isinstance(topics, (int, np.integer)) else tuple(topics)
    out.setdefault("topics_per_user", (int(lo), int(hi)))
  if turnover is not None:
    out.setdefault("topic_turnover", float(turnover))
  return out


def _number(key: str, text: str):
  try:
    value = float(text)
  except ValueError:
    raise ValueError(f"synthetic data spec: {key}={text!r} is not a number") from None
  return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def parse_synthetic_spec(spec: str) -> dict:
  """`synthetic[:PRESET][?key=value&...]` -> ensure_synthetic keyword arguments.

  PRESET is one of PRESETS (`default`, `long`, `drift`, `long-drift`). Keys: `seq_len` (also
  `len`), `mean_len`, `drift` (also `switch`, `switch_prob`), `topics` (`3` or `2-4`),
  `turnover` (also `topic_turnover`), or any generator parameter (`num_users=3000`, ...);
  query keys override the preset. `seed` is not a key (the training flag `--data-seed` is).

    parse_synthetic_spec("synthetic")                        -> {}
    parse_synthetic_spec("synthetic:long")                   -> {"seq_len": 60}
    parse_synthetic_spec("synthetic?mean_len=60&switch=0.1") -> {"mean_len": 60, "drift": 0.1}
  """
  if not is_synthetic_spec(spec):
    raise ValueError(
      f"not a synthetic data spec: {spec!r} (expected 'synthetic', "
      "'synthetic:<preset>' or 'synthetic?key=value&...')"
    )
  head, _, query = spec.partition("?")
  preset = head.partition(":")[2] or "default"
  if preset not in PRESETS:
    raise ValueError(
      f"synthetic data spec {spec!r}: unknown preset {preset!r} (known: {', '.join(PRESETS)})"
    )
  out = dict(PRESETS[preset])
  for item in filter(None, query.split("&")):
    key, eq, value = item.partition("=")
    key = key.strip()
    if not eq or not value.strip():
      raise ValueError(f"synthetic data spec {spec!r}: {item!r} is not key=value")
    value = value.strip()
    if key == "seed":
      raise ValueError("synthetic data spec: pass the seed with --data-seed, not in the spec")
    if key in ("topics", "topics_per_user"):
      lo, _, hi = value.partition("-")
      out["topics"] = (_number(key, lo), _number(key, hi or lo))
    elif key in SPEC_ALIASES:
      out[SPEC_ALIASES[key]] = _number(key, value)
    elif key in DEFAULT_PARAMS or key in EXTRA_DEFAULTS:
      out[key] = _number(key, value)
    else:
      raise ValueError(
        f"synthetic data spec {spec!r}: unknown key {key!r} (known: "
        f"{', '.join(sorted(set(SPEC_ALIASES) | set(DEFAULT_PARAMS)))})"
      )
  _params(variant_params(**out))  # validate now, not at generation time
  return out


def is_synthetic_spec(spec) -> bool:
  """True for 'synthetic', 'synthetic:<preset>...' and 'synthetic?<query>'."""
  return isinstance(spec, str) and (
    spec == "synthetic" or spec.startswith(("synthetic:", "synthetic?"))
  )


def _smooth_map(rng: np.random.Generator, z: np.ndarray, dim: int, scale: float) -> np.ndarray:
  """Random-Fourier features of z: a smooth random function R^k -> R^dim."""
  w = rng.normal(0.0, 1.0 / scale, size=(z.shape[1], dim))
  b = rng.uniform(0.0, 2 * np.pi, size=dim)
  return np.sqrt(2.0 / dim) * np.cos(z @ w + b)


def _catalogue(rng: np.random.Generator, p: dict):
  """Topics, in-topic positions, features, partners and cold items."""
  n, k = p["num_items"], p["num_topics"]
  # Topic sizes: random but every topic has at least 2 items.
  sizes = 2 + rng.multinomial(n - 2 * k, rng.dirichlet(np.full(k, 4.0)))
  topic = np.repeat(np.arange(k), sizes)
  rank = np.concatenate([np.arange(s) for s in sizes])
  pos = (rank + 0.5) / sizes[topic]  # in-topic position in (0, 1)
  # Shuffle item ids so the index says nothing about topic or order.
  perm = rng.permutation(n)
  topic, rank, pos = topic[perm], rank[perm], pos[perm]
  members = [np.flatnonzero(topic == t)[np.argsort(rank[topic == t])] for t in range(k)]

  # Latent smooth embedding of (topic, position): topic vector + position curve.
  topic_vec = rng.normal(size=(k, 8))
  freqs = np.arange(1, 5)
  phase = rng.uniform(0, 2 * np.pi, size=(k, len(freqs)))

  def pos_curve(x):
    ang = np.pi * x[:, None] * freqs[None, :] + phase[topic]
    return np.concatenate([np.sin(ang), np.cos(ang)], axis=1)

  # text: sharp topic, blurred position; image: blurred topic, sharp position.
  z_text = np.concatenate(
    [
      1.5 * topic_vec[topic],
      pos_curve(np.clip(pos + rng.normal(0, p["text_pos_noise"], n), 0, 1)),
    ],
    axis=1,
  )
  z_image = np.concatenate(
    [
      1.5 * (topic_vec[topic] + rng.normal(0, p["image_topic_noise"], (n, 8))),
      2.0 * pos_curve(pos),
    ],
    axis=1,
  )
  text = _smooth_map(rng, z_text, p["text_dim"], scale=2.0)
  image = _smooth_map(rng, z_image, p["image_dim"], scale=2.0)
  text += rng.normal(0, p["feature_noise"] * text.std(), text.shape)
  image += rng.normal(0, p["feature_noise"] * image.std(), image.shape)
  image_present = rng.random(n) >= p["image_missing_share"]

  # Cold items: never in train; not at the very front of a topic (where users start).
  eligible = np.flatnonzero(rank >= 2)
  cold = np.zeros(n, bool)
  cold[
    rng.choice(eligible, size=min(len(eligible), int(round(p["cold_share"] * n))), replace=False)
  ] = True
  # Partners: a random warm item, never the item itself.
  warm = np.flatnonzero(~cold)
  partner = warm[rng.integers(0, len(warm), n)]
  clash = partner == np.arange(n)
  while clash.any():
    partner[clash] = warm[rng.integers(0, len(warm), clash.sum())]
    clash = partner == np.arange(n)
  return dict(
    topic=topic,
    rank=rank,
    members=members,
    text=text.astype(np.float32),
    image=image.astype(np.float32),
    image_present=image_present,
    cold=cold,
    partner=partner,
  )


def _sequences(rng: np.random.Generator, p: dict, cat: dict) -> list:
  """User sequences of 0-based item numbers (cold items only in the last two positions)."""
  k = p["num_topics"]
  members, cold, partner = cat["members"], cat["cold"], cat["partner"]
  topic_w = 1.0 / np.arange(1, k + 1) ** p["topic_zipf"]
  topic_w = rng.permutation(topic_w / topic_w.sum())
  lo, hi = p["topics_per_user"]
  extra = max(p["mean_len"] - p["min_len"], 1)
  seqs = []
  for _ in range(p["num_users"]):
    n_len = int(min(p["max_len"], p["min_len"] + rng.geometric(1.0 / (extra + 1)) - 1))
    topics = rng.choice(k, size=rng.integers(lo, hi + 1), replace=False, p=topic_w)
    # Where the user currently is in each of their topics (start biased to the front).
    cursor = {int(t): int(rng.beta(1.0, p["start_beta"]) * len(members[t])) for t in topics}
    cur = int(topics[0])
    seq = []
    for j in range(n_len):
      allow_cold = j >= n_len - 2
      if seq and p["topic_turnover"] > 0 and rng.random() < p["topic_turnover"]:
        topics, cur = _renew_topic(rng, topics, cur, topic_w, members, cursor, p)
      if seq and rng.random() < p["partner_prob"]:
        seq.append(int(partner[seq[-1]]))  # walk state is unchanged by a partner jump
        continue
      if seq and len(topics) > 1 and rng.random() < p["switch_prob"]:
        cur = int(rng.choice([t for t in topics if t != cur]))
      m = members[cur]
      c = cursor[cur] + (int(rng.integers(1, p["max_step"] + 1)) if seq else 0)
      while True:
        if c >= len(m):  # topic exhausted: restart near the front
          c = int(rng.beta(1.0, p["start_beta"]) * len(m))
        if allow_cold or not cold[m[c]]:
          break
        c += 1
      cursor[cur] = c
      seq.append(int(m[c]))
    seqs.append(seq)
  return seqs


def _renew_topic(rng, topics, cur: int, topic_w, members, cursor: dict, p: dict):
  """Interest drift: one of the user's topics (not the current one, unless it is the only one)
  is replaced by a topic the user never had; the user enters it near its front."""
  old = [int(t) for t in topics if int(t) != cur] or [cur]
  gone = int(rng.choice(old))
  fresh = np.setdiff1d(np.arange(p["num_topics"]), list(cursor))
  if not fresh.size:  # every topic already visited: allow returning to a dropped one
    fresh = np.setdiff1d(np.arange(p["num_topics"]), [int(t) for t in topics])
  w = topic_w[fresh] / topic_w[fresh].sum()
  new = int(rng.choice(fresh, p=w))
  cursor[new] = int(rng.beta(1.0, p["start_beta"]) * len(members[new]))
  topics = np.array([new if int(t) == gone else int(t) for t in topics])
  return topics, (new if gone == cur else cur)


def generate(out_dir, seed: int = 0, overwrite: bool = False, **params) -> pathlib.Path:
  """Generates the synthetic dataset into `out_dir` (atomically) and returns its path."""
  p = _params(params)
  rng = np.random.default_rng(seed)
  cat = _catalogue(rng, p)
  seqs = _sequences(rng, p, cat)
  n = p["num_items"]
  item_ids = [f"item_{i:05d}" for i in range(n)]
  idx = [np.asarray(s, np.int64) + NUM_RESERVED for s in seqs]

  def train():
    for s in idx:
      for j in range(1, len(s) - 2):
        yield s[:j].tolist(), [int(s[j])]

  splits = {
    "train": train(),
    "valid": [(s[:-2].tolist(), [int(s[-2])]) for s in idx],
    "test": [(s[:-1].tolist(), [int(s[-1])]) for s in idx],
  }
  meta = {
    "source": "synthetic",
    "protocol": "loo",
    "recommended_max_len": p["recommended_max_len"],
    "generator": {
      "name": "input_pipelines.synthetic",
      "version": GENERATOR_VERSION,
      "seed": seed,
      "params": _recorded(p),
    },
    "statistics": {
      "num_users": len(seqs),
      "num_interactions": int(sum(map(len, seqs))),
      "num_cold_items": int(cat["cold"].sum()),
    },
  }
  features = {
    "text": (cat["text"], np.ones(n, bool)),
    "image": (cat["image"], cat["image_present"]),
  }
  return write_prepared(out_dir, item_ids, features, splits, meta, overwrite=overwrite)


def cache_key(seed: int = 0, **params) -> str:
  """Short hash of generator version + seed + effective params (the cache directory suffix)."""
  p = _params(params)
  blob = json.dumps({"v": GENERATOR_VERSION, "seed": seed, "params": _recorded(p)}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:10]


def ensure_synthetic(
  root="data_cache", seed: int = 0, seq_len=None, drift=None, topics=None, turnover=None, **params
) -> pathlib.Path:
  """Returns the cached synthetic dataset dir under `root`, generating it if needed.

  `seq_len`, `drift`, `topics`, `turnover`: see `variant_params`; other keyword arguments are
  generator params (DEFAULT_PARAMS, EXTRA_DEFAULTS). Each variant has its own cache key, hence
  its own directory `synthetic-s<seed>-<key>`; with no argument the key (and the data) are
  those of the default dataset.
  """
  params = variant_params(seq_len=seq_len, drift=drift, topics=topics, turnover=turnover, **params)
  out = pathlib.Path(root) / f"synthetic-s{seed}-{cache_key(seed, **params)}"
  if (out / "dataset.json").is_file():
    return out
  try:
    return generate(out, seed=seed, overwrite=out.exists(), **params)
  except FileExistsError:  # a concurrent process finished first
    if (out / "dataset.json").is_file():
      return out
    raise


# --------------------------------------------------------------------------------------------
# Cheap baselines showing the planted structure.


def _read_split(path: pathlib.Path, split: str):
  """(histories, first targets) of a split, via the TFRecord files."""
  import tensorflow as tf  # imported lazily: generation itself is pure numpy

  spec = {"history": tf.io.VarLenFeature(tf.int64), "target": tf.io.VarLenFeature(tf.int64)}
  hist, tgt = [], []
  for batch in (
    tf.data.TFRecordDataset(str(path / f"{split}.tfrecord"))
    .batch(8192)
    .map(lambda s: tf.io.parse_example(s, spec))
  ):
    h = tf.RaggedTensor.from_sparse(batch["history"]).to_list()
    t = tf.RaggedTensor.from_sparse(batch["target"]).to_list()
    hist += h
    tgt += [x[0] for x in t]
  return hist, np.asarray(tgt, np.int64)


def item_topics(path) -> np.ndarray:
  """Latent topic of every vocabulary index of a generated dataset ([vocab_size], -1 for the
  reserved rows), rebuilt from the seed and params recorded in its dataset.json."""
  meta = json.loads((pathlib.Path(path) / "dataset.json").read_text())
  gen = meta["generator"]
  p = _params({k: v for k, v in gen["params"].items()})
  cat = _catalogue(np.random.default_rng(gen["seed"]), p)
  return np.concatenate([np.full(NUM_RESERVED, -1), cat["topic"]])


def sequence_stats(path) -> dict:
  """Length and interest-drift statistics measured on the generated user sequences (the test
  split: history + target): mean/median length, the topic-switch rate (share of consecutive
  item pairs in different latent topics; partner jumps count too) and the mean number of
  distinct topics per user."""
  topic = item_topics(path)
  hist, tgt = _read_split(pathlib.Path(path), "test")
  seqs = [np.asarray(h + [int(t)], np.int64) for h, t in zip(hist, tgt)]
  lengths = np.array([s.size for s in seqs])
  switches = sum(int((topic[s[1:]] != topic[s[:-1]]).sum()) for s in seqs)
  return {
    "num_users": len(seqs),
    "mean_len": float(lengths.mean()),
    "median_len": float(np.median(lengths)),
    "switch_rate": switches / float(sum(s.size - 1 for s in seqs)),
    "topics_per_user": float(np.mean([np.unique(topic[s]).size for s in seqs])),
  }


def structure_report(path, k: int = 20) -> dict:
  """Recall@k of three cheap numpy baselines on valid and test (one target per user).

  - popularity: most frequent train targets;
  - transitions (ID-only): first-order item->item counts from the train split, popularity fill;
  - feature_knn (MM-only): nearest neighbours of the last history item in standardized,
    concatenated feature space (cosine), excluding the item itself.
  Also: share of targets cold (never seen in train), each baseline's recall on cold targets, and
  the share of targets found by only one of the two single-view baselines (complementarity).
  """
  from input_pipelines.dataset import PreparedDataset

  ds = PreparedDataset.load(path)
  v = ds.vocab_size
  train_h, train_t = _read_split(ds.path, "train")
  pop = ds.item_counts.astype(np.float64).copy()
  pop[:NUM_RESERVED] = -1
  top_pop = np.argsort(-pop, kind="stable")[:k]

  last = np.array([h[-1] for h in train_h], np.int64)
  trans = {}
  pairs = last * v + train_t
  uniq, cnt = np.unique(pairs, return_counts=True)
  for key, c in zip(uniq, cnt):
    trans.setdefault(int(key // v), []).append((int(c), int(key % v)))

  feats = []
  for name in sorted(ds.features):
    f = ds.features[name] / np.sqrt(ds.features[name].shape[1])
    feats.append(np.where(ds.present[name][:, None], f, 0.0))
  f = np.concatenate(feats, axis=1)
  f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-9)

  report = {"k": k, "num_items": ds.num_items}
  for split in ("valid", "test"):
    hist, tgt = _read_split(ds.path, split)
    last_items = np.array([h[-1] for h in hist], np.int64)
    cold = ~ds.seen_in_train[tgt]
    hit_pop = np.isin(tgt, top_pop)
    hit_tr = np.zeros(len(tgt), bool)
    for i, (a, t) in enumerate(zip(last_items, tgt)):
      cands = [b for _, b in sorted(trans.get(int(a), []), key=lambda x: (-x[0], x[1]))][:k]
      if len(cands) < k:
        cands += [b for b in top_pop if b not in cands][: k - len(cands)]
      hit_tr[i] = t in cands
    sims = f[last_items] @ f.T
    sims[:, :NUM_RESERVED] = -np.inf
    sims[np.arange(len(tgt)), last_items] = -np.inf
    top_knn = np.argpartition(-sims, k, axis=1)[:, :k]
    hit_knn = (top_knn == tgt[:, None]).any(axis=1)
    report[split] = {
      "popularity_recall": float(hit_pop.mean()),
      "transitions_recall": float(hit_tr.mean()),
      "feature_knn_recall": float(hit_knn.mean()),
      "share_targets_cold": float(cold.mean()),
      # Complementarity: targets only one of the two single-view baselines finds.
      "share_hit_by_transitions_only": float((hit_tr & ~hit_knn).mean()),
      "share_hit_by_feature_knn_only": float((hit_knn & ~hit_tr).mean()),
      "cold_recall": {
        "popularity": float(hit_pop[cold].mean()) if cold.any() else 0.0,
        "transitions": float(hit_tr[cold].mean()) if cold.any() else 0.0,
        "feature_knn": float(hit_knn[cold].mean()) if cold.any() else 0.0,
      },
    }
  return report


def main(argv=None):
  """`python -m input_pipelines.synthetic [ROOT] [SPEC]`: generates (or finds) a dataset."""
  import argparse

  parser = argparse.ArgumentParser(
    prog="python -m input_pipelines.synthetic",
    description="Generate the embedded synthetic dataset (cached by its parameters) and "
    "print its statistics and planted-structure report.",
  )
  parser.add_argument(
    "root", nargs="?", default="data_cache", help="cache directory (default: data_cache)"
  )
  parser.add_argument(
    "spec",
    nargs="?",
    default="synthetic",
    help="'synthetic', 'synthetic:long', 'synthetic?mean_len=60&switch=0.3', ...",
  )
  args = parser.parse_args(argv)
  t0 = time.time()
  out = ensure_synthetic(args.root, **parse_synthetic_spec(args.spec))
  print(f"dataset: {out} ({time.time() - t0:.1f}s)")
  print(json.dumps(json.load(open(out / "dataset.json"))["statistics"], indent=2))
  print(json.dumps(structure_report(out), indent=2))


if __name__ == "__main__":
  main()

"""`--data tfds:movielens/<config>`: a TFDS MovieLens ratings dataset -> prepared directory.

    python -m bivrec_tf.train --data tfds:movielens/100k-ratings
    python -m input_pipelines.tfds_movielens movielens/100k-ratings   # only convert

TFDS must already have the data locally (`tfds build movielens/100k-ratings` on a machine with
internet access, then copy `~/tensorflow_datasets/movielens` here, or set TFDS_DATA_DIR):
nothing is downloaded at run time. Every rating counts as an interaction (chronological by
`timestamp`, exact duplicates dropped, users with fewer than 5 ratings dropped), protocol `loo`.
MovieLens has no item features beyond titles and genres, so the text modality is
"<movie_title>. <genre>, <genre>" encoded with the dependency-free `hashing` encoder. The result
is cached in `<root>/tfds-<name>-<hash>/` and reused.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import hashlib
import json
import pathlib
import sys

import numpy as np

from input_pipelines import features as feats
from input_pipelines import protocols, text_encoders
from input_pipelines.errors import DataError, run_cli
from input_pipelines.readers import Interactions

CONVERTER_VERSION = 1
DEFAULTS = dict(
  min_user_interactions=5, min_item_interactions=1, max_history=200, text_dim=128, seed=0
)


def _cache_dir(name: str, root, params: dict) -> pathlib.Path:
  blob = json.dumps({"v": CONVERTER_VERSION, "name": name, **params}, sort_keys=True)
  key = hashlib.sha256(blob.encode()).hexdigest()[:10]
  return pathlib.Path(root) / f"tfds-{name.replace('/', '-')}-{key}"


def read_movielens(name: str, data_dir=None, split: str = "train"):
  """(Interactions, {movie_id: text}) from a locally available TFDS MovieLens ratings set."""
  import tensorflow_datasets as tfds

  if not name.startswith("movielens/") or not name.endswith("-ratings"):
    raise ValueError(
      f"--data tfds:{name}: only the TFDS MovieLens ratings configs are "
      "supported (movielens/100k-ratings, movielens/1m-ratings, ...)"
    )
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
  except Exception as err:  # tfds raises AssertionError / DatasetNotFoundError / ...
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    raise FileNotFoundError(
      f"TFDS dataset {name!r} is not available locally in {where} ({type(err).__name__}: "
      f"{str(err).splitlines()[0] if str(err) else ''}). Nothing is downloaded at run "
      f"time: run `tfds build {name}` where there is internet access and copy the "
      "data directory here (or set TFDS_DATA_DIR)"
    ) from None
  genre_names = builder.info.features["movie_genres"].feature.names
  keep = ("user_id", "movie_id", "timestamp", "movie_title", "movie_genres")
  ds = ds.map(lambda x: {k: x[k] for k in keep}).ragged_batch(16384)
  users, items, times = [], [], []
  texts: dict = {}
  for batch in ds.as_numpy_iterator():
    u = batch["user_id"].astype(str)
    m = batch["movie_id"].astype(str)
    users.append(u)
    items.append(m)
    times.append(batch["timestamp"].astype(np.float64))
    genres = batch["movie_genres"]
    genres = genres.to_list() if hasattr(genres, "to_list") else [list(g) for g in genres]
    for mid, title, g in zip(m, batch["movie_title"], genres):
      if mid not in texts:
        t = title.decode("utf-8", "replace") if isinstance(title, bytes) else str(title)
        names = ", ".join(genre_names[int(k)] for k in g if 0 <= int(k) < len(genre_names))
        texts[mid] = ". ".join(p for p in (t.strip(), names) if p)
  if not users:
    raise DataError(f"tfds:{name}", "the dataset has no ratings")
  inter = Interactions(
    users=np.concatenate(users).astype(object),
    items=np.concatenate(items).astype(object),
    times=np.concatenate(times),
    labels=None,
    source=f"tfds:{name}",
  )
  return inter, texts


def prepare_tfds(
  name: str, root="data_cache", data_dir=None, overwrite: bool = False, **params
) -> pathlib.Path:
  """Converts (once) the TFDS dataset `name` to a prepared directory under `root`."""
  p = {**DEFAULTS, **params}
  out = _cache_dir(name, root, p)
  if (out / "dataset.json").is_file() and not overwrite:
    return out
  inter, texts = read_movielens(name, data_dir)
  seq = protocols.build_sequences(
    inter,
    dedup="exact",
    min_user=p["min_user_interactions"],
    min_item=p["min_item_interactions"],
    min_seq_len=3,
  )
  splits, info = protocols.make_splits(seq, "loo", p["max_history"], p["seed"])
  ids = [x for x in seq.item_ids]
  item_text = feats.ItemText(
    ids, [texts.get(x, "") for x in ids], list(range(1, len(ids) + 1)), pathlib.Path(f"tfds:{name}")
  )
  keep = np.array([bool(t.strip()) for t in item_text.texts])
  emb = text_encoders.hashing_encode(
    [t for t, k in zip(item_text.texts, keep) if k], dim=p["text_dim"], seed=p["seed"]
  )
  values, present, _ = feats.align(feats.text_to_source("text", item_text, emb, keep), ids)
  lengths = np.array([s.size for s in seq.seqs])
  uniq, cnt = np.unique(lengths, return_counts=True)
  stats = {
    **seq.stats,
    "num_users": len(seq.seqs),
    "num_interactions": int(lengths.sum()),
    "density": float(lengths.sum() / (len(seq.seqs) * len(ids))),
    "sequence_length_counts": {str(int(k)): int(v) for k, v in zip(uniq, cnt)},
  }
  meta = {
    "source": f"tfds:{name}",
    "protocol": "loo",
    "protocol_info": info,
    "max_history": p["max_history"],
    "converter": {"version": CONVERTER_VERSION, **p},
    "recommended_max_len": 50,
    "statistics": stats,
    "modality_sources": {
      "text": {"encoder": "hashing", "dim": p["text_dim"], "text": "movie_title. movie_genres"}
    },
  }
  from input_pipelines.prepared import write_prepared

  try:
    return write_prepared(
      out,
      ids,
      {"text": (values, present)},
      {k: g() for k, g in splits.items()},
      meta,
      overwrite=out.exists(),
    )
  except FileExistsError:  # a concurrent process finished first
    if (out / "dataset.json").is_file():
      return out
    raise


def main(argv=None) -> int:
  import argparse

  ap = argparse.ArgumentParser(
    prog="python -m input_pipelines.tfds_movielens",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  ap.add_argument("name", help="e.g. movielens/100k-ratings")
  ap.add_argument("--root", default="data_cache")
  ap.add_argument("--data-dir", help="TFDS data directory (default: TFDS's own)")
  ap.add_argument("--overwrite", action="store_true")
  args = ap.parse_args(argv)
  print(prepare_tfds(args.name, args.root, args.data_dir, args.overwrite))
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(main))

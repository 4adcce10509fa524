"""TensorFlow Datasets builder `bivrec_sequences` over a prepared dataset directory.

    import input_pipelines.tfds_builder  # registers the builder
    ds = tfds.load("bivrec_sequences", split="train",
                   builder_kwargs={"prepared_dir": "data/my_data"})

or `input_pipelines.tfds_builder.load("data/my_data", split="train")`. Each example is
`{"history": int64 [None], "target": int64 [None], "history_ids": string [None],
"target_ids": string [None]}`: item indices as in the prepared directory (0 pad, 1 OOV, items
from 2) and the raw item ids. `builder.info.metadata` holds the vocabulary size, the modalities
(the feature tables stay in the prepared directory: they are per item, not per example) and the
prepared directory's path. Each prepared directory gets its own builder config (named after the
directory and a hash of its dataset.json), so several directories share one TFDS `data_dir`.
Nothing is downloaded: `download_and_prepare` only reads the directory.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import hashlib
import json
import pathlib
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipelines.dataset import split_records
from input_pipelines.prepared import DATASET_JSON, VOCAB_FILE

_PARSE_SPEC = {"history": tf.io.VarLenFeature(tf.int64), "target": tf.io.VarLenFeature(tf.int64)}


class BivrecSequencesConfig(tfds.core.BuilderConfig):
  """One prepared dataset directory."""

  def __init__(self, *, prepared_dir: str, **kwargs):
    super().__init__(**kwargs)
    self.prepared_dir = str(prepared_dir)


def config_for(prepared_dir) -> BivrecSequencesConfig:
  path = pathlib.Path(prepared_dir).resolve()
  meta_file = path / DATASET_JSON
  if not meta_file.is_file():
    raise FileNotFoundError(f"not a prepared dataset directory (no {DATASET_JSON}): {path}")
  digest = hashlib.sha256(str(path).encode() + b"\0" + meta_file.read_bytes()).hexdigest()[:10]
  stem = re.sub(r"[^a-z0-9_]+", "_", path.name.lower()).strip("_") or "data"
  return BivrecSequencesConfig(
    name=f"{stem}_{digest}",
    prepared_dir=str(path),
    description=f"prepared dataset directory {path}",
  )


class BivrecSequences(tfds.core.GeneratorBasedBuilder):
  """Next-item examples of a BivRec-TF prepared dataset directory."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Examples of a prepared dataset directory (schema_version 1)."}

  # TFDS 4.9.10 resolves `code_path` through the `importlib_resources` backport, which it does
  # not declare as a dependency; the file path is all it needs.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    from etils import epath

    return epath.Path(__file__)

  def __init__(self, *, prepared_dir=None, config=None, **kwargs):
    if prepared_dir is not None:
      if config is not None:
        raise ValueError("pass either prepared_dir or config, not both")
      config = config_for(prepared_dir)
    if config is None:
      raise ValueError("bivrec_sequences needs builder_kwargs={'prepared_dir': DIR}")
    super().__init__(config=config, **kwargs)

  @property
  def _prepared(self) -> pathlib.Path:
    return pathlib.Path(self.builder_config.prepared_dir)

  def _meta(self) -> dict:
    return json.loads((self._prepared / DATASET_JSON).read_text(encoding="utf-8"))

  def _info(self) -> tfds.core.DatasetInfo:
    meta = self._meta()
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "history": tfds.features.Sequence(np.int64),
          "target": tfds.features.Sequence(np.int64),
          "history_ids": tfds.features.Sequence(tfds.features.Text()),
          "target_ids": tfds.features.Sequence(tfds.features.Text()),
        }
      ),
      supervised_keys=("history", "target"),
      metadata=tfds.core.MetadataDict(
        prepared_dir=str(self._prepared),
        vocab_size=int(meta["vocab_size"]),
        num_items=int(meta["num_items"]),
        protocol=meta.get("protocol"),
        modalities={
          k: {"dim": v.get("dim"), "file": v.get("file"), "present_file": v.get("present_file")}
          for k, v in (meta.get("modalities") or {}).items()
        },
      ),
      description=f"BivRec-TF prepared dataset {self._prepared} "
      f"(source: {meta.get('source', '?')}).",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the data is the prepared directory
    meta = self._meta()
    vocab = np.array(
      (self._prepared / meta.get("vocab_file", VOCAB_FILE))
      .read_text(encoding="utf-8")
      .splitlines(),
      dtype=object,
    )
    return {
      split: self._generate_examples(split_records(self._prepared, meta, split), split, vocab)
      for split in meta["splits"]
    }

  def _generate_examples(self, records, split, vocab):
    def parse(serialized):
      p = tf.io.parse_example(serialized, _PARSE_SPEC)
      return (tf.RaggedTensor.from_sparse(p["history"]), tf.RaggedTensor.from_sparse(p["target"]))

    i = 0
    for hist, tgt in records.batch(4096).map(parse):
      for h, t in zip(hist.to_list(), tgt.to_list()):
        yield (
          f"{split}-{i:09d}",
          {
            "history": np.asarray(h, np.int64),
            "target": np.asarray(t, np.int64),
            "history_ids": [str(x) for x in vocab[h]],
            "target_ids": [str(x) for x in vocab[t]],
          },
        )
        i += 1


def load(prepared_dir, split=None, data_dir=None, **kwargs):
  """`tfds.load("bivrec_sequences", ...)` over `prepared_dir` (built on first use)."""
  return tfds.load(
    "bivrec_sequences",
    split=split,
    data_dir=data_dir,
    builder_kwargs={"prepared_dir": str(prepared_dir)},
    **kwargs,
  )

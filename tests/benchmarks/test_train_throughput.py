"""The throughput benchmark's model factory: `--model-flags` change the measured preset only."""

from benchmarks.train_throughput import make_model, measure


def test_model_flags_override_the_measured_form_and_leave_the_preset_alone():
  common = dict(length=8, interests=4, dim=16, items=50, batch=8, negatives=4, jit=False)
  form = make_model(**common, flags="--num-interests 2 --mm-fusion mean")
  assert form.config.model.num_interests == 2 and form.config.model.mm_fusion == "mean"
  assert form.config.model.dim == 16  # what the flags do not name keeps the benchmark's value
  reference = make_model(**common, preset="comirec_sa")
  assert reference.config.model.num_interests == 4 and reference.config.model.views == ("id",)


def test_measure_reports_the_median_of_its_timed_windows():
  row = measure(8, 2, 16, 50, 8, 4, False, steps=2, preset="comirec_sa", repeats=3)
  windows = row["window_seq_per_s"]
  assert row["repeats"] == 3 and len(windows) == 3 and min(windows) > 0
  # the median window's rate (the windows are rounded to 0.1 seq/s in the row)
  assert abs(row["seq_per_s"] - sorted(windows)[1]) <= 0.1

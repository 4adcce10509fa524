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


def test_a_probed_form_pays_for_its_teaching_probe_inside_the_timed_steps(monkeypatch):
  from benchmarks import train_throughput  # pylint: disable=import-outside-toplevel

  calls = []
  real = train_throughput.teaching_probe_calls

  def counting(model, data):
    probe = real(model, data)
    return None if probe is None else (lambda: calls.append(probe()))

  monkeypatch.setattr(train_throughput, "teaching_probe_calls", counting)
  flags = "--sem-mode probe_guided --probe-every 2 --probe-batch 4"
  row = measure(8, 2, 16, 50, 8, 4, False, steps=4, flags=flags, repeats=2)
  assert row["probe_every"] == 2
  # one timed call per window (the one-step warm-up's and the two windows'; the trace uncounted)
  assert len(calls) == 3 and {"align_new_id", "align_new_mm"} <= set(calls[0])
  assert "align_fused_id" not in calls[0]
  # the probe the job would run: with probe_signal "fused" it also takes the fused gradient
  calls.clear()
  measure(8, 2, 16, 50, 8, 4, False, steps=2, flags=flags + " --probe-signal fused", repeats=1)
  assert calls and {"align_fused_id", "align_fused_mm"} <= set(calls[0])
  assert measure(8, 2, 16, 50, 8, 4, False, steps=2, preset="comirec_sa")["probe_every"] == 0

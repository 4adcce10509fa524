"""`prepare` under kill and bad bytes (issue 11): SIGTERM cleans the temporary directory, stale
ones from killed runs are removed (live ones kept), invalid UTF-8 and an unterminated quote name
their line."""

import fcntl
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from input_pipelines import prepare, prepared
from input_pipelines.errors import run_cli

FIX = pathlib.Path(__file__).parent / "fixtures"
LOG = (FIX / "log.csv").read_text()
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _args(tmp_path, text=LOG, out="out"):
  path = tmp_path / "log.csv"
  if isinstance(text, bytes):
    path.write_bytes(text)
  else:
    path.write_text(text)
  return ["--format", "csv", "--interactions", str(path), "--out", str(tmp_path / out), "--quiet"]


def _tmp_dirs(parent):
  return sorted(p.name for p in parent.iterdir() if p.name.startswith(".tmp-"))


def test_invalid_utf8_names_the_line(tmp_path, capsys):
  data = LOG.encode().splitlines(keepends=True)
  data[6] = data[6].replace(b"sku", b"sk\xe9", 1)
  assert run_cli(prepare.main, _args(tmp_path, b"".join(data))) == 2
  err = capsys.readouterr().err.strip()
  assert err == (
    f"error: {tmp_path / 'log.csv'}, line 7: invalid UTF-8 (byte 0xe9 at column "
    "6); save the file as UTF-8"
  ), err
  assert not (tmp_path / "out").exists() and _tmp_dirs(tmp_path) == []


def test_unterminated_quote_names_the_line_it_opens(tmp_path, capsys):
  lines = LOG.splitlines()
  lines[3] = lines[3].replace("u", '"u', 1)  # an opening quote that never closes
  assert run_cli(prepare.main, _args(tmp_path, "\n".join(lines) + "\n")) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f"error: {tmp_path / 'log.csv'}, line 4: unterminated quoted field"), err


def test_stale_temporary_directories_are_removed_and_live_ones_kept(tmp_path, capsys):
  killed = tmp_path / ".tmp-out-killed9"  # kill -9 during a run: lock file left, lock free
  killed.mkdir()
  (killed / "train.tfrecord").write_bytes(b"x" * 1000)
  (tmp_path / ".tmp-out-killed9.lock").write_text("")
  old = tmp_path / ".tmp-out-oldcode"  # from code without lock files, an hour old
  old.mkdir()
  os.utime(old, (time.time() - 3600, time.time() - 3600))
  live = tmp_path / ".tmp-out-running"  # another prepare writing right now
  live.mkdir()
  holder = open(tmp_path / ".tmp-out-running.lock", "w")
  fcntl.flock(holder, fcntl.LOCK_EX)
  recent = tmp_path / ".tmp-out-justnow"  # no lock file but brand new: left alone
  recent.mkdir()
  other = tmp_path / ".tmp-other-x"  # another output's directory
  other.mkdir()
  try:
    assert run_cli(prepare.main, _args(tmp_path)) == 0
    assert (tmp_path / "out" / "dataset.json").is_file()
    assert _tmp_dirs(tmp_path) == [
      ".tmp-other-x",
      ".tmp-out-justnow",
      ".tmp-out-running",
      ".tmp-out-running.lock",
    ]
  finally:
    holder.close()
  capsys.readouterr()


def test_sigterm_while_writing_removes_the_temporary_directory(tmp_path, capsys, monkeypatch):
  """The handler prepare installs turns SIGTERM into an unwinding exit (status 143)."""
  real = prepared._write_split
  calls = []

  def write_split(path, *args, **kwargs):
    calls.append(path)
    if len(calls) == 2:  # the first split is on disk: the temporary directory is not empty
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(1)
    return real(path, *args, **kwargs)

  monkeypatch.setattr(prepared, "_write_split", write_split)
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(SystemExit) as exit_info:
    run_cli(prepare.main, _args(tmp_path))
  assert exit_info.value.code == 143
  assert "terminated; no output written" in capsys.readouterr().err
  assert not (tmp_path / "out").exists() and _tmp_dirs(tmp_path) == []
  assert signal.getsignal(signal.SIGTERM) is before  # restored


@pytest.mark.slow
def test_sigterm_to_the_command_line_leaves_nothing(tmp_path):
  """The real thing: `python -m input_pipelines.prepare` killed with SIGTERM while it writes
  a larger log (or before: either way nothing is left behind)."""
  rows = ["user_id,item_id,timestamp"] + [
    f"u{u},i{(u * 7 + t) % 500},{t}" for u in range(4000) for t in range(12)
  ]
  args = _args(tmp_path, "\n".join(rows) + "\n")
  proc = subprocess.Popen(
    [sys.executable, "-m", "input_pipelines.prepare", *args],
    cwd=ROOT,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 120
  while time.time() < deadline and not _tmp_dirs(tmp_path) and proc.poll() is None:
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  err = proc.communicate(timeout=120)[1]
  if proc.returncode == 0:
    pytest.skip("prepare finished before the signal arrived")
  assert proc.returncode == 143, err
  assert _tmp_dirs(tmp_path) == [] and not (tmp_path / "out").exists()

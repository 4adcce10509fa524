"""The version manager never drops a good version (issue 11).

Unit tests drive `ModelManager` with fake loaders (no TensorFlow); the fault test runs the real
server with a client loop while an empty, a corrupt and a slowly written version appear.
"""

import http.client
import json
import os
import shutil
import threading
import time

import pytest

from serving import local_server
from serving.json_tensor import ServingError
from serving.versions import ModelManager, parse_version
from tests.serving import models as tiny


class FakeServable:
  def __init__(self, version):
    self.version = version

  def warmup(self):
    return 0


def fake_loader(bad=(), calls=None):
  """Loads any version not in `bad` (a set that tests may edit); records attempts."""

  def load(name, version, path):
    if calls is not None:
      calls.append(version)
    if version in bad:
      raise ServingError("NOT_FOUND", f"Could not find SavedModel .pb or .pbtxt at {path}")
    return FakeServable(version)

  return load


def make_versions(base, *names):
  for name in names:
    (base / str(name)).mkdir(parents=True, exist_ok=True)


def test_only_plain_ascii_integers_are_versions(tmp_path):
  for name in (
    "²",
    "٩",
    "１",
    "+3",
    "-3",
    " 3",
    "3 ",
    "0x1",
    "1e3",
    ".tmp-4-1",
    "4-backup",
    "99999999999999999999",
  ):
    assert parse_version(name) is None, name
  assert parse_version("7") == 7 and parse_version("007") == 7 and parse_version("0") == 0
  make_versions(tmp_path, "1", "²", "٩", "007", "12-old", ".tmp-13-1")
  (tmp_path / "20").write_text("a file, not a version directory")
  manager = ModelManager("m", str(tmp_path), loader=fake_loader())
  assert manager.versions_on_disk() == {1: str(tmp_path / "1"), 7: str(tmp_path / "007")}
  manager.poll()  # no exception from odd names
  assert sorted(manager.servables) == [7]


def test_a_failed_newest_version_keeps_the_old_one_serving_and_is_reported(tmp_path):
  make_versions(tmp_path, 1)
  bad = {2}
  manager = ModelManager("m", str(tmp_path), loader=fake_loader(bad), retry_initial_seconds=60)
  manager.poll()
  make_versions(tmp_path, 2)
  manager.poll()
  assert sorted(manager.servables) == [1]
  assert manager.resolve(None, None).version == 1
  states = manager.status_snapshot()
  assert (states[1].state, states[2].state, states[2].error_code) == (
    "AVAILABLE",
    "END",
    "NOT_FOUND",
  )
  assert "Could not find SavedModel" in states[2].error_message
  # A good successor replaces it; version 1 is unloaded only then.
  make_versions(tmp_path, 3)
  manager.poll()
  assert sorted(manager.servables) == [3]
  assert manager.status_snapshot()[1].state == "END"


def test_failed_versions_are_retried_with_backoff(tmp_path):
  make_versions(tmp_path, 1, 2)
  bad, calls = {2}, []
  manager = ModelManager(
    "m",
    str(tmp_path),
    loader=fake_loader(bad, calls),
    retry_initial_seconds=0.2,
    retry_max_seconds=0.4,
  )
  manager.poll()
  assert calls == [2] and sorted(manager.servables) == []
  manager.poll()
  assert calls == [2]  # backoff not over
  time.sleep(0.25)
  manager.poll()
  assert calls == [2, 2]
  time.sleep(0.25)
  manager.poll()
  assert calls == [2, 2]  # doubled to 0.4 s
  bad.clear()
  time.sleep(0.2)
  manager.poll()
  assert calls == [2, 2, 2] and sorted(manager.servables) == [2]
  assert manager.status_snapshot()[2].state == "AVAILABLE"


def test_a_failed_version_is_retried_as_soon_as_its_files_settle(tmp_path):
  make_versions(tmp_path, 1)
  bad, calls = {1}, []
  manager = ModelManager(
    "m", str(tmp_path), loader=fake_loader(bad, calls), retry_initial_seconds=3600
  )
  manager.poll()
  assert calls == [1]
  (tmp_path / "1" / "saved_model.pb").write_bytes(b"more")  # the copy goes on
  manager.poll()
  assert calls == [1]  # changed since the failure, but still changing
  bad.clear()
  manager.poll()  # unchanged for one poll: retried long before the hour of backoff
  assert calls == [1, 1] and sorted(manager.servables) == [1]


def test_latest_two_keeps_serving_through_a_bad_version(tmp_path):
  make_versions(tmp_path, 1, 2)
  manager = ModelManager(
    "m", str(tmp_path), policy=("latest", 2), loader=fake_loader({3}), retry_initial_seconds=60
  )
  manager.poll()
  assert sorted(manager.servables) == [1, 2]
  make_versions(tmp_path, 3)
  manager.poll()  # aspired 2, 3: 2 serves, so unaspired 1 goes
  assert sorted(manager.servables) == [2]
  assert manager.resolve(None, None).version == 2


def test_an_emptied_base_path_unloads_but_an_unreadable_one_does_not(tmp_path):
  make_versions(tmp_path / "m", 1)
  manager = ModelManager("m", str(tmp_path / "m"), loader=fake_loader())
  manager.poll()
  os.rename(tmp_path / "m", tmp_path / "elsewhere")
  manager.poll()  # cannot list: keep serving
  assert sorted(manager.servables) == [1]
  (tmp_path / "m").mkdir()
  manager.poll()  # listed, no versions: TF Serving unloads
  assert sorted(manager.servables) == []


# --- the fault test --------------------------------------------------------------------------------


def _wait_for(predicate, timeout=60.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.1)
  return False


def _status(port):
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
  conn.request("GET", "/v1/models/bivrec")
  body = json.loads(conn.getresponse().read())
  conn.close()
  return {
    int(v["version"]): (v["state"], v["status"]["error_code"]) for v in body["model_version_status"]
  }


def _slow_copy(src, dst, seconds=2.0):
  """Copies a SavedModel file by file, big files in pieces, spread over `seconds`."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(src) for f in fs]
  pause = seconds / (2 * len(files))
  for path in sorted(files):
    target = os.path.join(dst, os.path.relpath(path, src))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    data = open(path, "rb").read()
    with open(target, "wb") as out:
      half = len(data) // 2
      out.write(data[:half])
      out.flush()
      time.sleep(pause)
      out.write(data[half:])
    time.sleep(pause)


@pytest.mark.slow
def test_bad_versions_never_fail_a_request(tmp_path):
  """Empty, corrupt and slowly written versions appear while a client loop runs: zero failed
  requests, the status shows the failures, and the slow copy is served once complete."""
  base = tmp_path / "models" / "bivrec"
  tiny.export_tiny(base.parent, "bivrec", seed=0)  # version 1
  staged = tiny.export_tiny(tmp_path / "staging", "bivrec", seed=1)  # the slow copy's source
  server, poller = local_server.start(
    "bivrec",
    str(base),
    port=0,
    poll_wait_seconds=0.1,
    retry_initial_seconds=0.3,
    retry_max_seconds=1.0,
  )
  port = server.port
  results, stop = [], threading.Event()

  def client():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"instances": [["item-1", "item-2"]]})
    while not stop.is_set():
      try:
        conn.request("POST", "/v1/models/bivrec:predict", body)
        resp = conn.getresponse()
        results.append((resp.status, resp.read()))
      except (OSError, http.client.HTTPException) as err:
        results.append((None, repr(err).encode()))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

  thread = threading.Thread(target=client)
  thread.start()
  try:
    (base / "2").mkdir()  # empty
    assert _wait_for(lambda: _status(port).get(2) == ("END", "NOT_FOUND"), 30), _status(port)
    (base / "3").mkdir()  # corrupt
    (base / "3" / "saved_model.pb").write_bytes(b"\x08\x01garbage that is not a SavedModel\xff")
    assert _wait_for(lambda: _status(port).get(3) == ("END", "DATA_LOSS"), 30), _status(port)
    assert _status(port)[1] == ("AVAILABLE", "OK")
    _slow_copy(staged, base / "4")  # written in place, non-atomically
    assert _wait_for(lambda: _status(port).get(4) == ("AVAILABLE", "OK"), 60), _status(port)
    time.sleep(0.3)
  finally:
    stop.set()
    thread.join(60)
    server.shutdown()
    server.server_close()
    poller.stop()
  failed = [r for r in results if r[0] != 200]
  assert len(results) > 20 and not failed, (len(results), failed[:3])
  final = poller.server.managers["bivrec"].status_snapshot()
  assert (final[2].state, final[2].error_code) == ("END", "NOT_FOUND")
  assert (final[3].state, final[3].error_code) == ("END", "DATA_LOSS")
  assert final[4].state == "AVAILABLE" and final[1].state == "END"
  assert final[1].error_code == "OK"
  shutil.rmtree(tmp_path / "staging", ignore_errors=True)

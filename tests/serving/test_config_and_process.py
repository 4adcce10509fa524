"""Config files, the client's URLs, and the server as a process (descriptor limit, XLA)."""

import json
import resource
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bivrec_tf import export as export_lib
from serving import client as client_lib
from serving import local_server
from tests.serving import models as tiny

ROOT = Path(__file__).resolve().parents[2]


def call(url, path, body=None):
  data = None if body is None else json.dumps(body).encode()
  req = urllib.request.Request(url + path, data=data)
  try:
    with urllib.request.urlopen(req, timeout=60) as resp:
      return resp.status, json.loads(resp.read())
  except urllib.error.HTTPError as err:
    return err.code, json.loads(err.read() or b"null")


def wait_for(predicate, timeout=60.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      if predicate():
        return True
    except OSError:
      pass
    time.sleep(0.2)
  return False


def versions(url):
  return {
    v["version"]: v["state"] for v in call(url, "/v1/models/bivrec")[1]["model_version_status"]
  }


# --- serving/models.config -------------------------------------------------------------------------


def test_models_config_works_after_one_train_and_after_many(tmp_path):
  """The shipped config (latest 2, no pinned labels) with the base path overridden: version 1
  alone, then 1..3 (copies stand in for later trainings)."""
  base = tmp_path / "bivrec"
  tiny.export_tiny(tmp_path, "bivrec", seed=0)
  http, poller = local_server.start(
    "bivrec", str(base), str(ROOT / "serving" / "models.config"), port=0, poll_wait_seconds=0.2
  )
  url = f"http://127.0.0.1:{http.port}"
  body = {"instances": [["item-1", "item-2"]]}
  try:
    assert versions(url) == {"1": "AVAILABLE"}
    assert call(url, "/v1/models/bivrec:predict", body)[0] == 200
    for version in ("2", "3"):
      shutil.copytree(base / "1", base / f".tmp-{version}")
      (base / f".tmp-{version}").rename(base / version)
    assert wait_for(lambda: versions(url) == {"3": "AVAILABLE", "2": "AVAILABLE", "1": "END"})
    assert call(url, "/v1/models/bivrec:predict", body)[0] == 200
    assert call(url, "/v1/models/bivrec/versions/2:predict", body)[0] == 200
    assert call(url, "/v1/models/bivrec/versions/1:predict", body)[0] == 404
    assert call(url, "/v1/models/bivrec/metadata")[1]["model_spec"]["version"] == "3"
  finally:
    http.shutdown()
    http.server_close()
    poller.stop()


def test_models_config_pins_no_labels():
  models = local_server.read_model_config(str(ROOT / "serving" / "models.config"))
  assert [(m["name"], m["policy"], m["labels"]) for m in models] == [("bivrec", ("latest", 2), {})]


def _batching_parameters_class():
  """BatchingParameters as in TF Serving's session_bundle_config.proto (not in the pip API)."""
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

  pool = descriptor_pool.DescriptorPool()
  pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
  proto = descriptor_pb2.FileDescriptorProto(
    name="batching.proto",
    package="ts",
    syntax="proto3",
    dependency=["google/protobuf/wrappers.proto"],
  )
  msg = proto.message_type.add(name="BatchingParameters")
  field = descriptor_pb2.FieldDescriptorProto
  for name, number, kind in [
    ("max_batch_size", 1, "Int64Value"),
    ("batch_timeout_micros", 2, "Int64Value"),
    ("max_enqueued_batches", 3, "Int64Value"),
    ("num_batch_threads", 4, "Int64Value"),
    ("thread_pool_name", 5, "StringValue"),
    ("enable_large_batch_splitting", 8, "BoolValue"),
    ("max_execution_batch_size", 9, "Int64Value"),
  ]:
    msg.field.add(
      name=name,
      number=number,
      type=field.TYPE_MESSAGE,
      type_name=f".google.protobuf.{kind}",
      label=field.LABEL_OPTIONAL,
    )
  msg.field.add(
    name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED
  )
  msg.field.add(
    name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL
  )
  pool.Add(proto)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("ts.BatchingParameters"))


def test_batching_parameters_split_large_requests():
  from google.protobuf import text_format

  params = text_format.Parse(
    (ROOT / "serving" / "batching_parameters.txt").read_text(), _batching_parameters_class()()
  )
  assert params.enable_large_batch_splitting.value
  assert params.max_execution_batch_size.value == 256
  assert params.max_batch_size.value >= 4096  # requests of up to this many rows are accepted
  assert not params.pad_variable_length_inputs


# --- client ----------------------------------------------------------------------------------------


def test_client_quotes_names_and_labels():
  c = client_lib.Client("http://h:1/", "my model/x", label="can ary:1")
  assert c.base == "http://h:1/v1/models/my%20model%2Fx/labels/can%20ary%3A1"
  assert client_lib.Client("http://h", "m", version=3).base == "http://h/v1/models/m/versions/3"
  with pytest.raises(ValueError):
    client_lib.Client("http://h", "m", version=1, label="x")


def test_client_cli_reports_bad_names_and_urls_in_one_line():
  for args in (
    ["--url", "http://127.0.0.1:9", "--model", "bad name\n"],
    ["--url", "not a url", "--model", "m"],
  ):
    out = subprocess.run(
      [sys.executable, "-m", "serving.client", *args, "--history", "a"],
      capture_output=True,
      text=True,
      timeout=60,
      cwd=ROOT,
    )
    assert out.returncode == 1 and out.stderr.startswith("error:"), out.stderr
    assert "Traceback" not in out.stderr


# --- export --jit-compile -----------------------------------------------------------------------------


def test_jit_export_is_refused_with_the_reason(capsys):
  assert export_lib.main(["--run", "/nonexistent", "--jit-compile"]) == 2
  err = capsys.readouterr().err
  assert "--xla_cpu_compilation_enabled=true" in err and "XLA compilation disabled" in err


# --- the server as a process -------------------------------------------------------------------------


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_server_process_with_256_descriptors_and_an_xla_version(tmp_path):
  """`ulimit -n 256`: 248 idle connections and a predict still answered (the old server died
  with `Fatal Python error: Aborted`); a --jit-compile export as the newest version fails to
  load with TF Serving's default flags (XLA disabled) and version 1 keeps serving."""
  base = tmp_path / "bivrec"
  tiny.export_tiny(tmp_path, "bivrec", seed=0)  # version 1
  xla = export_lib.export_model(
    tiny.tiny_model(0),
    tiny.vocab(),
    0.6,
    str(tmp_path / "staged"),
    "bivrec",
    tiny.TOP_K,
    version=2,
    jit_compile=True,
  )
  port = _free_port()

  def limit():
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "serving.local_server",
      "--model_name",
      "bivrec",
      "--model_base_path",
      str(base),
      "--rest_api_port",
      str(port),
      "--file_system_poll_wait_seconds",
      "0.5",
      "--rest_api_idle_timeout_seconds",
      "60",
    ],
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    preexec_fn=limit,
    cwd=ROOT,
  )
  url = f"http://127.0.0.1:{port}"
  socks = []
  try:
    assert wait_for(lambda: proc.poll() is None and "1" in versions(url), 120), proc.poll()
    xla.rename(base / "2")  # the XLA export becomes the newest version
    assert wait_for(lambda: versions(url).get("2") == "END", 60), versions(url)
    status = call(url, "/v1/models/bivrec")[1]["model_version_status"]
    assert [(v["version"], v["state"]) for v in status] == [("2", "END"), ("1", "AVAILABLE")]
    assert status[0]["status"]["error_code"] == "INTERNAL"
    assert "XLA compilation disabled" in status[0]["status"]["error_message"]
    for _ in range(248):
      try:
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
      except OSError:
        break
    time.sleep(0.5)
    code, body = call(url, "/v1/models/bivrec:predict", {"instances": [["item-1"]]})
    assert code == 200 and len(body["predictions"]) == 1
    assert proc.poll() is None
  finally:
    for s in socks:
      s.close()
    proc.terminate()
    out = proc.communicate(timeout=60)[0]
  assert "Fatal Python error" not in out

"""The local server answers exactly as TF Serving's REST API does (DESIGN.md section 6).

Expected bodies and messages are TF Serving's (`http_rest_api_handler.cc`, `json_tensor.cc`,
`get_model_status_impl.cc`, `basic_manager.cc`, `server_core.cc`). One server (in-process, on a
free loopback port) serves a tiny random-weight export for the whole module.
"""

import base64
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from serving import client as client_lib
from serving import local_server
from tests.serving import models as tiny

K = tiny.TOP_K


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  base = tmp_path_factory.mktemp("models") / "bivrec"
  path = tiny.export_tiny(base.parent, "bivrec", seed=0)
  http, poller = local_server.start("bivrec", str(base), port=0, poll_wait_seconds=0.2)
  url = f"http://127.0.0.1:{http.port}"
  yield url, base, tf.saved_model.load(str(path))
  http.shutdown()
  http.server_close()
  poller.stop()


def call(url, path, body=None, method=None):
  """-> (HTTP status, parsed JSON or raw text)."""
  data = (
    body
    if isinstance(body, (bytes, type(None)))
    else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
  )
  req = urllib.request.Request(
    url + path, data=data, method=method or ("GET" if data is None else "POST")
  )
  try:
    with urllib.request.urlopen(req, timeout=30) as resp:
      status, text = resp.status, resp.read().decode()
  except urllib.error.HTTPError as err:
    status, text = err.code, err.read().decode()
  try:
    return status, json.loads(text)
  except ValueError:
    return status, text


def predict(url, body, model="bivrec"):
  return call(url, f"/v1/models/{model}:predict", body)


# --- status and metadata ---------------------------------------------------------------------------


def test_model_status_reports_the_available_version(served):
  url, _, _ = served
  for path in ("/v1/models/bivrec", "/v1/models/bivrec/versions/1"):
    status, body = call(url, path)
    assert status == 200
    assert body == {
      "model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
      ]
    }


def test_model_status_errors(served):
  url, _, _ = served
  assert call(url, "/v1/models/nope") == (
    404,
    {"error": "Could not find any versions of model nope"},
  )
  assert call(url, "/v1/models/bivrec/versions/9") == (
    404,
    {"error": "Could not find version 9 of model bivrec"},
  )
  # GetModelStatus ignores a label (http_rest_api_handler.cc -> get_model_status_impl.cc):
  # all versions, even for a label nobody defined.
  assert call(url, "/v1/models/bivrec/labels/stable") == call(url, "/v1/models/bivrec")
  assert call(url, "/v1/models/bivrec/versions/1/oops") == (
    400,
    {"error": "Malformed request: GET /v1/models/bivrec/versions/1/oops"},
  )


def test_metadata_lists_every_signature_as_tf_serving_prints_it(served):
  url, _, _ = served
  status, body = call(url, "/v1/models/bivrec/metadata")
  assert status == 200
  assert body["model_spec"] == {"name": "bivrec", "version": "1", "signature_name": ""}
  sigs = body["metadata"]["signature_def"]["signature_def"]
  assert {"serving_default", "user_interests", "item_embeddings", "predict_examples"} <= set(sigs)
  default = sigs["serving_default"]
  assert default["method_name"] == "tensorflow/serving/predict"
  history = default["inputs"]["history"]
  assert history["dtype"] == "DT_STRING"
  assert history["tensor_shape"] == {
    "dim": [{"size": "-1", "name": ""}, {"size": "-1", "name": ""}],
    "unknown_rank": False,
  }
  assert default["outputs"]["scores"]["dtype"] == "DT_FLOAT"
  assert [d["size"] for d in default["outputs"]["item_ids"]["tensor_shape"]["dim"]] == [
    "-1",
    str(K),
  ]
  assert call(url, "/v1/models/bivrec/versions/1/metadata")[0] == 200
  assert call(url, "/v1/models/bivrec/versions/5/metadata") == (
    404,
    {"error": "Servable not found for request: Specific(bivrec, 5)"},
  )
  assert call(url, "/v1/models/nope/metadata") == (
    404,
    {"error": "Servable not found for request: Latest(nope)"},
  )


# --- predict ---------------------------------------------------------------------------------------


def test_row_format_answers_a_list_of_objects_per_instance(served):
  url, _, loaded = served
  histories = [["item-3", "item-9", "item-12"], ["", "nope", "item-5"]]
  status, body = predict(url, {"instances": histories})
  assert status == 200 and list(body) == ["predictions"]
  assert len(body["predictions"]) == 2
  expected = loaded.signatures["serving_default"](history=tf.constant(histories))
  for row, pred in enumerate(body["predictions"]):
    assert set(pred) == {"item_ids", "scores"}
    assert pred["item_ids"] == list(expected["item_ids"].numpy()[row].astype(str))
    np.testing.assert_allclose(pred["scores"], expected["scores"].numpy()[row], rtol=1e-5)
  # Named instances and an explicit signature_name give the same answer.
  named = predict(
    url, {"signature_name": "serving_default", "instances": [{"history": h} for h in histories]}
  )
  assert named == (status, body)


def test_columnar_format_answers_an_object_of_outputs(served):
  url, _, _ = served
  histories = [["item-3", "item-9", "item-12"], ["", "nope", "item-5"]]
  status, body = predict(url, {"inputs": {"history": histories}})
  assert status == 200 and list(body) == ["outputs"]
  assert set(body["outputs"]) == {"item_ids", "scores"}
  assert np.shape(body["outputs"]["item_ids"]) == (2, K)
  assert np.shape(body["outputs"]["scores"]) == (2, K)
  rows = predict(url, {"instances": histories})[1]["predictions"]
  assert body["outputs"]["item_ids"] == [r["item_ids"] for r in rows]
  # A single named input may also be given unnamed.
  assert predict(url, {"inputs": histories}) == (status, body)


def test_other_signatures_and_b64_strings(served):
  url, _, loaded = served
  status, body = predict(
    url, {"signature_name": "user_interests", "instances": [["item-1", "item-2"]]}
  )
  assert status == 200
  assert np.shape(body["predictions"][0]["id_interests"]) == (tiny.NUM_INTERESTS, tiny.DIM)
  b64 = {"b64": base64.b64encode(b"item-4").decode()}
  status, body = predict(url, {"signature_name": "item_embeddings", "instances": [b64, "x"]})
  assert status == 200 and len(body["predictions"]) == 2
  np.testing.assert_allclose(
    body["predictions"][0]["id_embedding"],
    loaded.signatures["item_embeddings"](item_ids=tf.constant(["item-4"]))["id_embedding"].numpy()[
      0
    ],
    rtol=1e-5,
  )
  example = tf.train.Example(
    features=tf.train.Features(
      feature={
        "history": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"item-3", b"item-9"]))
      }
    )
  ).SerializeToString()
  status, body = predict(
    url,
    {
      "signature_name": "predict_examples",
      "inputs": {"examples": [{"b64": base64.b64encode(example).decode()}]},
    },
  )
  assert status == 200
  dense = predict(url, {"inputs": {"history": [["item-3", "item-9"]]}})[1]
  assert body["outputs"]["item_ids"] == dense["outputs"]["item_ids"]


def test_floats_are_written_as_tf_serving_writes_them(served):
  url, _, _ = served
  text = (
    urllib.request.urlopen(
      urllib.request.Request(
        url + "/v1/models/bivrec:predict", data=b'{"instances": [["item-1"]]}'
      ),
      timeout=30,
    )
    .read()
    .decode()
  )
  scores = json.loads(text)["predictions"][0]["scores"]
  for value in scores:  # %g (6 digits) when it round-trips in float32, else 9 digits
    assert np.float32(value) == np.float32(float(repr(value)))
  assert '"scores": [' in text


# --- errors: TF Serving's messages and HTTP codes --------------------------------------------------

ERRORS = [
  (
    "malformed JSON",
    '{"instances": [["item-1"]',
    400,
    "JSON Parse error: Missing a comma or ']' after an array element. at offset: 25",
  ),
  ("empty body", b"", 400, "JSON Parse error: The document is empty"),
  ("not an object", "[1]", 400, "JSON Value: [1] Is not object"),
  ("neither", {"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances' key"),
  (
    "both",
    {"instances": [["a"]], "inputs": {"history": [["a"]]}},
    400,
    "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
  ),
  (
    "unknown signature",
    {"signature_name": "nope", "instances": [["a"]]},
    400,
    'Serving signature name: "nope" not found in signature def',
  ),
  (
    "signature_name not a string",
    {"signature_name": 7, "instances": [["a"]]},
    400,
    "not formatted correctly. 'signature_name' key must be a string value.",
  ),
  (
    "wrong dtype",
    {"instances": [["item-1", 5]]},
    400,
    "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: 5 "
    "Type: Number is not of expected type: string",
  ),
  (
    "ragged rows",
    {"instances": [["item-1", "item-2"], ["item-3"]]},
    400,
    "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
    "Expecting tensor size: 2 but got: 1",
  ),
  (
    "ragged columns",
    {"inputs": {"history": [["item-1", "item-2"], ["item-3"]]}},
    400,
    "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
  ),
  ("empty instances", {"instances": []}, 400, "No values in 'instances' array"),
  (
    "instances not a list",
    {"instances": "item-1"},
    400,
    "Expecting 'instances' to be an list/array",
  ),
  (
    "unknown named input",
    {"instances": [{"hist": ["a"]}]},
    400,
    "Failed to process element: 0 key: hist of 'instances' list. Error: INVALID_ARGUMENT: "
    "JSON object: does not have named input: hist",
  ),
  (
    "missing named input",
    {"inputs": {"hist": [["a"]]}},
    400,
    "Missing named input: history in 'inputs' object.",
  ),
  ("bad base64", {"instances": [[{"b64": "%%%"}]]}, 400, "Unable to base64 decode"),
]


@pytest.mark.parametrize("case,body,code,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_requests_get_tf_serving_messages_and_codes(served, case, body, code, message):
  url, _, _ = served
  status, answer = predict(url, body)
  assert status == code, (case, answer)
  assert list(answer) == ["error"]
  assert answer["error"].endswith(message) or answer["error"] == message, answer["error"]


def test_unknown_model_version_and_label_are_not_found(served):
  url, _, _ = served
  body = {"instances": [["item-1"]]}
  assert predict(url, body, "nope") == (
    404,
    {"error": "Servable not found for request: Latest(nope)"},
  )
  assert call(url, "/v1/models/bivrec/versions/9:predict", body) == (
    404,
    {"error": "Servable not found for request: Specific(bivrec, 9)"},
  )
  assert call(url, "/v1/models/bivrec/labels/canary:predict", body) == (
    400,
    {"error": "Unrecognized servable version label: canary"},
  )
  assert call(url, "/v1/models/bivrec:predict", body, method="PUT") == (
    400,
    {"error": "Malformed request: PUT /v1/models/bivrec:predict"},
  )
  assert call(url, "/v1/models/bivrec:predict")[0] == 400  # GET on a predict path
  assert call(url, "/not-v1")[0] == 404


def test_bad_requests_never_take_the_server_down(served):
  url, _, _ = served
  garbage = [
    b"\xff\xfe\x00",
    b"[" * 200_000,
    b'{"instances": [[[[[[[[["a"]]]]]]]]]}',
    b'{"instances": [NaN]}',
    b'{"inputs": {"history": 5}}',
    b"null",
    b'{"instances": [["a"]], "signature_name": "__saved_model_init_op"}',
  ]
  for body in garbage:
    status, answer = predict(url, body)
    assert 400 <= status < 500 and "error" in answer, (body[:40], status, answer)
  assert call(url, "/v1/models/bivrec")[0] == 200
  assert predict(url, {"instances": [["item-1"]]})[0] == 200


def test_concurrent_requests_get_their_own_answers(served):
  url, _, _ = served
  histories = [[f"item-{i}", f"item-{(i * 7) % 40}"] for i in range(24)]
  expected = [predict(url, {"instances": [h]})[1] for h in histories]
  results = [None] * len(histories)

  def worker(i):
    results[i] = predict(url, {"instances": [histories[i]]})[1]

  threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(histories))]
  for t in threads:
    t.start()
  for t in threads:
    t.join(60)
  assert results == expected


def test_client_recommends_and_truncates_k(served):
  url, _, _ = served
  client = client_lib.Client(url, "bivrec")
  recs = client.recommend([["item-3", "item-9"], ["item-1"]], k=3)
  assert [len(r) for r in recs] == [3, 3]
  full = predict(url, {"inputs": {"history": [["item-3", "item-9"]]}})[1]["outputs"]
  assert [r[0] for r in recs[0]] == full["item_ids"][0][:3]
  assert len(client.recommend([["item-3"]], k=50)[0]) == K
  with pytest.raises(client_lib.RestError) as err:
    client_lib.Client(url, "nope").recommend([["item-3"]])
  assert err.value.status == 404 and "Latest(nope)" in err.value.message
  assert client_lib.pad_histories([["a"], ["b", "c", "d"]]) == [["", "", "a"], ["b", "c", "d"]]
  assert client_lib.pad_histories([["a", "b", "c"]], pad_to=2) == [["b", "c"]]


# --- versions --------------------------------------------------------------------------------------


def _wait_for(predicate, timeout=60.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.2)
  return False


def test_a_new_version_directory_is_picked_up_and_labels_follow_the_config(served, tmp_path):
  url, base, _ = served
  tiny.export_tiny(base.parent, "bivrec", seed=1, fusion_weight=0.2)  # version 2
  assert _wait_for(
    lambda: call(url, "/v1/models/bivrec/metadata")[1].get("model_spec", {}).get("version") == "2"
  )
  status, body = call(url, "/v1/models/bivrec")
  assert status == 200
  assert [(v["version"], v["state"]) for v in body["model_version_status"]] == [
    ("2", "AVAILABLE"),
    ("1", "END"),
  ]  # newest served; the default policy unloads the old one
  assert call(url, "/v1/models/bivrec/versions/1:predict", {"instances": [["item-1"]]}) == (
    404,
    {"error": "Servable not found for request: Specific(bivrec, 1)"},
  )

  # A model config: both versions, labels from version_labels.
  config = tmp_path / "models.config"
  config.write_text(f"""
model_config_list {{
  config {{
    name: "bivrec"
    base_path: "{base}"
    model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
}}""")
  http, poller = local_server.start(model_config_file=str(config), port=0, poll_wait_seconds=-1)
  try:
    url2 = f"http://127.0.0.1:{http.port}"
    for label, version in (("stable", "1"), ("canary", "2")):
      assert (
        call(url2, f"/v1/models/bivrec/labels/{label}/metadata")[1]["model_spec"]["version"]
        == version
      )
      status, body = call(
        url2, f"/v1/models/bivrec/labels/{label}:predict", {"instances": [["item-3"]]}
      )
      same = call(
        url2, f"/v1/models/bivrec/versions/{version}:predict", {"instances": [["item-3"]]}
      )
      assert status == 200 and (status, body) == same
    assert [v["version"] for v in call(url2, "/v1/models/bivrec")[1]["model_version_status"]] == [
      "2",
      "1",
    ]
    assert (
      call(url2, "/v1/models/bivrec/labels/canary")[1]["model_version_status"][0]["version"] == "2"
    )
  finally:
    http.shutdown()
    http.server_close()
    poller.stop()


def test_half_written_and_non_numeric_directories_are_ignored(served):
  url, base, _ = served
  (base / ".tmp-99-1").mkdir()
  (base / "99-not-a-version").mkdir()
  time.sleep(0.6)  # a few polls
  versions = [v["version"] for v in call(url, "/v1/models/bivrec")[1]["model_version_status"]]
  assert "99" not in versions
  shutil.rmtree(base / ".tmp-99-1")


# --- the command lines -----------------------------------------------------------------------------


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_command_lines_serve_and_query(served):
  _, base, _ = served
  port = _free_port()
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "serving.local_server",
      "--model_base_path",
      str(base),
      "--model_name",
      "bivrec",
      "--rest_api_port",
      str(port),
      "--file_system_poll_wait_seconds",
      "0",
    ],
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  try:
    url = f"http://127.0.0.1:{port}"
    assert _wait_for(lambda: proc.poll() is None and _up(url), timeout=120), proc.poll()
    out = subprocess.run(
      [
        sys.executable,
        "-m",
        "serving.client",
        "--url",
        url,
        "--model",
        "bivrec",
        "--history",
        "item-3",
        "item-9",
        "--k",
        "3",
      ],
      capture_output=True,
      text=True,
      timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "item_id", "score"] and len(lines) == 4
    assert all(line.split()[1].startswith("item-") for line in lines[1:])
    bad = subprocess.run(
      [sys.executable, "-m", "serving.client", "--url", url, "--model", "x", "--history", "item-3"],
      capture_output=True,
      text=True,
      timeout=60,
    )
    assert bad.returncode == 1 and "Servable not found for request: Latest(x)" in bad.stderr
  finally:
    proc.terminate()
    proc.wait(30)


def _up(url):
  try:
    return call(url, "/v1/models/bivrec")[0] == 200
  except OSError:
    return False

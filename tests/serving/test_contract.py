"""The REST contract, checked against the local server and, when TF_SERVING_URL is set, against a
real `tensorflow_model_server` with the same requests and the same expected answers.

Expected codes and messages are TF Serving's (read from its source: `http_rest_api_handler.cc`,
`http_rest_api_util.cc`, `json_tensor.cc`, `get_model_status_impl.cc`, `server_core.cc`,
`evhttp_request.cc`). One command checks a real server (Docker; docs/serving.md, "Contract"):

    mkdir -p /tmp/bivrec-contract/bivrec && docker run -d --rm --name tfs-contract -p 8501:8501 \\
      -v /tmp/bivrec-contract/bivrec:/models/bivrec tensorflow/serving:2.21.0 \\
      --model_name=bivrec --model_base_path=/models/bivrec --file_system_poll_wait_seconds=1 \\
    && TF_SERVING_URL=http://localhost:8501 TF_SERVING_MODEL_DIR=/tmp/bivrec-contract \\
       python -m pytest tests/serving/test_contract.py -v; docker stop tfs-contract

The test writes the tiny export as version 1 under TF_SERVING_MODEL_DIR/bivrec (the directory
the real server polls) and waits for it to become AVAILABLE there; the local server serves the
same directory. Cases marked `local_only` are documented deliberate differences (docs/serving.md).
"""

import base64
import gzip
import http.client
import json
import os
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from serving import local_server
from tests.serving import models as tiny

K = tiny.TOP_K
REAL_URL = os.environ.get("TF_SERVING_URL", "").rstrip("/")
HIST = [["item-3", "item-9", "item-12"], ["", "nope", "item-5"]]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  root = Path(os.environ.get("TF_SERVING_MODEL_DIR") or tmp_path_factory.mktemp("contract"))
  base = root / "bivrec"
  if not (base / "1").is_dir():
    tiny.export_tiny(root, "bivrec", seed=0, version=1)
  return base


@pytest.fixture(scope="module")
def local_url(export_dir):
  http, poller = local_server.start("bivrec", str(export_dir), port=0, poll_wait_seconds=-1)
  yield f"http://127.0.0.1:{http.port}"
  http.shutdown()
  http.server_close()
  poller.stop()


@pytest.fixture(scope="module", params=["local"] + (["tf_serving"] if REAL_URL else []))
def target(request, export_dir):
  if request.param == "local":
    return "local", request.getfixturevalue("local_url")
  deadline = time.time() + 120
  while time.time() < deadline:  # the real server polls the directory the export went to
    try:
      if send(REAL_URL, "GET", "/v1/models/bivrec/versions/1")[0] == 200:
        return "tf_serving", REAL_URL
    except OSError:
      pass
    time.sleep(1)
  pytest.fail(f"{REAL_URL} never served version 1 of bivrec from {export_dir}")


@pytest.fixture(scope="module")
def expected(export_dir):
  loaded = tf.saved_model.load(str(export_dir / "1"))
  out = loaded.signatures["serving_default"](history=tf.constant(HIST))
  return {"item_ids": out["item_ids"].numpy().astype(str).tolist(), "scores": out["scores"].numpy()}


def send(url, method, path, body=b"", headers=None):
  """-> (status, headers, body bytes); raw bytes in and out."""
  parsed = urllib.parse.urlsplit(url)
  conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
  try:
    conn.putrequest(method, path, skip_accept_encoding=True)
    hdrs = {"Content-Length": str(len(body)), **(headers or {})}
    for key, value in hdrs.items():
      conn.putheader(key, value)
    conn.endheaders(body or None)
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()
  finally:
    conn.close()


def as_json(data: bytes):
  return json.loads(data.decode("utf-8", "surrogateescape"))


def local_only(target_name):
  if target_name != "local":
    pytest.skip("a documented difference of the local server (docs/serving.md)")


# --- status and metadata ---------------------------------------------------------------------------

AVAILABLE_1 = {
  "model_version_status": [
    {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
  ]
}


@pytest.mark.parametrize(
  "path,status,body",
  [
    ("/v1/models/bivrec", 200, AVAILABLE_1),
    ("/v1/models/bivrec/versions/1", 200, AVAILABLE_1),
    ("/v1/models/bivrec/labels/anything", 200, AVAILABLE_1),  # GetModelStatus ignores labels
    ("/v1/models/nope", 404, {"error": "Could not find any versions of model nope"}),
    ("/v1/models/bivrec/versions/9", 404, {"error": "Could not find version 9 of model bivrec"}),
    (
      "/v1/models/bivrec/versions/1/oops",
      400,
      {"error": "Malformed request: GET /v1/models/bivrec/versions/1/oops"},
    ),
    (
      "/v1/models/bivrec/versions/99999999999999999999",
      400,
      {"error": "Failed to convert version: 99999999999999999999 to numeric."},
    ),
    ("/v1/models/b%69vrec", 200, AVAILABLE_1),  # names are percent-decoded
    ("/v1/models", 400, {"error": "Missing model name in request."}),
  ],
)
def test_status(target, path, status, body):
  got = send(target[1], "GET", path)
  assert (got[0], as_json(got[2])) == (status, body)
  assert got[1].get("Content-Type") == "application/json"


def test_metadata(target):
  status, _, data = send(target[1], "GET", "/v1/models/bivrec/metadata")
  assert status == 200
  body = as_json(data)
  assert body["model_spec"] == {"name": "bivrec", "version": "1", "signature_name": ""}
  sigs = body["metadata"]["signature_def"]["signature_def"]
  assert {
    "serving_default",
    "user_interests",
    "item_embeddings",
    "predict_examples",
    "__saved_model_init_op",
  } <= set(sigs)
  assert sigs["serving_default"]["inputs"]["history"]["dtype"] == "DT_STRING"
  assert as_json(send(target[1], "GET", "/v1/models/bivrec/versions/5/metadata")[2]) == {
    "error": "Servable not found for request: Specific(bivrec, 5)"
  }
  assert as_json(send(target[1], "GET", "/v1/models/bivrec/labels/x/metadata")[2]) == {
    "error": "Unrecognized servable version label: x"
  }


# --- predict ---------------------------------------------------------------------------------------


def _check_rows(body, expected):
  rows = body["predictions"]
  assert [r["item_ids"] for r in rows] == expected["item_ids"]
  np.testing.assert_allclose([r["scores"] for r in rows], expected["scores"], rtol=1e-5)


@pytest.mark.parametrize(
  "name,body,headers",
  [
    ("row", json.dumps({"instances": HIST}).encode(), {}),
    (
      "named row",
      json.dumps(
        {"signature_name": "serving_default", "instances": [{"history": h} for h in HIST]}
      ).encode(),
      {},
    ),
    ("trailing bytes ignored", json.dumps({"instances": HIST}).encode() + b" }} garbage", {}),
    ("gzip", gzip.compress(json.dumps({"instances": HIST}).encode()), {"Content-Encoding": "gzip"}),
    ("leading whitespace", b"\r\n\t " + json.dumps({"instances": HIST}).encode(), {}),
  ],
)
def test_row_predict(target, expected, name, body, headers):
  status, hdrs, data = send(target[1], "POST", "/v1/models/bivrec:predict", body, headers)
  assert status == 200, (name, data[:300])
  assert hdrs.get("Content-Type") == "application/json"
  _check_rows(as_json(data), expected)


def test_columnar_predict_and_b64(target, expected):
  status, _, data = send(
    target[1],
    "POST",
    "/v1/models/bivrec/versions/1:predict",
    json.dumps({"inputs": {"history": HIST}}).encode(),
  )
  assert status == 200
  out = as_json(data)["outputs"]
  assert out["item_ids"] == expected["item_ids"]
  np.testing.assert_allclose(out["scores"], expected["scores"], rtol=1e-5)
  b64 = [[{"b64": base64.b64encode(x.encode()).decode()} for x in row] for row in HIST]
  status, _, data = send(
    target[1],
    "POST",
    "/v1/models/bivrec:predict",
    json.dumps({"inputs": {"history": b64}}).encode(),
  )
  assert status == 200 and as_json(data)["outputs"]["item_ids"] == expected["item_ids"]


def test_invalid_utf8_in_strings_is_passed_to_the_model(target):
  body = b'{"instances": [["item-3", "\xff\xfe", "item-9"]]}'
  status, _, data = send(target[1], "POST", "/v1/models/bivrec:predict", body)
  assert status == 200
  clean = send(
    target[1], "POST", "/v1/models/bivrec:predict", b'{"instances": [["item-3", "item-9"]]}'
  )
  assert (
    as_json(data)["predictions"][0]["item_ids"] == as_json(clean[2])["predictions"][0]["item_ids"]
  )  # an unknown id is dropped


ERRORS = [
  (
    "malformed JSON",
    b'{"instances": [["item-1"]',
    400,
    "JSON Parse error: Missing a comma or ']' after an array element. at offset: 25",
  ),
  ("empty body", b"", 400, "JSON Parse error: The document is empty"),
  ("bad gzip", b"\x1f\x8bnot gzip", 400, "JSON Parse error: The document is empty"),
  (
    "lone high surrogate",
    b'{"instances": [["\\ud800"]]}',
    400,
    "JSON Parse error: The surrogate pair in string is invalid. at offset: 17",
  ),
  ("not an object", b"[1, 2]", 400, "JSON Value: [1, 2] Is not object"),
  ("neither", b'{"signature_name": "serving_default"}', 400, "Missing 'inputs' or 'instances' key"),
  (
    "both",
    b'{"instances": [["a"]], "inputs": [["a"]]}',
    400,
    'JSON Value: {\n    "instances": [["a"]],\n    "inputs": [["a"]]\n} Not formatted '
    "correctly expecting only one of 'inputs' or 'instances' keys to exist ",
  ),
  (
    "unknown signature",
    b'{"signature_name": "nope", "instances": [["a"]]}',
    400,
    'Serving signature name: "nope" not found in signature def',
  ),
  (
    "signature_name not a string",
    b'{"signature_name": 7, "instances": [["a"]]}',
    400,
    'JSON Value: {\n    "signature_name": 7,\n    "instances": [["a"]]\n} not formatted '
    "correctly. 'signature_name' key must be a string value.",
  ),
  (
    "wrong dtype",
    b'{"instances": [["item-1", 5]]}',
    400,
    "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: 5 "
    "Type: Number is not of expected type: string",
  ),
  (
    "ragged rows",
    b'{"instances": [["a", "b"], ["c"]]}',
    400,
    "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
    "Expecting tensor size: 2 but got: 1",
  ),
  (
    "ragged columns",
    b'{"inputs": {"history": [["a", "b"], ["c"]]}}',
    400,
    "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
  ),
  (
    "empty instances",
    b'{"instances": []}',
    400,
    "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array",
  ),
  (
    "instances not a list",
    b'{"instances": "item-1"}',
    400,
    'JSON Value: {\n    "instances": "item-1"\n} Expecting \'instances\' to be an list/array',
  ),
  (
    "unknown named input",
    b'{"instances": [{"hist": ["a"]}]}',
    400,
    "Failed to process element: 0 key: hist of 'instances' list. Error: INVALID_ARGUMENT: "
    "JSON object: does not have named input: hist",
  ),
  (
    "missing named input",
    b'{"inputs": {"hist": [["a"]]}}',
    400,
    "Missing named input: history in 'inputs' object.",
  ),
  (
    "bad base64",
    b'{"instances": [[{"b64": "%%%"}]]}',
    400,
    "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
    "Unable to base64 decode",
  ),
  (
    "init op signature",
    b'{"signature_name": "__saved_model_init_op", "instances": [["a"]]}',
    400,
    "Failed to get input map for signature: __saved_model_init_op",
  ),
  (
    "rank beyond TensorShape's 254",
    b'{"instances": ' + b"[" * 300 + b'"a"' + b"]" * 300 + b"}",
    400,
    "tensor parsing error: history",
  ),
]


@pytest.mark.parametrize("case,body,code,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors(target, case, body, code, message):
  headers = {"Content-Encoding": "gzip"} if case == "bad gzip" else {}
  status, hdrs, data = send(target[1], "POST", "/v1/models/bivrec:predict", body, headers)
  assert (status, as_json(data)) == (code, {"error": message}), case
  assert hdrs.get("Content-Type") == "application/json"


def test_error_body_is_rapidjson_pretty_printed(target):
  _, _, data = send(target[1], "POST", "/v1/models/bivrec:predict", b"")
  assert data == b'{\n    "error": "JSON Parse error: The document is empty"\n}'


@pytest.mark.parametrize(
  "method,path,status,message",
  [
    ("POST", "/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
    (
      "POST",
      "/v1/models/bivrec/versions/9:predict",
      404,
      "Servable not found for request: Specific(bivrec, 9)",
    ),
    (
      "POST",
      "/v1/models/bivrec/labels/canary:predict",
      400,
      "Unrecognized servable version label: canary",
    ),
    ("PUT", "/v1/models/bivrec:predict", 400, "Malformed request: PUT /v1/models/bivrec:predict"),
    ("DELETE", "/v1/models/bivrec", 400, "Malformed request: DELETE /v1/models/bivrec"),
    ("GET", "/v1/models/bivrec:predict", 400, "Malformed request: GET /v1/models/bivrec:predict"),
  ],
)
def test_routing(target, method, path, status, message):
  got = send(target[1], method, path, b'{"instances": [["item-1"]]}')
  assert got[0] == status
  if message is not None:
    assert as_json(got[2]) == {"error": message}


def test_paths_outside_v1_are_404(target):
  assert send(target[1], "GET", "/not-v1")[0] == 404
  assert send(target[1], "GET", "/")[0] == 404


def test_cors_preflight(target):
  assert send(target[1], "OPTIONS", "/v1/models/bivrec:predict")[0] == 400
  assert (
    send(
      target[1], "OPTIONS", "/v1/models/bivrec:predict", headers={"Origin": "http://example.com"}
    )[0]
    == 200
  )


# --- deliberate differences (local server only) ----------------------------------------------------


def test_local_request_size_limit(target):
  local_only(target[0])
  status, _, data = send(target[1], "POST", "/v1/models/bivrec:predict", b" " * (17 * 2**20))
  assert status == 413 and "exceeds the limit" in as_json(data)["error"]


def test_local_classify_and_regress_are_unimplemented(target):
  local_only(target[0])  # TF Serving runs them (and rejects our predict signatures)
  for method in ("classify", "regress"):
    assert send(target[1], "POST", f"/v1/models/bivrec:{method}", b"{}")[0] == 501


def test_local_unknown_methods_get_json_501(target):
  local_only(target[0])
  status, hdrs, data = send(target[1], "TRACE", "/v1/models/bivrec")
  assert status == 501 and as_json(data) == {"error": "Method not implemented: TRACE"}

"""The JSON <-> tensor codec follows TF Serving's json_tensor.cc (no model needed)."""

import numpy as np
import pytest

from serving import json_tensor as jt

STRING, FLOAT, INT64 = jt.DT_STRING, jt.DT_FLOAT, jt.DT_INT64


def test_floats_are_written_like_tf_serving():
  cases = {
    0.2: "0.2",
    1.0: "1.0",
    9000000.0: "9e+06",
    3e-05: "3e-05",
    -2.5: "-2.5",
    float("nan"): "NaN",
    float("inf"): "Infinity",
    float("-inf"): "-Infinity",
  }
  for value, text in cases.items():
    assert jt.format_decimal(float(np.float32(value))) == text
  # Not representable in 6 digits: full float32 precision, and it round-trips.
  text = jt.format_decimal(float(np.float32(1 / 3)))
  assert text == "0.333333343" and np.float32(text) == np.float32(1 / 3)


def test_single_output_is_unnamed_and_several_are_objects():
  one = {"y": np.array([1.5, 2.0], np.float32)}
  assert jt.response_json(one, "row").replace(" ", "").replace("\n", "") == (
    '{"predictions":[1.5,2.0]}'
  )
  assert jt.response_json(one, "columnar").replace(" ", "").replace("\n", "") == (
    '{"outputs":[1.5,2.0]}'
  )
  two = {"a": np.array([[1], [2]], np.int64), "b_bytes": np.array([b"\x00", b"x"], object)}
  import json  # pylint: disable=import-outside-toplevel

  assert json.loads(jt.response_json(two, "row")) == {
    "predictions": [{"a": [1], "b_bytes": {"b64": "AA=="}}, {"a": [2], "b_bytes": {"b64": "eA=="}}]
  }
  assert json.loads(jt.response_json(two, "columnar")) == {
    "outputs": {"a": [[1], [2]], "b_bytes": [{"b64": "AA=="}, {"b64": "eA=="}]}
  }


def test_row_requests_batch_instances_along_dimension_zero():
  arrays, fmt = jt.request_tensors(
    {"instances": [["a", "b"], ["c", {"b64": "ZA=="}]]}, {"history": STRING}, ""
  )
  assert fmt == "row"
  np.testing.assert_array_equal(arrays["history"], np.array([[b"a", b"b"], [b"c", b"d"]], object))
  arrays, fmt = jt.request_tensors(
    {"inputs": {"x": [[1, 2]], "y": 3.5}}, {"x": INT64, "y": FLOAT}, ""
  )
  assert fmt == "columnar" and arrays["x"].dtype == np.int64 and arrays["y"].shape == ()


@pytest.mark.parametrize(
  "body,message",
  [
    (b'{"a": }', "JSON Parse error: Invalid value. at offset: 6"),
    (b'{"a" 1}', "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
    (b'{"a": "x', "JSON Parse error: Missing a closing quotation mark in string. at offset: 6"),
    # rapidjson 1.1.0: a high surrogate must be followed by a low one (offset of the backslash).
    (
      b'{"a": "\\ud800"}',
      "JSON Parse error: The surrogate pair in string is invalid. at offset: 7",
    ),
    (
      b'{"a": "xy\\ud83d\\u0041"}',
      "JSON Parse error: The surrogate pair in string is invalid. at offset: 9",
    ),
    (b"\xff{}", "JSON Parse error: Invalid value. at offset: 0"),  # invalid UTF-8 outside strings
  ],
)
def test_parse_errors_use_rapidjson_texts(body, message):
  with pytest.raises(jt.ServingError) as err:
    jt.parse_json(body)
  assert err.value.message == message and err.value.http_status == 400


def test_parsing_stops_after_the_document_and_passes_invalid_utf8_through():
  """kParseStopWhenDoneFlag: trailing bytes are ignored; no encoding validation: the bytes of a
  string reach the tensor unchanged; a paired surrogate escape is one code point; a lone low
  surrogate is accepted (rapidjson 1.1.0 writes it as 3 bytes)."""
  assert jt.parse_json(b'{"a": 1} trailing garbage [') == {"a": 1}
  assert jt.parse_json(b' \n{"a": 1}{"b": 2}') == {"a": 1}
  doc = jt.parse_json(b'{"inputs": ["ok", "\xff\xfeab", "\\ud83d\\ude00", "\\udc00"]}')
  arr = jt.to_array(doc["inputs"], STRING)
  assert list(arr) == [b"ok", b"\xff\xfeab", "\U0001f600".encode(), b"\xed\xb0\x80"]
  # An escaped backslash before "ud800" is not an escape.
  assert jt.parse_json(b'{"a": "\\\\ud800"}') == {"a": "\\ud800"}


def test_error_bodies_and_debug_strings_are_rapidjson_pretty_writer_output():
  assert jt.error_json('bad "x"\n') == '{\n    "error": "bad \\"x\\"\\n"\n}'
  assert jt.json_debug_string([1, 2.5, "x", None, True]) == '[1, 2.5, "x", null, true]'
  assert jt.json_debug_string({"a": [1], "b": {"c": 1e30}}) == (
    '{\n    "a": [1],\n    "b": {\n        "c": 1e30\n    }\n}'
  )
  long = jt.json_debug_string(list(range(1000)))  # cut once 256 bytes are written
  assert 256 <= len(long) < 262 and long.startswith("[0, 1, 2") and not long.endswith("]")
  assert jt.json_debug_string([1, float("nan"), 2]) == "[1, "  # Writer refuses NaN
  for value, text in {
    0.1: "0.1",
    1.0: "1.0",
    1e21: "1e21",
    1.5e-7: "1.5e-7",
    1e-6: "0.000001",
    -2.5: "-2.5",
    123456.0: "123456.0",
  }.items():
    assert jt.rapidjson_double(value) == text


def test_deep_or_high_rank_values_are_400_not_500():
  deep = {"instances": jt.parse_json(b'{"v": ' + b"[" * 70 + b'"a"' + b"]" * 70 + b"}")["v"]}
  with pytest.raises(jt.ServingError) as err:
    jt.request_tensors(deep, {"x": STRING}, "")
  assert err.value.http_status == 400 and err.value.message == "tensor parsing error: x"
  with pytest.raises(jt.ServingError, match="tensor parsing error: x"):
    jt.request_tensors({"inputs": deep["instances"]}, {"x": STRING}, "")
  with pytest.raises(jt.ServingError) as err:
    jt.parse_json(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
  assert err.value.http_status == 400


def test_numbers_and_mistyped_values():
  # 2.5+: integers are accepted for float inputs without a precision check.
  assert jt.to_array([16777217], FLOAT).tolist() == [16777216.0]
  with pytest.raises(
    jt.ServingError, match="JSON Value: true Type: True is not of expected type: int64"
  ):
    jt.to_array([True], INT64)
  with pytest.raises(jt.ServingError, match="found at incorrect level: 2"):
    jt.to_array([[1], 2], INT64)


def test_paths_are_parsed_like_tf_serving():
  req = jt.parse_path("POST", "/v1/models/my%20model/labels/canary:predict")
  assert (req.name, req.version, req.label, req.method) == ("my model", None, "canary", "predict")
  req = jt.parse_path("GET", "/v1/models/m/versions/3/metadata")
  assert (req.name, req.version, req.method) == ("m", 3, "metadata")
  with pytest.raises(jt.ServingError, match="Malformed request: POST /v1/models/m"):
    jt.parse_path("POST", "/v1/models/m")

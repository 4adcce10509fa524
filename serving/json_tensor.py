"""JSON <-> tensors exactly as TensorFlow Serving's REST API does it (`util/json_tensor.cc`).

Requests: `{"signature_name": ..., "instances": [...]}` (row format: one element per batch row,
a plain value/list when the signature has one input, else an object per row) or
`{"signature_name": ..., "inputs": ...}` (columnar: a value/list for a single input, else an object
of named tensors). Strings may be given as `{"b64": "<base64>"}`. Responses: `{"predictions": ...}`
for row requests (a list of objects when there are several outputs, else a list of values) and
`{"outputs": ...}` for columnar ones (an object of named outputs, or the single output's value).
Floats are written as TF Serving writes them (shortest of `%g` / `%.9g` that round-trips, whole
numbers with a trailing `.0`, `NaN`/`Infinity` tokens); string outputs whose name ends in `_bytes`
are `{"b64": ...}`.

Errors are `ServingError(code, message)` with TF Serving's status codes and message texts; the
HTTP status of a code is `HTTP_STATUS[code]` (`http_server.cc`).
"""

import base64
import binascii
import codecs
import json
import math
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

# tensorflow::error::Code -> HTTP status (tensorflow_serving/model_servers/http_server.cc).
HTTP_STATUS = {
  "OK": 200,
  "CANCELLED": 499,
  "UNKNOWN": 500,
  "INVALID_ARGUMENT": 400,
  "DEADLINE_EXCEEDED": 504,
  "NOT_FOUND": 404,
  "ALREADY_EXISTS": 409,
  "PERMISSION_DENIED": 403,
  "RESOURCE_EXHAUSTED": 429,
  "FAILED_PRECONDITION": 400,
  "ABORTED": 409,
  "OUT_OF_RANGE": 400,
  "UNIMPLEMENTED": 501,
  "INTERNAL": 500,
  "UNAVAILABLE": 503,
  "DATA_LOSS": 500,
  "UNAUTHENTICATED": 401,
}


class ServingError(Exception):
  """A TF Serving status: `code` (e.g. "INVALID_ARGUMENT") and `message`."""

  def __init__(self, code: str, message: str):
    super().__init__(message)
    self.code = code
    self.message = message

  @property
  def http_status(self) -> int:
    return HTTP_STATUS.get(self.code, 500)

  def to_string(self) -> str:
    """absl::Status::ToString(): "CODE: message"."""
    return f"{self.code}: {self.message}"


def invalid(*parts) -> ServingError:
  return ServingError("INVALID_ARGUMENT", "".join(str(p) for p in parts))


# DataType enum value -> (DataTypeString, numpy dtype). types.proto numbering.
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_INT64, DT_BOOL, DT_UINT32, DT_UINT64 = 9, 10, 22, 23
DTYPES = {
  DT_FLOAT: ("float", np.float32),
  DT_DOUBLE: ("double", np.float64),
  DT_INT32: ("int32", np.int32),
  DT_UINT8: ("uint8", np.uint8),
  DT_INT16: ("int16", np.int16),
  DT_INT8: ("int8", np.int8),
  DT_STRING: ("string", object),
  DT_INT64: ("int64", np.int64),
  DT_BOOL: ("bool", np.bool_),
  DT_UINT32: ("uint32", np.uint32),
  DT_UINT64: ("uint64", np.uint64),
}
OTHER_DTYPE_NAMES = {
  8: "complex64",
  14: "bfloat16",
  18: "complex128",
  19: "half",
  20: "resource",
  21: "variant",
  17: "uint16",
}


def dtype_string(dtype: int) -> str:
  return DTYPES[dtype][0] if dtype in DTYPES else OTHER_DTYPE_NAMES.get(dtype, f"dtype {dtype}")


# --- JSON text ------------------------------------------------------------------------------------
#
# TF Serving parses with rapidjson 1.1.0 (`kParseIterativeFlag | kParseNanAndInfFlag |
# kParseStopWhenDoneFlag`, no encoding validation): bytes after the first complete JSON value are
# ignored, invalid UTF-8 inside strings is passed through byte for byte, a lone high surrogate
# escape ("\ud800" not followed by a low one) is an error, a lone low surrogate ("\udc00") is
# accepted. Here the body is decoded with `surrogateescape` (each invalid byte becomes U+DC80 +
# byte) and strings are encoded back with the "tfserving" error handler, which restores those bytes
# and writes other surrogates as rapidjson does (3-byte CESU-8).


def _restore_bytes(err):
  if not isinstance(err, UnicodeEncodeError):
    raise err
  out = bytearray()
  for ch in err.object[err.start : err.end]:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
      out.append(code - 0xDC00)  # a byte that was not valid UTF-8 in the request
    else:
      out += ch.encode("utf-8", "surrogatepass")
  return bytes(out), err.end


codecs.register_error("tfserving", _restore_bytes)


def encode_utf8(text: str) -> bytes:
  """str -> bytes; request bytes that were not UTF-8 come back unchanged (see above)."""
  try:
    return text.encode("utf-8")
  except UnicodeEncodeError:
    return text.encode("utf-8", "tfserving")


_RAPIDJSON_MESSAGES = [  # Python json messages -> rapidjson GetParseError_En texts
  ("Expecting value", "Invalid value."),
  ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
  ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
  ("Unterminated string", "Missing a closing quotation mark in string."),
  ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
  ("Invalid \\escape", "Invalid escape character in string."),
  ("Invalid control character", "Invalid escape character in string."),
]
_WHITESPACE = " \t\n\r"
_DECODER = json.JSONDecoder()
# A high surrogate escape not followed by a low one, preceded by an even number of backslashes.
_LONE_HIGH_SURROGATE = re.compile(
  r"(?<!\\)((?:\\\\)*)\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)
MAX_NESTING_NOTE = "nested deeper than this server's JSON parser allows (about 1,000 levels)"


def _comma_error(text: str, pos: int) -> str:
  """rapidjson names the container that lacks the comma; Python says "Expecting ',' delimiter"."""
  stack, in_str, esc = [], False, False
  for ch in text[:pos]:
    if in_str:
      esc, in_str = (False, in_str) if esc else (ch == "\\", ch != '"')
    elif ch == '"':
      in_str = True
    elif ch in "[{":
      stack.append(ch)
    elif ch in "]}" and stack:
      stack.pop()
  if stack and stack[-1] == "{":
    return "Missing a comma or '}' after an object member."
  return "Missing a comma or ']' after an array element."


def _offset(text: str, pos: int) -> int:
  """Byte offset of character `pos` in the request body."""
  return len(encode_utf8(text[:pos]))


def _lone_surrogate(text: str, end: int) -> Optional[int]:
  """Character position of the first lone high surrogate escape before `end`, if any."""
  if "\\u" not in text:
    return None
  m = _LONE_HIGH_SURROGATE.search(text, 0, end)
  return None if m is None else m.start() + len(m.group(1))


def parse_json(body: bytes) -> Any:
  """ParseJson(): the request body -> a JSON object (dict); errors as TF Serving reports them."""
  if not body:
    raise invalid("JSON Parse error: The document is empty")
  text = body.decode("utf-8", "surrogateescape")
  start = len(text) - len(text.lstrip(_WHITESPACE))
  if start == len(text):
    raise invalid("JSON Parse error: The document is empty. at offset: ", len(body))
  try:
    doc, end = _DECODER.raw_decode(text, start)  # stops after the first value, as rapidjson
  except json.JSONDecodeError as err:
    surrogate = _lone_surrogate(text, err.pos)
    if surrogate is not None:
      raise invalid(
        "JSON Parse error: The surrogate pair in string is invalid. at offset: ",
        _offset(text, surrogate),
      ) from None
    message = "Invalid value."
    if err.msg.startswith("Expecting ',' delimiter"):
      message = _comma_error(text, err.pos)
    else:
      for python, rapid in _RAPIDJSON_MESSAGES:
        if err.msg.startswith(python):
          message = rapid
          break
    raise invalid("JSON Parse error: ", message, " at offset: ", _offset(text, err.pos)) from None
  except RecursionError:
    raise invalid("JSON Parse error: the document is ", MAX_NESTING_NOTE, ".") from None
  surrogate = _lone_surrogate(text, end)
  if surrogate is not None:
    raise invalid(
      "JSON Parse error: The surrogate pair in string is invalid. at offset: ",
      _offset(text, surrogate),
    )
  if not isinstance(doc, dict):
    raise format_error(doc, "Is not object")
  return doc


def format_decimal(value: float, single: bool = True) -> str:
  """WriteDecimal(): `%g` (6 digits) if it round-trips, else max_digits10; `.0` for whole."""
  if math.isnan(value):
    return "NaN"
  if math.isinf(value):
    return "-Infinity" if value < 0 else "Infinity"
  text = "%.6g" % value
  cast = np.float32 if single else float
  if cast(float(text)) != cast(value):
    text = ("%.9g" if single else "%.17g") % value
  if "." not in text and "e" not in text and "n" not in text:
    text += ".0"
  return text


def rapidjson_double(value: float) -> str:
  """A double as rapidjson's Writer prints it (Grisu shortest digits, `Prettify()` layout)."""
  if value == 0:
    return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
  sign = "-" if value < 0 else ""
  mantissa, _, exp = repr(abs(value)).partition("e")
  whole, _, frac = mantissa.partition(".")
  digits = (whole + frac).lstrip("0")
  k = int(exp or 0) - len(frac)
  stripped = digits.rstrip("0")
  k += len(digits) - len(stripped)
  digits = stripped
  length = len(digits)
  kk = length + k
  if 0 <= k and kk <= 21:
    text = digits + "0" * k + ".0"
  elif 0 < kk <= 21:
    text = digits[:kk] + "." + digits[kk:]
  elif -6 < kk <= 0:
    text = "0." + "0" * -kk + digits
  elif length == 1:
    text = digits + "e" + str(kk - 1)
  else:
    text = digits[0] + "." + digits[1:] + "e" + str(kk - 1)
  return sign + text


_ESCAPES = {
  '"': '\\"',
  "\\": "\\\\",
  "\b": "\\b",
  "\f": "\\f",
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
}


def _rapidjson_string(val: str) -> str:
  out = []
  for ch in val:
    if ch in _ESCAPES:
      out.append(_ESCAPES[ch])
    elif ord(ch) < 0x20:
      out.append("\\u%04X" % ord(ch))
    else:
      out.append(ch)
  return '"' + "".join(out) + '"'


MAX_JSON_DEBUG_STRING_BYTES = 256  # kMaxJsonDebugStringBytes


class _Full(Exception):
  pass


def json_debug_string(val: Any, limit: int = MAX_JSON_DEBUG_STRING_BYTES) -> str:
  """JsonValueToDebugString(): rapidjson's PrettyWriter (4-space indent, arrays on one line),
  stopped at the first event that finds `limit` bytes already written (so long values are cut,
  possibly mid-structure, exactly where TF Serving cuts them)."""
  out: List[str] = []
  size = [0]
  levels: List[list] = []  # [in_array, value_count]

  def write(text: str) -> None:
    out.append(text)
    size[0] += len(encode_utf8(text))

  def event(token: Optional[str]) -> None:
    if size[0] >= limit:
      raise _Full
    prefix = ""
    if levels:
      level = levels[-1]
      if level[0]:
        prefix = ", " if level[1] else ""
      else:
        if level[1]:
          prefix = ",\n" if level[1] % 2 == 0 else ": "
        else:
          prefix = "\n"
        if level[1] % 2 == 0:
          prefix += " " * (4 * len(levels))
      level[1] += 1
    write(prefix)
    if token is None:  # rapidjson's Writer refuses NaN / Infinity after writing the prefix
      raise _Full
    write(token)

  def end(bracket: str) -> None:
    if size[0] >= limit:
      raise _Full
    level = levels.pop()
    if not level[0] and level[1]:
      write("\n" + " " * (4 * len(levels)))
    write(bracket)

  def visit(v: Any) -> None:
    if isinstance(v, dict):
      event("{")
      levels.append([False, 0])
      for key, item in v.items():
        event(_rapidjson_string(key))
        visit(item)
      end("}")
    elif isinstance(v, list):
      event("[")
      levels.append([True, 0])
      for item in v:
        visit(item)
      end("]")
    elif v is None:
      event("null")
    elif v is True or v is False:
      event("true" if v else "false")
    elif isinstance(v, int) and -(2**63) <= v < 2**64:
      event(str(v))
    elif isinstance(v, (int, float)):
      as_float = float(v) if not isinstance(v, int) or abs(v) < 2**1024 else math.inf
      event(rapidjson_double(as_float) if math.isfinite(as_float) else None)
    else:
      event(_rapidjson_string(str(v)))

  try:
    visit(val)
  except _Full:
    pass
  return "".join(out)


def json_value_to_string(val: Any) -> str:
  """Kept for callers of the earlier name: the debug string TF Serving puts in messages."""
  return json_debug_string(val)


def json_type_string(val: Any) -> str:
  if val is None:
    return "Null"
  if val is True:
    return "True"
  if val is False:
    return "False"
  if isinstance(val, dict):
    return "Object"
  if isinstance(val, list):
    return "Array"
  if isinstance(val, str):
    return "String"
  return "Number"


def format_error(val: Any, *parts) -> ServingError:
  return invalid("JSON Value: ", json_debug_string(val), " ", *parts)


# --- JSON -> tensors ------------------------------------------------------------------------------


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _type_error(val, dtype) -> ServingError:
  return invalid(
    "JSON Value: ",
    json_debug_string(val),
    " Type: ",
    json_type_string(val),
    " is not of expected type: ",
    dtype_string(dtype),
  )


def _is_b64_object(val) -> bool:
  return isinstance(val, dict) and len(val) == 1 and isinstance(val.get("b64"), str)


def _decode_b64(val) -> bytes:
  if not _is_b64_object(val):
    raise invalid(
      "JSON Value: ", json_debug_string(val), " not formatted correctly for base64 data"
    )
  data = val["b64"]
  try:
    padded = data + "=" * (-len(data) % 4)
    alt = "-_" if ("-" in data or "_" in data) else None
    return base64.b64decode(padded, altchars=alt, validate=True)
  except (binascii.Error, ValueError):
    raise invalid("Unable to base64 decode") from None


def _convert_value(val, dtype: int):
  """AddValueToTensor() for one leaf value."""
  if dtype in (DT_FLOAT, DT_DOUBLE):  # IsNumber(); GetFloat() / GetDouble() (no range check)
    if not (_is_int(val) or isinstance(val, float)):
      raise _type_error(val, dtype)
    try:
      return float(val)
    except OverflowError:  # an integer beyond double: rapidjson stored it as a double already
      return math.copysign(math.inf, val)
  if dtype in (DT_INT32, DT_INT16, DT_INT8, DT_UINT8):
    if not (_is_int(val) and -(2**31) <= val < 2**31):
      raise _type_error(val, dtype)
    return val
  if dtype == DT_STRING:
    if not isinstance(val, str):
      raise _type_error(val, dtype)
    return encode_utf8(val)
  if dtype == DT_INT64:
    if not (_is_int(val) and -(2**63) <= val < 2**63):
      raise _type_error(val, dtype)
    return val
  if dtype == DT_BOOL:
    if not isinstance(val, bool):
      raise _type_error(val, dtype)
    return val
  if dtype == DT_UINT32:
    if not (_is_int(val) and 0 <= val < 2**32):
      raise _type_error(val, dtype)
    return val
  if dtype == DT_UINT64:
    if not (_is_int(val) and 0 <= val < 2**64):
      raise _type_error(val, dtype)
    return val
  raise ServingError(
    "UNIMPLEMENTED",
    f"Conversion of JSON Value: {json_debug_string(val)} to type: {dtype_string(dtype)}",
  )


def dense_shape(val) -> List[int]:
  """GetDenseTensorShape(): dimensions from the first element at every level."""
  shape = []
  while isinstance(val, list):
    shape.append(len(val))
    if not val:
      break
    val = val[0]
  return shape


MAX_RANK = 64  # numpy's limit (TF's TensorShape allows 254)


class TensorParsingError(ServingError):
  """A tensor TF Serving cannot build from the request (Tensor::FromProto fails); raised
  before filling, and not wrapped in the per-element messages of row requests."""

  def __init__(self, name: str):
    super().__init__("INVALID_ARGUMENT", f"tensor parsing error: {name}")


def _check_rank(shape: List[int], name: str, extra: int = 0) -> None:
  if len(shape) + extra > MAX_RANK:
    raise TensorParsingError(name)


def _fill(val, level: int, shape: List[int], dtype: int, out: list) -> None:
  """FillTensorProto(): appends leaves to `out`, checking the tensor is dense."""
  rank = len(shape)
  if not isinstance(val, list):
    if level != rank:
      raise invalid(
        "JSON Value: ",
        json_debug_string(val),
        " found at incorrect level: ",
        level + 1,
        " in the JSON DOM. Expected at level: ",
        rank,
      )
    if isinstance(val, dict):
      if dtype != DT_STRING:
        raise _type_error(val, dtype)
      out.append(_decode_b64(val))
    else:
      out.append(_convert_value(val, dtype))
    return
  if level >= rank:
    raise invalid("Encountered list at unexpected level: ", level, " expected < ", rank)
  if len(val) != shape[level]:
    raise invalid(
      "Encountered list at unexpected size: ",
      len(val),
      " at level: ",
      level,
      " expected size: ",
      shape[level],
    )
  for v in val:
    _fill(v, level + 1, shape, dtype, out)


def to_array(val, dtype: int, name: str = "") -> np.ndarray:
  """A JSON value (nested lists) -> numpy array of the TensorInfo dtype, as TF Serving parses it."""
  shape = dense_shape(val)
  _check_rank(shape, name)
  flat: list = []
  _fill(val, 0, shape, dtype, flat)
  np_dtype = DTYPES[dtype][1] if dtype in DTYPES else object
  arr = np.empty(len(flat), dtype=np_dtype)
  if flat:
    arr[:] = flat
  return arr.reshape(shape)


def _is_element_object(val) -> bool:
  return isinstance(val, dict) and not _is_b64_object(val)


def _instances_to_arrays(instances: list, inputs: Mapping[str, int]) -> Dict[str, np.ndarray]:
  """FillTensorMapFromInstancesList()."""
  if not isinstance(instances[0], dict) and len(inputs) > 1:
    raise invalid(
      "instances is a plain list, but expecting list of objects as multiple input "
      "tensors required as per tensorinfo_map"
    )
  objects = _is_element_object(instances[0])
  names = sorted(inputs)
  rows: Dict[str, list] = {}
  shapes: Dict[str, List[int]] = {}

  def add(item, name, index, key=None):
    if name not in inputs:
      raise invalid("JSON object: does not have named input: ", name)
    shape = dense_shape(item)
    _check_rank(shape, name, extra=1)
    flat: list = []
    _fill(item, 0, shape, inputs[name], flat)
    if name not in shapes:
      shapes[name] = shape
      rows[name] = []
    else:
      expected = int(np.prod(shapes[name], dtype=np.int64))
      if expected != len(flat):
        raise invalid("Expecting tensor size: ", expected, " but got: ", len(flat))
      if shapes[name] != shape:
        raise invalid(
          "Expecting shape [",
          ",".join(map(str, shapes[name])),
          "] but got: [",
          ",".join(map(str, shape)),
          "]",
        )
    rows[name].extend(flat)

  for count, elem in enumerate(instances):
    if objects:
      if not _is_element_object(elem):
        raise invalid("Expecting object but got list at item ", count, " of input list")
      for name, item in elem.items():
        try:
          add(item, name, count)
        except TensorParsingError:
          raise
        except ServingError as err:
          raise invalid(
            "Failed to process element: ",
            count,
            " key: ",
            name,
            " of 'instances' list. Error: ",
            err.to_string(),
          ) from None
      if set(elem) != set(names):
        raise invalid(
          "Failed to process element: ",
          count,
          " of 'instances' list. JSON object: ",
          json_debug_string(elem),
          " keys must be equal to: ",
          ",".join(names),
        )
    else:
      if _is_element_object(elem):
        raise invalid("Expecting value/list but got object at item ", count, " of input list")
      try:
        add(elem, names[0], count)
      except TensorParsingError:
        raise
      except ServingError as err:
        raise invalid(
          "Failed to process element: ", count, " of 'instances' list. Error: ", err.to_string()
        ) from None
  out = {}
  for name, flat in rows.items():
    dtype = inputs[name]
    arr = np.empty(len(flat), dtype=DTYPES[dtype][1] if dtype in DTYPES else object)
    if flat:
      arr[:] = flat
    out[name] = arr.reshape([len(instances)] + shapes[name])
  return out


def _inputs_to_arrays(val, inputs: Mapping[str, int]) -> Dict[str, np.ndarray]:
  """FillTensorMapFromInputsMap()."""
  if not isinstance(val, dict) or _is_b64_object(val):
    if len(inputs) > 1:
      raise invalid(
        "inputs is a plain value/list, but expecting an object as multiple input "
        "tensors required as per tensorinfo_map"
      )
    name = sorted(inputs)[0]
    return {name: to_array(val, inputs[name], name)}
  out = {}
  for name in sorted(inputs):
    if name not in val:
      raise invalid("Missing named input: ", name, " in 'inputs' object.")
    out[name] = to_array(val[name], inputs[name], name)
  return out


def request_signature_name(doc: dict) -> str:
  """FillSignature(): the optional `signature_name` ("" when absent)."""
  if "signature_name" not in doc:
    return ""
  name = doc["signature_name"]
  if not isinstance(name, str):
    raise format_error(doc, "not formatted correctly. 'signature_name' key must be a string value.")
  return name


def request_tensors(
  doc: dict, inputs: Mapping[str, int], signature_name: str
) -> Tuple[Dict[str, np.ndarray], str]:
  """FillPredictRequestFromJson() after the signature is known.

  Args:
    doc: the parsed request object.
    inputs: the signature's input name -> DataType enum.
    signature_name: as requested ("" = default), for error messages.
  Returns: ({input name: array}, "row" | "columnar").
  """
  if not inputs:
    raise invalid("Failed to get input map for signature: ", signature_name or "DEFAULT")
  has_instances, has_inputs = "instances" in doc, "inputs" in doc
  if has_instances and has_inputs:
    raise format_error(
      doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
    )
  if has_instances:
    instances = doc["instances"]
    if not isinstance(instances, list):
      raise format_error(doc, "Expecting 'instances' to be an list/array")
    if not instances:
      raise format_error(doc, "No values in 'instances' array")
    return _instances_to_arrays(instances, inputs), "row"
  if has_inputs:
    return _inputs_to_arrays(doc["inputs"], inputs), "columnar"
  raise invalid("Missing 'inputs' or 'instances' key")


# --- tensors -> JSON ------------------------------------------------------------------------------


def _values_json(arr: np.ndarray, as_bytes: bool) -> str:
  """AddTensorValues(): nested lists of one tensor (or a scalar)."""
  kind = arr.dtype.kind
  if kind == "f":
    single = arr.dtype != np.float64
    flat = [format_decimal(float(v), single) for v in arr.reshape(-1)]
  elif kind in "iu":
    flat = [str(int(v)) for v in arr.reshape(-1)]
  elif kind == "b":
    flat = ["true" if v else "false" for v in arr.reshape(-1)]
  else:
    items = []
    for v in arr.reshape(-1):
      b = v if isinstance(v, bytes) else str(v).encode("utf-8")
      if as_bytes:
        items.append('{"b64": "%s"}' % base64.b64encode(b).decode("ascii"))
      else:
        items.append(json.dumps(b.decode("utf-8", errors="replace"), ensure_ascii=False))
    flat = items
  if arr.ndim == 0:
    return flat[0]

  def nest(dims, start):
    if len(dims) == 1:
      return "[" + ", ".join(flat[start : start + dims[0]]) + "]"
    step = int(np.prod(dims[1:], dtype=np.int64))
    return "[" + ", ".join(nest(dims[1:], start + i * step) for i in range(dims[0])) + "]"

  return nest(list(arr.shape), 0)


def _row(arr: np.ndarray, i: int) -> np.ndarray:
  return np.asarray(arr[i], dtype=arr.dtype)


def _is_bytes_name(name: str, arr: np.ndarray) -> bool:
  return arr.dtype.kind in "OSU" and name.endswith("_bytes")


def response_json(outputs: Mapping[str, np.ndarray], fmt: str) -> str:
  """MakeJsonFromTensors(): `{"predictions": ...}` (row) or `{"outputs": ...}` (columnar)."""
  if not outputs:
    raise invalid("Cannot convert empty tensor map to JSON")
  names = sorted(outputs)
  if fmt == "columnar":
    if len(names) == 1:
      body = _values_json(outputs[names[0]], _is_bytes_name(names[0], outputs[names[0]]))
    else:
      body = (
        "{\n        "
        + ",\n        ".join(
          f"{json.dumps(n)}: {_values_json(outputs[n], _is_bytes_name(n, outputs[n]))}"
          for n in names
        )
        + "\n    }"
      )
    return '{\n    "outputs": ' + body + "\n}"
  batch = 0
  for name in names:
    arr = outputs[name]
    if arr.ndim == 0:
      raise invalid("Tensor name: ", name, " has no shape information ")
    if arr.shape[0] < 1:
      raise invalid("Tensor name: ", name, " has invalid batch size: ", arr.shape[0])
    if batch and arr.shape[0] != batch:
      raise invalid(
        "Tensor name: ", name, " has inconsistent batch size: ", arr.shape[0], " expecting: ", batch
      )
    batch = arr.shape[0]
  rows = []
  for i in range(batch):
    if len(names) == 1:
      arr = outputs[names[0]]
      rows.append(_values_json(_row(arr, i), _is_bytes_name(names[0], arr)))
    else:
      rows.append(
        "{\n            "
        + ",\n            ".join(
          f"{json.dumps(n)}: {_values_json(_row(outputs[n], i), _is_bytes_name(n, outputs[n]))}"
          for n in names
        )
        + "\n        }"
      )
  return '{\n    "predictions": [\n        ' + ",\n        ".join(rows) + "\n    ]\n}"


def error_json(message: str) -> str:
  """MakeJsonFromStatus(): `{"error": "<message>"}` as rapidjson's PrettyWriter writes it."""
  return '{\n    "error": ' + _rapidjson_string(message) + "\n}"


# --- URL paths (http_rest_api_util.cc) ------------------------------------------------------------

PREDICTION_PATH = re.compile(
  r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
  re.IGNORECASE,
)
STATUS_PATH = re.compile(
  r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
  re.IGNORECASE,
)
HANDLED_PATH = re.compile(r"/v1/.*", re.IGNORECASE)


class ModelRequest:
  """A parsed REST path: model name, optional version or label, method / sub-resource."""

  def __init__(
    self, name: str, version: Optional[int], label: Optional[str], method: str, subresource: str
  ):
    self.name, self.version, self.label = name, version, label
    self.method, self.subresource = method, subresource


def parse_path(http_method: str, path: str) -> ModelRequest:
  """ParseModelInfo() + dispatch: raises "Malformed request" for anything else under /v1/."""
  from urllib.parse import unquote  # pylint: disable=import-outside-toplevel

  malformed = invalid("Malformed request: ", http_method, " ", path)
  if http_method == "POST":
    m = PREDICTION_PATH.fullmatch(path)
    if not m:
      raise malformed
    name, version, label, method = m.group(1), m.group(2), m.group(3), m.group(4).lower()
    sub = ""
  elif http_method == "GET":
    m = STATUS_PATH.fullmatch(path)
    if not m:
      raise malformed
    name, version, label, sub = m.group(1) or "", m.group(2), m.group(3), m.group(4) or ""
    method = "metadata" if sub.lower() == "metadata" else "status"
  else:
    raise malformed
  name = unquote(name)
  parsed_version = None
  if version:
    parsed_version = int(version)
    if parsed_version >= 2**63:
      raise invalid("Failed to convert version: ", version, " to numeric.")
  if label:
    label = unquote(label)
  return ModelRequest(name, parsed_version, label, method, sub)

"""Hostile requests against the local server (issue 11): framing tricks, oversized and lying
bodies, hostile JSON, traversal, stalled clients, odd methods.

For every case: no 5xx, never a connection dropped without an answer (a stalled client's own
connection is closed only after its time limit, with a 408 when it was sending a body), and the
server answers a good request afterwards. Raw sockets, so nothing fixes the bytes up on the way.
"""

import gzip
import json
import socket
import threading
import time

import pytest

from serving import local_server
from tests.serving import models as tiny

GOOD = json.dumps({"instances": [["item-1", "item-2"]]}).encode()
PREDICT = "/v1/models/bivrec:predict"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  base = tmp_path_factory.mktemp("hostile") / "bivrec"
  tiny.export_tiny(base.parent, "bivrec", seed=0)
  http, poller = local_server.start(
    "bivrec",
    str(base),
    port=0,
    poll_wait_seconds=-1,
    idle_timeout=1.0,
    body_timeout=1.0,
    request_timeout=60.0,
  )
  yield http
  http.shutdown()
  http.server_close()
  poller.stop()


# --- a minimal HTTP/1.1 client on a raw socket -----------------------------------------------------


def connect(http, timeout=10.0):
  sock = socket.create_connection(("127.0.0.1", http.port), timeout=timeout)
  sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
  return sock


def read_response(sock, pending=None):
  """-> (status, headers dict (lower-case), body bytes), or None if the peer closed first.

  `pending` (a bytearray kept by the caller across calls) holds bytes received past this
  response: pipelined responses can arrive in one `recv`, and the next call starts from them."""
  buf = bytes(pending or b"")
  while b"\r\n\r\n" not in buf:
    chunk = sock.recv(65536)
    if not chunk:
      assert not buf, f"connection closed mid-response: {buf[:200]!r}"
      return None
    buf += chunk
  head, _, rest = buf.partition(b"\r\n\r\n")
  lines = head.decode("latin-1").split("\r\n")
  status = int(lines[0].split()[1])
  headers = {}
  for line in lines[1:]:
    key, _, value = line.partition(":")
    headers[key.strip().lower()] = value.strip()
  length = int(headers.get("content-length", 0))
  while len(rest) < length:
    chunk = sock.recv(65536)
    if not chunk:
      break
    rest += chunk
  if pending is not None:
    pending[:] = rest[length:]
  return status, headers, rest[:length]


def request(path, body=b"", method="POST", headers=None):
  hdrs = {"Host": "x", "Content-Length": str(len(body)), **(headers or {})}
  hdrs = {k: v for k, v in hdrs.items() if v is not None}
  head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
  return head.encode("latin-1") + b"\r\n" + body


def exchange(http, raw: bytes, timeout=10.0, expect=1):
  """Sends raw bytes, returns the responses until `expect` arrived, the server closes, or (with
  expect=None) the server stays quiet for 0.5 s."""
  sock = connect(http, timeout)
  try:
    sock.sendall(raw)
    out, pending = [], bytearray()
    while expect is None or len(out) < expect:
      try:
        resp = read_response(sock, pending)
      except socket.timeout:
        break
      if resp is None:
        break
      out.append(resp)
      if resp[1].get("connection", "").lower() == "close":
        break
      if expect is None:
        sock.settimeout(0.5)
    return out
  finally:
    sock.close()


def error_of(resp):
  status, headers, body = resp
  assert headers.get("content-type", "").startswith("application/json"), (status, headers, body)
  return json.loads(body.decode("utf-8", "surrogateescape"))["error"]


def assert_still_serving(http):
  responses = exchange(http, request(PREDICT, GOOD))
  assert responses and responses[0][0] == 200, responses
  assert len(json.loads(responses[0][2])["predictions"]) == 1


def check(http, raw, timeout=10.0, allowed=(), expect=1):
  """The common contract: answered, no 5xx (but those `allowed`: 501 for a method nobody
  implements), and a good request works afterwards."""
  responses = exchange(http, raw, timeout, expect)
  assert responses, f"connection dropped without an answer: {raw[:120]!r}"
  for status, _, body in responses:
    assert status < 500 or status in allowed, (status, body[:300])
  assert_still_serving(http)
  return responses


# --- framing ---------------------------------------------------------------------------------------


def test_huge_content_length_without_a_body_gets_413(server):
  start = time.time()
  (resp,) = check(server, request(PREDICT, b"", headers={"Content-Length": str(10**15)}))
  assert resp[0] == 413 and "exceeds the limit" in error_of(resp)
  assert time.time() - start < 5


def test_content_length_shorter_than_the_body(server):
  body = GOOD + b"GARBAGE / HTTP/1.1\r\n\r\n"
  responses = check(
    server, request(PREDICT, body, headers={"Content-Length": str(len(GOOD))}), expect=2
  )
  # The declared body is a request; the rest is a bad next request: 400 and the connection
  # closed (the parser reports the error for everything it received in that read).
  assert responses[-1][0] == 400 and responses[-1][1].get("connection") == "close"
  assert error_of(responses[-1]) == "Bad Request: Invalid method encountered"


def test_content_length_longer_than_the_body_times_out_with_408(server):
  raw = request(PREDICT, GOOD[:10], headers={"Content-Length": "5000"})
  (resp,) = check(server, raw)
  assert resp[0] == 408 and "not received within" in error_of(resp)


@pytest.mark.parametrize("value", ["abc", "5_9", "-1", "1e3", " 12 x", "0x10"])
def test_non_numeric_content_length_is_a_400(server, value):
  (resp,) = check(server, request(PREDICT, GOOD, headers={"Content-Length": value}))
  assert resp[0] == 400 and error_of(resp).startswith("Bad Request")


def test_chunked_body_is_read_as_the_body(server):
  chunks = [GOOD[:7], GOOD[7:20], GOOD[20:]]
  body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
  raw = request(PREDICT, body, headers={"Content-Length": None, "Transfer-Encoding": "chunked"})
  (resp,) = check(server, raw)
  assert resp[0] == 200 and "predictions" in json.loads(resp[2])


def test_a_request_hidden_in_a_chunked_body_is_not_executed(server):
  hidden = b"GET /v1/models/bivrec/metadata HTTP/1.1\r\nHost: x\r\n\r\n"
  body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(hidden), hidden)
  raw = request(PREDICT, body, headers={"Content-Length": None, "Transfer-Encoding": "chunked"})
  responses = check(server, raw, expect=None)
  assert len(responses) == 1 and responses[0][0] == 400
  assert error_of(responses[0]).startswith("JSON Parse error")


def test_content_length_with_transfer_encoding_is_refused(server):
  """RFC 9112 6.1: a smuggling vector behind a proxy; refused, connection closed."""
  hidden = b"GET /v1/models/bivrec/metadata HTTP/1.1\r\nHost: x\r\n\r\n"
  body = b"0\r\n\r\n" + hidden
  raw = request(
    PREDICT, body, headers={"Content-Length": str(len(body)), "Transfer-Encoding": "chunked"}
  )
  responses = check(server, raw, expect=None)
  assert [r[0] for r in responses] == [400]


def test_malformed_chunked_framing_is_a_400(server):
  raw = request(
    PREDICT,
    b"zz\r\nabc\r\n0\r\n\r\n",
    headers={"Content-Length": None, "Transfer-Encoding": "chunked"},
  )
  responses = check(server, raw)
  assert responses[0][0] == 400


def test_oversized_chunked_body_gets_413(server):
  piece = b"[" * 65536
  body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(260)) + b"0\r\n\r\n"
  raw = request(PREDICT, body, headers={"Content-Length": None, "Transfer-Encoding": "chunked"})
  (resp,) = check(server, raw, timeout=30)
  assert resp[0] == 413


def test_gzip_bodies_are_decompressed_and_bad_gzip_is_an_empty_document(server):
  (resp,) = check(
    server, request(PREDICT, gzip.compress(GOOD), headers={"Content-Encoding": "gzip"})
  )
  assert resp[0] == 200 and "predictions" in json.loads(resp[2])
  (resp,) = check(
    server, request(PREDICT, b"\x1f\x8bnot gzip", headers={"Content-Encoding": "gzip"})
  )
  assert resp[0] == 400 and error_of(resp) == "JSON Parse error: The document is empty"
  bomb = gzip.compress(b" " * (40 * 2**20))  # 40 MB of whitespace in 40 kB
  (resp,) = check(server, request(PREDICT, bomb, headers={"Content-Encoding": "gzip"}))
  assert resp[0] == 413 and "Decompressed request body exceeds" in error_of(resp)


def _rss_mb():
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return 0.0


def test_a_100_mb_body_gets_413_and_memory_stays_flat(server):
  """The body is refused from its Content-Length; what the client still sends is drained and
  dropped. Peak RSS of this process (server + client) grows by less than 50 MB."""
  total = 100 * 2**20
  piece = b"x" * 2**20
  sock = connect(server, timeout=30)
  peak, base, done = [0.0], _rss_mb(), threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], _rss_mb())
      time.sleep(0.005)

  sampler = threading.Thread(target=sample)
  sampler.start()

  def send():
    try:
      sock.sendall(request(PREDICT, b"", headers={"Content-Length": str(total)}))
      for _ in range(total // len(piece)):
        sock.sendall(piece)
    except OSError:
      pass  # the server may close once it has answered and drained for a while

  sender = threading.Thread(target=send)
  sender.start()
  try:
    resp = read_response(sock)
    sender.join(60)
  finally:
    done.set()
    sampler.join()
    sock.close()
  assert resp[0] == 413 and "of 104857600 bytes exceeds the limit" in error_of(resp)
  assert peak[0] - base < 50, (base, peak[0])
  assert_still_serving(server)


# --- hostile JSON ----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [65, 300, 985, 5000, 200_000])
def test_deep_nesting_is_a_400(server, depth):
  body = b'{"instances": ' + b"[" * depth + b'"item-1"' + b"]" * depth + b"}"
  (resp,) = check(server, request(PREDICT, body))
  assert resp[0] == 400, resp


def test_unterminated_deep_nesting_is_a_400(server):
  (resp,) = check(server, request(PREDICT, b"[" * 200_000))
  assert resp[0] == 400


def test_lone_surrogates(server):
  (resp,) = check(server, request(PREDICT, b'{"instances": [["\\ud800"]]}'))
  assert resp[0] == 400
  assert error_of(resp) == (
    "JSON Parse error: The surrogate pair in string is invalid. at offset: 17"
  )
  # A lone low surrogate is accepted (rapidjson 1.1.0) and echoed back in an error message.
  (resp,) = check(server, request(PREDICT, b'{"instances": "\\udc00"}'))
  assert resp[0] == 400 and "Expecting 'instances' to be an list/array" in error_of(resp)
  (resp,) = check(server, request(PREDICT, b'{"instances": [["\\udc00", "item-1"]]}'))
  assert resp[0] == 200


def test_invalid_utf8_inside_strings_is_passed_through(server):
  (resp,) = check(server, request(PREDICT, b'{"instances": [["\xff\xfe", "item-1"]]}'))
  assert resp[0] == 200
  (resp,) = check(server, request(PREDICT, b'{"instances": \xff}'))
  assert resp[0] == 400 and error_of(resp) == "JSON Parse error: Invalid value. at offset: 14"


def test_trailing_bytes_after_the_document_are_ignored(server):
  (resp,) = check(server, request(PREDICT, GOOD + b"\n}}} trailing"))
  assert resp[0] == 200


@pytest.mark.parametrize(
  "body",
  [
    b'{"instances": [["item-1"]',
    b"{",
    b"nul",
    b'{"instances": [["a"]], }',
    b"\x00\x01",
    b'{"instances": [[1e999999]]}',
    b'{"instances": [["a", "b"], ["c"]]}',
    b'{"inputs": {"history": [["a", "b"], ["c"]]}}',
    b'{"instances": [[["a"], "b"]]}',
    b'{"instances": [[{"b64": "!!"}]]}',
    b'{"instances": [NaN]}',
    b'{"signature_name": []}',
  ],
)
def test_malformed_and_ragged_json_is_a_400(server, body):
  (resp,) = check(server, request(PREDICT, body))
  assert resp[0] == 400 and error_of(resp)


# --- URLs and methods ------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "path,status",
  [
    ("/v1/models/../../etc/passwd", 400),
    ("/v1/models/%2e%2e%2f%2e%2e%2fetc/metadata", 404),
    ("/../v1/models/bivrec", 404),
    ("/v1/models/bivrec/versions/99999999999999999999", 400),
    ("/v1/models/bivrec/versions/-1", 400),
    ("/v1/models/%00", 404),
    ("/v1/" + "a" * 6000, 400),
    ("/etc/passwd", 404),
    ("//v1/models/bivrec", 404),
  ],
)
def test_traversal_and_odd_paths(server, path, status):
  (resp,) = check(server, request(path, method="GET", body=b""))
  assert resp[0] == status, (path, resp)


def test_path_too_long_for_the_parser_is_a_400(server):
  responses = check(server, request("/v1/models/" + "a" * 20000, method="GET"))
  assert responses[0][0] in (400, 414, 431)


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "FOO", "PROPFIND"])
def test_unsupported_methods_get_a_json_501(server, method):
  responses = check(server, request("/v1/models/bivrec", method=method, body=b""), allowed=(501,))
  status = responses[0][0]  # 400 when the HTTP parser does not know the method at all
  assert status in (501, 400), responses
  if status == 501:
    assert error_of(responses[0]) == f"Method not implemented: {method}"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_api_methods_are_malformed_requests_as_in_tf_serving(server, method):
  (resp,) = check(server, request(PREDICT, GOOD, method=method))
  assert resp[0] == 400 and error_of(resp) == f"Malformed request: {method} {PREDICT}"


def test_options_follows_the_cors_preflight_rule_and_head_has_no_body(server):
  (resp,) = check(server, request(PREDICT, b"", method="OPTIONS"))
  assert resp[0] == 400 and resp[2] == b""
  (resp,) = check(
    server, request(PREDICT, b"", method="OPTIONS", headers={"Origin": "https://example.com"})
  )
  assert resp[0] == 200
  sock = connect(server)
  try:
    sock.sendall(request("/v1/models/bivrec", b"", method="HEAD"))
    sock.settimeout(2)
    data = sock.recv(65536)
  finally:
    sock.close()
  assert data.startswith(b"HTTP/1.1 400") and data.endswith(b"\r\n\r\n")


# --- stalled and slow clients ----------------------------------------------------------------------


def test_stalled_clients_do_not_block_others_and_are_closed(server):
  silent = connect(server)
  partial_headers = connect(server)
  partial_headers.sendall(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Le")
  partial_body = connect(server)
  partial_body.sendall(request(PREDICT, GOOD[:5], headers={"Content-Length": str(len(GOOD))}))
  try:
    assert_still_serving(server)  # answered while three clients stall
    for sock in (silent, partial_headers):
      sock.settimeout(10)
      assert sock.recv(1024) == b""  # closed after the idle timeout
    partial_body.settimeout(10)
    resp = read_response(partial_body)
    assert resp[0] == 408
  finally:
    for sock in (silent, partial_headers, partial_body):
      sock.close()
  assert_still_serving(server)


def test_slowloris_headers_a_byte_at_a_time_are_cut_off(server):
  sock = connect(server)
  start = time.time()
  try:
    for byte in request(PREDICT, GOOD)[:40]:
      sock.sendall(bytes([byte]))
      time.sleep(0.05)
    sock.settimeout(10)
    while sock.recv(1024):
      pass
  except (ConnectionResetError, BrokenPipeError):
    pass
  finally:
    sock.close()
  assert time.time() - start < 10
  assert_still_serving(server)


def test_many_idle_connections_beyond_the_cap_do_not_lock_out_a_client(server):
  """Connection cap 16: 40 idle sockets; the oldest idle ones are closed to make room, so a
  real request still gets through."""
  cap, server.max_connections = server.max_connections, 16
  socks = []
  try:
    for _ in range(40):
      socks.append(connect(server))
    time.sleep(0.3)
    assert len(server.connections) <= 16
    assert_still_serving(server)
  finally:
    server.max_connections = cap
    for sock in socks:
      sock.close()


def test_pipelined_requests_get_answers_in_order(server):
  raw = (
    request("/v1/models/bivrec", method="GET")
    + request(PREDICT, GOOD)
    + request("/v1/models/nope", method="GET")
  )
  responses = exchange(server, raw, timeout=60, expect=3)
  assert [r[0] for r in responses] == [200, 200, 404], [(r[0], r[2][:200]) for r in responses]

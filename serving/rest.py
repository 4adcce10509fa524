"""HTTP/1.1 transport of the local server: a thin layer over aiohttp's low-level server.

aiohttp (C `llhttp` parser) does the framing: keep-alive, `Transfer-Encoding: chunked` bodies,
pipelining, rejecting `Content-Length` together with `Transfer-Encoding` (RFC 9112 6.1: a request
smuggling vector) and non-numeric or duplicate lengths, header size limits. This module adds what
a model server needs on top, and hands every request that reaches the REST API to
`ModelServer.handle(method, path, body)` on a worker thread (TensorFlow never runs on the event
loop):

- a request-size limit (`max_request_bytes`, checked against `Content-Length` before reading
  and while reading chunked or gzip bodies): 413 with a JSON error, the connection closed after
  the answer (the unread rest of the body is drained for up to 10 s and discarded, so memory
  stays bounded whatever the client sends);
- `Content-Encoding: gzip` bodies are decompressed as TF Serving's `evhttp_request.cc` does
  (a body that does not decompress becomes empty: "JSON Parse error: The document is empty");
- time limits: a connection that sends no complete request for `idle_timeout` seconds is closed
  (slow or stalled clients); a body not received within `request_timeout` seconds gets 408;
  processing longer than `request_timeout` gets 504 (DEADLINE_EXCEEDED) while the worker
  finishes in the background;
- a connection cap (`max_connections`, default from `RLIMIT_NOFILE` with room for TensorFlow's
  own files): when it is reached the oldest idle keep-alive connection is closed to make room,
  and if every connection is busy the newcomer gets 503 and is closed; accept() failing with
  EMFILE only pauses accepting (asyncio), so running out of descriptors never kills the server;
- errors the framing layer finds are answered `{"error": ...}` in JSON like everything else.

Methods: GET / POST go to the REST API; PUT, DELETE, PATCH and HEAD under /v1/ get TF Serving's
"Malformed request" 400; OPTIONS follows TF Serving's CORS preflight rule; any other method gets a
JSON 501 (libevent, under TF Serving, answers those with an HTML 501 page). Paths outside /v1/ get
404 with libevent's HTML page, as from TF Serving.
"""

import asyncio
import logging
import queue
import re
import resource
import socket
import threading
import zlib
from typing import Optional

from aiohttp import web, web_protocol, web_server

from serving import json_tensor as jt

log = logging.getLogger("serving.rest")

DEFAULT_MAX_REQUEST_BYTES = 16 * 2**20
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_REQUEST_TIMEOUT = 30.0
API_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD")
NOT_FOUND_HTML = (
  "<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"
)
ORIGIN = re.compile(r"https?://")


def default_max_connections() -> int:
  """Open connections allowed: the descriptor limit less a reserve for model files, TF, logs."""
  soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
  if soft == resource.RLIM_INFINITY:
    soft = 65536
  return max(8, min(4096, soft - max(64, soft // 4)))


_JSON_HEADERS = {"Content-Type": "application/json"}


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
  """uvloop's libuv loop (less per-request overhead than asyncio's selector loop) or asyncio's."""
  if kind in ("auto", "uvloop"):
    try:
      import uvloop  # pylint: disable=import-outside-toplevel

      return uvloop.new_event_loop()
    except ImportError:
      if kind == "uvloop":
        raise
  return asyncio.new_event_loop()


def _json(status: int, text: str, close: bool = False) -> web.Response:
  headers = {"Content-Type": "application/json"}
  if close:
    headers["Connection"] = "close"
  resp = web.Response(status=status, body=jt.encode_utf8(text), headers=headers)
  if close:
    resp.force_close()
  return resp


def _error(status: int, message: str, close: bool = False) -> web.Response:
  return _json(status, jt.error_json(message), close)


class _Workers:
  """Worker threads for the TensorFlow side of requests: a C SimpleQueue in, the event loop's
  call_soon_threadsafe out. Leaner than ThreadPoolExecutor + wrap_future (no concurrent.futures
  Future and its Condition per request), which measurably cut the per-request cost."""

  def __init__(self, loop: asyncio.AbstractEventLoop, num_threads: int):
    self.loop = loop
    self.queue = queue.SimpleQueue()
    self.threads = [
      threading.Thread(target=self._work, name=f"rest-worker-{i}", daemon=True)
      for i in range(num_threads)
    ]
    for thread in self.threads:
      thread.start()

  def submit(self, fn, *args) -> asyncio.Future:
    future = self.loop.create_future()
    self.queue.put((future, fn, args))
    return future

  def _work(self) -> None:
    while True:
      item = self.queue.get()
      if item is None:
        return
      future, fn, args = item
      try:
        result, error = fn(*args), None
      except BaseException as err:  # pylint: disable=broad-except
        result, error = None, err
      try:
        self.loop.call_soon_threadsafe(_resolve, future, result, error)
      except RuntimeError:  # the loop has closed (shutdown)
        pass

  def shutdown(self) -> None:
    for _ in self.threads:
      self.queue.put(None)


def _resolve(future: asyncio.Future, result, error) -> None:
  if future.done():  # given up on at its deadline
    return
  if error is None:
    future.set_result(result)
  else:
    future.set_exception(error)


class _Connection(web_protocol.RequestHandler):
  """aiohttp's per-connection protocol, with the connection cap and JSON framing errors."""

  def connection_made(self, transport) -> None:
    super().connection_made(transport)
    rest: RestServer = self._manager.rest
    rest.admit(self)

  def connection_lost(self, exc) -> None:
    manager = self._manager
    if manager is not None:
      manager.rest.forget(self)
    super().connection_lost(exc)

  def handle_error(self, request, status: int = 500, exc=None, message=None):
    if status == 500:
      log.error("error handling a request: %s", exc)
    detail = (str(message or exc or status).strip().splitlines() or [""])[0].rstrip(": ")
    return _error(status, f"{'Bad Request' if status == 400 else 'Error'}: {detail}", close=True)


class _Server(web_server.Server):
  """Low-level aiohttp server whose connections are `_Connection`s."""

  def __init__(self, handler, rest: "RestServer", **kwargs):
    super().__init__(handler, **kwargs)
    self.rest = rest

  def __call__(self):
    return _Connection(self, loop=self._loop, **self._kwargs)


class RestServer:
  """The REST API of a ModelServer on (host, port), served from a background event loop.

  Args:
    model_server: object with `handle(http_method, path, body) -> (status, json text)`.
    host, port: bind address (port 0 = any free port; see `.port`).
    num_threads: requests processed at once (worker threads); default 4 x cores.
    max_request_bytes: largest accepted body (after gzip decompression).
    max_connections: open connections allowed (default from RLIMIT_NOFILE).
    idle_timeout: seconds a connection may go without sending a complete request.
    request_timeout: seconds to process a request (504 after).
    body_timeout: seconds to receive a request body (408 after); default request_timeout.
    event_loop: "uvloop" (libuv), "asyncio" (the standard selector loop), or "auto" (uvloop
      when installed).
  """

  def __init__(
    self,
    model_server,
    host: str = "127.0.0.1",
    port: int = 8501,
    num_threads: int = 0,
    verbose: bool = False,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_connections: int = 0,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    body_timeout: Optional[float] = None,
    event_loop: str = "auto",
  ):
    import os  # pylint: disable=import-outside-toplevel

    self.model_server = model_server
    self.verbose = verbose
    self.max_request_bytes = int(max_request_bytes)
    self.max_connections = int(max_connections or default_max_connections())
    self.idle_timeout, self.request_timeout = float(idle_timeout), float(request_timeout)
    self.body_timeout = float(body_timeout if body_timeout is not None else request_timeout)
    self.num_threads = num_threads or 4 * (os.cpu_count() or 1)
    self.connections = {}  # _Connection -> None, oldest first
    self.busy = set()
    self.rejected = 0
    self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    self.socket.bind((host, port))
    self.socket.listen(1024)
    self.socket.setblocking(False)
    self.loop = new_event_loop(event_loop)
    self.event_loop = type(self.loop).__module__.split(".")[0]
    self.workers = _Workers(self.loop, self.num_threads)
    self._server = None
    self._ready = threading.Event()
    self._thread = threading.Thread(target=self._run, name="rest-api", daemon=True)
    self._thread.start()
    self._ready.wait(30)

  @property
  def port(self) -> int:
    return self.socket.getsockname()[1]

  # --- event loop ---

  def _run(self) -> None:
    asyncio.set_event_loop(self.loop)
    self._server = _Server(
      self._handle,
      self,
      loop=self.loop,
      keepalive_timeout=self.idle_timeout,
      auto_decompress=False,
      access_log=logging.getLogger("serving.access") if self.verbose else None,
      max_field_size=16384,
      lingering_time=10.0,
    )
    self._listener = self.loop.run_until_complete(
      self.loop.create_server(self._server, sock=self.socket, backlog=1024)
    )
    self._ready.set()
    try:
      self.loop.run_forever()
    finally:
      self.loop.close()

  def serve_forever(self) -> None:
    """Compatibility with socketserver-style callers: blocks until `shutdown()`."""
    self._thread.join()

  def shutdown(self) -> None:
    if not self.loop.is_running():
      return

    async def stop():
      self._listener.close()
      for conn in list(self.connections):
        conn.force_close()
      self.loop.stop()

    asyncio.run_coroutine_threadsafe(stop(), self.loop)
    self._thread.join(30)
    self.workers.shutdown()

  def server_close(self) -> None:
    try:
      self.socket.close()
    except OSError:
      pass

  # --- connections ---

  def admit(self, conn: _Connection) -> None:
    """Registers a new connection; at the cap, closes the oldest idle one (or refuses)."""
    self.connections[conn] = None
    if len(self.connections) <= self.max_connections:
      return
    for other in self.connections:
      if other is not conn and other not in self.busy:
        other.force_close()
        self.forget(other)
        return
    self.rejected += 1
    body = jt.encode_utf8(
      jt.error_json(f"Too many open connections ({self.max_connections}); retry later")
    )
    if conn.transport is not None:
      conn.transport.write(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json"
        b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
      )
    conn.force_close()
    self.forget(conn)

  def forget(self, conn) -> None:
    self.connections.pop(conn, None)
    self.busy.discard(conn)

  # --- requests ---

  async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
    conn = request.protocol
    self.busy.add(conn)
    try:
      return await self._respond(request)
    except Exception as err:  # pylint: disable=broad-except
      log.exception("internal error on %s %s", request.method, request.raw_path)
      return _error(500, f"{type(err).__name__}: {err}", close=True)
    finally:
      self.busy.discard(conn)

  async def _respond(self, request: web.BaseRequest) -> web.StreamResponse:
    method, path = request.method, request.raw_path  # TF Serving matches path + query, raw
    if method not in API_METHODS + ("OPTIONS",):
      return _error(501, f"Method not implemented: {method}")
    if not jt.HANDLED_PATH.fullmatch(path):
      return web.Response(status=404, text=NOT_FOUND_HTML, content_type="text/html")
    if method == "OPTIONS":  # CORS preflight, as http_server.cc answers it (no body)
      ok = ORIGIN.search(request.headers.get("Origin", "")) is not None
      return web.Response(status=200 if ok else 400)
    body = await self._read_body(request)
    if isinstance(body, web.StreamResponse):
      return body
    gzipped = "gzip" in request.headers.get("Content-Encoding", "")
    # Cancelling the wait at the deadline leaves the worker to finish in the background.
    future = self.workers.submit(self._process, method, path, body, gzipped)
    try:
      async with asyncio.timeout(self.request_timeout):
        status, text = await future
    except TimeoutError:
      return _error(504, "Deadline Exceeded")
    return web.Response(status=status, body=text, headers=_JSON_HEADERS)

  async def _read_body(self, request: web.BaseRequest):
    """The body (bytes), or the response that refuses it."""
    limit = self.max_request_bytes
    length = request.content_length
    if length is not None and length > limit:
      return self._too_large(length)
    content = request.content
    if content.is_eof():  # the whole body arrived with the headers (the usual case)
      body = await content.read()
      return body if len(body) <= limit else self._too_large(None)
    if request.headers.get("Expect", "").lower() == "100-continue":
      await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    chunks, total = [], 0
    try:
      async with asyncio.timeout(self.body_timeout):
        while True:
          chunk = await content.readany()
          if not chunk:
            break
          total += len(chunk)
          if total > limit:
            return self._too_large(None)
          chunks.append(chunk)
    except TimeoutError:
      return _error(
        408, f"Request body not received within {self.body_timeout:g} seconds", close=True
      )
    except Exception as err:  # pylint: disable=broad-except  (aiohttp payload errors)
      return _error(400, f"Bad Request: {err}", close=True)
    return b"".join(chunks)

  def _too_large(self, length: Optional[int]) -> web.Response:
    size = f"of {length} bytes " if length is not None else ""
    return _error(
      413,
      f"Request body {size}exceeds the limit of {self.max_request_bytes} bytes "
      "(--rest_api_max_request_bytes)",
      close=True,
    )

  def _process(self, method: str, path: str, body: bytes, gzipped: bool):
    """(Worker thread.) gzip -> ModelServer.handle -> (status, encoded JSON)."""
    if gzipped and body:
      body = self._gunzip(body)
      if body is None:
        return 413, jt.encode_utf8(
          jt.error_json(
            f"Decompressed request body exceeds the limit of {self.max_request_bytes} bytes "
            "(--rest_api_max_request_bytes)"
          )
        )
    status, text = self.model_server.handle(method, path, body)
    return status, jt.encode_utf8(text)

  def _gunzip(self, body: bytes) -> Optional[bytes]:
    """gzip (or zlib) body -> bytes; b"" when it does not decompress (TF Serving then parses an
    empty document); None when the result would exceed the size limit."""
    inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib header
    try:
      out = inflater.decompress(body, self.max_request_bytes + 1)
    except zlib.error:
      return b""
    if len(out) > self.max_request_bytes or inflater.unconsumed_tail:
      return None
    return out

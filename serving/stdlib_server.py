"""The local server's previous HTTP transport (standard library `ThreadingHTTPServer`), kept only
as the reference that `benchmarks/serving.py` measures the aiohttp transport (`serving.rest`)
against in the same run. Not for serving: one thread per connection, no connection cap, no
request-size limit, no chunked bodies (see docs/serving.md).

    python -m serving.stdlib_server --model_name NAME --model_base_path DIR --rest_api_port PORT
"""

import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from serving import json_tensor as jt


class _Handler(BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"
  server_version = "bivrec-local-model-server"
  disable_nagle_algorithm = True
  timeout = 300

  def _serve(self, method: str) -> None:
    length = int(self.headers.get("Content-Length") or 0)
    body = self.rfile.read(length) if length > 0 else b""
    path = self.path.split("?", 1)[0]
    if not jt.HANDLED_PATH.fullmatch(path):
      status, out = 404, ""
    else:
      with self.server.slots:
        status, out = self.server.model_server.handle(method, path, body)
    data = jt.encode_utf8(out)
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def do_GET(self):  # noqa: N802
    self._serve("GET")

  def do_POST(self):  # noqa: N802
    self._serve("POST")

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    pass


class StdlibRestServer(ThreadingHTTPServer):
  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 256

  def __init__(self, model_server, host: str = "127.0.0.1", port: int = 8501, num_threads: int = 0):
    super().__init__((host, port), _Handler)
    self.model_server = model_server
    self.slots = threading.BoundedSemaphore(num_threads or 4 * (os.cpu_count() or 1))


def main(argv=None) -> int:
  import argparse  # pylint: disable=import-outside-toplevel
  from serving import local_server  # pylint: disable=import-outside-toplevel

  parser = argparse.ArgumentParser(prog="python -m serving.stdlib_server")
  parser.add_argument("--model_name", required=True)
  parser.add_argument("--model_base_path", required=True)
  parser.add_argument("--rest_api_port", type=int, default=8501)
  parser.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0)
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  if args.tensorflow_intra_op_parallelism:
    tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
  model_server = local_server.ModelServer({})
  local_server.apply_config(
    model_server, local_server.model_list(args.model_name, args.model_base_path)
  )
  for manager in model_server.managers.values():
    manager.poll()
  StdlibRestServer(model_server, port=args.rest_api_port).serve_forever()
  return 0


if __name__ == "__main__":
  sys.exit(main())

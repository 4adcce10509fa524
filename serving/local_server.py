"""A local stand-in for `tensorflow_model_server`'s REST API, for development and tests.

    python -m serving.local_server --model_base_path saved_models/bivrec --model_name bivrec \\
        --rest_api_port 8501 [--model_config_file serving/models.config]

It follows TF Serving's REST semantics as documented and as implemented (`http_rest_api_handler.cc`,
`http_rest_api_util.cc`, `json_tensor.cc`, `get_model_status_impl.cc`, `server_core.cc`); the
requests in `tests/serving/test_contract.py` get the same answers from both (run that file with
TF_SERVING_URL set to check a real server; docs/serving.md):

  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]             model status (all versions
                                                                unless a version is given)
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata    signature_def map
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict     row or columnar predict

Errors are `{"error": "<message>"}` with TF Serving's messages and HTTP codes (400 for invalid
arguments, 404 for unknown models and versions). Versions (`serving.versions`): each model's base
path is polled every `--file_system_poll_wait_seconds`; plain-integer directories are versions;
the version policy picks the ones to serve; a new version is loaded and its warmup replayed before
an older one is unloaded, and a version that fails to load keeps the previous one serving and is
retried with backoff (its status shows the error). Labels and policies come from a
`--model_config_file` (ModelServerConfig text proto). HTTP (`serving.rest`, aiohttp): bounded
connections, request size and time; TensorFlow runs on `--rest_api_num_threads` worker threads.

Not implemented: gRPC, `:classify` / `:regress` (answered UNIMPLEMENTED), batching (the batching
parameters are TF Serving's concern; see serving/batching_parameters.txt), Prometheus metrics.
Deliberate differences are listed in docs/serving.md.
"""

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from serving import json_tensor as jt
from serving import rest
from serving.json_tensor import ServingError
from serving.versions import (
  ModelManager,  # noqa: F401
  Servable,
)

log = logging.getLogger("serving.local_server")


def _tf():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  return tf


# --- the REST API ---------------------------------------------------------------------------------


class ModelServer:
  """Models by name + the REST handlers (transport-independent, for in-process tests)."""

  def __init__(self, managers: Dict[str, ModelManager]):
    self.managers = managers

  def _servable(self, req: jt.ModelRequest) -> Servable:
    manager = self.managers.get(req.name)
    if manager is None:
      if req.version is not None:
        raise ServingError(
          "NOT_FOUND", f"Servable not found for request: Specific({req.name}, {req.version})"
        )
      if req.label is not None:
        raise jt.invalid("Unrecognized servable version label: ", req.label)
      raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({req.name})")
    return manager.resolve(req.version, req.label)

  def status(self, req: jt.ModelRequest) -> str:
    """GetModelStatus -> JSON of GetModelStatusResponse."""
    from tensorflow_serving.apis import get_model_status_pb2  # pylint: disable=import-outside-toplevel

    if not req.name:
      raise jt.invalid("Missing model name in request.")
    manager = self.managers.get(req.name)
    states = manager.status_snapshot() if manager else {}
    version = req.version  # a label is ignored, as GetModelStatus ignores it: all versions
    response = get_model_status_pb2.GetModelStatusResponse()
    if version is not None:
      if version not in states:
        raise ServingError("NOT_FOUND", f"Could not find version {version} of model {req.name}")
      chosen = [version]
    else:
      if not states:
        raise ServingError("NOT_FOUND", f"Could not find any versions of model {req.name}")
      chosen = sorted(states, reverse=True)
    for v in chosen:
      s = states[v]
      entry = response.model_version_status.add(version=v)
      entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(s.state)
      entry.status.error_code = _error_code_value(s.error_code)
      entry.status.error_message = s.error_message
    return _to_json(response)

  def metadata(self, req: jt.ModelRequest) -> str:
    """GetModelMetadata (signature_def) -> JSON as TF Serving prints it."""
    from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2  # pylint: disable=import-outside-toplevel

    if not req.name:
      raise jt.invalid("Missing model name in request.")
    servable = self._servable(req)
    spec = model_pb2.ModelSpec(name=req.name)
    spec.version.value = servable.version
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in servable.signature_defs.items():
      sig_map.signature_def[key].CopyFrom(sig)
    return (
      '{\n"model_spec":'
      + _to_json(spec)
      + ',\n"metadata": {"signature_def": '
      + _to_json(sig_map)
      + "}\n}\n"
    )

  def predict(self, req: jt.ModelRequest, body: bytes) -> str:
    """Predict: JSON request -> JSON response (row or columnar, as requested)."""
    doc = jt.parse_json(body)
    signature_name = jt.request_signature_name(doc)
    servable = self._servable(req)
    key = signature_name or "serving_default"
    if key not in servable.signature_defs:
      raise jt.invalid('Serving signature name: "', key, '" not found in signature def')
    arrays, fmt = jt.request_tensors(doc, servable.inputs[key], signature_name)
    return jt.response_json(servable.run(key, arrays), fmt)

  def handle(self, http_method: str, path: str, body: bytes):
    """-> (HTTP status, JSON body). Never raises."""
    try:
      req = jt.parse_path(http_method, path)
      if req.method == "status":
        return 200, self.status(req)
      if req.method == "metadata":
        return 200, self.metadata(req)
      if req.method == "predict":
        return 200, self.predict(req, body)
      raise ServingError(
        "UNIMPLEMENTED", f"{req.method} is not supported by the local server (use :predict)"
      )
    except ServingError as err:
      return err.http_status, jt.error_json(err.message)
    except Exception as err:  # pylint: disable=broad-except
      log.exception("internal error on %s %s", http_method, path)
      return 500, jt.error_json(f"{type(err).__name__}: {err}")


def _error_code_value(name: str) -> int:
  from tensorflow.core.protobuf import error_codes_pb2  # pylint: disable=import-outside-toplevel

  try:
    return error_codes_pb2.Code.Value(name)
  except ValueError:
    return error_codes_pb2.Code.Value("UNKNOWN")


def _to_json(message) -> str:
  from google.protobuf import json_format  # pylint: disable=import-outside-toplevel

  return json_format.MessageToJson(
    message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True, indent=1
  )


# --- configuration ----------------------------------------------------------------------------------


def read_model_config(path: str) -> List[dict]:
  """models.config (ModelServerConfig text proto) -> [{name, base_path, policy, labels}]."""
  from google.protobuf import text_format  # pylint: disable=import-outside-toplevel
  from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=import-outside-toplevel

  config = model_server_config_pb2.ModelServerConfig()
  text_format.Parse(Path(path).read_text(), config)
  if config.WhichOneof("config") != "model_config_list":
    raise ValueError(f"{path}: only model_config_list is supported")
  models = []
  base_dir = os.path.dirname(os.path.abspath(path))
  for m in config.model_config_list.config:
    if m.model_platform and m.model_platform != "tensorflow":
      raise ValueError(f"{path}: model {m.name}: unsupported model_platform {m.model_platform}")
    policy_kind = m.model_version_policy.WhichOneof("policy_choice")
    if policy_kind == "all":
      policy = ("all", None)
    elif policy_kind == "specific":
      policy = ("specific", set(m.model_version_policy.specific.versions))
    elif policy_kind == "latest":
      policy = ("latest", m.model_version_policy.latest.num_versions or 1)
    else:
      policy = ("latest", 1)
    base = m.base_path
    if not os.path.isabs(base) and not os.path.isdir(base):
      base = os.path.join(base_dir, base)
    models.append(
      {"name": m.name, "base_path": base, "policy": policy, "labels": dict(m.version_labels)}
    )
  return models


class Poller(threading.Thread):
  """Polls every model's base path (and the config file, if given) in the background."""

  def __init__(
    self,
    server: ModelServer,
    wait_seconds: float,
    config_file: Optional[str] = None,
    config_wait_seconds: float = 0.0,
    warmup: bool = True,
    reload=None,
  ):
    super().__init__(name="model-poller", daemon=True)
    self.reload = reload or (lambda: read_model_config(config_file))
    self.server, self.wait = server, wait_seconds
    self.config_file, self.config_wait, self.warmup = config_file, config_wait_seconds, warmup
    self._stop_event = threading.Event()
    self._config_mtime = os.path.getmtime(config_file) if config_file else None
    self._last_config_check = time.time()

  def poll_once(self) -> None:
    for manager in list(self.server.managers.values()):
      try:
        manager.poll()
      except Exception:  # pylint: disable=broad-except
        log.exception("polling %s failed", manager.base_path)

  def _maybe_reload_config(self) -> None:
    if not self.config_file or self.config_wait <= 0:
      return
    if time.time() - self._last_config_check < self.config_wait:
      return
    self._last_config_check = time.time()
    try:
      mtime = os.path.getmtime(self.config_file)
      if mtime == self._config_mtime:
        return
      self._config_mtime = mtime
      apply_config(self.server, self.reload(), self.warmup)
      log.info("reloaded %s", self.config_file)
    except Exception:  # pylint: disable=broad-except
      log.exception("reloading %s failed; keeping the previous config", self.config_file)

  def run(self) -> None:
    if self.wait < 0:
      return
    while not self._stop_event.wait(self.wait if self.wait > 0 else 3600):
      if self.wait == 0:
        continue  # polled exactly once, at startup
      self._maybe_reload_config()
      self.poll_once()

  def stop(self) -> None:
    self._stop_event.set()


def apply_config(server: ModelServer, models: List[dict], warmup: bool = True) -> None:
  """Adds / updates managers from a parsed config (existing models keep their loaded versions)."""
  managers = dict(server.managers)
  for m in models:
    current = managers.get(m["name"])
    if current is not None and current.base_path == m["base_path"]:
      current.policy, current.labels = m["policy"], m["labels"]
    else:
      managers[m["name"]] = ModelManager(
        m["name"],
        m["base_path"],
        m["policy"],
        m["labels"],
        warmup,
        **getattr(server, "manager_options", {}),
      )
  for name in [n for n in managers if n not in {m["name"] for m in models}]:
    del managers[name]
  server.managers = managers


# --- HTTP transport (serving/rest.py) -----------------------------------------------------------

RestServer = rest.RestServer


def model_list(
  model_name: Optional[str] = None,
  model_base_path: Optional[str] = None,
  model_config_file: Optional[str] = None,
) -> List[dict]:
  """The models to serve: from the config file (with --model_base_path overriding the base path
  of the --model_name entry, a local extension), or the single --model_name/--model_base_path."""
  if model_config_file:
    models = read_model_config(model_config_file)
    if model_name and model_base_path:
      entry = next(
        (m for m in models if m["name"] == model_name),
        {"name": model_name, "policy": ("latest", 1), "labels": {}},
      )
      models = [m for m in models if m["name"] != model_name] + [
        {**entry, "base_path": model_base_path}
      ]
    return models
  if model_name and model_base_path:
    return [
      {"name": model_name, "base_path": model_base_path, "policy": ("latest", 1), "labels": {}}
    ]
  raise ValueError("give --model_config_file, or --model_name and --model_base_path")


def start(
  model_name: Optional[str] = None,
  model_base_path: Optional[str] = None,
  model_config_file: Optional[str] = None,
  port: int = 0,
  host: str = "127.0.0.1",
  poll_wait_seconds: float = 1.0,
  config_poll_wait_seconds: float = 0.0,
  warmup: bool = True,
  num_threads: int = 0,
  retry_initial_seconds: float = 1.0,
  retry_max_seconds: float = 60.0,
  **http_options,
):
  """Loads the models, starts polling and serving in background threads.

  `http_options` go to `serving.rest.RestServer` (max_request_bytes, max_connections,
  idle_timeout, request_timeout, verbose). Returns (RestServer, Poller); stop with
  `http.shutdown(); http.server_close(); poller.stop()`.
  """
  model_server = ModelServer({})
  model_server.manager_options = {
    "retry_initial_seconds": retry_initial_seconds,
    "retry_max_seconds": retry_max_seconds,
  }
  apply_config(model_server, model_list(model_name, model_base_path, model_config_file), warmup)

  def reload():
    return model_list(model_name, model_base_path, model_config_file)

  poller = Poller(
    model_server, poll_wait_seconds, model_config_file, config_poll_wait_seconds, warmup, reload
  )
  poller.poll_once()
  poller.start()
  http = RestServer(model_server, host, port, num_threads, **http_options)
  return http, poller


def disable_xla() -> bool:
  """What `tensorflow_model_server` does unless --xla_cpu_compilation_enabled=true
  (`main.cc`: tensorflow::DisableXlaCompilation()): a model that needs XLA then fails with
  INTERNAL "XLA compilation disabled" (so a --jit-compile export fails its warmup and never
  becomes AVAILABLE). Process-wide; returns False when the symbol cannot be found."""
  import ctypes  # pylint: disable=import-outside-toplevel

  tf = _tf()
  try:
    lib = ctypes.CDLL(
      os.path.join(os.path.dirname(tf.__file__), "libtensorflow_cc.so.2"), mode=ctypes.RTLD_GLOBAL
    )
    fn = getattr(lib, "_ZN10tensorflow21DisableXlaCompilationEv")
  except (OSError, AttributeError):
    log.warning("cannot disable XLA in this TensorFlow build; XLA exports will load")
    return False
  fn.restype = None
  fn()
  return True


def _bool_flag(text: str) -> bool:
  return text.lower() not in ("false", "0", "no")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m serving.local_server",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--model_name", default=None)
  parser.add_argument("--model_base_path", default=None)
  parser.add_argument("--model_config_file", default=None)
  parser.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0)
  parser.add_argument("--rest_api_port", type=int, default=8501)
  parser.add_argument(
    "--rest_api_host",
    default="127.0.0.1",
    help="bind address (local extension; TF Serving binds all interfaces)",
  )
  parser.add_argument(
    "--rest_api_num_threads",
    type=int,
    default=0,
    help="requests processed at once (default 4 x cores)",
  )
  parser.add_argument(
    "--rest_api_timeout_in_ms",
    type=int,
    default=30000,
    help="time to receive a request body (408) and to process it (504)",
  )
  parser.add_argument(
    "--rest_api_max_request_bytes",
    type=int,
    default=rest.DEFAULT_MAX_REQUEST_BYTES,
    help="largest request body, after gzip decompression (413 above; local "
    "extension, default 16 MiB)",
  )
  parser.add_argument(
    "--rest_api_max_connections",
    type=int,
    default=0,
    help="open connections (default from the file-descriptor limit; local extension)",
  )
  parser.add_argument(
    "--rest_api_idle_timeout_seconds",
    type=float,
    default=rest.DEFAULT_IDLE_TIMEOUT,
    help="close a connection that sends no complete request for this long (local extension)",
  )
  parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
  parser.add_argument(
    "--load_retry_initial_seconds",
    type=float,
    default=1.0,
    help="first retry of a version that failed to load; doubles up to "
    "--load_retry_max_seconds (local extension)",
  )
  parser.add_argument("--load_retry_max_seconds", type=float, default=60.0)
  parser.add_argument("--enable_model_warmup", type=_bool_flag, default=True)
  parser.add_argument(
    "--xla_cpu_compilation_enabled",
    type=_bool_flag,
    default=False,
    help="as TF Serving: XLA is disabled unless this is true",
  )
  parser.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0)
  parser.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0)
  parser.add_argument("--verbose", action="store_true", help="log every request")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
  tf = _tf()
  if args.tensorflow_intra_op_parallelism:
    tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
  if args.tensorflow_inter_op_parallelism:
    tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
  if not args.xla_cpu_compilation_enabled:
    disable_xla()
  timeout = args.rest_api_timeout_in_ms / 1000 if args.rest_api_timeout_in_ms > 0 else 3600.0
  try:
    http, poller = start(
      args.model_name,
      args.model_base_path,
      args.model_config_file,
      args.rest_api_port,
      args.rest_api_host,
      args.file_system_poll_wait_seconds,
      args.model_config_file_poll_wait_seconds,
      args.enable_model_warmup,
      args.rest_api_num_threads,
      args.load_retry_initial_seconds,
      args.load_retry_max_seconds,
      max_request_bytes=args.rest_api_max_request_bytes,
      max_connections=args.rest_api_max_connections,
      idle_timeout=args.rest_api_idle_timeout_seconds,
      request_timeout=timeout,
      verbose=args.verbose,
    )
  except (ValueError, OSError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  log.info("Exporting HTTP/REST API at:%s:%d ...", args.rest_api_host, http.port)
  stop = threading.Event()
  import signal  # pylint: disable=import-outside-toplevel

  signal.signal(signal.SIGTERM, lambda *_: stop.set())
  try:
    stop.wait()
  except KeyboardInterrupt:
    pass
  finally:
    http.shutdown()
    http.server_close()
    poller.stop()
  return 0


if __name__ == "__main__":
  sys.exit(main())

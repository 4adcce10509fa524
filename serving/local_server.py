"""A local stand-in for `tensorflow_model_server`'s REST API, for development and tests.

    python -m serving.local_server --model_base_path saved_models/bivrec --model_name bivrec \\
        --rest_api_port 8501 [--model_config_file serving/models.config]

It follows TF Serving's documented REST semantics (and its source, `http_rest_api_handler.cc`,
`json_tensor.cc`), so a client cannot tell it from the real server:

  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]             model status
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata    signature_def map
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict     row or columnar predict

Errors are `{ "error": "<message>" }` with TF Serving's messages and HTTP codes (400 for invalid
arguments, 404 for unknown models and versions). Like TF Serving it polls each model's base path
every `--file_system_poll_wait_seconds` for integer version directories, serves them by the
model's version policy (default: the newest version only), loads a new version (and replays its
`assets.extra/tf_serving_warmup_requests`) before unloading the old one, and reads version labels
and policies from a `--model_config_file` (ModelServerConfig text proto). Each request runs on its
own thread (at most `--rest_api_num_threads` at once); a bad request never stops the server.

Not implemented: gRPC, `:classify` / `:regress` (answered UNIMPLEMENTED), batching (the batching
parameters are TF Serving's concern; see serving/batching_parameters.txt), Prometheus metrics.
"""

import argparse
import logging
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from serving import json_tensor as jt
from serving.json_tensor import ServingError

log = logging.getLogger("serving.local_server")

WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


def _tf():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf


# --- one loaded version ---------------------------------------------------------------------------

class Servable:
  """One loaded SavedModel version: its signature functions and SignatureDefs."""

  def __init__(self, name: str, version: int, path: str):
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel

    tf = _tf()
    self.name, self.version, self.path = name, version, path
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(Path(path, "saved_model.pb").read_bytes())
    graphs = [g for g in proto.meta_graphs if "serve" in g.meta_info_def.tags]
    if not graphs:
      raise ServingError("NOT_FOUND", "Could not find meta graph def matching supplied tags: "
                                      "{ serve }. To inspect available tag-sets in the "
                                      "SavedModel, please use the SavedModel CLI: "
                                      "`saved_model_cli`")
    self.signature_defs = graphs[0].signature_def
    self.loaded = tf.saved_model.load(path, tags=["serve"])
    self.functions = dict(self.loaded.signatures)
    self.inputs = {name: {k: v.dtype for k, v in sig.inputs.items()}
                   for name, sig in self.signature_defs.items()}

  def run(self, signature_name: str, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Runs one signature on numpy inputs; TF errors become ServingErrors with TF's code."""
    tf = _tf()
    fn = self.functions.get(signature_name)
    if fn is None:
      raise jt.invalid("Serving signature name: \"", signature_name,
                       "\" not found in signature def")
    sig = self.signature_defs[signature_name]
    feeds = {}
    for key, arr in arrays.items():
      info = sig.inputs[key]
      want = [d.size for d in info.tensor_shape.dim]
      if not info.tensor_shape.unknown_rank and (
          len(want) != arr.ndim or any(w >= 0 and w != s for w, s in zip(want, arr.shape))):
        raise jt.invalid(
            "input tensor '", key, "' has shape [", ",".join(map(str, arr.shape)),
            "] but the signature expects [", ",".join(map(str, want)), "] (-1 = any size)")
      feeds[key] = tf.constant(arr, dtype=tf.dtypes.as_dtype(info.dtype))
    try:
      out = fn(**feeds)
    except tf.errors.OpError as err:
      raise ServingError(_code_name(err.error_code), err.message) from None
    except (TypeError, ValueError) as err:
      raise jt.invalid(str(err)) from None
    return {k: v.numpy() for k, v in out.items()}

  def warmup(self) -> int:
    """Replays assets.extra/tf_serving_warmup_requests (PredictionLog records); returns count."""
    from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=import-outside-toplevel

    tf = _tf()
    path = os.path.join(self.path, WARMUP_PATH)
    if not os.path.exists(path):
      return 0
    count = 0
    for record in tf.data.TFRecordDataset(path):
      count += 1
      if count > MAX_WARMUP_RECORDS:
        raise ServingError("INVALID_ARGUMENT", f"Number of warmup records exceeds the maximum "
                                               f"({MAX_WARMUP_RECORDS}) at {path}")
      entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
      if entry.WhichOneof("log_type") != "predict_log":
        raise ServingError("UNIMPLEMENTED", "Unsupported log_type for warmup: "
                                            f"{entry.WhichOneof('log_type')}")
      request = entry.predict_log.request
      signature = request.model_spec.signature_name or "serving_default"
      arrays = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
      self.run(signature, arrays)
    return count


def _code_name(code: int) -> str:
  from tensorflow.core.protobuf import error_codes_pb2  # pylint: disable=import-outside-toplevel
  try:
    return error_codes_pb2.Code.Name(code)
  except ValueError:
    return "UNKNOWN"


# --- one model: versions on disk -> loaded versions -----------------------------------------------

class VersionState:
  """ServableState as GetModelStatus reports it."""

  def __init__(self, state: str, error_code: str = "OK", error_message: str = ""):
    self.state, self.error_code, self.error_message = state, error_code, error_message


class ModelManager:
  """Loads / unloads the versions of one model found under its base path.

  Args:
    name: model name.
    base_path: directory holding integer version directories.
    policy: ("latest", n) | ("all", None) | ("specific", {versions}).
    labels: version label -> version.
    warmup: replay warmup records before a version becomes AVAILABLE.
  """

  def __init__(self, name: str, base_path: str, policy=("latest", 1),
               labels: Optional[Dict[str, int]] = None, warmup: bool = True):
    self.name, self.base_path = name, base_path
    self.policy, self.labels, self.warmup = policy, dict(labels or {}), warmup
    self.servables: Dict[int, Servable] = {}   # AVAILABLE versions
    self.states: Dict[int, VersionState] = {}  # everything ever seen, for the status API
    self._lock = threading.Lock()

  def versions_on_disk(self) -> List[int]:
    try:
      entries = os.listdir(self.base_path)
    except OSError:
      return []
    out = []
    for entry in entries:
      if entry.isdigit() and os.path.isdir(os.path.join(self.base_path, entry)):
        out.append(int(entry))
    return sorted(out)

  def aspired(self, on_disk: List[int]) -> List[int]:
    kind, arg = self.policy
    if kind == "all":
      return list(on_disk)
    if kind == "specific":
      return [v for v in on_disk if v in arg]
    return on_disk[-int(arg or 1):]

  def poll(self) -> None:
    """One file-system poll: load new aspired versions, then unload the others."""
    aspired = self.aspired(self.versions_on_disk())
    for version in aspired:
      state = self.states.get(version)
      if version in self.servables or (state and state.state == "END" and
                                       state.error_code != "OK"):
        continue  # loaded, or failed to load (not retried)
      self._load(version)
    for version in list(self.servables):
      if version not in aspired:
        self._unload(version)

  def _load(self, version: int) -> None:
    path = os.path.join(self.base_path, str(version))
    with self._lock:
      self.states[version] = VersionState("LOADING")
    try:
      servable = Servable(self.name, version, path)
      if self.warmup:
        n = servable.warmup()
        log.info("model %s version %d: %d warmup requests replayed", self.name, version, n)
    except Exception as err:  # pylint: disable=broad-except
      code = err.code if isinstance(err, ServingError) else "UNKNOWN"
      log.error("model %s version %d failed to load: %s", self.name, version, err)
      with self._lock:
        self.states[version] = VersionState("END", code, str(err))
      return
    with self._lock:
      self.servables = {**self.servables, version: servable}
      self.states[version] = VersionState("AVAILABLE")
    log.info("model %s version %d AVAILABLE (%s)", self.name, version, path)

  def _unload(self, version: int) -> None:
    with self._lock:
      self.states[version] = VersionState("UNLOADING")
      self.servables = {v: s for v, s in self.servables.items() if v != version}
      self.states[version] = VersionState("END")
    log.info("model %s version %d unloaded", self.name, version)

  def resolve(self, version: Optional[int], label: Optional[str]) -> Servable:
    """GetServableHandle(): latest AVAILABLE version, a specific one, or a labelled one."""
    servables = self.servables  # one consistent snapshot
    if label is not None:
      if label not in self.labels:
        raise jt.invalid("Unrecognized servable version label: ", label)
      version = self.labels[label]
    if version is None:
      if not servables:
        raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({self.name})")
      return servables[max(servables)]
    if version not in servables:
      raise ServingError("NOT_FOUND",
                         f"Servable not found for request: Specific({self.name}, {version})")
    return servables[version]


# --- the REST API ---------------------------------------------------------------------------------

class ModelServer:
  """Models by name + the REST handlers (transport-independent, for in-process tests)."""

  def __init__(self, managers: Dict[str, ModelManager]):
    self.managers = managers

  def _servable(self, req: jt.ModelRequest) -> Servable:
    manager = self.managers.get(req.name)
    if manager is None:
      if req.version is not None:
        raise ServingError("NOT_FOUND",
                           f"Servable not found for request: Specific({req.name}, {req.version})")
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
    states = dict(manager.states) if manager else {}
    version = req.version
    if req.label is not None:
      labels = manager.labels if manager else {}
      if req.label not in labels:
        raise jt.invalid("Unrecognized servable version label: ", req.label)
      version = labels[req.label]
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
    return ('{\n"model_spec":' + _to_json(spec) + ',\n"metadata": {"signature_def": '
            + _to_json(sig_map) + "}\n}\n")

  def predict(self, req: jt.ModelRequest, body: bytes) -> str:
    """Predict: JSON request -> JSON response (row or columnar, as requested)."""
    doc = jt.parse_json(body)
    signature_name = jt.request_signature_name(doc)
    servable = self._servable(req)
    key = signature_name or "serving_default"
    if key not in servable.signature_defs:
      raise jt.invalid("Serving signature name: \"", key, "\" not found in signature def")
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
      raise ServingError("UNIMPLEMENTED", f"{req.method} is not supported by the local server "
                                          "(use :predict)")
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
  return json_format.MessageToJson(message, preserving_proto_field_name=True,
                                   always_print_fields_with_no_presence=True, indent=1)


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
    models.append({"name": m.name, "base_path": base, "policy": policy,
                   "labels": dict(m.version_labels)})
  return models


class Poller(threading.Thread):
  """Polls every model's base path (and the config file, if given) in the background."""

  def __init__(self, server: ModelServer, wait_seconds: float,
               config_file: Optional[str] = None, config_wait_seconds: float = 0.0,
               warmup: bool = True, reload=None):
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
      managers[m["name"]] = ModelManager(m["name"], m["base_path"], m["policy"], m["labels"],
                                         warmup)
  for name in [n for n in managers if n not in {m["name"] for m in models}]:
    del managers[name]
  server.managers = managers


# --- HTTP transport -----------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving's libevent server
  server_version = "bivrec-local-model-server"
  disable_nagle_algorithm = True  # else Nagle + delayed ACK stall keep-alive replies by ~40 ms
  timeout = 300  # seconds a connection may sit idle or half-sent before its thread gives up

  def _serve(self, method: str) -> None:
    length = int(self.headers.get("Content-Length") or 0)
    body = self.rfile.read(length) if length > 0 else b""
    path = self.path.split("?", 1)[0]
    if not jt.HANDLED_PATH.fullmatch(path):
      status, out = 404, ""  # TF Serving's dispatcher does not handle paths outside /v1/
    else:
      with self.server.slots:
        status, out = self.server.model_server.handle(method, path, body)
    data = out.encode("utf-8")
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def do_GET(self):  # noqa: N802  (http.server naming)
    self._serve("GET")

  def do_POST(self):  # noqa: N802
    self._serve("POST")

  def do_PUT(self):  # noqa: N802
    self._serve("PUT")

  def do_DELETE(self):  # noqa: N802
    self._serve("DELETE")

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    if self.server.verbose:
      super().log_message(format, *args)


class RestServer(ThreadingHTTPServer):
  """ThreadingHTTPServer bound to one ModelServer; `serve_forever()` in any thread."""

  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 256

  def __init__(self, model_server: ModelServer, host: str = "127.0.0.1", port: int = 8501,
               num_threads: int = 0, verbose: bool = False):
    super().__init__((host, port), _Handler)
    self.model_server = model_server
    self.slots = threading.BoundedSemaphore(num_threads or 4 * (os.cpu_count() or 1))
    self.verbose = verbose

  @property
  def port(self) -> int:
    return self.server_address[1]


def model_list(model_name: Optional[str] = None, model_base_path: Optional[str] = None,
               model_config_file: Optional[str] = None) -> List[dict]:
  """The models to serve: from the config file (with --model_base_path overriding the base path
  of the --model_name entry, a local extension), or the single --model_name/--model_base_path."""
  if model_config_file:
    models = read_model_config(model_config_file)
    if model_name and model_base_path:
      entry = next((m for m in models if m["name"] == model_name),
                   {"name": model_name, "policy": ("latest", 1), "labels": {}})
      models = [m for m in models if m["name"] != model_name] + [
          {**entry, "base_path": model_base_path}]
    return models
  if model_name and model_base_path:
    return [{"name": model_name, "base_path": model_base_path, "policy": ("latest", 1),
             "labels": {}}]
  raise ValueError("give --model_config_file, or --model_name and --model_base_path")


def start(model_name: Optional[str] = None, model_base_path: Optional[str] = None,
          model_config_file: Optional[str] = None, port: int = 0, host: str = "127.0.0.1",
          poll_wait_seconds: float = 1.0, config_poll_wait_seconds: float = 0.0,
          warmup: bool = True, num_threads: int = 0):
  """Loads the models, starts polling and serving in background threads.

  Returns (RestServer, Poller); stop with `http.shutdown(); http.server_close(); poller.stop()`.
  """
  model_server = ModelServer({})
  apply_config(model_server, model_list(model_name, model_base_path, model_config_file), warmup)
  reload = (lambda: model_list(model_name, model_base_path, model_config_file))
  poller = Poller(model_server, poll_wait_seconds, model_config_file, config_poll_wait_seconds,
                  warmup, reload)
  poller.poll_once()
  poller.start()
  http = RestServer(model_server, host, port, num_threads)
  threading.Thread(target=http.serve_forever, name="rest-api", daemon=True).start()
  return http, poller


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m serving.local_server", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model_name", default=None)
  parser.add_argument("--model_base_path", default=None)
  parser.add_argument("--model_config_file", default=None)
  parser.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0)
  parser.add_argument("--rest_api_port", type=int, default=8501)
  parser.add_argument("--rest_api_host", default="127.0.0.1",
                      help="bind address (local extension; TF Serving binds all interfaces)")
  parser.add_argument("--rest_api_num_threads", type=int, default=0,
                      help="requests processed at once (default 4 x cores)")
  parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
  parser.add_argument("--enable_model_warmup", type=lambda s: s.lower() != "false",
                      default=True)
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
  try:
    http, poller = start(args.model_name, args.model_base_path, args.model_config_file,
                         args.rest_api_port, args.rest_api_host,
                         args.file_system_poll_wait_seconds,
                         args.model_config_file_poll_wait_seconds, args.enable_model_warmup,
                         args.rest_api_num_threads)
  except (ValueError, OSError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  http.verbose = args.verbose
  log.info("Exporting HTTP/REST API at:%s:%d ...", args.rest_api_host, http.port)
  try:
    threading.Event().wait()
  except KeyboardInterrupt:
    pass
  finally:
    http.shutdown()
    http.server_close()
    poller.stop()
  return 0


if __name__ == "__main__":
  sys.exit(main())

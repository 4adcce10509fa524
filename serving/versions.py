"""Versions of one model: what is on disk -> what is loaded, as TF Serving's managers do it.

TF Serving (`file_system_storage_path_source.cc`, `aspired_versions_manager.cc`,
`availability_preserving_policy.cc`, `loader_harness.cc`) lists the base path, picks the aspired
versions by the model's version policy, loads the highest new aspired version first, and unloads a
version that is no longer aspired only when an aspired version is AVAILABLE (or when nothing is
aspired any more, or when more than one unaspired version is still serving). So a bad newest
version (an empty directory, a corrupt `saved_model.pb`, a copy still in progress) never takes the
serving version down: the old one keeps answering until its successor has loaded and replayed
its warmup requests.

Where we go further than TF Serving (which retries a failed load 5 times, 1 minute apart, and then
gives up until the directory disappears): a failed aspired version is retried for as long as it
stays aspired, with exponential backoff (`retry_initial_seconds`, doubling, at most
`retry_max_seconds`), and sooner when its files changed and then stayed unchanged for one poll
(a copy that has finished). Its status meanwhile is `END` with the load error's code and message,
as GetModelStatus reports a failed version.

Only directories whose name is a plain ASCII integer below 2**63 are versions (`str.isdigit()`
also accepts "²" and "٩"); everything else (`.tmp-*`, `2-backup`, files) is ignored.
"""

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from serving import json_tensor as jt
from serving.json_tensor import ServingError

log = logging.getLogger("serving.versions")

WARMUP_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
VERSION_NAME = re.compile(r"[0-9]+")  # ASCII digits only (re's [0-9] is not \d)
MAX_VERSION = 2**63 - 1


def _tf():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  return tf


def parse_version(name: str) -> Optional[int]:
  """A directory name -> version number, or None when it is not a plain ASCII integer."""
  if not VERSION_NAME.fullmatch(name):
    return None
  value = int(name)
  return value if value <= MAX_VERSION else None


def _code_name(code: int) -> str:
  from tensorflow.core.protobuf import error_codes_pb2  # pylint: disable=import-outside-toplevel

  try:
    return error_codes_pb2.Code.Name(code)
  except ValueError:
    return "UNKNOWN"


# --- one loaded version ---------------------------------------------------------------------------


class Servable:
  """One loaded SavedModel version: its signature functions and SignatureDefs.

  Load errors are ServingErrors with the code and text TensorFlow's C++ loader gives
  (`reader.cc`: NOT_FOUND for a directory without `saved_model.pb`, DATA_LOSS for one that does
  not parse), so the status endpoint reports them as TF Serving would.
  """

  def __init__(self, name: str, version: int, path: str):
    from google.protobuf.message import DecodeError  # pylint: disable=import-outside-toplevel
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel

    tf = _tf()
    self.name, self.version, self.path = name, version, path
    pb = Path(path, "saved_model.pb")
    if not pb.is_file() and not Path(path, "saved_model.pbtxt").is_file():
      raise ServingError(
        "NOT_FOUND",
        f"Could not find SavedModel .pb or .pbtxt at supplied export directory "
        f"path: {path}. Check that the directory exists and that you have the "
        "right permissions for accessing it.",
      )
    proto = saved_model_pb2.SavedModel()
    try:
      proto.ParseFromString(pb.read_bytes())
    except (DecodeError, OSError):
      raise ServingError("DATA_LOSS", f"Can't parse {pb} as binary proto") from None
    graphs = [g for g in proto.meta_graphs if "serve" in g.meta_info_def.tags]
    if not graphs:
      raise ServingError(
        "NOT_FOUND",
        "Could not find meta graph def matching supplied tags: "
        "{ serve }. To inspect available tag-sets in the "
        "SavedModel, please use the SavedModel CLI: "
        "`saved_model_cli`",
      )
    self.signature_defs = graphs[0].signature_def
    try:
      self.loaded = tf.saved_model.load(path, tags=["serve"])
    except tf.errors.OpError as err:
      raise ServingError(_code_name(err.error_code), err.message) from None
    except (OSError, ValueError) as err:
      raise ServingError("DATA_LOSS", f"{path}: {err}") from None
    self.functions = dict(self.loaded.signatures)
    self.inputs = {
      name: {k: v.dtype for k, v in sig.inputs.items()} for name, sig in self.signature_defs.items()
    }

  def run(self, signature_name: str, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Runs one signature on numpy inputs; TF errors become ServingErrors with TF's code."""
    tf = _tf()
    fn = self.functions.get(signature_name)
    if fn is None:
      raise jt.invalid('Serving signature name: "', signature_name, '" not found in signature def')
    sig = self.signature_defs[signature_name]
    feeds = {}
    for key, arr in arrays.items():
      info = sig.inputs[key]
      want = [d.size for d in info.tensor_shape.dim]
      if not info.tensor_shape.unknown_rank and (
        len(want) != arr.ndim or any(w >= 0 and w != s for w, s in zip(want, arr.shape))
      ):
        raise jt.invalid(
          "input tensor '",
          key,
          "' has shape [",
          ",".join(map(str, arr.shape)),
          "] but the signature expects [",
          ",".join(map(str, want)),
          "] (-1 = any size)",
        )
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
    try:
      for record in tf.data.TFRecordDataset(path):
        count += 1
        if count > MAX_WARMUP_RECORDS:
          raise ServingError(
            "INVALID_ARGUMENT",
            f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}",
          )
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if entry.WhichOneof("log_type") != "predict_log":
          raise ServingError(
            "UNIMPLEMENTED", f"Unsupported log_type for warmup: {entry.WhichOneof('log_type')}"
          )
        request = entry.predict_log.request
        signature = request.model_spec.signature_name or "serving_default"
        arrays = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        self.run(signature, arrays)
    except tf.errors.OpError as err:
      raise ServingError(_code_name(err.error_code), err.message) from None
    return count


# --- states ---------------------------------------------------------------------------------------


class VersionState:
  """ServableState as GetModelStatus reports it (state, error_code, error_message)."""

  def __init__(self, state: str, error_code: str = "OK", error_message: str = ""):
    self.state, self.error_code, self.error_message = state, error_code, error_message

  def __repr__(self):
    return f"VersionState({self.state!r}, {self.error_code!r}, {self.error_message[:60]!r})"


class _Retry:
  """Backoff bookkeeping of one failed version."""

  def __init__(self):
    self.failures = 0
    self.next_time = 0.0
    self.fingerprint: Optional[tuple] = None  # of the files at the failed attempt
    self.last_seen: Optional[tuple] = None  # at the previous poll


def _fingerprint(path: str) -> tuple:
  """(relative path, size, mtime) of every file below `path`: changes while a copy runs."""
  out = []
  for root, _, files in os.walk(path):
    for name in files:
      full = os.path.join(root, name)
      try:
        st = os.stat(full)
      except OSError:
        continue
      out.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
  return tuple(sorted(out))


# --- one model ------------------------------------------------------------------------------------


class ModelManager:
  """Loads / unloads the versions of one model found under its base path.

  Args:
    name: model name.
    base_path: directory holding integer version directories.
    policy: ("latest", n) | ("all", None) | ("specific", {versions}).
    labels: version label -> version.
    warmup: replay warmup records before a version becomes AVAILABLE.
    retry_initial_seconds, retry_max_seconds: backoff of a failed version's retries.
    loader: `(name, version, path) -> Servable` (tests inject slow or failing loaders).
  """

  def __init__(
    self,
    name: str,
    base_path: str,
    policy=("latest", 1),
    labels: Optional[Dict[str, int]] = None,
    warmup: bool = True,
    retry_initial_seconds: float = 1.0,
    retry_max_seconds: float = 60.0,
    loader=None,
  ):
    self.name, self.base_path = name, base_path
    self.policy, self.labels, self.warmup = policy, dict(labels or {}), warmup
    self.retry_initial, self.retry_max = retry_initial_seconds, retry_max_seconds
    self.loader = loader or Servable
    self.servables: Dict[int, Servable] = {}  # AVAILABLE versions (replaced, never mutated)
    self.states: Dict[int, VersionState] = {}  # everything ever seen, for the status API
    self._retries: Dict[int, _Retry] = {}
    self._lock = threading.Lock()

  # --- disk and policy ---

  def versions_on_disk(self) -> Optional[Dict[int, str]]:
    """version -> directory; None when the base path cannot be listed (keep what is loaded)."""
    try:
      entries = os.listdir(self.base_path)
    except OSError as err:
      log.warning("model %s: cannot list base path %s: %s", self.name, self.base_path, err)
      return None
    out: Dict[int, str] = {}
    for entry in sorted(entries):
      version = parse_version(entry)
      path = os.path.join(self.base_path, entry)
      if version is None or not os.path.isdir(path):
        continue
      if version not in out or entry == str(version):  # "7" wins over "007"
        out[version] = path
    return out

  def aspired(self, on_disk) -> List[int]:
    versions = sorted(on_disk)
    kind, arg = self.policy
    if kind == "all":
      return versions
    if kind == "specific":
      return [v for v in versions if v in arg]
    return versions[-int(arg or 1) :]

  # --- one poll ---

  def poll(self) -> None:
    """One file-system poll: load new (or due-for-retry) aspired versions, highest first, then
    unload unaspired ones as TF Serving's AvailabilityPreservingPolicy allows."""
    on_disk = self.versions_on_disk()
    if on_disk is None:
      return
    aspired = self.aspired(on_disk)
    for version in sorted(aspired, reverse=True):
      if version in self.servables:
        continue
      if self._due(version, on_disk[version]):
        self._load(version, on_disk[version])
    for version in [v for v in list(self._retries) if v not in aspired]:
      del self._retries[version]  # no longer aspired: stop retrying (its END state stays)
    self._unload_unaspired(aspired)

  def _due(self, version: int, path: str) -> bool:
    """A new version: now. A failed one: when its backoff has passed, or when its files changed
    since the failure and then stayed unchanged for one poll (a copy has finished)."""
    retry = self._retries.get(version)
    if retry is None:
      return True  # never tried, unloaded earlier, or failed before it stopped being aspired
    seen = _fingerprint(path)
    settled = seen == retry.last_seen and seen != retry.fingerprint
    retry.last_seen = seen
    return settled or time.monotonic() >= retry.next_time

  def _unload_unaspired(self, aspired: List[int]) -> None:
    while True:
      servables = self.servables
      unaspired = sorted(v for v in servables if v not in aspired)
      if not unaspired:
        return
      aspired_serving = any(v in servables for v in aspired)
      if aspired and not aspired_serving and len(unaspired) <= 1:
        return  # keep the last serving version until a successor is AVAILABLE
      self._unload(unaspired[0])

  def _load(self, version: int, path: str) -> None:
    with self._lock:
      self.states[version] = VersionState("LOADING")
    retry = self._retries.get(version)
    try:
      servable = self.loader(self.name, version, path)
      if self.warmup:
        n = servable.warmup()
        log.info("model %s version %d: %d warmup requests replayed", self.name, version, n)
    except Exception as err:  # pylint: disable=broad-except
      code = err.code if isinstance(err, ServingError) else "UNKNOWN"
      message = err.message if isinstance(err, ServingError) else f"{type(err).__name__}: {err}"
      retry = retry or _Retry()
      retry.failures += 1
      delay = min(self.retry_initial * 2 ** (retry.failures - 1), self.retry_max)
      retry.next_time = time.monotonic() + delay
      retry.fingerprint = retry.last_seen = _fingerprint(path)
      self._retries[version] = retry
      log.error(
        "model %s version %d failed to load (attempt %d; next in %.0f s unless its files "
        "change): %s: %s",
        self.name,
        version,
        retry.failures,
        delay,
        code,
        message,
      )
      with self._lock:
        self.states[version] = VersionState("END", code, message)
      return
    self._retries.pop(version, None)
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

  # --- requests ---

  def status_snapshot(self) -> Dict[int, VersionState]:
    with self._lock:
      return dict(self.states)

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
      raise ServingError(
        "NOT_FOUND", f"Servable not found for request: Specific({self.name}, {version})"
      )
    return servables[version]

"""Strategy selection (DESIGN.md section 7).

`auto`: MultiWorkerMirrored when TF_CONFIG names several workers, Mirrored when several GPUs (or
logical CPUs from `--logical-cpus`) are visible, else the default strategy. The global batch size
is the user-facing number; the model averages per-example losses over it.
"""

import json
import os

import tensorflow as tf


def split_cpu(n: int) -> None:
  """Splits the physical CPU into n logical devices (must run before TensorFlow initializes)."""
  if n <= 1:
    return
  cpus = tf.config.list_physical_devices("CPU")
  tf.config.set_logical_device_configuration(
      cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])


def _num_workers() -> int:
  try:
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
  except json.JSONDecodeError as err:
    raise ValueError(f"TF_CONFIG is not valid JSON: {err}") from err
  return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def make_strategy(name: str = "auto", logical_cpus: int = 0) -> tf.distribute.Strategy:
  """The tf.distribute strategy for `--strategy name`."""
  split_cpu(logical_cpus)
  if name == "auto":
    if _num_workers() > 1:
      name = "multi_worker"
    elif len(tf.config.list_logical_devices("GPU")) > 1 or logical_cpus > 1:
      name = "mirrored"
    else:
      name = "default"
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices=devices)
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "parameter_server":
    raise NotImplementedError(
        "--strategy parameter_server is not implemented yet; use default, mirrored or "
        "multi_worker")
  raise ValueError(f"unknown strategy {name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the process that writes checkpoints, logs and exports."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == "chief" or (
      resolver.task_type == "worker" and resolver.task_id == 0 and
      "chief" not in resolver.cluster_spec().as_dict())

"""Strategy selection (DESIGN.md section 7).

`auto`: MultiWorkerMirrored when TF_CONFIG names several workers, Mirrored when several GPUs (or
logical CPUs from `--logical-cpus`) are visible, else the default strategy. The global batch size
is the user-facing number; the model averages per-example losses over it.
"""

import json
import os
import socket

import tensorflow as tf


def split_cpu(n: int) -> None:
  """Splits the physical CPU into n logical devices (must run before TensorFlow initializes)."""
  if n <= 1:
    return
  cpus = tf.config.list_physical_devices("CPU")
  tf.config.set_logical_device_configuration(
    cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
  )


def _num_workers() -> int:
  try:
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
  except json.JSONDecodeError as err:
    raise ValueError(f"TF_CONFIG is not valid JSON: {err}") from err
  return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def free_ports(n: int):
  """n currently unused loopback TCP ports."""
  socks = [socket.socket() for _ in range(n)]
  for sock in socks:
    sock.bind(("127.0.0.1", 0))
  ports = [sock.getsockname()[1] for sock in socks]
  for sock in socks:
    sock.close()
  return ports


def local_cluster(num_workers: int, num_ps: int):
  """Starts `num_workers` worker and `num_ps` parameter-server tasks in this process (for trying
  ParameterServerStrategy on one machine) and returns their cluster resolver."""
  free = free_ports(num_workers + num_ps)
  ports = {"worker": free[:num_workers], "ps": free[num_workers:]}
  spec = tf.train.ClusterSpec({job: [f"localhost:{p}" for p in ps] for job, ps in ports.items()})
  config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=num_workers + 1)
  for job, job_ports in ports.items():
    for index in range(len(job_ports)):
      tf.distribute.Server(
        spec,
        job_name=job,
        task_index=index,
        protocol="grpc",
        config=config if job == "worker" else None,
        start=True,
      )
  return tf.distribute.cluster_resolver.SimpleClusterResolver(spec, rpc_layer="grpc")


def parameter_server_strategy(cluster: str = "") -> tf.distribute.Strategy:
  """ParameterServerStrategy from TF_CONFIG, or from `cluster` = "WORKERS,PS" started in-process.
  Large variables (the ID embedding table) are sharded over the parameter servers."""
  if cluster:
    workers, ps = (int(x) for x in cluster.split(","))
    resolver = local_cluster(workers, ps)
  else:
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  num_ps = len(resolver.cluster_spec().as_dict().get("ps", []))
  if num_ps < 1:
    raise ValueError(
      "--strategy parameter_server needs `ps` tasks in TF_CONFIG (or --local-cluster WORKERS,PS)"
    )
  partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
    min_shard_bytes=64 << 10, max_shards=num_ps
  )
  return tf.distribute.experimental.ParameterServerStrategy(
    resolver, variable_partitioner=partitioner
  )


def make_strategy(
  name: str = "auto", logical_cpus: int = 0, cluster: str = ""
) -> tf.distribute.Strategy:
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
    return parameter_server_strategy(cluster)
  raise ValueError(f"unknown strategy {name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the process that writes checkpoints, logs and exports."""
  if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
    return True  # this process is the coordinator; workers run only the steps it dispatches
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == "chief" or (
    resolver.task_type == "worker"
    and resolver.task_id == 0
    and "chief" not in resolver.cluster_spec().as_dict()
  )

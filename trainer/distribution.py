"""One function that picks the tf.distribute strategy for this process.

Order of precedence:

1. ``tpu`` named (argument or ``--tpu``; ``"local"`` for a TPU VM) -> ``TPUStrategy``;
2. ``TF_CONFIG`` lists more than one worker (chief + workers) ->
   ``MultiWorkerMirroredStrategy`` (each process runs the same command);
3. more than one device (GPUs found, or ``devices`` given) -> ``MirroredStrategy``;
4. otherwise the default (no-op) strategy.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import tensorflow as tf


def cluster_size(tf_config: str | Mapping | None = None) -> int:
    """Number of training tasks (``chief`` + ``worker``) in ``TF_CONFIG`` (0 when unset).

    Raises:
        ValueError: ``TF_CONFIG`` is not valid JSON or has no ``cluster`` mapping.
    """
    if tf_config is None:
        tf_config = os.environ.get("TF_CONFIG", "")
    if not tf_config:
        return 0
    if isinstance(tf_config, str):
        try:
            tf_config = json.loads(tf_config)
        except json.JSONDecodeError as error:
            raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from error
    cluster = tf_config.get("cluster") if isinstance(tf_config, Mapping) else None
    if not isinstance(cluster, Mapping):
        raise ValueError(f"TF_CONFIG must hold a 'cluster' mapping, got {tf_config!r}")
    return sum(len(cluster.get(job, [])) for job in ("chief", "worker"))


def choose_strategy(tpu: str | None = None, devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """Returns the distribution strategy for this process (see module docstring).

    Args:
        tpu: TPU name/address, ``"local"``, or None.
        devices: explicit device list for ``MirroredStrategy`` (e.g.
            ``["/cpu:0", "/cpu:1"]`` with logical CPU devices); None: all GPUs.

    Returns:
        ``TPUStrategy``, ``MultiWorkerMirroredStrategy``, ``MirroredStrategy`` or
        ``tf.distribute.get_strategy()`` (the default strategy).
    """
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=None if tpu == "local" else tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if cluster_size() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if devices is not None:
        devices = list(devices)
        if len(devices) > 1:
            return tf.distribute.MirroredStrategy(devices=devices)
        if len(devices) == 1:
            return tf.distribute.OneDeviceStrategy(devices[0])
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the task that writes checkpoints/summaries/exports (always true off MWMS)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


def task_label(strategy: tf.distribute.Strategy) -> str:
    """``worker_1`` style label of this task (``chief`` for single-process runs)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) \
            or resolver.task_type is None:
        return "chief"
    return f"{resolver.task_type}_{resolver.task_id}"


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """Public name of ``strategy`` (``MultiWorkerMirroredStrategy`` rather than its class name)."""
    for public in (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.MirroredStrategy,
                   tf.distribute.TPUStrategy, tf.distribute.OneDeviceStrategy):
        if isinstance(strategy, public):
            return public.__name__ if public is not tf.distribute.MultiWorkerMirroredStrategy \
                else "MultiWorkerMirroredStrategy"
    return "DefaultStrategy"

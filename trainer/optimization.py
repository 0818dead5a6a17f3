"""Optimizer, learning-rate schedule and precision policy from ``config["train"]``.

The references train with Adam at 1e-3 for 210 epochs and divide the rate by
10 at epochs 170 and 200 (``lr_schedule: step``); ``cosine`` anneals to zero
over the run instead. Both accept a linear warm-up (``warmup_steps``).

Schedules are functions of the *optimizer step* (one step = one global batch),
so epochs are converted with ``steps_per_epoch``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="darkpose")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then ``base * factor ** (number of boundaries passed)``.

    Args:
        base_learning_rate: rate after warm-up, > 0.
        boundaries: optimizer steps at which the rate is multiplied by ``factor``.
        factor: decay factor, e.g. 0.1.
        warmup_steps: steps of linear warm-up from ``base / warmup_steps`` (0: none).

    Example:

        schedule = WarmupStepDecay(1e-3, [170 * 1000, 200 * 1000], 0.1)
        schedule(0)  # 1e-3
    """

    def __init__(self, base_learning_rate: float, boundaries: Sequence[int], factor: float,
                 warmup_steps: int = 0):
        self.base_learning_rate = float(base_learning_rate)
        self.boundaries = [int(b) for b in boundaries]
        self.factor = float(factor)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        passed = tf.zeros([], tf.float32)
        for boundary in self.boundaries:
            passed += tf.cast(step >= float(boundary), tf.float32)
        rate = self.base_learning_rate * tf.pow(self.factor, passed)
        return _apply_warmup(rate, step, self.warmup_steps)

    def get_config(self):
        return {"base_learning_rate": self.base_learning_rate, "boundaries": self.boundaries,
                "factor": self.factor, "warmup_steps": self.warmup_steps}


@keras.saving.register_keras_serializable(package="darkpose")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then cosine annealing from ``base`` to 0 at ``total_steps``."""

    def __init__(self, base_learning_rate: float, total_steps: int, warmup_steps: int = 0):
        self.base_learning_rate = float(base_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        span = float(max(1, self.total_steps - self.warmup_steps))
        progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
        rate = 0.5 * self.base_learning_rate * (1.0 + tf.cos(math.pi * progress))
        return _apply_warmup(rate, step, self.warmup_steps)

    def get_config(self):
        return {"base_learning_rate": self.base_learning_rate, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}


def _apply_warmup(rate, step, warmup_steps: int):
    if warmup_steps <= 0:
        return rate
    return rate * tf.minimum(1.0, (step + 1.0) / float(warmup_steps))


def learning_rate_schedule(train_config: Mapping[str, Any], steps_per_epoch: int,
                           total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Builds the schedule named by ``train.lr_schedule``.

    Args:
        train_config: ``config["train"]``.
        steps_per_epoch: optimizer steps per epoch (>= 1), converts ``lr_decay_epochs``.
        total_steps: length of the run (cosine ends there).

    Raises:
        ValueError: bad ``steps_per_epoch``/``total_steps`` or schedule name.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup = int(train_config.get("warmup_steps") or 0)
    if warmup < 0:
        raise ValueError(f"train.warmup_steps must be >= 0, got {warmup}")
    name = train_config["lr_schedule"]
    base = float(train_config["learning_rate"])
    if name == "step":
        boundaries = [int(epoch) * steps_per_epoch for epoch in train_config["lr_decay_epochs"]]
        return WarmupStepDecay(base, boundaries, float(train_config["lr_decay_factor"]), warmup)
    if name == "cosine":
        return WarmupCosineDecay(base, total_steps, warmup)
    raise ValueError(f"train.lr_schedule must be step or cosine, got {name!r}")


def build_optimizer(train_config: Mapping[str, Any], steps_per_epoch: int,
                    total_steps: int) -> keras.optimizers.Optimizer:
    """Adam with the configured schedule and optional global-norm gradient clipping.

    Under a distribution strategy Keras clips each replica's gradients before
    summing them across replicas, so the effective bound is ``replicas * clip_norm``.
    With a mixed-precision policy active, the optimizer is wrapped in a
    ``LossScaleOptimizer`` (only needed for float16; harmless for bfloat16).

    Raises:
        ValueError: unknown optimizer or a non-positive ``clip_norm``.
    """
    if train_config["optimizer"] != "adam":
        raise ValueError(f"train.optimizer must be adam, got {train_config['optimizer']!r}")
    clip_norm = train_config.get("clip_norm")
    if clip_norm is not None and not float(clip_norm) > 0:
        raise ValueError(f"train.clip_norm must be > 0 or null, got {clip_norm!r}")
    schedule = learning_rate_schedule(train_config, steps_per_epoch, total_steps)
    optimizer = keras.optimizers.Adam(learning_rate=schedule,
                                      global_clipnorm=float(clip_norm) if clip_norm is not None else None)
    if train_config.get("mixed_precision") == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def set_precision_policy(train_config: Mapping[str, Any]) -> str:
    """Sets the global Keras dtype policy from ``train.mixed_precision``; returns its name.

    ``mixed_float16`` is meant for GPUs, ``mixed_bfloat16`` for TPUs; ``None``
    keeps ``float32``. Call it before building the model.
    """
    policy = train_config.get("mixed_precision") or "float32"
    keras.mixed_precision.set_dtype_policy(policy)
    return policy

"""Optimizer, learning-rate schedules and precision policy from ``config["train"]``.

One family of Keras ``LearningRateSchedule`` s, all subclasses of
:class:`WarmupSchedule` (a linear warm-up over ``warmup_steps`` applied on top
of the subclass's rate), selected by ``train.lr_schedule``:

* ``step`` (:class:`WarmupStepDecay`): the references train with Adam at 1e-3
  for 210 epochs and divide the rate by 10 at epochs 170 and 200 (SimpleBaseline,
  Xiao et al., ECCV 2018, Sect. 4; HRNet and DARK use the same recipe);
* ``cosine`` (:class:`WarmupCosineDecay`): anneals to zero over the run
  (Loshchilov & Hutter, "SGDR", ICLR 2017, Eq. 5 without restarts);
* ``cyclic`` (:class:`CyclicalLearningRate`): the ``triangular``,
  ``triangular2`` and ``exp_range`` policies of Smith, "Cyclical Learning
  Rates for Training Neural Networks", WACV 2017, Sect. 3.1, settings in
  ``train.cyclic``;
* :class:`LearningRateRangeTest` is the sweep of the LR range test (Smith
  2017, Sect. 3.3) that :mod:`trainer.lr_finder` runs; it is not a training
  schedule.

Schedules are functions of the *optimizer step* (``optimizer.iterations``:
0 for the first update, one step = one global batch), so epochs are converted
with ``steps_per_epoch``. The optimizer's ``iterations`` is checkpointed by
the training loop, so a resumed run continues every schedule (a cycle
included) where it stopped. All schedules are TF ops on the step (no Python
branching on tensors: they trace into a ``tf.function`` / XLA graph) and
serialise through ``get_config`` / ``from_config``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Sequence

import keras
import tensorflow as tf

SCHEDULES = ("step", "cosine", "cyclic")
CYCLIC_POLICIES = ("triangular", "triangular2", "exp_range")
RANGE_TEST_MODES = ("exponential", "linear")


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Base of the family: ``rate(step)`` of the subclass times a linear warm-up.

    During the first ``warmup_steps`` optimizer steps the rate is multiplied by
    ``(step + 1) / warmup_steps`` (the "gradual warm-up" of Goyal et al.,
    "Accurate, Large Minibatch SGD", 2017, Sect. 2.2), so step 0 runs at
    ``rate / warmup_steps`` and step ``warmup_steps - 1`` at the full rate.

    Called with a step (a Python int, a scalar tensor, or an array of steps:
    the result has the step's shape, float32). Subclasses implement
    :meth:`rate` with element-wise TF ops on the float32 step and extend
    :meth:`get_config` with their constructor arguments.

    Args:
        warmup_steps: steps of linear warm-up, >= 0 (0: none).

    Raises:
        ValueError: negative ``warmup_steps``.
    """

    def __init__(self, warmup_steps: int = 0):
        if int(warmup_steps) < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
        self.warmup_steps = int(warmup_steps)

    def rate(self, step: tf.Tensor) -> tf.Tensor:
        """The rate before warm-up at ``step`` (float32 tensor of optimizer steps from 0, any shape)."""
        raise NotImplementedError

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        rate = tf.cast(self.rate(step), tf.float32)
        if self.warmup_steps <= 0:
            return rate
        return rate * tf.minimum(1.0, (step + 1.0) / float(self.warmup_steps))

    def get_config(self) -> Dict[str, Any]:
        return {"warmup_steps": self.warmup_steps}


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="darkpose")
class WarmupStepDecay(WarmupSchedule):
    """Linear warm-up, then ``base * factor ** (number of boundaries passed)``.

    Args:
        base_learning_rate: rate after warm-up, > 0.
        boundaries: optimizer steps at which the rate is multiplied by ``factor``.
        factor: decay factor, e.g. 0.1.
        warmup_steps: steps of linear warm-up (0: none), see :class:`WarmupSchedule`.

    Example:

        schedule = WarmupStepDecay(1e-3, [170 * 1000, 200 * 1000], 0.1)
        schedule(0)  # 1e-3
    """

    def __init__(self, base_learning_rate: float, boundaries: Sequence[int], factor: float,
                 warmup_steps: int = 0):
        super().__init__(warmup_steps)
        self.base_learning_rate = _positive("base_learning_rate", base_learning_rate)
        self.boundaries = [int(b) for b in boundaries]
        self.factor = float(factor)

    def rate(self, step):
        if not self.boundaries:
            return tf.fill(tf.shape(step), self.base_learning_rate)
        passed = tf.reduce_sum(tf.cast(step[..., None] >= tf.constant(self.boundaries, tf.float32), tf.float32),
                               axis=-1)
        return self.base_learning_rate * tf.pow(self.factor, passed)

    def get_config(self):
        return {**super().get_config(), "base_learning_rate": self.base_learning_rate,
                "boundaries": self.boundaries, "factor": self.factor}


@keras.saving.register_keras_serializable(package="darkpose")
class WarmupCosineDecay(WarmupSchedule):
    """Linear warm-up, then cosine annealing from ``base`` to 0 at ``total_steps``.

    ``rate = base / 2 * (1 + cos(pi * (step - warmup) / (total - warmup)))``,
    clipped to [0, 1] progress (SGDR, Loshchilov & Hutter, ICLR 2017, Eq. 5,
    one period, minimum 0).

    Args:
        base_learning_rate: peak rate, > 0.
        total_steps: step at which the rate reaches 0.
        warmup_steps: steps of linear warm-up (0: none).
    """

    def __init__(self, base_learning_rate: float, total_steps: int, warmup_steps: int = 0):
        super().__init__(warmup_steps)
        self.base_learning_rate = _positive("base_learning_rate", base_learning_rate)
        self.total_steps = int(total_steps)

    def rate(self, step):
        span = float(max(1, self.total_steps - self.warmup_steps))
        progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
        return 0.5 * self.base_learning_rate * (1.0 + tf.cos(math.pi * progress))

    def get_config(self):
        return {**super().get_config(), "base_learning_rate": self.base_learning_rate,
                "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(package="darkpose")
class CyclicalLearningRate(WarmupSchedule):
    """Cyclical learning rates (Smith, WACV 2017, Sect. 3.1 and its Caffe code).

    With ``it`` the optimizer step (from 0) and ``stepsize`` the half-cycle::

        cycle = floor(1 + it / (2 * stepsize))
        x     = |it / stepsize - 2 * cycle + 1|
        lr    = base_lr + (max_lr - base_lr) * max(0, 1 - x) * scale

    ``scale`` is 1 for ``triangular``, ``1 / 2 ** (cycle - 1)`` for
    ``triangular2`` (the amplitude halves every cycle) and ``gamma ** it`` for
    ``exp_range``. The rate starts at ``base_lr`` (it = 0), peaks at
    ``max_lr`` at it = stepsize, 3·stepsize, ... and returns to ``base_lr`` at
    every multiple of 2·stepsize. Smith recommends a stepsize of 2-10 epochs
    and base/max from the LR range test (:mod:`trainer.lr_finder`).

    Args:
        base_learning_rate: lower bound ``base_lr``, > 0.
        max_learning_rate: upper bound ``max_lr``, > ``base_lr``.
        step_size: half-cycle length in optimizer steps, >= 1.
        policy: ``triangular``, ``triangular2`` or ``exp_range``.
        gamma: ``exp_range`` decay per step, in (0, 1] (e.g. 0.99994 as in the
            paper's CIFAR-10 runs); must be None/1 for the other policies.
        warmup_steps: linear warm-up multiplied on top (0: none).

    Raises:
        ValueError: a bound <= 0 or ``max <= base``, ``step_size < 1``, an
            unknown policy, or a bad/missing ``gamma``.

    Example:

        schedule = CyclicalLearningRate(1e-4, 1e-3, step_size=2000, policy="triangular2")
        float(schedule(2000))  # 1e-3, the first peak
        float(schedule(6000))  # 5.5e-4, the second peak at half amplitude
    """

    def __init__(self, base_learning_rate: float, max_learning_rate: float, step_size: int,
                 policy: str = "triangular", gamma: float | None = None, warmup_steps: int = 0):
        super().__init__(warmup_steps)
        self.base_learning_rate = _positive("base_learning_rate", base_learning_rate)
        self.max_learning_rate = _positive("max_learning_rate", max_learning_rate)
        if not self.max_learning_rate > self.base_learning_rate:
            raise ValueError(f"max_learning_rate ({max_learning_rate!r}) must be > base_learning_rate "
                             f"({base_learning_rate!r})")
        if isinstance(step_size, bool) or int(step_size) != step_size or int(step_size) < 1:
            raise ValueError(f"step_size must be an integer >= 1 (optimizer steps), got {step_size!r}")
        self.step_size = int(step_size)
        if policy not in CYCLIC_POLICIES:
            raise ValueError(f"policy must be one of {CYCLIC_POLICIES}, got {policy!r}")
        self.policy = policy
        if policy == "exp_range":
            if gamma is None or not 0.0 < float(gamma) <= 1.0:
                raise ValueError(f"gamma must be in (0, 1] for policy exp_range, got {gamma!r}")
            gamma = float(gamma)
        elif gamma is not None and float(gamma) != 1.0:
            raise ValueError(f"gamma is only used by policy exp_range (got gamma={gamma!r} with policy {policy!r})")
        self.gamma = gamma if policy == "exp_range" else None

    def rate(self, step):
        cycle = tf.floor(1.0 + step / (2.0 * self.step_size))
        x = tf.abs(step / self.step_size - 2.0 * cycle + 1.0)
        if self.policy == "triangular":
            scale = 1.0
        elif self.policy == "triangular2":
            scale = tf.pow(0.5, cycle - 1.0)
        else:
            scale = tf.pow(self.gamma, step)
        amplitude = self.max_learning_rate - self.base_learning_rate
        return self.base_learning_rate + amplitude * tf.maximum(0.0, 1.0 - x) * scale

    def get_config(self):
        return {**super().get_config(), "base_learning_rate": self.base_learning_rate,
                "max_learning_rate": self.max_learning_rate, "step_size": self.step_size,
                "policy": self.policy, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="darkpose")
class LearningRateRangeTest(WarmupSchedule):
    """The sweep of the LR range test (Smith, WACV 2017, Sect. 3.3).

    Over ``num_steps`` steps the rate goes from ``min_learning_rate`` (step 0)
    to ``max_learning_rate`` (step ``num_steps - 1``), linearly as in the
    paper or exponentially (equal ratios per step, so every decade of a wide
    range such as 1e-7..1 gets the same number of steps); it stays at the
    maximum afterwards (``warmup_steps`` is accepted for the family's
    ``from_config`` but the range test uses none).

    Args:
        min_learning_rate: first rate, > 0.
        max_learning_rate: last rate, > ``min_learning_rate``.
        num_steps: length of the sweep, >= 2.
        mode: ``exponential`` or ``linear``.

    Raises:
        ValueError: bad bounds, ``num_steps`` or ``mode``.
    """

    def __init__(self, min_learning_rate: float, max_learning_rate: float, num_steps: int,
                 mode: str = "exponential", warmup_steps: int = 0):
        super().__init__(warmup_steps)
        self.min_learning_rate = _positive("min_learning_rate", min_learning_rate)
        self.max_learning_rate = _positive("max_learning_rate", max_learning_rate)
        if not self.max_learning_rate > self.min_learning_rate:
            raise ValueError(f"max_learning_rate ({max_learning_rate!r}) must be > min_learning_rate "
                             f"({min_learning_rate!r})")
        if isinstance(num_steps, bool) or int(num_steps) != num_steps or int(num_steps) < 2:
            raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
        self.num_steps = int(num_steps)
        if mode not in RANGE_TEST_MODES:
            raise ValueError(f"mode must be one of {RANGE_TEST_MODES}, got {mode!r}")
        self.mode = mode

    def rate(self, step):
        progress = tf.clip_by_value(step / float(self.num_steps - 1), 0.0, 1.0)
        if self.mode == "linear":
            return self.min_learning_rate + (self.max_learning_rate - self.min_learning_rate) * progress
        ratio = self.max_learning_rate / self.min_learning_rate
        return self.min_learning_rate * tf.pow(ratio, progress)

    def get_config(self):
        return {**super().get_config(), "min_learning_rate": self.min_learning_rate,
                "max_learning_rate": self.max_learning_rate, "num_steps": self.num_steps, "mode": self.mode}


def cyclic_step_size(cyclic_config: Mapping[str, Any], steps_per_epoch: int) -> int:
    """Half-cycle length in optimizer steps: ``step_size``, or ``round(step_size_epochs * steps_per_epoch)``.

    At least 1. Exactly one of the two keys must be set (checked by
    :func:`pose.config.load_config`; here too).

    Raises:
        ValueError: neither or both set.
    """
    step_size, epochs = cyclic_config.get("step_size"), cyclic_config.get("step_size_epochs")
    if (step_size is None) == (epochs is None):
        raise ValueError("exactly one of train.cyclic.step_size (steps) and train.cyclic.step_size_epochs "
                         f"must be set, got {step_size!r} and {epochs!r}")
    if step_size is not None:
        return int(step_size)
    return max(1, int(round(float(epochs) * steps_per_epoch)))


def learning_rate_schedule(train_config: Mapping[str, Any], steps_per_epoch: int,
                           total_steps: int) -> WarmupSchedule:
    """Builds the schedule named by ``train.lr_schedule`` (``step``, ``cosine`` or ``cyclic``).

    Args:
        train_config: ``config["train"]``; ``cyclic`` reads ``train.cyclic``
            (``policy``, ``base_lr``, ``max_lr``, ``step_size`` or
            ``step_size_epochs``, ``gamma``); ``step``/``cosine`` read
            ``learning_rate`` (and ``lr_decay_epochs``, ``lr_decay_factor``).
        steps_per_epoch: optimizer steps per epoch (>= 1), converts epochs to steps.
        total_steps: length of the run (cosine ends there).

    Returns:
        A :class:`WarmupSchedule` with ``train.warmup_steps`` of warm-up.

    Raises:
        ValueError: bad ``steps_per_epoch``/``total_steps``/``warmup_steps``, schedule
            name or schedule settings (the key is named).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup = int(train_config.get("warmup_steps") or 0)
    if warmup < 0:
        raise ValueError(f"train.warmup_steps must be >= 0, got {warmup}")
    name = train_config["lr_schedule"]
    if name == "step":
        boundaries = [int(epoch) * steps_per_epoch for epoch in train_config["lr_decay_epochs"]]
        return WarmupStepDecay(float(train_config["learning_rate"]), boundaries,
                               float(train_config["lr_decay_factor"]), warmup)
    if name == "cosine":
        return WarmupCosineDecay(float(train_config["learning_rate"]), total_steps, warmup)
    if name == "cyclic":
        cyclic = train_config.get("cyclic") or {}
        try:
            return CyclicalLearningRate(cyclic.get("base_lr"), cyclic.get("max_lr"),
                                        cyclic_step_size(cyclic, steps_per_epoch),
                                        cyclic.get("policy", "triangular"), cyclic.get("gamma"), warmup)
        except ValueError as error:
            raise ValueError(f"train.cyclic: {error}") from error
    raise ValueError(f"train.lr_schedule must be one of {SCHEDULES}, got {name!r}")


def build_optimizer(train_config: Mapping[str, Any], steps_per_epoch: int, total_steps: int,
                    schedule: keras.optimizers.schedules.LearningRateSchedule | None = None
                    ) -> keras.optimizers.Optimizer:
    """Adam with the configured schedule and optional global-norm gradient clipping.

    Under a distribution strategy Keras clips each replica's gradients before
    summing them across replicas, so the effective bound is ``replicas * clip_norm``.
    With a mixed-precision policy active, the optimizer is wrapped in a
    ``LossScaleOptimizer`` (only needed for float16; harmless for bfloat16).

    Args:
        train_config: ``config["train"]``.
        steps_per_epoch, total_steps: see :func:`learning_rate_schedule`.
        schedule: use this schedule instead of the configured one (the LR range
            test's sweep); clipping and precision still follow ``train_config``.

    Raises:
        ValueError: unknown optimizer or a non-positive ``clip_norm``.
    """
    if train_config["optimizer"] != "adam":
        raise ValueError(f"train.optimizer must be adam, got {train_config['optimizer']!r}")
    clip_norm = train_config.get("clip_norm")
    if clip_norm is not None and not float(clip_norm) > 0:
        raise ValueError(f"train.clip_norm must be > 0 or null, got {clip_norm!r}")
    if schedule is None:
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

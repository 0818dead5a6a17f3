"""The training loop: one custom ``strategy.run`` loop for every strategy.

Keras 3 ``model.fit`` fails under a 2-worker ``MultiWorkerMirroredStrategy``
(keras #20585), so the loop is written out, big_vision style, and the same code
runs on the default strategy, ``MirroredStrategy``, MWMS and ``TPUStrategy``:

* the global batch is split across replicas by
  ``strategy.distribute_datasets_from_function`` (the dataset function gets
  the ``InputContext`` and shards per worker);
* per-example losses (:func:`trainer.losses.keypoint_mse`; for ``approach:
  bottom_up`` :func:`trainer.losses.bottom_up_loss` via
  :func:`trainer.losses.make_loss_fn`, the one dispatch) are averaged over
  the *global* batch (``tf.nn.compute_average_loss``), and the Keras optimizer
  sums the replicas' gradients, so N replicas take the same step as one
  device on the same global batch;
* every ``log_every_steps`` it prints ``steps/s``, ``examples/s`` and the
  loss, writes TensorBoard scalars, and checks that every loss since the last
  check is finite (else :class:`NonFiniteLossError` naming the step range);
* every ``checkpoint_every_steps`` (and at the end) it saves a
  ``tf.train.CheckpointManager`` checkpoint of model, optimizer and step.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any, Callable, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from trainer import distribution, losses, optimization
from pose.overlay import blend_maps
from trainer.models import attention_model, prediction

CHECKPOINT_SUBDIR = "checkpoints"
TENSORBOARD_SUBDIR = "tensorboard"
NUM_PREVIEW_IMAGES = 4


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
    """What a call to :func:`train` did.

    Attributes:
        start_step: global step restored from the checkpoint (0 for a fresh run).
        final_step: global step reached (``total_steps`` on success).
        final_loss: mean loss over the last logging interval (NaN if no step ran).
        history: ``[(step, mean loss of the interval ending there), ...]``.
        steps_per_second, examples_per_second: throughput over the run, the first
            (tracing) interval excluded when there is more than one.
        checkpoint: path of the last checkpoint saved or restored (None if none).
    """

    start_step: int
    final_step: int
    final_loss: float
    history: List[Tuple[int, float]]
    steps_per_second: float
    examples_per_second: float
    checkpoint: Optional[str]


def _checkpoint_directory(run_dir: str, strategy: tf.distribute.Strategy) -> str:
    # Under MWMS every worker must save (the save may run collectives), but only
    # the chief writes the real checkpoint; the others write to a scratch dir.
    base = os.path.join(run_dir, CHECKPOINT_SUBDIR)
    if distribution.is_chief(strategy):
        return base
    return os.path.join(base, f"scratch_{distribution.task_label(strategy)}")


def draw_keypoints(images: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                   color=(255, 0, 0), threshold: float = 0.1, radius: int = 1) -> np.ndarray:
    """Marks keypoints on images (vectorised, NumPy) for TensorBoard previews.

    Args:
        images: (N, H, W, 3) RGB 0..255.
        keypoints: (N, K, 2) crop pixels (x, y).
        scores: (N, K); joints below ``threshold`` are not drawn.
        color: RGB of the squares; radius: half size of each square, pixels.

    Returns:
        (N, H, W, 3) uint8 copy with a square of ``color`` on every joint.
    """
    canvas = np.clip(np.asarray(images, np.float32), 0, 255).astype(np.uint8).copy()
    num_images, height, width = canvas.shape[:3]
    offsets = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    centers = np.rint(np.asarray(keypoints)).astype(np.int64)            # (N, K, 2)
    cols = centers[..., 0, None] + dx.ravel()                            # (N, K, P)
    rows = centers[..., 1, None] + dy.ravel()
    batch = np.broadcast_to(np.arange(num_images)[:, None, None], cols.shape)
    keep = ((np.asarray(scores)[..., None] >= threshold) & (cols >= 0) & (cols < width)
            & (rows >= 0) & (rows < height))
    canvas[batch[keep], rows[keep], cols[keep]] = np.asarray(color, np.uint8)
    return canvas


# TensorBoard summaries through the core ``tf.summary.write`` op with the
# scalars/images plugin metadata, so the trainer needs no tensorboard package.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()
_IMAGE_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="images")).SerializeToString()


def write_scalar(name: str, value: float, step: int) -> None:
    """Writes a TensorBoard scalar to the default summary writer."""
    tf.summary.write(name, tf.constant(float(value), tf.float32), step=step, metadata=_SCALAR_METADATA)


def write_images(name: str, images: np.ndarray, step: int) -> None:
    """Writes (N, H, W, 3) uint8 images as one TensorBoard image summary."""
    images = np.asarray(images, np.uint8)
    encoded = [tf.io.encode_png(image) for image in images]
    height, width = images.shape[1:3]
    tensor = tf.stack([tf.constant(str(width)), tf.constant(str(height))] + encoded)
    tf.summary.write(name, tensor, step=step, metadata=_IMAGE_METADATA)


def make_step_fn(model, optimizer, global_batch: int, ohkm_topk: int | None,
                 loss_fn: Callable | None = None) -> Callable:
    """One replica's training step ``(inputs, targets) -> loss``, shared with :mod:`trainer.lr_finder`.

    The loss is :func:`trainer.losses.keypoint_mse` (or ``loss_fn(targets,
    outputs) -> (b,)`` per-example losses, e.g. :func:`trainer.losses.make_loss_fn`
    of a bottom-up config) averaged over the *global*
    batch (``tf.nn.compute_average_loss``), scaled for a ``LossScaleOptimizer``;
    the optimizer applies the gradients. Run it through ``strategy.run`` (or
    directly, on one device, where ``global_batch`` is the batch size).
    """
    if loss_fn is None:
        def loss_fn(targets, outputs):
            return losses.keypoint_mse(targets["heatmaps"], outputs, targets["target_weight"], ohkm_topk)

    def step_fn(inputs, targets):
        with tf.GradientTape() as tape:
            outputs = model(inputs["image"], training=True)
            per_example = loss_fn(targets, outputs)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled_loss = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss
    return step_fn


def train(config: Mapping[str, Any],
          model_fn: Callable[[], Any],
          dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
          run_dir: str,
          total_steps: int,
          steps_per_epoch: int,
          strategy: tf.distribute.Strategy | None = None,
          codec=None,
          log: Callable[[str], None] = print) -> Tuple[Any, TrainResult]:
    """Trains (or resumes training) until the global step reaches ``total_steps``.

    Resume order: build model and optimizer under the strategy scope -> build
    the optimizer's slots -> restore the latest checkpoint of
    ``<run_dir>/checkpoints`` (model weights, optimizer slots and iterations,
    step) -> continue from the restored step with a fresh input iterator.
    Re-running the same command after a crash therefore continues from the last
    checkpoint and stops at the same ``total_steps``.

    Args:
        config: loaded experiment config (uses ``train``).
        model_fn: ``() -> keras.Model``, called inside ``strategy.scope()``;
            output (B, H_hm, W_hm, K) float heatmaps or a list of them.
        dataset_fn: ``(InputContext) -> tf.data.Dataset`` of *per-replica*
            batches ``({"image": (b, H_in, W_in, 3)}, {"heatmaps": (b, H_hm, W_hm, K),
            "target_weight": (b, K)})``; it must repeat (training never runs out).
        run_dir: directory for ``checkpoints/`` and ``tensorboard/``.
        total_steps: global step to reach, >= 1.
        steps_per_epoch: optimizer steps per epoch (LR schedule boundaries).
        strategy: distribution strategy (default: :func:`trainer.distribution.choose_strategy`).
        codec: optional :class:`pose.codec.HeatmapCodec` for the TensorBoard
            keypoint previews (skipped without it).
        log: progress sink (one line per logging step).

    Returns:
        ``(model, TrainResult)``.

    Raises:
        ValueError: bad ``total_steps``/``steps_per_epoch``/batch settings, or the
            dataset ran out.
        NonFiniteLossError: the loss became NaN/Inf; the message names the step range.
    """
    if not isinstance(total_steps, (int, np.integer)) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
    if not isinstance(steps_per_epoch, (int, np.integer)) or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
    train_config = config["train"]
    log_every = int(train_config["log_every_steps"])
    checkpoint_every = int(train_config["checkpoint_every_steps"])
    if log_every < 1 or checkpoint_every < 1:
        raise ValueError(f"train.log_every_steps and train.checkpoint_every_steps must be >= 1, "
                         f"got {log_every} and {checkpoint_every}")
    strategy = strategy or distribution.choose_strategy()
    global_batch = int(train_config["batch_size"])
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"train.batch_size {global_batch} must be divisible by the {replicas} replicas")
    ohkm_topk = int(train_config["ohkm_topk"]) if train_config.get("ohkm") else None
    chief = distribution.is_chief(strategy)

    optimization.set_precision_policy(train_config)
    with strategy.scope():
        model = model_fn()
        optimizer = optimization.build_optimizer(train_config, int(steps_per_epoch), int(total_steps))
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    schedule = optimization.learning_rate_schedule(train_config, int(steps_per_epoch), int(total_steps))

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    checkpoint_dir = _checkpoint_directory(run_dir, strategy)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=3)
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, CHECKPOINT_SUBDIR))
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        log(f"restored {latest} at step {int(step.numpy())}")
    start_step = int(step.numpy())
    last_checkpoint = latest

    writer = (tf.summary.create_file_writer(os.path.join(run_dir, TENSORBOARD_SUBDIR)) if chief
              else tf.summary.create_noop_writer())
    preview = None
    if chief and codec is not None and start_step < total_steps and config.get("approach") != "bottom_up":
        preview_inputs, _ = next(iter(dataset_fn(tf.distribute.InputContext())))
        preview = preview_inputs["image"][:NUM_PREVIEW_IMAGES]

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    iterator = iter(dataset)

    step_fn = make_step_fn(model, optimizer, global_batch, ohkm_topk, losses.make_loss_fn(config))

    @tf.function
    def train_step(iterator):
        inputs, targets = next(iterator)
        per_replica_loss = strategy.run(step_fn, args=(inputs, targets))
        step.assign_add(1)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_loss, axis=None)

    history: List[Tuple[int, float]] = []
    pending: List[tf.Tensor] = []
    last_checked = start_step
    timed_steps, timed_seconds = 0, 0.0          # excludes the first (tracing) interval
    first_steps, first_seconds = 0, 0.0
    interval_start = time.perf_counter()
    current = start_step

    def check_losses() -> float:
        nonlocal pending, last_checked
        values = np.array([float(v) for v in pending], np.float64)
        if values.size and not np.all(np.isfinite(values)):
            bad = last_checked + 1 + int(np.argmin(np.isfinite(values)))
            raise NonFiniteLossError(
                f"training loss became {values[~np.isfinite(values)][0]} between steps {last_checked + 1} "
                f"and {current} (first at step {bad}); lower train.learning_rate, set train.clip_norm, "
                f"or check the input records")
        mean = float(values.mean()) if values.size else float("nan")
        pending, last_checked = [], current
        return mean

    with writer.as_default():
        while current < total_steps:
            try:
                pending.append(train_step(iterator))
            except (tf.errors.OutOfRangeError, StopIteration) as error:
                raise ValueError(f"the training dataset ran out at step {current}; it must repeat") from error
            current += 1
            at_end = current == total_steps
            if current % log_every == 0 or at_end or current % checkpoint_every == 0:
                interval_steps = current - last_checked
                mean_loss = check_losses()
                elapsed = time.perf_counter() - interval_start
                steps_per_second = interval_steps / max(elapsed, 1e-9)
                if first_steps == 0:
                    first_steps, first_seconds = interval_steps, elapsed
                else:
                    timed_steps += interval_steps
                    timed_seconds += elapsed
                history.append((current, mean_loss))
                # The rate of the last update, from the optimizer's own (checkpointed) step counter.
                learning_rate = float(schedule(tf.maximum(optimizer.iterations - 1, 0)))
                log(f"step {current}/{total_steps}  loss {mean_loss:.6g}  lr {learning_rate:.3g}  "
                    f"{steps_per_second:.2f} steps/s  {steps_per_second * global_batch:.1f} examples/s")
                write_scalar("train/loss", mean_loss, current)
                write_scalar("train/learning_rate", learning_rate, current)
                write_scalar("train/steps_per_second", steps_per_second, current)
                write_scalar("train/examples_per_second", steps_per_second * global_batch, current)
                if preview is not None and (current % checkpoint_every == 0 or at_end
                                            or len(history) == 1):
                    _write_preview(model, codec, preview, current)
                if current % checkpoint_every == 0 or at_end:
                    last_checkpoint = manager.save(checkpoint_number=current)
                    if chief:
                        log(f"saved checkpoint {last_checkpoint}")
                    else:
                        shutil.rmtree(checkpoint_dir, ignore_errors=True)
                writer.flush()
                interval_start = time.perf_counter()

    final_loss = history[-1][1] if history else float("nan")
    if timed_steps == 0:
        timed_steps, timed_seconds = first_steps, first_seconds
    steps_per_second = timed_steps / timed_seconds if timed_seconds > 0 else float("nan")
    result = TrainResult(start_step=start_step, final_step=current, final_loss=final_loss, history=history,
                         steps_per_second=steps_per_second,
                         examples_per_second=steps_per_second * global_batch,
                         checkpoint=last_checkpoint if chief else None)
    return model, result


def _write_preview(model, codec, images: tf.Tensor, step: int) -> None:
    """TensorBoard image summary: crops with the predicted keypoints (red); for models with
    attention heads also ``train/attention``: the crops with their attention maps blended over them."""
    with_attention = attention_model(model)
    if with_attention is None:
        heatmaps = prediction(model(images, training=False))
    else:
        heatmaps, attention = with_attention(images, training=False)
        write_images("train/attention", blend_maps(np.asarray(images), np.asarray(attention)), step)
    keypoints, scores = codec.decode(np.asarray(tf.cast(heatmaps, tf.float32)))
    drawn = draw_keypoints(np.asarray(images), keypoints, scores)
    write_images("train/predicted_keypoints", drawn, step)

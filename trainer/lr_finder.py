"""The learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017, Sect. 3.3).

Command line:

    python -m trainer.lr_finder --examples <ExampleGen output dir> --config configs/coco/res50_256x192.yaml \\
        --out <dir> [--small-run] [--min-lr 1e-7] [--max-lr 1] [--steps 100] [--mode exponential|linear] \\
        [--smoothing 0.9] [--divergence-factor 4]

A short training run of the config's model, loss and optimizer (the same
builder, :func:`trainer.train_loop.make_step_fn` and
:func:`trainer.optimization.build_optimizer` as training; Adam, clipping and
precision from ``train``) on the config's ``Split-train`` data through the
training input pipeline (augmentation included), ``train.batch_size`` per
step, on one device, starting from the builder's initial weights. The
learning rate rises every step from ``--min-lr`` to ``--max-lr`` over
``--steps`` steps (:class:`trainer.optimization.LearningRateRangeTest`):
**exponentially** by default (the same ratio per step, so a range of seven
decades gets equal attention per decade), or **linearly** as in the paper
(``--mode linear``, meant for a narrow range).

The loss of every step is recorded. The sweep stops early when a loss is NaN
or infinite, or when the running loss (bias-corrected exponential moving
average, weight ``--smoothing`` on the past) exceeds ``--divergence-factor``
times its lowest value so far: the rate is then far past usable.

Suggested bounds (Sect. 3.3 reads them off the curve; here with the loss in
place of the paper's accuracy, on the zero-phase smoothed loss, i.e. the same
moving average run forwards and then backwards so that it does not lag):

* ``max_lr`` = the rate at the lowest smoothed loss: the last rate at which
  the loss still falls (the paper's "when the accuracy slows, becomes ragged,
  or starts to fall");
* ``base_lr`` = ``max_lr / 4`` (the paper's rule of thumb: "set base_lr to
  1/3 or 1/4 of max_lr").

The rate of the steepest descent of the smoothed loss (per decade of rate)
is reported as well, for reference. Warnings are added when the curve does
not support the rule (the loss never fell, or still fell at ``--max-lr``).

Outputs in ``--out`` (local or ``gs://``; the JSON is written last):

* ``lr_finder.png``: loss and smoothed loss against the learning rate
  (log axis), with the suggested bounds marked;
* ``lr_finder.json`` (strict JSON): the settings, the curve (``step``,
  ``learning_rate``, ``loss``, ``smoothed_loss``; a non-finite loss is
  ``null``), why it stopped, the suggestion with its rule and warnings, and a
  ``train`` config fragment for ``lr_schedule: cyclic``.
"""
from __future__ import annotations

import io
import math
import os
import sys
from typing import Any, Callable, Dict, List, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from scipy import signal

from toolkit import cli
from pose.codec import HeatmapCodec
from pose.config import load_config
from schemas import examples as examples_layout
from schemas import jsonio
from trainer import input_pipeline, optimization, train_loop
from trainer import losses as loss_module
from trainer.models import build_model

JSON_FILE = "lr_finder.json"
PLOT_FILE = "lr_finder.png"
BASE_LR_DIVISOR = 4.0           # Smith 2017, Sect. 3.3: base_lr = 1/3 or 1/4 of max_lr
SUGGESTED_STEP_SIZE_EPOCHS = 4  # Smith 2017, Sect. 3.2: stepsize = 2-10 epochs
RULE = ("max_lr = learning rate at the lowest smoothed loss (zero-phase EMA); base_lr = max_lr / 4 "
        "(Smith, WACV 2017, Sect. 3.3)")


def smooth_losses(losses: Sequence[float], smoothing: float) -> np.ndarray:
    """Zero-phase exponential moving average of a loss curve (the curve the bounds are read from).

    The bias-corrected EMA ``m_t = smoothing * m_{t-1} + (1 - smoothing) * loss_t``
    (divided by ``1 - smoothing ** (t + 1)``, as in Adam) is run forwards and
    then backwards over the result, so it has no lag.

    Args:
        losses: (T,) finite losses.
        smoothing: weight of the past, in [0, 1); 0 returns the losses.

    Returns:
        (T,) float64 smoothed losses.

    Raises:
        ValueError: ``smoothing`` outside [0, 1) or a non-finite loss.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    values = np.asarray(losses, np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("smooth_losses takes finite losses only")

    def ema(series: np.ndarray) -> np.ndarray:
        averaged = signal.lfilter([1.0 - smoothing], [1.0, -smoothing], series)
        return averaged / (1.0 - smoothing ** np.arange(1, series.size + 1))

    return ema(ema(values)[::-1])[::-1] if values.size else values


def suggest_learning_rates(learning_rates: Sequence[float], smoothed_losses: Sequence[float],
                           stopped_early: bool) -> Dict[str, Any]:
    """The suggested cyclic bounds from a range-test curve (rule in the module docstring).

    Args:
        learning_rates: (T,) increasing rates of the steps, T >= 2.
        smoothed_losses: (T,) smoothed losses (:func:`smooth_losses`).
        stopped_early: the sweep stopped on divergence (so the minimum is not
            just the end of the range).

    Returns:
        ``{"base_lr", "max_lr", "lr_at_min_loss", "lr_steepest_descent", "rule", "warnings"}``;
        ``base_lr < max_lr`` always.

    Raises:
        ValueError: fewer than 2 points or mismatched lengths.
    """
    rates = np.asarray(learning_rates, np.float64)
    smoothed = np.asarray(smoothed_losses, np.float64)
    if rates.shape != smoothed.shape or rates.ndim != 1 or rates.size < 2:
        raise ValueError(f"need two curves of the same length >= 2, got {rates.shape} and {smoothed.shape}")
    lowest = int(np.argmin(smoothed))
    slope = np.gradient(smoothed, np.log10(rates))          # loss change per decade of rate
    steepest = int(np.argmin(slope[:lowest + 1]))
    warnings: List[str] = []
    if lowest == 0:
        warnings.append("the smoothed loss never fell below its first value: the sweep starts too high or is too "
                        "short (lower --min-lr or raise --steps); max_lr is then --min-lr")
    elif lowest == rates.size - 1 and not stopped_early:
        warnings.append("the loss was still falling at the last rate tried: raise --max-lr; max_lr is then "
                        "--max-lr")
    max_lr = float(rates[lowest])
    return {"base_lr": max_lr / BASE_LR_DIVISOR, "max_lr": max_lr, "lr_at_min_loss": max_lr,
            "lr_steepest_descent": float(rates[steepest]), "rule": RULE, "warnings": warnings}


def range_test(config: Mapping[str, Any], train_files: str | Sequence[str], min_lr: float = 1e-7,
               max_lr: float = 1.0, steps: int = 100, mode: str = "exponential", smoothing: float = 0.9,
               divergence_factor: float = 4.0, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Runs the sweep and returns the result (what ``lr_finder.json`` holds), writing nothing.

    Args:
        config: loaded experiment config (:func:`pose.config.load_config`).
        train_files: the train split's shards (glob pattern(s) or directory).
        min_lr, max_lr: first and last rate, ``0 < min_lr < max_lr``.
        steps: length of the sweep, >= 5.
        mode: ``exponential`` or ``linear`` rise.
        smoothing: EMA weight of the past, in [0, 1).
        divergence_factor: stop when the running loss exceeds this times its lowest value, > 1.
        log: progress sink.

    Returns:
        A dict of plain values; see the module docstring.

    Raises:
        ValueError: bad arguments (named), no train files, or the first step's loss is not finite.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 5:
        raise ValueError(f"steps must be an integer >= 5, got {steps!r}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    if not divergence_factor > 1.0:
        raise ValueError(f"divergence_factor must be > 1, got {divergence_factor!r}")
    schedule = optimization.LearningRateRangeTest(min_lr, max_lr, steps, mode)
    train_config = config["train"]
    batch_size = int(train_config["batch_size"])
    ohkm_topk = int(train_config["ohkm_topk"]) if train_config.get("ohkm") else None
    codec = HeatmapCodec.from_config(config)
    dataset = input_pipeline.make_dataset(train_files, dict(config), codec, training=True, batch_size=batch_size)
    previous_policy = keras.mixed_precision.dtype_policy()
    optimization.set_precision_policy(train_config)
    try:
        model = build_model(config)
        optimizer = optimization.build_optimizer(train_config, 1, steps, schedule=schedule)
        train_step = tf.function(train_loop.make_step_fn(model, optimizer, batch_size, ohkm_topk,
                                                         loss_module.make_loss_fn(config)))
        log(f"LR range test: {config['model']['name']}, {steps} steps of {batch_size} examples, "
            f"{mode} from {min_lr:g} to {max_lr:g}")
        losses: List[float] = []
        running, lowest_running = 0.0, math.inf
        stop_reason = None
        for step, (inputs, targets) in zip(range(steps), dataset):
            loss = float(train_step(inputs, targets))
            losses.append(loss)
            rate = float(schedule(step))
            if not math.isfinite(loss):
                stop_reason = f"the loss became {loss} at step {step} (learning rate {rate:.3g})"
                break
            running = smoothing * running + (1.0 - smoothing) * loss
            corrected = running / (1.0 - smoothing ** (step + 1))
            lowest_running = min(lowest_running, corrected)
            if (step + 1) % max(1, steps // 10) == 0:
                log(f"step {step + 1}/{steps}  lr {rate:.3g}  loss {loss:.6g}  smoothed {corrected:.6g}")
            if corrected > divergence_factor * lowest_running:
                stop_reason = (f"diverged at step {step} (learning rate {rate:.3g}): the running loss {corrected:.4g} "
                               f"is over {divergence_factor:g} x its lowest value {lowest_running:.4g}")
                break
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)
    if len(losses) < steps and stop_reason is None:
        raise ValueError(f"the training split ran out after {len(losses)} steps")
    finite = [loss for loss in losses if math.isfinite(loss)]
    if len(finite) < 2:
        raise ValueError(f"the range test needs at least 2 steps with a finite loss, got {len(finite)} "
                         f"({stop_reason}); lower --min-lr or check the input records")
    if stop_reason:
        log(f"stopped early: {stop_reason}")
    learning_rates = np.asarray(schedule(np.arange(len(losses), dtype=np.float32)), np.float64)
    smoothed = smooth_losses(finite, smoothing)
    suggestion = suggest_learning_rates(learning_rates[:len(finite)], smoothed, stop_reason is not None)
    return {
        "config": config["name"],
        "model": config["model"]["name"],
        "batch_size": batch_size,
        "mode": mode,
        "min_lr": float(min_lr),
        "max_lr": float(max_lr),
        "steps_requested": steps,
        "steps_run": len(losses),
        "smoothing": float(smoothing),
        "divergence_factor": float(divergence_factor),
        "stopped_early": stop_reason is not None,
        "stop_reason": stop_reason,
        "curve": {
            "step": list(range(len(losses))),
            "learning_rate": learning_rates.tolist(),
            "loss": losses,                                               # non-finite -> null in the JSON
            "smoothed_loss": smoothed.tolist() + [None] * (len(losses) - len(finite)),
        },
        "suggestion": suggestion,
        "train_config": {"lr_schedule": "cyclic", "cyclic": {
            "policy": "triangular", "base_lr": suggestion["base_lr"], "max_lr": suggestion["max_lr"],
            "step_size_epochs": SUGGESTED_STEP_SIZE_EPOCHS}},
    }


def plot_curve(result: Mapping[str, Any]) -> bytes:
    """PNG bytes of loss and smoothed loss against the learning rate, bounds marked (matplotlib, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve = result["curve"]
    rates = np.asarray(curve["learning_rate"], np.float64)
    losses = np.asarray([np.nan if value is None else value for value in curve["loss"]], np.float64)
    smoothed = np.asarray([np.nan if value is None else value for value in curve["smoothed_loss"]], np.float64)
    figure = Figure(figsize=(7.0, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.plot(rates, losses, color="0.7", linewidth=1.0, label="loss")
    axes.plot(rates, smoothed, color="tab:blue", linewidth=2.0, label="smoothed loss")
    suggestion = result["suggestion"]
    axes.axvline(suggestion["base_lr"], color="tab:green", linestyle="--",
                 label=f"base_lr {suggestion['base_lr']:.3g}")
    axes.axvline(suggestion["max_lr"], color="tab:red", linestyle="--", label=f"max_lr {suggestion['max_lr']:.3g}")
    axes.set_xscale("log")
    finite = smoothed[np.isfinite(smoothed)]
    spread = float(finite.max() - finite.min()) or abs(float(finite.max())) or 1.0
    axes.set_ylim(float(finite.min()) - 0.1 * spread, float(finite.max()) + 0.3 * spread)
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss (keypoint MSE)")
    axes.set_title(f"LR range test: {result['config']} ({result['mode']}, {result['steps_run']} steps)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper left")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def find_learning_rate(examples_dir: str, config: Mapping[str, Any], out_dir: str, **kwargs: Any) -> Dict[str, Any]:
    """Runs :func:`range_test` on ``<examples_dir>/Split-train`` and writes the PNG, then the JSON, to ``out_dir``.

    Args:
        examples_dir: ExampleGen output (``Split-train/data_tfrecord-*``), local or ``gs://``.
        config: loaded experiment config.
        out_dir: output folder (created), local or ``gs://``.
        **kwargs: :func:`range_test`'s settings (``min_lr``, ``max_lr``, ``steps``, ...).

    Returns:
        The result dict, with ``examples``, ``plot`` and ``json`` paths added.

    Raises:
        ValueError: no ``Split-train`` directory, or as :func:`range_test`.
    """
    split_dir = examples_layout.split_dir(examples_dir, "train")
    if not tf.io.gfile.isdir(split_dir):
        raise ValueError(f"examples dir {examples_dir!r} has no Split-train directory ({split_dir})")
    result = range_test(config, examples_layout.shard_pattern(examples_dir, "train"), **kwargs)
    tf.io.gfile.makedirs(out_dir)
    plot_path, json_path = os.path.join(out_dir, PLOT_FILE), os.path.join(out_dir, JSON_FILE)
    result = {**result, "examples": examples_dir, "plot": plot_path, "json": json_path}
    png = plot_curve(result)
    with tf.io.gfile.GFile(plot_path, "wb") as handle:
        handle.write(png)
    jsonio.write(json_path, result, indent=2)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m trainer.lr_finder", description=__doc__.split("\n")[0])
    parser.add_argument("--examples", required=True, help="ExampleGen output dir (with Split-train/)")
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. configs/demo.yaml")
    parser.add_argument("--out", required=True, help=f"output dir ({PLOT_FILE}, {JSON_FILE})")
    parser.add_argument("--small-run", action="store_true", help="apply the config's small_run section")
    parser.add_argument("--min-lr", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    parser.add_argument("--max-lr", type=float, default=1.0, help="last learning rate (default 1)")
    parser.add_argument("--steps", type=int, default=100, help="steps of the sweep (default 100)")
    parser.add_argument("--mode", choices=optimization.RANGE_TEST_MODES, default="exponential",
                        help="how the rate rises per step (default exponential; linear as in the paper)")
    parser.add_argument("--smoothing", type=float, default=0.9, help="EMA weight of the past, [0, 1) (default 0.9)")
    parser.add_argument("--divergence-factor", type=float, default=4.0,
                        help="stop when the running loss exceeds this times its lowest value (default 4)")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.min_lr) and math.isfinite(args.max_lr) and 0 < args.min_lr < args.max_lr):
        parser.error(f"need 0 < --min-lr < --max-lr, got {args.min_lr:g} and {args.max_lr:g}")
    if args.steps < 5:
        parser.error(f"--steps must be >= 5, got {args.steps}")
    if not 0.0 <= args.smoothing < 1.0:
        parser.error(f"--smoothing must be in [0, 1), got {args.smoothing:g}")
    if not args.divergence_factor > 1.0:
        parser.error(f"--divergence-factor must be > 1, got {args.divergence_factor:g}")
    config = load_config(args.config, small_run=args.small_run)

    def log(message: str) -> None:
        print(message, flush=True)

    result = find_learning_rate(args.examples, config, args.out, min_lr=args.min_lr, max_lr=args.max_lr,
                                steps=args.steps, mode=args.mode, smoothing=args.smoothing,
                                divergence_factor=args.divergence_factor, log=log)
    suggestion = result["suggestion"]
    for warning in suggestion["warnings"]:
        print(f"warning: {warning}", flush=True)
    print(f"suggested base_lr {suggestion['base_lr']:.3g}, max_lr {suggestion['max_lr']:.3g} ({RULE}); "
          f"steepest descent at {suggestion['lr_steepest_descent']:.3g}", flush=True)
    print(f"wrote {result['plot']} and {result['json']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m trainer.lr_finder"))

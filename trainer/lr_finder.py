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
times its lowest value so far: the rate is then far past usable
(:class:`DivergenceStop`). The step that trips the stop is recorded but not
smoothed: one exploded loss would otherwise leak, through the backward pass
of the zero-phase average, into every earlier point and drag the minimum to
the start of the sweep.

Suggested bounds (Sect. 3.3 reads them off the curve; here with the loss in
place of the paper's accuracy, on the zero-phase smoothed loss, i.e. the same
moving average run forwards and then backwards so that it does not lag):

* ``max_lr`` = the rate at the lowest smoothed loss: the last rate at which
  the loss still falls (the paper's "when the accuracy slows, becomes ragged,
  or starts to fall");
* ``base_lr`` = ``max_lr / 4`` (the paper's rule of thumb: "set base_lr to
  1/3 or 1/4 of max_lr").

The rate of the steepest descent of the smoothed loss (per decade of rate)
is reported as well, for reference. A warning is added when the loss still
fell at ``--max-lr``. There is **no suggestion** when the curve has no finite
descending stretch (fewer than two smoothed points before the stop, or a
smoothed loss that never falls below its first value, e.g. a sweep that
diverged at once): the files are still written, with ``suggestion`` and
``train_config`` ``null`` and the reason in ``no_suggestion``, and the CLI
exits with status 2 naming the reason (:class:`NoSuggestion`).

Outputs in ``--out`` (local or ``gs://``; the JSON is written last):

* ``lr_finder.png``: loss and smoothed loss against the learning rate
  (log axis), with the suggested bounds marked;
* ``lr_finder.json`` (strict JSON): the settings, the curve (``step``,
  ``learning_rate``, ``loss``, ``smoothed_loss``; a non-finite loss is
  ``null``, and so is the smoothed loss of the step that stopped the sweep),
  why it stopped, the suggestion with its rule and warnings (or ``null`` and
  ``no_suggestion``), and a ``train`` config fragment for ``lr_schedule: cyclic``.
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


class NoSuggestion(ValueError):
    """The range-test curve has no finite descending stretch, so no bounds can be read off it (the message says
    why); :func:`main` exits with status 2."""


class DivergenceStop:
    """The sweep's early stop: a non-finite loss, or the running loss over ``factor`` x its lowest value.

    The running loss is the causal bias-corrected EMA ``m_t = smoothing * m_{t-1} + (1 - smoothing) * loss_t``
    divided by ``1 - smoothing ** (t + 1)`` (the forward half of :func:`smooth_losses`).

    Args:
        smoothing: EMA weight of the past, in [0, 1).
        factor: divergence factor, > 1.
    """

    def __init__(self, smoothing: float, factor: float):
        self.smoothing, self.factor = float(smoothing), float(factor)
        self.running, self.corrected, self.lowest = 0.0, math.nan, math.inf

    def update(self, step: int, loss: float, rate: float) -> str | None:
        """Feeds the loss of ``step`` (0-based) at learning rate ``rate``; returns why to stop, or None."""
        if not math.isfinite(loss):
            return f"the loss became {loss} at step {step} (learning rate {rate:.3g})"
        self.running = self.smoothing * self.running + (1.0 - self.smoothing) * loss
        self.corrected = self.running / (1.0 - self.smoothing ** (step + 1))
        self.lowest = min(self.lowest, self.corrected)
        if self.corrected > self.factor * self.lowest:
            return (f"diverged at step {step} (learning rate {rate:.3g}): the running loss {self.corrected:.4g} "
                    f"is over {self.factor:g} x its lowest value {self.lowest:.4g}")
        return None


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
        NoSuggestion: no finite descending stretch: fewer than 2 points, or the
            smoothed loss never falls below its first value.
        ValueError: mismatched lengths or non-finite values.
    """
    rates = np.asarray(learning_rates, np.float64)
    smoothed = np.asarray(smoothed_losses, np.float64)
    if rates.shape != smoothed.shape or rates.ndim != 1:
        raise ValueError(f"need two 1-D curves of the same length, got {rates.shape} and {smoothed.shape}")
    if not (np.all(np.isfinite(rates)) and np.all(np.isfinite(smoothed))):
        raise ValueError("suggest_learning_rates takes finite rates and smoothed losses only")
    if rates.size < 2:
        raise NoSuggestion(f"no finite descending stretch: {rates.size} smoothed loss(es) before the stop, "
                           "at least 2 are needed (the sweep starts too high: lower --min-lr)")
    lowest = int(np.argmin(smoothed))
    if lowest == 0:
        raise NoSuggestion(f"no finite descending stretch: the smoothed loss never fell below its first value "
                           f"{smoothed[0]:.4g} over {rates.size} steps up to learning rate {rates[-1]:.3g} (the "
                           "sweep starts too high or is too short: lower --min-lr or raise --steps)")
    slope = np.gradient(smoothed, np.log10(rates))          # loss change per decade of rate
    steepest = int(np.argmin(slope[:lowest + 1]))
    warnings: List[str] = []
    if lowest == rates.size - 1 and not stopped_early:
        warnings.append("the loss was still falling at the last rate tried: raise --max-lr; max_lr is then "
                        "--max-lr")
    max_lr = float(rates[lowest])
    return {"base_lr": max_lr / BASE_LR_DIVISOR, "max_lr": max_lr, "lr_at_min_loss": max_lr,
            "lr_steepest_descent": float(rates[steepest]), "rule": RULE, "warnings": warnings}


def summarise_sweep(learning_rates: Sequence[float], losses: Sequence[float], stop_reason: str | None,
                    smoothing: float) -> Dict[str, Any]:
    """The smoothed curve and the suggestion (or why there is none) of a recorded sweep.

    The step that stopped an early-stopped sweep (its last, non-finite or
    diverging) is left out of the smoothing and the suggestion; all earlier
    losses are finite by construction (:class:`DivergenceStop`).

    Args:
        learning_rates: (T,) rates of the recorded steps.
        losses: (T,) their losses (the last may be non-finite when stopped).
        stop_reason: why the sweep stopped early, or None when it ran to the end.
        smoothing: EMA weight of the past, in [0, 1).

    Returns:
        ``{"smoothed_loss": (T,) list (None where not smoothed), "suggestion": dict or None,
        "no_suggestion": reason or None}``.

    Raises:
        ValueError: mismatched lengths, or a non-finite loss before the last step of a stopped sweep.
    """
    rates = np.asarray(learning_rates, np.float64)
    if rates.shape != (len(losses),):
        raise ValueError(f"need one learning rate per loss, got {rates.shape} and {len(losses)} losses")
    kept = len(losses) - 1 if stop_reason is not None and losses else len(losses)
    smoothed = smooth_losses(losses[:kept], smoothing)
    try:
        suggestion, reason = suggest_learning_rates(rates[:kept], smoothed, stop_reason is not None), None
    except NoSuggestion as error:
        suggestion, reason = None, str(error) + (f"; stopped: {stop_reason}" if stop_reason else "")
    return {"smoothed_loss": smoothed.tolist() + [None] * (len(losses) - kept), "suggestion": suggestion,
            "no_suggestion": reason}


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
        A dict of plain values; see the module docstring (``suggestion`` None and
        ``no_suggestion`` the reason when the curve has no finite descending stretch).

    Raises:
        ValueError: bad arguments (named), no train files, or the split ran out before the sweep ended.
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
        monitor = DivergenceStop(smoothing, divergence_factor)
        stop_reason = None
        for step, (inputs, targets) in zip(range(steps), dataset):
            loss = float(train_step(inputs, targets))
            losses.append(loss)
            rate = float(schedule(step))
            stop_reason = monitor.update(step, loss, rate)
            if stop_reason is None and (step + 1) % max(1, steps // 10) == 0:
                log(f"step {step + 1}/{steps}  lr {rate:.3g}  loss {loss:.6g}  smoothed {monitor.corrected:.6g}")
            if stop_reason is not None:
                break
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)
    if len(losses) < steps and stop_reason is None:
        raise ValueError(f"the training split ran out after {len(losses)} steps")
    if stop_reason:
        log(f"stopped early: {stop_reason} (that step is not smoothed)")
    learning_rates = np.asarray(schedule(np.arange(len(losses), dtype=np.float32)), np.float64)
    summary = summarise_sweep(learning_rates, losses, stop_reason, smoothing)
    suggestion = summary["suggestion"]
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
            "smoothed_loss": summary["smoothed_loss"],
        },
        "suggestion": suggestion,
        "no_suggestion": summary["no_suggestion"],
        "train_config": None if suggestion is None else {"lr_schedule": "cyclic", "cyclic": {
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
    if suggestion is not None:
        axes.axvline(suggestion["base_lr"], color="tab:green", linestyle="--",
                     label=f"base_lr {suggestion['base_lr']:.3g}")
        axes.axvline(suggestion["max_lr"], color="tab:red", linestyle="--",
                     label=f"max_lr {suggestion['max_lr']:.3g}")
    else:
        axes.text(0.5, 0.5, "no suggestion: no finite descending stretch", transform=axes.transAxes,
                  ha="center", va="center", color="tab:red")
    axes.set_xscale("log")
    finite = smoothed[np.isfinite(smoothed)]
    if finite.size:
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
    if suggestion is None:
        print(f"wrote {result['plot']} and {result['json']} (no suggestion)", flush=True)
        print(f"python -m trainer.lr_finder: error: no learning-rate suggestion: {result['no_suggestion']}",
              file=sys.stderr, flush=True)
        return cli.EXIT_ERROR
    for warning in suggestion["warnings"]:
        print(f"warning: {warning}", flush=True)
    print(f"suggested base_lr {suggestion['base_lr']:.3g}, max_lr {suggestion['max_lr']:.3g} ({RULE}); "
          f"steepest descent at {suggestion['lr_steepest_descent']:.3g}", flush=True)
    print(f"wrote {result['plot']} and {result['json']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m trainer.lr_finder"))

"""LR range test (trainer.lr_finder): smoothing and the suggestion rule on known curves, then the CLI on tiny records."""

import numpy as np
import pytest
import yaml
from PIL import Image

from pose.codec import HeatmapCodec
from pose.config import load_config
from records_util import synthetic_records, write_split
from schemas import jsonio
from trainer import lr_finder
from trainer.models import build_model

TINY_MODEL = {"name": "simplebaseline", "depth": 18, "backbone_stages": 3, "deconv_filters": [16, 16]}


def test_smoothing_has_no_lag_and_keeps_constants():
    np.testing.assert_allclose(lr_finder.smooth_losses([2.0] * 20, 0.9), 2.0, rtol=1e-12)
    np.testing.assert_allclose(lr_finder.smooth_losses([1.0, 3.0, 2.0], 0.0), [1.0, 3.0, 2.0])
    # A symmetric dip stays centred: a causal average would move the minimum later.
    steps = np.arange(61)
    curve = 1.0 + 0.01 * (steps - 30.0) ** 2 + np.where(steps % 2, 0.05, -0.05)
    assert int(np.argmin(lr_finder.smooth_losses(curve, 0.8))) in (29, 30, 31)
    with pytest.raises(ValueError, match="smoothing"):
        lr_finder.smooth_losses(curve, 1.0)
    with pytest.raises(ValueError, match="finite"):
        lr_finder.smooth_losses([1.0, float("nan")], 0.5)


def test_suggestion_rule_on_known_curves():
    rates = np.logspace(-6, 0, 61)
    valley = 1.0 - 0.8 * np.exp(-((np.log10(rates) + 2.0) ** 2))        # lowest at 1e-2
    suggestion = lr_finder.suggest_learning_rates(rates, valley, stopped_early=True)
    np.testing.assert_allclose(suggestion["max_lr"], 1e-2, rtol=1e-9)
    np.testing.assert_allclose(suggestion["base_lr"], 1e-2 / 4, rtol=1e-9)
    assert 1e-4 < suggestion["lr_steepest_descent"] < 1e-2
    assert suggestion["warnings"] == [] and "Sect. 3.3" in suggestion["rule"]
    with pytest.raises(lr_finder.NoSuggestion, match="never fell"):     # issue 22: no suggestion, not --min-lr
        lr_finder.suggest_learning_rates(rates, np.linspace(1.0, 2.0, 61), stopped_early=True)
    falling = lr_finder.suggest_learning_rates(rates, np.linspace(2.0, 1.0, 61), stopped_early=False)
    assert falling["max_lr"] == rates[-1] and "raise --max-lr" in falling["warnings"][0]
    assert falling["base_lr"] < falling["max_lr"]
    with pytest.raises(ValueError, match="length"):
        lr_finder.suggest_learning_rates(rates, valley[:10], stopped_early=False)


def _sweep(rates, losses, smoothing=0.9, factor=4.0):
    """Feeds a synthetic loss curve through the sweep's stop rule and summary, as range_test does."""
    monitor, stop_reason, recorded = lr_finder.DivergenceStop(smoothing, factor), None, []
    for step, (rate, loss) in enumerate(zip(rates, losses)):
        recorded.append(float(loss))
        stop_reason = monitor.update(step, float(loss), float(rate))
        if stop_reason:
            break
    return recorded, stop_reason, lr_finder.summarise_sweep(rates[:len(recorded)], recorded, stop_reason, smoothing)


def test_a_sweep_that_diverges_at_once_has_no_suggestion():
    """Issue 22: started at 1e2 the loss is 0.0064, then 1e10: no finite descending stretch, so no suggestion
    (it used to suggest base_lr 25, max_lr 100)."""
    rates = np.logspace(2, 4, 10)
    recorded, stop_reason, summary = _sweep(rates, [0.0064, 1e10] + [1e12] * 8)
    assert len(recorded) == 2 and stop_reason.startswith("diverged at step 1")
    assert summary["suggestion"] is None
    assert "no finite descending stretch" in summary["no_suggestion"]
    assert "diverged at step 1" in summary["no_suggestion"]
    assert summary["smoothed_loss"][1] is None and summary["smoothed_loss"][0] == pytest.approx(0.0064)
    # A NaN at the second step, and a first loss that is already NaN: no suggestion either.
    for losses in ([0.5, float("nan")], [float("nan")]):
        _, stop_reason, summary = _sweep(rates, losses + [1.0] * 8)
        assert stop_reason.startswith("the loss became nan") and summary["suggestion"] is None
        assert summary["smoothed_loss"][-1] is None
    with pytest.raises(lr_finder.NoSuggestion, match="1 smoothed loss"):
        lr_finder.suggest_learning_rates([1e2], [0.0064], stopped_early=True)


def test_the_step_that_trips_the_stop_is_not_smoothed():
    """A valley lowest at 1e-2, rising past it, then one exploded loss that trips the stop: the suggestion is the
    valley's. Smoothed with the rest, that one loss leaks backwards into every point (zero-phase average) and the
    minimum moves to the first step ("never fell", max_lr = --min-lr: the demo's symptom in issue 22)."""
    rates = np.logspace(-6, 0, 100)
    losses = 1.0 - 0.6 * np.exp(-((np.log10(rates) + 2.0) ** 2) / 0.5)
    losses = np.where(rates > 0.05, losses + 3.0 * (rates - 0.05), losses)
    losses[np.argmax(rates > 0.2)] = 1e9                                  # the explosion
    recorded, stop_reason, summary = _sweep(rates, losses)
    stop_step = len(recorded) - 1
    assert stop_reason.startswith(f"diverged at step {stop_step}") and recorded[-1] == 1e9
    assert summary["smoothed_loss"][-1] is None and None not in summary["smoothed_loss"][:-1]
    suggestion = summary["suggestion"]
    assert 0.5e-2 < suggestion["max_lr"] < 2e-2, suggestion
    assert suggestion["warnings"] == [] and summary["no_suggestion"] is None
    with pytest.raises(lr_finder.NoSuggestion, match="never fell"):      # what keeping it did
        lr_finder.suggest_learning_rates(rates[:stop_step + 1], lr_finder.smooth_losses(recorded, 0.9), True)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny config and 32 synthetic person-crop records in the ExampleGen layout."""
    root = tmp_path_factory.mktemp("lr_finder")
    config_path = root / "tiny.yaml"
    config_path.write_text(yaml.safe_dump({"model": TINY_MODEL, "data": {"input_size": [64, 48]},
                                           "train": {"batch_size": 4, "shuffle_buffer": 32}}))
    config = load_config(str(config_path))
    write_split(synthetic_records(config, HeatmapCodec.from_config(config), 32), root / "examples", "train", 2)
    return root, config_path


def _offset_model(config):
    """The tiny model with its heatmaps offset by 0.5 (final_conv bias): a loss the sweep can genuinely lower.

    A fresh tiny model outputs about 0, and in a dozen steps its loss is flat noise around the mean target energy
    (no descending stretch: no suggestion, issue 22); learning the offset away is a real descent."""
    model = build_model(config)
    bias = model.get_layer("final_conv").bias
    bias.assign(np.full(bias.shape, 0.5, np.float32))
    return model


def test_cli_writes_plot_and_strict_json(tiny_run, capsys, monkeypatch):
    root, config_path = tiny_run
    out = root / "out"
    monkeypatch.setattr(lr_finder, "build_model", _offset_model)
    status = lr_finder.main(["--examples", str(root / "examples"), "--config", str(config_path), "--out", str(out),
                             "--min-lr", "1e-4", "--max-lr", "1000", "--steps", "12", "--smoothing", "0.5"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "suggested base_lr" in printed and "lr_finder.json" in printed

    with Image.open(out / lr_finder.PLOT_FILE) as image:
        image.verify()
    with Image.open(out / lr_finder.PLOT_FILE) as image:
        assert image.format == "PNG" and image.size == (700, 450)
    with open(out / lr_finder.JSON_FILE, encoding="utf-8") as handle:
        result = jsonio.loads(handle.read())                               # strict: no NaN/Infinity tokens
    curve = result["curve"]
    assert 2 <= result["steps_run"] <= 12 and len(curve["learning_rate"]) == result["steps_run"]
    assert len(curve["loss"]) == len(curve["smoothed_loss"]) == result["steps_run"]
    np.testing.assert_allclose(curve["learning_rate"][0], 1e-4, rtol=1e-5)
    assert np.all(np.diff(curve["learning_rate"]) > 0)
    suggestion = result["suggestion"]
    assert 0 < suggestion["base_lr"] < suggestion["max_lr"] <= 1000         # base = max / 4 may lie below --min-lr
    assert suggestion["max_lr"] in curve["learning_rate"]
    assert suggestion["max_lr"] > curve["learning_rate"][0] and result["no_suggestion"] is None
    assert curve["smoothed_loss"][-1] is None                              # the step that stopped it: not smoothed
    assert result["train_config"]["cyclic"]["max_lr"] == suggestion["max_lr"]
    # Up to 1000 with Adam on a fresh model: the sweep stops on divergence before its end.
    assert result["stopped_early"] and result["steps_run"] < 12, result["stop_reason"]


def test_cli_exits_2_without_a_suggestion_when_the_sweep_diverges_at_once(tiny_run, capsys):
    root, config_path = tiny_run
    out = root / "diverged"
    status = lr_finder.main(["--examples", str(root / "examples"), "--config", str(config_path), "--out", str(out),
                             "--min-lr", "100", "--max-lr", "10000", "--steps", "6"])
    captured = capsys.readouterr()
    assert status == 2
    assert "no learning-rate suggestion: no finite descending stretch" in captured.err
    assert "suggested base_lr" not in captured.out
    with open(out / lr_finder.JSON_FILE, encoding="utf-8") as handle:
        result = jsonio.loads(handle.read())
    assert result["suggestion"] is None and result["train_config"] is None and result["stopped_early"]
    assert result["no_suggestion"].startswith("no finite descending stretch")
    assert result["curve"]["smoothed_loss"][-1] is None


def test_cli_rejects_bad_flags_before_any_work(tiny_run, capsys):
    root, config_path = tiny_run
    common = ["--examples", str(root / "examples"), "--config", str(config_path), "--out", str(root / "bad")]
    for extra, message in [(["--min-lr", "1", "--max-lr", "0.1"], "--min-lr < --max-lr"),
                           (["--steps", "2"], "--steps must be >= 5"),
                           (["--step", "20"], "did you mean --steps"),
                           (["--smoothing", "1"], "--smoothing")]:
        with pytest.raises(SystemExit) as exit_info:
            lr_finder.main(common + extra)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (root / "bad").exists()


def test_missing_train_split_is_a_clear_error(tiny_run, tmp_path):
    _, config_path = tiny_run
    with pytest.raises(ValueError, match="has no Split-train"):
        lr_finder.find_learning_rate(str(tmp_path), load_config(str(config_path)), str(tmp_path / "out"))

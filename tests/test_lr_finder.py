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
    rising = lr_finder.suggest_learning_rates(rates, np.linspace(1.0, 2.0, 61), stopped_early=True)
    assert rising["max_lr"] == rates[0] and "never fell" in rising["warnings"][0]
    falling = lr_finder.suggest_learning_rates(rates, np.linspace(2.0, 1.0, 61), stopped_early=False)
    assert falling["max_lr"] == rates[-1] and "raise --max-lr" in falling["warnings"][0]
    assert rising["base_lr"] < rising["max_lr"] and falling["base_lr"] < falling["max_lr"]
    with pytest.raises(ValueError, match="length"):
        lr_finder.suggest_learning_rates(rates, valley[:10], stopped_early=False)


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


def test_cli_writes_plot_and_strict_json(tiny_run, capsys):
    root, config_path = tiny_run
    out = root / "out"
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
    assert result["train_config"]["cyclic"]["max_lr"] == suggestion["max_lr"]
    # Up to 1000 with Adam on a fresh model: the sweep stops on divergence before its end.
    assert result["stopped_early"] and result["steps_run"] < 12, result["stop_reason"]


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

"""Training loop: schedules, NaN stop, TensorBoard/checkpoints, resume, and a real SIGKILL + restart."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import yaml

from pose.codec import HeatmapCodec
from pose.config import build_config, load_config
from records_util import coco_person_records, write_split
from trainer import optimization, task, train_loop
from trainer.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_MODEL = {"name": "simplebaseline", "depth": 18, "backbone_stages": 3, "deconv_filters": [16, 16]}


def _config(**train):
    return build_config({"model": TINY_MODEL, "data": {"input_size": [64, 48]},
                         "train": {"batch_size": 4, "log_every_steps": 2, "checkpoint_every_steps": 2,
                                   "lr_schedule": "cosine", **train}}, name="loop_test")


def _memory_dataset_fn(config, num_batches=4, nan_from_batch=None, seed=0):
    """In-memory repeating dataset of per-replica batches; optionally NaN targets from a batch on."""
    rng = np.random.default_rng(seed)
    batch = int(config["train"]["batch_size"])
    images = rng.uniform(0, 255, (num_batches * batch, 64, 48, 3)).astype("float32")
    heatmaps = rng.uniform(0, 1, (num_batches * batch, 16, 12, 17)).astype("float32")
    if nan_from_batch is not None:
        heatmaps[nan_from_batch * batch:] = np.nan
    weights = np.ones((num_batches * batch, 17), "float32")

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(batch)
        dataset = tf.data.Dataset.from_tensor_slices(({"image": images}, {"heatmaps": heatmaps,
                                                                          "target_weight": weights}))
        return dataset.batch(per_replica, drop_remainder=True).repeat(1 if nan_from_batch is not None else -1)
    return dataset_fn


def test_step_decay_schedule_follows_reference_epochs():
    train = _config(lr_schedule="step", learning_rate=1e-3, lr_decay_epochs=[170, 200])["train"]
    schedule = optimization.learning_rate_schedule(train, steps_per_epoch=10, total_steps=2100)
    values = {step: float(schedule(step)) for step in (0, 1699, 1700, 1999, 2000, 2099)}
    np.testing.assert_allclose([values[0], values[1699]], 1e-3, rtol=1e-6)
    np.testing.assert_allclose([values[1700], values[1999]], 1e-4, rtol=1e-5)
    np.testing.assert_allclose([values[2000], values[2099]], 1e-5, rtol=1e-5)


def test_cosine_schedule_with_warmup():
    train = _config(lr_schedule="cosine", learning_rate=2e-3, warmup_steps=10)["train"]
    schedule = optimization.learning_rate_schedule(train, steps_per_epoch=5, total_steps=110)
    np.testing.assert_allclose(float(schedule(0)), 2e-3 / 10, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(9)), 2e-3, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(60)), 1e-3, rtol=1e-5)   # half way through the cosine
    assert float(schedule(110)) < 1e-9


def test_optimizer_options():
    optimizer = optimization.build_optimizer(_config(clip_norm=1.0)["train"], 10, 100)
    assert optimizer.global_clipnorm == 1.0
    with pytest.raises(ValueError, match="clip_norm"):
        optimization.build_optimizer(_config(clip_norm=-1.0)["train"], 10, 100)
    scaled = optimization.build_optimizer(_config(mixed_precision="mixed_float16")["train"], 10, 100)
    assert scaled.__class__.__name__ == "LossScaleOptimizer"


def test_plan_steps_caps_and_validates():
    train = _config(epochs=3, max_steps=None)["train"]
    assert task.plan_steps(train, 40) == {"steps_per_epoch": 10, "total_steps": 30}
    assert task.plan_steps(train, 40, max_steps=7)["total_steps"] == 7
    with pytest.raises(ValueError, match="no records"):
        task.plan_steps(train, 0)
    with pytest.raises(ValueError, match="max_steps"):
        task.plan_steps(train, 40, max_steps=0)
    assert task.plan_steps(_config(steps_per_epoch=5, epochs=2)["train"], 40)["total_steps"] == 10
    with pytest.raises(ValueError, match="steps_per_epoch"):
        task.plan_steps(_config(steps_per_epoch=0.5)["train"], 40)


def test_draw_keypoints_marks_pixels():
    images = np.zeros((2, 10, 8, 3), np.float32)
    keypoints = np.array([[[2.2, 3.0], [7.0, 9.0]], [[-5.0, 1.0], [4.0, 4.0]]])
    scores = np.array([[1.0, 1.0], [1.0, 0.0]])
    drawn = train_loop.draw_keypoints(images, keypoints, scores, radius=0)
    assert drawn.dtype == np.uint8
    assert tuple(drawn[0, 3, 2]) == (255, 0, 0) and tuple(drawn[0, 9, 7]) == (255, 0, 0)
    assert drawn[1].sum() == 0            # one joint off-image, one below the score threshold


def test_nan_loss_stops_with_step_range(tmp_path):
    config = _config(log_every_steps=2, checkpoint_every_steps=2)
    with pytest.raises(train_loop.NonFiniteLossError, match=r"between steps 3 and 4 \(first at step 3\)"):
        train_loop.train(config, lambda: build_model(config), _memory_dataset_fn(config, 6, nan_from_batch=2),
                         str(tmp_path), total_steps=6, steps_per_epoch=6)
    saved = sorted(os.listdir(tmp_path / "checkpoints"))
    assert "ckpt-2.index" in saved and not any(name.startswith("ckpt-4") for name in saved)


def test_train_logs_checkpoints_and_resumes(tmp_path):
    config = _config(log_every_steps=2, checkpoint_every_steps=3, learning_rate=1e-3)
    codec = HeatmapCodec.from_config(config)
    lines = []
    model, first = train_loop.train(config, lambda: build_model(config), _memory_dataset_fn(config, 1),
                                    str(tmp_path), total_steps=6, steps_per_epoch=3, codec=codec, log=lines.append)
    assert (first.start_step, first.final_step) == (0, 6)
    assert [step for step, _ in first.history] == [2, 3, 4, 6]
    assert first.history[-1][1] < first.history[0][1]          # fits the repeated batch
    assert any("steps/s" in line and "examples/s" in line and "loss" in line for line in lines)
    assert sorted(os.listdir(tmp_path / "checkpoints"))[-1] == "ckpt-6.index"

    # TensorBoard: loss, learning rate, throughput and the keypoint previews.
    tags = set()
    for path in (tmp_path / "tensorboard").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    assert {"train/loss", "train/learning_rate", "train/examples_per_second",
            "train/predicted_keypoints"} <= tags

    # Resume in process: restores step 6 and the weights, then continues to 8.
    resumed_model, second = train_loop.train(config, lambda: build_model(config), _memory_dataset_fn(config, 1),
                                             str(tmp_path), total_steps=8, steps_per_epoch=3, log=lines.append)
    assert (second.start_step, second.final_step) == (6, 8)
    assert any("restored" in line and "step 6" in line for line in lines)


def test_train_validates_arguments(tmp_path):
    config = _config()
    with pytest.raises(ValueError, match="total_steps"):
        train_loop.train(config, lambda: None, None, str(tmp_path), total_steps=0, steps_per_epoch=1)
    with pytest.raises(ValueError, match="ran out"):
        train_loop.train(config, lambda: build_model(config), _memory_dataset_fn(config, 2, nan_from_batch=99),
                         str(tmp_path), total_steps=5, steps_per_epoch=1)


@pytest.mark.slow
def test_sigkill_mid_run_then_same_command_resumes(tmp_path, shared_data):
    """A real SIGKILL after the first checkpoint; the same command continues to the same final step."""
    config_path = tmp_path / "kill.yaml"
    config_path.write_text(yaml.safe_dump({
        "model": TINY_MODEL, "data": {"input_size": [64, 48]},
        "train": {"batch_size": 4, "epochs": 100, "max_steps": 12, "checkpoint_every_steps": 3,
                  "log_every_steps": 1, "lr_schedule": "cosine"},
    }))
    config = load_config(str(config_path))
    coco = os.path.join(shared_data, "coco_train2017_mini28")
    records = coco_person_records(os.path.join(coco, "person_keypoints_train2017_mini28.json"),
                                  os.path.join(coco, "images"), config, HeatmapCodec.from_config(config), limit=24)
    write_split(records, tmp_path / "examples", "train", num_shards=2)
    model_dir = tmp_path / "model"
    command = [sys.executable, "-m", "trainer.task", "--examples", str(tmp_path / "examples"),
               "--config", str(config_path), "--model-dir", str(model_dir)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}

    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    killed_after = None
    deadline = time.monotonic() + 300
    for line in process.stdout:
        if line.startswith("saved checkpoint"):
            process.send_signal(signal.SIGKILL)
            killed_after = line.strip()
            break
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, killed_after
    assert killed_after is not None
    assert not (model_dir / "Format-Serving").exists()          # killed before the export

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    restored = [line for line in second.stdout.splitlines() if line.startswith("restored")]
    assert restored, second.stdout
    restored_step = int(restored[0].rsplit(" ", 1)[1])
    assert 3 <= restored_step < 12 and restored_step % 3 == 0
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["start_step"] == restored_step and summary["steps"] == 12
    assert (model_dir / "Format-Serving" / "saved_model.pb").exists()
    assert (model_dir / "model.keras").exists()
    with open(model_dir / "train_summary.json", encoding="utf-8") as handle:
        assert json.load(handle)["steps"] == 12


def test_list_output_model_trains_on_summed_loss(tmp_path):
    """Intermediate supervision (hourglass-style list output) goes through the same loop."""
    import keras

    config = _config(log_every_steps=1, checkpoint_every_steps=10)

    def model_fn():
        inputs = keras.Input((64, 48, 3))
        pooled = keras.layers.AveragePooling2D(4)(inputs / 255.0)
        first = keras.layers.Conv2D(17, 3, padding="same", name="stack1")(pooled)
        second = keras.layers.Conv2D(17, 3, padding="same", name="stack2")(first)
        return keras.Model(inputs, [first, second])

    _, result = train_loop.train(config, model_fn, _memory_dataset_fn(config, 1), str(tmp_path),
                                 total_steps=3, steps_per_epoch=3, log=lambda line: None)
    losses = [loss for _, loss in result.history]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.slow
def test_run_fn_tfx_style(tmp_path):
    from types import SimpleNamespace

    from records_util import synthetic_records

    config = load_config("configs/demo.yaml", small_run=True)
    write_split(synthetic_records(config, HeatmapCodec.from_config(config), 16), tmp_path / "examples", "train", 2)
    fn_args = SimpleNamespace(
        train_files=[str(tmp_path / "examples" / "Split-train" / "*")], eval_files=[],
        serving_model_dir=str(tmp_path / "model" / "Format-Serving"), model_run_dir=str(tmp_path / "model_run"),
        train_steps=2, custom_config={"config_path": "configs/demo.yaml", "small_run": True})
    summary = task.run_fn(fn_args)
    assert summary["steps"] == 2 and summary["num_train_records"] == 16
    assert (tmp_path / "model" / "Format-Serving" / "saved_model.pb").exists()
    assert (tmp_path / "model" / "model.keras").exists()
    assert any(name.startswith("ckpt-2") for name in os.listdir(tmp_path / "model_run" / "checkpoints"))
    with pytest.raises(ValueError, match="custom_config"):
        task.config_from_custom({})


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains(tmp_path, policy):
    import keras

    config = _config(log_every_steps=1, checkpoint_every_steps=10, mixed_precision=policy)
    try:
        model, result = train_loop.train(config, lambda: build_model(config), _memory_dataset_fn(config, 1),
                                         str(tmp_path), total_steps=2, steps_per_epoch=2, log=lambda line: None)
        assert model.get_layer("conv1_conv").compute_dtype == policy.split("_")[1]
        assert model.get_layer("final_conv").compute_dtype == "float32"
        assert all(np.isfinite(loss) for _, loss in result.history)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")

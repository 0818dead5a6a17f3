"""Learning-rate schedules: cyclical policies against Smith's formulas, the family's serialisation and graph use,
config validation, and a real train + resume that continues the cycle and logs the rate to TensorBoard."""
import glob
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from pose.config import build_config, load_config
from trainer import optimization, train_loop
from trainer.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = {"name": "simplebaseline", "depth": 18, "backbone_stages": 3, "deconv_filters": [16, 16]}


def smith_clr(iteration, base_lr, max_lr, step_size, policy="triangular", gamma=1.0):
    """Slow reference: Smith, WACV 2017, Sect. 3.1 (one iteration at a time, Python floats)."""
    cycle = math.floor(1 + iteration / (2 * step_size))
    x = abs(iteration / step_size - 2 * cycle + 1)
    scale = {"triangular": 1.0, "triangular2": 1.0 / 2 ** (cycle - 1), "exp_range": gamma ** iteration}[policy]
    return base_lr + (max_lr - base_lr) * max(0.0, 1.0 - x) * scale


def _cyclic_config(**cyclic):
    return build_config({"train": {"lr_schedule": "cyclic", "cyclic": {"base_lr": 1e-4, "max_lr": 1e-3, **cyclic}}},
                        name="cyclic_test")


@pytest.mark.parametrize("policy,gamma", [("triangular", None), ("triangular2", None), ("exp_range", 0.999)])
def test_cyclic_matches_smith_formula_at_every_step(policy, gamma):
    schedule = optimization.CyclicalLearningRate(1e-4, 1e-3, step_size=10, policy=policy, gamma=gamma)
    steps = np.arange(0, 101)
    got = np.asarray(schedule(steps))                       # vectorised over an array of steps
    want = [smith_clr(int(step), 1e-4, 1e-3, 10, policy, gamma or 1.0) for step in steps]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)


def test_cyclic_boundaries_half_cycles_and_decay():
    base, top = 1e-4, 1e-3
    triangular = optimization.CyclicalLearningRate(base, top, step_size=100)
    # Cycle boundaries at multiples of 2 * stepsize, peaks at odd multiples of stepsize, half-way at stepsize / 2.
    for step, want in [(0, base), (50, (base + top) / 2), (100, top), (150, (base + top) / 2), (200, base),
                       (300, top), (400, base)]:
        np.testing.assert_allclose(float(triangular(step)), want, rtol=1e-5)
    # triangular2: the amplitude halves every cycle.
    triangular2 = optimization.CyclicalLearningRate(base, top, step_size=100, policy="triangular2")
    for step, want in [(100, top), (200, base), (300, base + (top - base) / 2), (500, base + (top - base) / 4),
                       (250, base + (top - base) / 4)]:
        np.testing.assert_allclose(float(triangular2(step)), want, rtol=1e-5)
    # exp_range: the amplitude decays as gamma ** iteration.
    exp_range = optimization.CyclicalLearningRate(base, top, step_size=100, policy="exp_range", gamma=0.99)
    for step in (100, 300, 500):
        np.testing.assert_allclose(float(exp_range(step)), base + (top - base) * 0.99 ** step, rtol=1e-4)
    np.testing.assert_allclose(float(exp_range(200)), base, rtol=1e-5)


def test_every_schedule_is_graph_compatible_and_serialisable():
    family = [
        optimization.WarmupStepDecay(1e-3, [30, 60], 0.1, warmup_steps=5),
        optimization.WarmupStepDecay(1e-3, [], 0.1),
        optimization.WarmupCosineDecay(2e-3, 100, warmup_steps=10),
        optimization.CyclicalLearningRate(1e-4, 1e-3, 20, "triangular2", warmup_steps=3),
        optimization.CyclicalLearningRate(1e-4, 1e-3, 20, "exp_range", gamma=0.99),
        optimization.LearningRateRangeTest(1e-7, 1.0, 50, "exponential"),
        optimization.LearningRateRangeTest(1e-4, 1e-2, 50, "linear"),
    ]
    steps = np.arange(0, 120)
    for schedule in family:
        assert isinstance(schedule, optimization.WarmupSchedule)
        eager = np.asarray(schedule(steps))
        graph = tf.function(lambda step, schedule=schedule: schedule(step), jit_compile=False)
        traced = [float(graph(tf.constant(step, tf.int64))) for step in (0, 7, 33, 119)]
        np.testing.assert_allclose(traced, eager[[0, 7, 33, 119]], rtol=1e-5)  # float32 pow
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
        assert type(restored) is type(schedule) and restored.get_config() == schedule.get_config()
        np.testing.assert_allclose(np.asarray(restored(steps)), eager, rtol=1e-7)
    # In an optimizer: Adam's config round trip keeps the schedule.
    optimizer = keras.optimizers.Adam(learning_rate=family[3])
    rebuilt = keras.optimizers.Adam.from_config(optimizer.get_config())
    assert rebuilt.get_config()["learning_rate"] == optimizer.get_config()["learning_rate"]


def test_range_test_sweep_endpoints():
    exponential = optimization.LearningRateRangeTest(1e-6, 1e-1, 11)
    values = np.asarray(exponential(np.arange(12)))
    np.testing.assert_allclose(values[:11], np.logspace(-6, -1, 11), rtol=1e-5)
    np.testing.assert_allclose(values[11], 1e-1, rtol=1e-6)            # stays at the maximum
    linear = optimization.LearningRateRangeTest(1e-3, 1e-2, 10, "linear")
    np.testing.assert_allclose(np.asarray(linear(np.arange(10))), np.linspace(1e-3, 1e-2, 10), rtol=1e-5)


def test_cyclic_from_config_step_size_epochs_and_warmup():
    train = _cyclic_config(step_size_epochs=2.5, policy="triangular")["train"]
    schedule = optimization.learning_rate_schedule(train, steps_per_epoch=40, total_steps=1000)
    assert isinstance(schedule, optimization.CyclicalLearningRate) and schedule.step_size == 100
    np.testing.assert_allclose(float(schedule(100)), 1e-3, rtol=1e-5)
    train = _cyclic_config(step_size=10, policy="exp_range", gamma=0.9)["train"]
    assert optimization.learning_rate_schedule(train, 40, 1000).step_size == 10
    warm = {**_cyclic_config(step_size=10)["train"], "warmup_steps": 4}
    schedule = optimization.learning_rate_schedule(warm, 40, 1000)
    np.testing.assert_allclose(float(schedule(1)), smith_clr(1, 1e-4, 1e-3, 10) * 2 / 4, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(8)), smith_clr(8, 1e-4, 1e-3, 10), rtol=1e-5)


@pytest.mark.parametrize("cyclic,match", [
    ({"step_size": 10}, "train.cyclic.base_lr"),
    ({"base_lr": 1e-3, "max_lr": 1e-4, "step_size": 10}, "train.cyclic.max_lr"),
    ({"base_lr": 1e-4, "max_lr": 1e-3}, "exactly one of train.cyclic.step_size"),
    ({"base_lr": 1e-4, "max_lr": 1e-3, "step_size": 10, "step_size_epochs": 2}, "exactly one"),
    ({"base_lr": 1e-4, "max_lr": 1e-3, "step_size": 2.5}, "train.cyclic.step_size must be an integer"),
    ({"base_lr": 1e-4, "max_lr": 1e-3, "step_size_epochs": -1}, "train.cyclic.step_size_epochs"),
    ({"base_lr": 1e-4, "max_lr": 1e-3, "step_size": 10, "policy": "triangle"}, "train.cyclic.policy"),
    ({"base_lr": 1e-4, "max_lr": 1e-3, "step_size": 10, "policy": "exp_range"}, "train.cyclic.gamma"),
    ({"base_lr": 1e-4, "max_lr": 1e-3, "step_size": 10, "policy": "exp_range", "gamma": 1.5}, "train.cyclic.gamma"),
    ({"base_lr": 1e-4, "max_lr": 1e-3, "step_size": 10, "gamma": 0.9}, "only used by policy exp_range"),
    ({"base_lr": 1e-4, "max_lr": 1e-3, "step_size": 10, "cycle": 3}, "unknown config key 'train.cyclic.cycle'"),
])
def test_cyclic_config_errors_name_the_key(cyclic, match):
    with pytest.raises(ValueError, match=match):
        build_config({"train": {"lr_schedule": "cyclic", "cyclic": cyclic}})


def test_cyclic_settings_without_cyclic_schedule_are_an_error():
    with pytest.raises(ValueError, match="train.cyclic.max_lr is set but train.lr_schedule is 'step'"):
        build_config({"train": {"cyclic": {"max_lr": 1e-3}}})


def test_schedule_constructors_validate():
    with pytest.raises(ValueError, match="max_learning_rate"):
        optimization.CyclicalLearningRate(1e-3, 1e-3, 10)
    with pytest.raises(ValueError, match="step_size"):
        optimization.CyclicalLearningRate(1e-4, 1e-3, 0)
    with pytest.raises(ValueError, match="gamma"):
        optimization.CyclicalLearningRate(1e-4, 1e-3, 10, "exp_range")
    with pytest.raises(ValueError, match="num_steps"):
        optimization.LearningRateRangeTest(1e-7, 1.0, 1)
    with pytest.raises(ValueError, match="mode"):
        optimization.LearningRateRangeTest(1e-7, 1.0, 10, "cubic")
    with pytest.raises(ValueError, match="warmup_steps"):
        optimization.WarmupCosineDecay(1e-3, 10, warmup_steps=-1)


def test_existing_configs_build_their_schedules_unchanged():
    paths = sorted(glob.glob(os.path.join(ROOT, "configs", "coco", "*.yaml"))
                   + glob.glob(os.path.join(ROOT, "configs", "mpii", "*.yaml"))
                   + [os.path.join(ROOT, "configs", "demo.yaml")])
    assert len(paths) >= 10
    for path in paths:
        train = load_config(path)["train"]
        schedule = optimization.learning_rate_schedule(train, steps_per_epoch=10, total_steps=train["epochs"] * 10)
        expected = {"step": optimization.WarmupStepDecay, "cosine": optimization.WarmupCosineDecay}
        assert type(schedule) is expected[train["lr_schedule"]], path
        assert float(schedule(0)) > 0, path
        if train["lr_schedule"] == "step":
            last = train["lr_decay_epochs"][-1] * 10
            np.testing.assert_allclose(float(schedule(last)), train["learning_rate"] * train["lr_decay_factor"] ** 2,
                                       rtol=1e-5, err_msg=path)


def _memory_dataset_fn(batch, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, 64, 48, 3)).astype("float32")
    heatmaps = rng.uniform(0, 1, (batch, 16, 12, 17)).astype("float32")
    weights = np.ones((batch, 17), "float32")

    def dataset_fn(context):
        dataset = tf.data.Dataset.from_tensor_slices(({"image": images}, {"heatmaps": heatmaps,
                                                                          "target_weight": weights}))
        return dataset.batch(context.get_per_replica_batch_size(batch), drop_remainder=True).repeat()
    return dataset_fn


def _logged_rates(tensorboard_dir):
    rates = {}
    for path in sorted(glob.glob(os.path.join(tensorboard_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "train/learning_rate":
                    rates[event.step] = float(tf.make_ndarray(value.tensor))
    return rates


def test_cyclic_training_resumes_mid_cycle_and_logs_the_rate(tmp_path):
    """Train 5 steps (checkpoint at 5), resume to 12: the logged rate follows the cycle with no restart."""
    config = build_config({"model": TINY_MODEL, "data": {"input_size": [64, 48]},
                           "train": {"batch_size": 4, "log_every_steps": 1, "checkpoint_every_steps": 5,
                                     "lr_schedule": "cyclic",
                                     "cyclic": {"policy": "triangular2", "base_lr": 1e-4, "max_lr": 2e-3,
                                                "step_size": 3}}}, name="cyclic_resume")
    lines = []
    _, first = train_loop.train(config, lambda: build_model(config), _memory_dataset_fn(4), str(tmp_path),
                                total_steps=5, steps_per_epoch=4, log=lines.append)
    losses = [loss for _, loss in first.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]      # it trains: the loss goes down
    _, second = train_loop.train(config, lambda: build_model(config), _memory_dataset_fn(4), str(tmp_path),
                                 total_steps=12, steps_per_epoch=4, log=lines.append)
    assert (second.start_step, second.final_step) == (5, 12)

    rates = _logged_rates(str(tmp_path / "tensorboard"))
    assert sorted(rates) == list(range(1, 13))
    # Step s used the rate of optimizer iteration s - 1; the resumed run continues at iteration 5, mid cycle
    # (a restarted cycle would log base_lr = 1e-4 at step 6 instead of the descending 7.33e-4).
    want = {step: smith_clr(step - 1, 1e-4, 2e-3, 3, "triangular2") for step in range(1, 13)}
    np.testing.assert_allclose([rates[step] for step in range(1, 13)], [want[step] for step in range(1, 13)],
                               rtol=1e-5)
    assert rates[6] > 7e-4 and abs(rates[10] - (1e-4 + (2e-3 - 1e-4) / 2)) < 1e-8    # second peak at half height
    assert any(line.startswith("step 6/12") and "lr 0.000733" in line for line in lines), lines

"""Strategy choice; MirroredStrategy (2 logical CPUs) == 1 device; a real 2-process MWMS run."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf
import yaml

from pose.codec import HeatmapCodec
from pose.config import load_config
from records_util import synthetic_records, write_split
from trainer import distribution

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
TINY_MODEL = {"name": "simplebaseline", "depth": 18, "backbone_stages": 3, "deconv_filters": [16, 16]}


def test_cluster_size_reads_tf_config():
    assert distribution.cluster_size("") == 0
    config = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {"type": "worker", "index": 0}}
    assert distribution.cluster_size(json.dumps(config)) == 3
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribution.cluster_size("{nope")
    with pytest.raises(ValueError, match="cluster"):
        distribution.cluster_size(json.dumps({"task": {}}))


def test_default_strategy_without_cluster_or_gpus(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = distribution.choose_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert distribution.is_chief(strategy) and distribution.task_label(strategy) == "chief"
    # A single-worker TF_CONFIG is not a cluster.
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert distribution.choose_strategy() is tf.distribute.get_strategy()


# Runs in a fresh process: logical devices must be configured before TF initialises.
MIRRORED_CHILD = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from pose.config import build_config
from trainer import distribution, train_loop
from trainer.models import build_model

config = build_config({"model": {"name": "simplebaseline", "depth": 18, "backbone_stages": 3,
                                 "deconv_filters": [16, 16], "sync_batchnorm": True},
                       "data": {"input_size": [64, 48]},
                       "train": {"batch_size": 8, "log_every_steps": 1, "checkpoint_every_steps": 100,
                                 "learning_rate": 1e-3, "lr_schedule": "cosine"}}, name="mirrored")
rng = np.random.default_rng(0)
images = rng.uniform(0, 255, (48, 64, 48, 3)).astype("float32")
heatmaps = rng.uniform(0, 1, (48, 16, 12, 17)).astype("float32") ** 4
weights = (rng.uniform(0, 1, (48, 17)) > 0.2).astype("float32")
keras.utils.set_random_seed(1)
initial = build_model(config).get_weights()

def model_fn():
    model = build_model(config)
    model.set_weights(initial)
    return model

def dataset_fn(context):
    # Same example order for any replica count: replica r of step s gets the r-th slice of global batch s.
    per_replica = context.get_per_replica_batch_size(8)
    data = tf.data.Dataset.from_tensor_slices(({"image": images}, {"heatmaps": heatmaps, "target_weight": weights}))
    return data.batch(per_replica, drop_remainder=True).repeat()

out = {}
for name, strategy in (("one", distribution.choose_strategy(devices=["/cpu:0"])),
                       ("two", distribution.choose_strategy(devices=["/cpu:0", "/cpu:1"]))):
    _, result = train_loop.train(config, model_fn, dataset_fn, sys.argv[1] + "/" + name, total_steps=6,
                                 steps_per_epoch=6, strategy=strategy, log=lambda line: None)
    out[name] = {"strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
                 "history": result.history}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_mirrored_two_logical_cpus_matches_one_device(tmp_path):
    run = subprocess.run([sys.executable, "-c", MIRRORED_CHILD, str(tmp_path)], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["two"]["strategy"] == "MirroredStrategy" and out["two"]["replicas"] == 2
    assert out["one"]["replicas"] == 1
    one = [loss for _, loss in out["one"]["history"]]
    two = [loss for _, loss in out["two"]["history"]]
    assert len(one) == len(two) == 6
    assert one[-1] < one[0]                                     # it trains
    for step, (a, b) in enumerate(zip(one, two), start=1):
        assert abs(a - b) <= 1e-4 * abs(a) + 1e-7, (step, one, two)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.slow
def test_two_process_multi_worker_run_finishes(tmp_path):
    config_path = tmp_path / "mwms.yaml"
    config_path.write_text(yaml.safe_dump({
        "model": TINY_MODEL, "data": {"input_size": [64, 48]},
        "train": {"batch_size": 4, "epochs": 10, "max_steps": 4, "checkpoint_every_steps": 2,
                  "log_every_steps": 1},
    }))
    config = load_config(str(config_path))
    write_split(synthetic_records(config, HeatmapCodec.from_config(config), 32), tmp_path / "examples",
                "train", num_shards=2)
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "trainer.task", "--examples", str(tmp_path / "examples"), "--config",
             str(config_path), "--model-dir", str(tmp_path / "model")],
            cwd=ROOT, env={**ENV, "TF_CONFIG": json.dumps(tf_config)}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    outputs = []
    deadline = time.monotonic() + 480
    try:
        for process in processes:
            output, _ = process.communicate(timeout=max(1, deadline - time.monotonic()))
            outputs.append(output)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for index, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"worker {index}:\n{output[-4000:]}"
        assert "MultiWorkerMirroredStrategy" in output and "2 replica(s)" in output
        summary = json.loads(output.strip().splitlines()[-1])
        assert summary["steps"] == 4 and summary["start_step"] == 0
    # Only the chief (worker 0) exports and keeps checkpoints; worker 1's scratch copies are gone.
    assert json.loads(outputs[0].strip().splitlines()[-1])["serving_model_dir"]
    assert json.loads(outputs[1].strip().splitlines()[-1])["serving_model_dir"] is None
    assert (tmp_path / "model" / "Format-Serving" / "saved_model.pb").exists()
    checkpoints = os.listdir(tmp_path / "model" / "run" / "checkpoints")
    assert "ckpt-4.index" in checkpoints and not any(name.startswith("scratch") for name in checkpoints)

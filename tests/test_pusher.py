"""Pusher: blessed-only, atomic, monotonically versioned pushes with a record; interrupted pushes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from components import blessing, evaluator, pusher
from tests.evaluator_fixtures import export_fake_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return export_fake_model(str(tmp_path_factory.mktemp("pusher") / "model"), noise_px=1.0)


def _blessing(path, blessed=True):
    blessing.write_blessing(str(path), {"blessed": blessed, "metrics": {"AP": 0.75}, "reasons": [] if blessed else ["AP low"]})
    return str(path)


def test_push_is_versioned_recorded_and_loadable(model_dir, tmp_path):
    destination = str(tmp_path / "serving")
    bless = _blessing(tmp_path / "blessing")
    first = pusher.run_pusher(model_dir, bless, destination, run_id="run-a")
    second = pusher.run_pusher(model_dir, bless, destination, run_id="run-b", metrics={"AP": 0.8})
    assert (first["version"], second["version"]) == (1, 2)
    assert pusher.list_versions(destination) == [1, 2]
    record = json.load(open(os.path.join(destination, "2", pusher.PUSH_RECORD)))
    assert record["run_id"] == "run-b" and record["metrics"] == {"AP": 0.8} and record["blessed"] is True
    assert first["metrics"] == {"AP": 0.75}  # default: the blessing's metrics
    assert "saved_model.pb" in record["files"]
    assert not [name for name in os.listdir(destination) if name.startswith(pusher.STAGING_PREFIX)]
    loaded = tf.saved_model.load(os.path.join(destination, "2"))
    assert "serving_default" in loaded.signatures
    assert evaluator.resolve_baseline(destination) == os.path.join(destination, "2")
    # An incomplete version directory (e.g. a gs:// push cut short) is ignored but never reused.
    os.makedirs(os.path.join(destination, "7", "variables"))
    assert pusher.list_versions(destination) == [1, 2]
    assert evaluator.resolve_baseline(destination) == os.path.join(destination, "2")
    assert pusher.run_pusher(model_dir, bless, destination, run_id="run-c")["version"] == 8


def test_baseline_resolution_reads_tfx_pusher_layout(model_dir, tmp_path):
    """TFX's standard Pusher writes ``<dest>/<unix time>/`` (SavedModel files, no markers): --baseline auto finds it."""
    destination = str(tmp_path / "serving")
    saved_model = pusher.saved_model_path(model_dir)
    older, newer = "1764000000", "1764000100"
    for version in (older, newer):
        tf.io.gfile.makedirs(os.path.join(destination, version))
        for name in tf.io.gfile.listdir(saved_model):
            source = os.path.join(saved_model, name.rstrip("/"))
            if tf.io.gfile.isdir(source):
                continue
            tf.io.gfile.copy(source, os.path.join(destination, version, name), overwrite=True)
    assert evaluator.resolve_baseline(destination) == os.path.join(destination, newer)
    # A TFX push cut short (saved_model.pb is copied last) is no baseline.
    os.makedirs(os.path.join(destination, "1764000200", "variables"))
    assert evaluator.resolve_baseline(destination) == os.path.join(destination, newer)
    # A small version without our commit marker is one of ours cut short, not a TFX push.
    os.makedirs(os.path.join(destination, "5"))
    open(os.path.join(destination, "5", "saved_model.pb"), "wb").close()
    assert not pusher.is_tfx_push(destination, 5)
    assert evaluator.resolve_baseline(destination) == os.path.join(destination, newer)
    # Ours, committed after the TFX pushes (version = highest + 1), wins; ours not blessed is skipped.
    ours = pusher.run_pusher(model_dir, _blessing(tmp_path / "blessing"), destination, run_id="ours")
    assert ours["version"] == 1764000201
    assert evaluator.resolve_baseline(destination) == ours["path"]
    record_path = os.path.join(ours["path"], pusher.PUSH_RECORD)
    record = json.load(open(record_path))
    record["blessed"] = False
    json.dump(record, open(record_path, "w"))
    assert evaluator.resolve_baseline(destination) == os.path.join(destination, newer)


@pytest.mark.parametrize("case", ["not_blessed", "missing", "corrupt_json", "both_markers", "marker_mismatch"])
def test_nothing_pushed_without_valid_blessing(model_dir, tmp_path, case, caplog):
    bless = tmp_path / "blessing"
    if case == "not_blessed":
        _blessing(bless, blessed=False)
    elif case == "corrupt_json":
        _blessing(bless)
        (bless / "blessing.json").write_text("{not json")
    elif case == "both_markers":
        _blessing(bless)
        (bless / blessing.NOT_BLESSED).write_text("")
    elif case == "marker_mismatch":
        _blessing(bless, blessed=False)
        os.rename(bless / blessing.NOT_BLESSED, bless / blessing.BLESSED)
    destination = str(tmp_path / "serving")
    assert pusher.run_pusher(model_dir, str(bless), destination, run_id="run") is None
    assert pusher.list_versions(destination, complete_only=False) == []
    assert not os.path.exists(destination) or not os.listdir(destination)
    assert caplog.records and "not pushing" in caplog.records[-1].getMessage()


def test_argument_errors(model_dir, tmp_path):
    bless = _blessing(tmp_path / "blessing")
    with pytest.raises(ValueError, match="run_id"):
        pusher.run_pusher(model_dir, bless, str(tmp_path / "serving"), run_id=None)
    with pytest.raises(ValueError, match="push_destination"):
        pusher.run_pusher(model_dir, bless, "", run_id="r")
    assert pusher.run_pusher(model_dir, bless, str(tmp_path / "serving"), run_id="")["run_id"].startswith("run-")
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        pusher.run_pusher(str(tmp_path), bless, str(tmp_path / "serving"), run_id="r")


@pytest.mark.slow
def test_killed_push_leaves_no_complete_version(model_dir, tmp_path):
    """SIGKILL a real pusher process mid-copy: no version appears; the next push is complete."""
    destination = tmp_path / "serving"
    bless = _blessing(tmp_path / "blessing")
    env = dict(os.environ, **{pusher.COPY_DELAY_ENV: "3", "PYTHONPATH": ROOT})
    process = subprocess.Popen(
        [sys.executable, "-m", "components.pusher", "--model-dir", model_dir, "--blessing", bless,
         "--destination", str(destination), "--run-id", "killed"], env=env, cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    staged = []
    while time.time() < deadline and process.poll() is None:
        if destination.exists():
            staged = [p for p in destination.rglob("*") if p.is_file()]
            if staged:
                break
        time.sleep(0.1)
    assert staged, "the pusher never started copying"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert pusher.list_versions(str(destination), complete_only=False) == []
    assert not (destination / "1").exists()
    assert evaluator.resolve_baseline(str(destination)) is None
    record = pusher.run_pusher(model_dir, bless, str(destination), run_id="retry")
    assert record["version"] == 1 and pusher.list_versions(str(destination)) == [1]
    assert os.path.exists(os.path.join(str(destination), "1", pusher.COMMIT_MARKER))

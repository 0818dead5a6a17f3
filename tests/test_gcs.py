"""gs:// for real: ExampleGen, the Trainer's model dir, the Evaluator's baseline and the Pusher on a GCS emulator.

The emulator (fake-gcs-server from the ``test`` extra) is started here on
127.0.0.1 and every client is pointed at it by environment variables
(``tests/gcs_emulator.py`` says which and why). Inputs are uploaded and
outputs checked with google-cloud-storage, a client this project does not
use for its own IO (it uses ``tf.io.gfile`` and Beam's filesystems).
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.gcs_emulator import EmulatorUnavailable, emulated_gcs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "darkpose-test"
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.fixture(scope="module")
def gcs():
    """The emulator, with the process environment pointing every client at it (restored afterwards)."""
    try:
        context = emulated_gcs(BUCKET)
        emulator = context.__enter__()
    except EmulatorUnavailable as error:
        pytest.skip(f"GCS emulator not available: {error}")
    try:
        yield emulator
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")
def bucket(gcs):
    from google.cloud import storage

    return storage.Client(project="darkpose-test").bucket(BUCKET)


def _names(bucket, prefix):
    return sorted(blob.name for blob in bucket.list_blobs(prefix=prefix))


@pytest.fixture(scope="module")
def coco_inputs(shared_data, bucket):
    """coco_val2017_mmpose4 uploaded with google-cloud-storage: ``{role: gs:// path}``."""
    source = os.path.join(shared_data, "coco_val2017_mmpose4")
    annotations = "person_keypoints_val2017_mmpose4.json"
    bucket.blob(f"inputs/coco/{annotations}").upload_from_filename(os.path.join(source, annotations))
    for name in sorted(os.listdir(os.path.join(source, "images"))):
        bucket.blob(f"inputs/coco/images/{name}").upload_from_filename(os.path.join(source, "images", name))
    return {"local_annotations": os.path.join(source, annotations), "local_images": os.path.join(source, "images"),
            "annotations": f"gs://{BUCKET}/inputs/coco/{annotations}", "images": f"gs://{BUCKET}/inputs/coco/images"}


@pytest.fixture(scope="module")
def example_config():
    from components import example_gen

    return example_gen.default_config("coco", {"data": {"input_size": [64, 48], "heatmap_stride": 4}})


@pytest.fixture(scope="module")
def gcs_examples(coco_inputs, example_config):
    """ExampleGen with inputs and output on gs:// (train and eval from the same 4 images)."""
    from components import example_gen

    out_dir = f"gs://{BUCKET}/runs/examples"
    manifest = example_gen.run_example_gen(
        "coco", out_dir, example_config,
        train_annotations=coco_inputs["annotations"], train_images=coco_inputs["images"],
        eval_annotations=coco_inputs["annotations"], eval_images=coco_inputs["images"], beam_args=IN_MEMORY)
    return out_dir, manifest


def _records(pattern):
    files = sorted(tf.io.gfile.glob(pattern))
    assert files, pattern
    return [bytes(record.numpy()) for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_example_gen_reads_and_writes_gs(gcs_examples, coco_inputs, example_config, bucket, tmp_path):
    from components import example_gen

    out_dir, manifest = gcs_examples
    names = _names(bucket, "runs/")
    assert "runs/examples/manifest.json" in names and "runs/examples/dead_letter.jsonl" in names
    assert any(name.startswith("runs/examples/Split-train/data_tfrecord-") for name in names)
    assert any(name.startswith("runs/examples/Split-eval/data_tfrecord-") for name in names)
    assert not [name for name in names if ".tmp-" in name], names  # the staging folder is gone
    on_gcs = json.loads(bucket.blob("runs/examples/manifest.json").download_as_bytes())  # strict JSON
    assert on_gcs == manifest
    assert manifest["splits"] == {"train": 12, "eval": 12}
    assert manifest["sources"]["train_images"]["path"] == coco_inputs["images"]

    # The same inputs read from local files give byte-identical records and the same content hash.
    local_dir = str(tmp_path / "examples")
    local = example_gen.run_example_gen(
        "coco", local_dir, example_config,
        train_annotations=coco_inputs["local_annotations"], train_images=coco_inputs["local_images"],
        eval_annotations=coco_inputs["local_annotations"], eval_images=coco_inputs["local_images"],
        beam_args=IN_MEMORY)
    assert local["content_hash"] == manifest["content_hash"]
    for split in ("train", "eval"):
        assert _records(f"{out_dir}/Split-{split}/*") == _records(f"{local_dir}/Split-{split}/*")


def _write_blessing(directory, blessed=True):
    from components import blessing

    blessing.write_blessing(directory, {"blessed": blessed, "metrics": {"AP": 0.75},
                                        "reasons": [] if blessed else ["AP low"]})
    return directory


@pytest.fixture(scope="module")
def fake_model(tmp_path_factory):
    from tests.evaluator_fixtures import export_fake_model

    return export_fake_model(str(tmp_path_factory.mktemp("gcs-pusher") / "model"), noise_px=1.0)


def test_pusher_versions_marker_and_baseline_on_gs(gcs, fake_model, bucket):
    from components import evaluator, pusher

    destination = f"gs://{BUCKET}/serving"
    bless = _write_blessing(f"gs://{BUCKET}/blessing")
    first = pusher.run_pusher(fake_model, bless, destination, run_id="run-a")
    second = pusher.run_pusher(fake_model, bless, destination, run_id="run-b", metrics={"AP": 0.8})
    assert (first["version"], second["version"]) == (1, 2)
    assert second["path"] == f"{destination}/2"
    names = _names(bucket, "serving/")
    for version in (1, 2):
        assert f"serving/{version}/{pusher.COMMIT_MARKER}" in names
        assert f"serving/{version}/saved_model.pb" in names
    assert not [name for name in names if name.split("/")[1].startswith(pusher.STAGING_PREFIX)], names
    # Commit order on an object store: the graph after the variables, the marker after everything.
    blobs = {blob.name[len("serving/2/"):]: blob.generation for blob in bucket.list_blobs(prefix="serving/2/")
             if not blob.name.endswith("/")}
    assert max(blobs, key=blobs.get) == pusher.COMMIT_MARKER
    assert blobs["saved_model.pb"] > max(value for name, value in blobs.items() if name.startswith("variables/"))
    record = json.loads(bucket.blob(f"serving/2/{pusher.PUSH_RECORD}").download_as_bytes())
    assert record["run_id"] == "run-b" and record["metrics"] == {"AP": 0.8} and record["version"] == 2
    assert sorted(record["files"] + [pusher.COMMIT_MARKER, pusher.PUSH_RECORD]) == sorted(blobs)
    # The pushed version loads straight from gs:// (TF2 loader).
    loaded = tf.saved_model.load(f"{destination}/2")
    assert "serving_default" in loaded.signatures

    assert pusher.list_versions(destination) == [1, 2]
    assert evaluator.resolve_baseline(destination) == f"{destination}/2"
    # A version cut short (files without the commit marker) is ignored by readers and never reused.
    bucket.blob("serving/7/saved_model.pb").upload_from_string(b"partial")
    bucket.blob("serving/7/variables/variables.index").upload_from_string(b"partial")
    assert pusher.list_versions(destination) == [1, 2]
    assert pusher.list_versions(destination, complete_only=False) == [1, 2, 7]
    assert evaluator.resolve_baseline(destination) == f"{destination}/2"

    # gs:// to gs:// (a Trainer model dir on GCS): the pushed version is itself a SavedModel directory.
    third = pusher.run_pusher(f"{destination}/2", bless, destination, run_id="run-gs")
    assert third["version"] == 8 and third["source"] == f"{destination}/2"
    assert sorted(third["files"]) == sorted(record["files"])
    assert evaluator.resolve_baseline(destination) == f"{destination}/8"

    # Not blessed: nothing is written.
    not_blessed = _write_blessing(f"gs://{BUCKET}/blessing-no", blessed=False)
    assert pusher.run_pusher(fake_model, not_blessed, destination, run_id="run-d") is None
    assert pusher.list_versions(destination, complete_only=False) == [1, 2, 7, 8]


def test_pusher_cli_on_gs_and_killed_push(gcs, fake_model, bucket):
    """The Pusher's CLI in fresh processes, as a user runs it: one SIGKILLed mid-copy, then a complete one."""
    from components import evaluator, pusher

    destination = f"gs://{BUCKET}/serving-cli"
    bless = _write_blessing(f"gs://{BUCKET}/blessing-cli")
    command = [sys.executable, "-m", "components.pusher", "--model-dir", fake_model, "--blessing", bless,
               "--destination", destination]
    process = subprocess.Popen(command + ["--run-id", "killed"], cwd=ROOT,
                               env=dict(os.environ, **{pusher.COPY_DELAY_ENV: "2"}),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    staged = []
    while time.time() < deadline and process.poll() is None and not staged:
        staged = [name for name in _names(bucket, "serving-cli/") if not name.endswith("/")]
        time.sleep(0.1)
    process.kill()
    process.wait()
    assert staged and all(name.split("/")[1].startswith(pusher.STAGING_PREFIX) for name in staged), staged
    assert pusher.list_versions(destination, complete_only=False) == []  # the staging folder is no version
    assert evaluator.resolve_baseline(destination) is None

    result = subprocess.run(command + ["--run-id", "run-c"], cwd=ROOT, env=dict(os.environ),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"version": 1, "path": f"{destination}/1"}
    assert pusher.list_versions(destination) == [1]
    assert evaluator.resolve_baseline(destination) == f"{destination}/1"
    assert pusher.read_push_record(destination, 1)["run_id"] == "run-c"
    assert tf.io.gfile.exists(f"{destination}/1/variables/variables.index")


@pytest.mark.slow
def test_trainer_model_dir_on_gs(gcs_examples, bucket):
    from pose.config import load_config
    from trainer import task

    examples_dir, _ = gcs_examples
    config = load_config(os.path.join(ROOT, "configs", "demo.yaml"), small_run=True)
    config["train"]["epochs"] = 4  # 12 records at batch 8: one step per epoch
    model_dir = f"gs://{BUCKET}/runs/model"
    summary = task.train_and_export(examples_dir, config, model_dir, max_steps=2, log=lambda message: None)
    assert summary["steps"] == 2 and summary["start_step"] == 0
    names = _names(bucket, "runs/model/")
    assert "runs/model/Format-Serving/saved_model.pb" in names
    assert "runs/model/model.keras" in names and "runs/model/train_summary.json" in names
    assert any(name.startswith("runs/model/run/") and ".index" in name for name in names), names
    assert json.loads(bucket.blob("runs/model/train_summary.json").download_as_bytes())["steps"] == 2

    loaded = tf.saved_model.load(f"{model_dir}/Format-Serving")
    crops = np.zeros((1, 64, 48, 3), np.float32)
    heatmaps = loaded.signatures["heatmaps"](images=tf.constant(crops))
    assert all(np.isfinite(value.numpy()).all() for value in heatmaps.values())

    # Re-running the same command resumes from the checkpoint on gs://.
    resumed = task.train_and_export(examples_dir, config, model_dir, max_steps=3, log=lambda message: None)
    assert resumed["start_step"] == 2 and resumed["steps"] == 3


@pytest.mark.slow
def test_tfx_pipeline_with_root_data_and_push_on_gs(gcs, bucket, coco_inputs, tmp_path):
    """python pipeline.py with the data, the TFX pipeline root and the push destination on gs:// (MLMD local)."""
    from components import evaluator, pusher
    from pipeline import configs, local_runner, run_summary

    for split in ("train2017", "val2017"):
        bucket.blob(f"coco-root/annotations/person_keypoints_{split}.json").upload_from_filename(
            coco_inputs["local_annotations"])
        for name in sorted(os.listdir(coco_inputs["local_images"])):
            bucket.blob(f"coco-root/images/{split}/{name}").upload_from_filename(
                os.path.join(coco_inputs["local_images"], name))
    runs, scratch = tmp_path / "runs", tmp_path / "tmp"
    scratch.mkdir()
    root, destination = f"gs://{BUCKET}/tfx-root", f"gs://{BUCKET}/serving-tfx"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "pipeline.py"), "--runner=DirectRunner", "--data", "coco",
         "--coco-root", f"gs://{BUCKET}/coco-root", "--config", os.path.join(ROOT, "configs", "demo.yaml"),
         "--small-run", "--runs-dir", str(runs), "--pipeline-root", root, "--push-destination", destination,
         "--max-steps", "2", "--threshold", "AP=0", "--threshold", "AP50=0", "--run-id", "on-gs"],
        cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(scratch)),
        capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    record = run_summary.run_record(str(runs / local_runner.METADATA_FILE), configs.PIPELINE_NAME)
    artifacts = [artifact for node in record["nodes"].values() for key in ("outputs",)
                 for values in node[key].values() for artifact in values]
    assert artifacts and all(artifact["uri"].startswith(f"{root}/") for artifact in artifacts), artifacts
    names = _names(bucket, "tfx-root/")
    assert any(name.endswith("Format-Serving/saved_model.pb") for name in names)
    assert any(name.endswith("/model.keras") for name in names)
    assert not os.path.exists(os.path.join(ROOT, "gs:")), "a gs:// path was written as a local folder"
    assert any("/Split-eval/" in name for name in names)
    # One committed version on gs://, found by the CLI gate's baseline resolution.
    versions = pusher.list_versions(destination)
    assert len(versions) == 1 and versions[0] >= pusher.TFX_VERSION_MIN
    pushed = f"{destination}/{versions[0]}"
    served = _names(bucket, f"serving-tfx/{versions[0]}/")
    assert {f"serving-tfx/{versions[0]}/{name}" for name in ("saved_model.pb", pusher.PUSH_RECORD,
                                                              pusher.COMMIT_MARKER)} <= set(served)
    assert not [name for name in _names(bucket, "serving-tfx/") if pusher.STAGING_PREFIX in name]
    assert evaluator.resolve_baseline(destination) == pushed
    with open(runs / "on-gs" / "index.json") as handle:
        index = json.load(handle)
    assert index["verdict"] == "BLESSED" and index["pushed_path"] == pushed

"""End to end: python pipeline.py through kfp.local on tiny inputs.

* the embedded synthetic data, tiny config: records written, model exported,
  blessing written, model pushed (the gate is set so a 4-step model passes);
* the real COCO samples (../shared/data) laid out the DarkPose way, with the
  detector file, gated against the first run's model with an impossible
  threshold: NOT_BLESSED, nothing pushed, exit status 1;
* the real MPII samples laid out the DarkPose way (annot/*.json, gt_valid.mat).

Each run is a subprocess (the command a user types), so the exit status is real.
"""
import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo.yaml")
# A tiny MPII recipe (the demo's small network) keeps the real-data test fast.
TINY_MPII_CONFIG = """\
dataset: mpii
model: {name: simplebaseline, depth: 18, backbone_stages: 3, deconv_filters: [64, 64]}
data: {input_size: [64, 64], heatmap_stride: 4}
train: {batch_size: 2, epochs: 1, max_steps: 1}
eval: {batch_size: 2}
"""

pytestmark = pytest.mark.slow


def run_pipeline(*flags, timeout=600):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.run([sys.executable, os.path.join(ROOT, "pipeline.py"), "--runner=DirectRunner", *flags],
                             cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout)
    return process.returncode, process.stdout + process.stderr


def read_index(runs_dir, run_id):
    with open(os.path.join(runs_dir, run_id, "index.json")) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    runs = str(tmp_path_factory.mktemp("runs"))
    code, output = run_pipeline("--small-run", "--config", DEMO_CONFIG, "--synthetic-train-images", "10",
                                "--synthetic-val-images", "3", "--runs-dir", runs, "--run-id", "first",
                                "--threshold", "AP=0", "--max-steps", "3")
    return runs, code, output


def test_synthetic_run_blesses_and_pushes(first_run):
    runs, code, output = first_run
    assert code == 0, output[-4000:]
    index = read_index(runs, "first")
    assert index["verdict"] == "BLESSED"
    outputs = index["outputs"]
    assert set(outputs) == {"example_gen", "trainer", "evaluator", "pusher"}
    # Examples: TFX split folders with gzip'd TFRecord shards and the manifest.
    assert glob.glob(os.path.join(outputs["example_gen"], "Split-train", "data_tfrecord-*.gz"))
    assert glob.glob(os.path.join(outputs["example_gen"], "Split-eval", "data_tfrecord-*.gz"))
    assert index["records"]["splits"]["train"] >= 20 and index["records"]["splits"]["eval"] >= 6
    # Model: the SavedModel in Format-Serving.
    assert os.path.exists(os.path.join(outputs["trainer"], "Format-Serving", "saved_model.pb"))
    assert index["training"]["steps"] == 3
    # Blessing: the marker, blessing.json with the AP table, evaluation outputs.
    assert os.path.exists(os.path.join(outputs["evaluator"], "BLESSED"))
    assert not os.path.exists(os.path.join(outputs["evaluator"], "NOT_BLESSED"))
    with open(os.path.join(outputs["evaluator"], "blessing.json")) as handle:
        blessing = json.load(handle)
    assert blessing["blessed"] is True and "AP" in blessing["metrics"]
    assert index["metrics"]["AP"] == blessing["metrics"]["AP"]
    assert index["baseline"] is None
    # Pushed to <runs>/serving/<version>, recorded by the pusher artifact.
    pushed = index["pushed_path"]
    assert pushed and os.path.dirname(pushed) == os.path.join(runs, "serving")
    assert os.path.exists(os.path.join(pushed, "saved_model.pb"))
    with open(os.path.join(outputs["pusher"], "push_record.json")) as handle:
        assert json.load(handle)["path"] == pushed
    # Progress and the final summary are printed; the index files exist.
    for text in ("[example_gen] finished", "[trainer] finished", "[evaluator] finished", "[pusher] finished",
                 "blessing: BLESSED", f"pushed:   {pushed}"):
        assert text in output
    assert os.path.exists(os.path.join(runs, "first", "INDEX.md"))


def _coco_layout(shared_data, root):
    """The shared COCO samples arranged as DarkPose expects (symlinks only)."""
    train, val = os.path.join(shared_data, "coco_train2017_mini28"), os.path.join(shared_data, "coco_val2017_mmpose4")
    for folder in ("annotations", "images", "person_detection_results"):
        os.makedirs(os.path.join(root, folder))
    links = {
        "annotations/person_keypoints_train2017.json": f"{train}/person_keypoints_train2017_mini28.json",
        "annotations/person_keypoints_val2017.json": f"{val}/person_keypoints_val2017_mmpose4.json",
        "images/train2017": f"{train}/images",
        "images/val2017": f"{val}/images",
        "person_detection_results/COCO_val2017_detections_AP_H_56_person.json":
            f"{val}/person_detection_results_AP_H_56.json",
    }
    for name, target in links.items():
        os.symlink(target, os.path.join(root, name))
    return os.path.join(root, "person_detection_results", "COCO_val2017_detections_AP_H_56_person.json")


def test_real_coco_not_blessed_pushes_nothing(first_run, shared_data, tmp_path):
    runs, first_code, _ = first_run
    assert first_code == 0
    det_file = _coco_layout(shared_data, str(tmp_path / "coco"))
    before = sorted(os.listdir(os.path.join(runs, "serving")))
    code, output = run_pipeline("--data", "coco", "--coco-root", str(tmp_path / "coco"), "--det-file", det_file,
                                "--config", DEMO_CONFIG, "--small-run", "--max-steps", "2",
                                "--runs-dir", runs, "--run-id", "coco", "--threshold", "AP=1.01")
    assert code == 1, output[-4000:]
    index = read_index(runs, "coco")
    assert index["verdict"] == "NOT_BLESSED" and index["pushed_path"] is None
    assert "pusher" not in index["outputs"]
    assert os.path.exists(os.path.join(index["outputs"]["evaluator"], "NOT_BLESSED"))
    assert not os.path.exists(os.path.join(index["outputs"]["evaluator"], "BLESSED"))
    assert any("AP" in reason for reason in index["reasons"])
    # The baseline was the first run's pushed model; nothing new was pushed.
    assert index["baseline"] == os.path.join(runs, "serving", "1")
    assert sorted(os.listdir(os.path.join(runs, "serving"))) == before
    # Real COCO counts: 86 labelled train persons; eval crops come from the 118 detector boxes.
    assert index["records"]["splits"]["train"] > 0 and index["records"]["splits"]["eval"] > 0
    assert "blessing: NOT_BLESSED" in output and "nothing pushed" in output


def test_real_mpii_layout(shared_data, tmp_path):
    root = tmp_path / "mpii"
    os.makedirs(root / "annot")
    samples = os.path.join(shared_data, "mpii_val_mmpose2")
    os.symlink(os.path.join(samples, "mpii_val_mmpose2.json"), root / "annot" / "train.json")
    os.symlink(os.path.join(samples, "mpii_val_mmpose2.json"), root / "annot" / "valid.json")
    os.symlink(os.path.join(shared_data, "mpii_val_pckh_dev", "gt_valid_dev.mat"), root / "annot" / "gt_valid.mat")
    os.symlink(os.path.join(samples, "images"), root / "images")
    config = tmp_path / "tiny_mpii.yaml"
    config.write_text(TINY_MPII_CONFIG)
    runs = str(tmp_path / "runs")
    code, output = run_pipeline("--data", "mpii", "--mpii-root", str(root), "--config", str(config),
                                "--max-steps", "1", "--runs-dir", runs, "--run-id", "mpii",
                                "--threshold", "PCKh@0.5=0")
    assert code == 0, output[-4000:]
    index = read_index(runs, "mpii")
    assert index["verdict"] == "BLESSED"
    assert index["records"]["splits"] == {"train": 2, "eval": 2}
    assert "PCKh@0.5" in index["metrics"]
    assert os.path.exists(os.path.join(index["pushed_path"], "saved_model.pb"))


def test_stage_failure_names_the_stage(tmp_path):
    bad = tmp_path / "coco"
    for folder in ("annotations", "images/train2017", "images/val2017"):
        os.makedirs(bad / folder)
    for split in ("train2017", "val2017"):
        (bad / "annotations" / f"person_keypoints_{split}.json").write_text("{not json")
    runs = str(tmp_path / "runs")
    code, output = run_pipeline("--data", "coco", "--coco-root", str(bad), "--config", DEMO_CONFIG,
                                "--runs-dir", runs, "--run-id", "bad")
    assert code == 2, output[-4000:]
    index = read_index(runs, "bad")
    assert index["verdict"] == "FAILED" and "example_gen" in index["errors"]
    assert "person_keypoints_train2017.json" in index["errors"]["example_gen"]
    assert "ERROR in stage example_gen" in output
    assert "trainer" not in index["outputs"]

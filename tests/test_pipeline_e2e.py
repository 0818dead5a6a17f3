"""End to end: python pipeline.py (the TFX pipeline, LocalDagRunner, ML Metadata in SQLite) on tiny inputs.

One runs folder for the module, so the runs share ML Metadata, the pipeline root and
the push destination, as two `make demo`s do:

1. tiny synthetic data, 3 steps, gate AP >= 0: BLESSED, pushed, every artifact in MLMD
   with its lineage (Examples -> Trainer -> Model -> PoseEvaluator -> Pusher);
2. the same data again: ExampleGen's output is reused from TFX's cache, a new model is
   trained and the first model is its baseline, found by the Resolver through MLMD;
3. the real COCO samples (../shared/data) laid out the DarkPose way, with the detector
   file and an impossible threshold: NOT_BLESSED, the Pusher pushes nothing, exit status 1;
4. a corrupt COCO annotation file: exit status 2 naming the failed component;
5. the real MPII samples laid out the DarkPose way (annot/*.json, gt_valid.mat).

Each run is a subprocess (the command a user types), so the exit status is real. Every
Beam component leaves files in $TMPDIR: the runs use a scratch TMPDIR, removed at the end.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

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
TINY = ("--small-run", "--config", DEMO_CONFIG, "--synthetic-train-images", "10", "--synthetic-val-images", "3")
GATED = (*TINY, "--data-validation")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    base = tmp_path_factory.mktemp("tfx")
    scratch = base / "tmp"
    scratch.mkdir()
    yield str(base / "runs"), str(scratch)
    shutil.rmtree(scratch, ignore_errors=True)


def run_pipeline(workspace, *flags, timeout=900):
    runs, scratch = workspace
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=scratch)
    process = subprocess.run(
        [sys.executable, os.path.join(ROOT, "pipeline.py"), "--runner=DirectRunner", "--runs-dir", runs, *flags],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout)
    return process.returncode, process.stdout + process.stderr


def read_index(runs, run_id):
    with open(os.path.join(runs, run_id, "index.json")) as handle:
        return json.load(handle)


def mlmd_record(runs):
    from pipeline import configs, local_runner, run_summary
    return run_summary.run_record(os.path.join(runs, local_runner.METADATA_FILE), configs.PIPELINE_NAME)


@pytest.fixture(scope="module")
def first_run(workspace):
    code, output = run_pipeline(workspace, *GATED, "--run-id", "first", "--threshold", "AP=0", "--max-steps", "3",
                                "--deploy", "all")
    return code, output, mlmd_record(workspace[0])


@pytest.fixture(scope="module")
def second_run(workspace, first_run):
    code, output = run_pipeline(workspace, *GATED, "--run-id", "second", "--threshold", "AP=0",
                                "--max-drop", "AP=1", "--max-steps", "2")
    return code, output, mlmd_record(workspace[0])


def test_first_run_blessed_pushed_and_recorded_in_mlmd(workspace, first_run):
    runs, _ = workspace
    code, output, record = first_run
    assert code == 0, output[-4000:]
    nodes = record["nodes"]
    assert set(nodes) == {"PoseExampleGen", "Trainer", "latest_blessed_model_resolver", "PoseEvaluator", "Pusher",
                          "previous_statistics_resolver", "StatisticsGen", "PoseDataValidator"}
    assert {node: entry["state"] for node, entry in nodes.items()} == {node: "COMPLETE" for node in nodes}
    examples = nodes["PoseExampleGen"]["outputs"]["examples"][0]
    assert json.loads(examples["properties"]["split_names"]) == ["train", "eval"]
    assert examples["properties"]["num_records_train"] >= 20 and examples["properties"]["num_records_eval"] >= 6
    assert examples["properties"]["payload_format"] == "FORMAT_TF_EXAMPLE"   # as TFX's own components read it
    for split in ("train", "eval"):
        assert any(name.startswith("data_tfrecord-")
                   for name in os.listdir(os.path.join(examples["uri"], f"Split-{split}")))
    # Lineage: the Trainer read these Examples; the Evaluator and Pusher got its Model.
    assert nodes["Trainer"]["inputs"]["examples"][0]["id"] == examples["id"]
    model = nodes["Trainer"]["outputs"]["model"][0]
    assert os.path.exists(os.path.join(model["uri"], "Format-Serving", "saved_model.pb"))
    assert nodes["PoseEvaluator"]["inputs"]["model"][0]["id"] == model["id"]
    assert "baseline_model" not in nodes["PoseEvaluator"]["inputs"]
    blessing = nodes["PoseEvaluator"]["outputs"]["blessing"][0]
    assert blessing["properties"]["blessed"] == 1
    assert blessing["properties"]["current_model_id"] == model["id"]
    assert os.path.exists(os.path.join(blessing["uri"], "BLESSED"))
    evaluation = nodes["PoseEvaluator"]["outputs"]["evaluation"][0]
    assert os.path.exists(os.path.join(evaluation["uri"], "metrics.json"))
    assert nodes["Pusher"]["inputs"]["model"][0]["id"] == model["id"]
    # The data gate (first run: no previous statistics, domain checks only) passed its anomalies on.
    anomalies = nodes["PoseDataValidator"]["outputs"]["anomalies"][0]
    assert nodes["PoseEvaluator"]["inputs"]["anomalies"][0]["id"] == anomalies["id"]
    assert "previous_statistics" not in nodes["PoseDataValidator"]["inputs"]
    assert nodes["StatisticsGen"]["inputs"]["examples"][0]["id"] == examples["id"]
    pushed = nodes["Pusher"]["outputs"]["pushed_model"][0]
    assert pushed["properties"]["pushed"] == 1
    # The run summary and its index.
    index = read_index(runs, "first")
    assert index["verdict"] == "BLESSED" and index["pushed"] is True
    assert index["baseline"] is None
    assert os.path.dirname(index["pushed_path"].rstrip("/")) == os.path.join(runs, "serving")
    assert os.path.exists(os.path.join(index["pushed_path"], "saved_model.pb"))
    # TFX's Pusher component with our executor: a committed version named by Unix time, its record.
    from components import pusher as pusher_core

    version = os.path.basename(index["pushed_path"].rstrip("/"))
    assert int(version) >= pusher_core.TFX_VERSION_MIN and pushed["properties"]["pushed_version"] == version
    assert os.path.exists(os.path.join(index["pushed_path"], pusher_core.COMMIT_MARKER))
    push_record = pusher_core.read_push_record(os.path.join(runs, "serving"), int(version))
    assert push_record["model_artifact_id"] == model["id"] and push_record["blessed"] is True
    assert push_record["metrics"]["AP"] == pytest.approx(index["metrics"]["AP"])
    assert not [name for name in os.listdir(os.path.join(runs, "serving")) if name.startswith(".staging")]
    # pipeline.gate --baseline auto (CI, outside TFX) finds the model the pipeline pushed.
    from components import evaluator as evaluator_core

    assert evaluator_core.resolve_baseline(os.path.join(runs, "serving")) == index["pushed_path"].rstrip("/")
    with open(os.path.join(runs, "first", "INDEX.md")) as handle:
        index_md = handle.read()
    assert index_md.startswith("# Run ") and "BLESSED" in index_md and index["pushed_path"] in index_md
    assert index["lineage"]["model"]["id"] == model["id"]
    assert index["lineage"]["examples"]["id"] == examples["id"]
    assert "AP" in index["metrics"]
    assert index["data_gate"]["passed"] is True and "data gate: passed" in output
    _check_deploy_artifacts(runs, index, blessing, push_record, output)


def _check_deploy_artifacts(runs, index, blessing, push_record, output):
    """Issue 24 through TFX (--deploy all): the Trainer exported every LiteRT / ONNX artifact, the PoseEvaluator
    (run_evaluator) scored each by its own runtime on the eval split and gated it against the SavedModel, ML
    Metadata and the run summary show each one's numbers and verdict, and the Pusher put exactly the blessed
    ones (with deploy_manifest.json) into the SavedModel's committed version."""
    from components.pusher import _sha256
    from schemas import serving

    formats = list(serving.DEPLOY_FORMATS)
    with open(os.path.join(blessing["uri"], "blessing.json")) as handle:
        rows = json.load(handle)["deploy_artifacts"]
    assert [row["format"] for row in rows] == formats
    for row in rows:
        assert row["metrics"] and "AR" in row["metrics"], row     # the full table, from the artifact's own run
        assert row["delta"] == pytest.approx(row["metrics"]["AP"] - index["metrics"]["AP"], abs=1e-9)
        assert row["verdict"] == ("BLESSED" if abs(row["delta"]) <= row["max_delta"] else "NOT_BLESSED")
    # ML Metadata: one JSON property on the blessing, not float properties (those are the SavedModel's metrics).
    recorded = blessing["properties"]["deploy_artifacts"]["artifacts"]
    assert [(r["format"], r["verdict"]) for r in recorded] == [(r["format"], r["verdict"]) for r in rows]
    assert not any(name.startswith(tuple(formats)) for name in index["metrics"])
    # The run summary: one row per artifact, in index.json and printed.
    assert [r["format"] for r in index["deploy_artifacts"]] == formats
    for row, summary_row in zip(rows, index["deploy_artifacts"]):
        assert summary_row["value"] == pytest.approx(row["metrics"]["AP"])
        assert summary_row["size_bytes"] > 0 and summary_row["ms_per_crop"] > 0
        assert summary_row["pushed"] is (row["verdict"] == "BLESSED")
        assert any(line.split()[:2] == [row["format"], row["precision"]] and row["verdict"] in line.split()
                   for line in output.splitlines()), row["format"]
    # The pushed version: the SavedModel plus exactly the blessed artifacts, each with its spec and hash.
    blessed = [row["format"] for row in rows if row["verdict"] == "BLESSED"]
    refused = [row["format"] for row in rows if row["verdict"] != "BLESSED"]
    assert blessed, "no artifact blessed: the push of deployment artifacts is not exercised"
    version_dir = index["pushed_path"]
    assert sorted(os.listdir(os.path.join(version_dir, "deploy"))) == sorted(blessed + [serving.DEPLOY_MANIFEST_FILE])
    with open(os.path.join(version_dir, "deploy", serving.DEPLOY_MANIFEST_FILE)) as handle:
        manifest = json.load(handle)
    assert [entry["format"] for entry in manifest["artifacts"]] == blessed
    assert [entry["format"] for entry in manifest["refused"]] == refused
    for entry, row in zip(manifest["artifacts"], [row for row in rows if row["verdict"] == "BLESSED"]):
        pushed_file = os.path.join(version_dir, entry["file"])
        assert entry["sha256"] == _sha256(pushed_file) == _sha256(row["path"])
        assert os.path.exists(os.path.join(os.path.dirname(pushed_file), serving.DEPLOY_SPEC_FILE))
        assert entry["metrics"]["AP"] == pytest.approx(row["metrics"]["AP"]) and entry["input"]["name"] == "images"
    assert [entry["format"] for entry in push_record["deploy_artifacts"]] == blessed
    assert [entry["format"] for entry in push_record["deploy_refused"]] == refused


def test_second_run_reuses_examples_and_gates_against_the_first_model(workspace, first_run, second_run):
    runs, _ = workspace
    code, output, record = second_run
    assert code == 0, output[-4000:]
    first_nodes, nodes = first_run[2]["nodes"], record["nodes"]
    assert record["run"] != first_run[2]["run"]
    # Same data: ExampleGen is not re-run, its Examples come from the cache.
    assert nodes["PoseExampleGen"]["state"] == "CACHED"
    assert (nodes["PoseExampleGen"]["outputs"]["examples"][0]["id"]
            == first_nodes["PoseExampleGen"]["outputs"]["examples"][0]["id"])
    assert "reused from the cache" in output
    # A new model, evaluated against the first one resolved through MLMD.
    first_model = first_nodes["Trainer"]["outputs"]["model"][0]
    model = nodes["Trainer"]["outputs"]["model"][0]
    assert nodes["Trainer"]["state"] == "COMPLETE" and model["id"] != first_model["id"]
    assert nodes["latest_blessed_model_resolver"]["outputs"]["model"][0]["id"] == first_model["id"]
    assert nodes["PoseEvaluator"]["inputs"]["baseline_model"][0]["id"] == first_model["id"]
    blessing = nodes["PoseEvaluator"]["outputs"]["blessing"][0]
    assert blessing["properties"]["baseline_model_id"] == first_model["id"]
    with open(os.path.join(blessing["uri"], "blessing.json")) as handle:
        assert json.load(handle)["change_thresholds_applied"] is True
    second_index = read_index(runs, "second")
    assert second_index["baseline"]["model_id"] == first_model["id"]
    # The summary shows the baseline's metrics (from its blessing in MLMD) beside the new model's.
    first_index = read_index(runs, "first")
    assert second_index["baseline"]["metrics"]["AP"] == pytest.approx(first_index["metrics"]["AP"])
    assert "baseline" in output and "change" in output


def test_data_gate_refuses_a_model_on_drifted_data(workspace, second_run):
    """Ground-truth boxes instead of detector boxes in the eval split: bbox/score drifts, nothing is blessed."""
    runs, _ = workspace
    before = sorted(os.listdir(os.path.join(runs, "serving")))
    code, output = run_pipeline(workspace, *GATED, "--gt-boxes", "--run-id", "drift", "--threshold", "AP=0",
                                "--max-drop", "AP=1", "--max-steps", "1")
    assert code == 1, output[-4000:]
    nodes = mlmd_record(runs)["nodes"]
    first_statistics = second_run[2]["nodes"]["StatisticsGen"]["outputs"]["statistics"][0]
    assert nodes["PoseDataValidator"]["inputs"]["previous_statistics"][0]["id"] == first_statistics["id"]
    blessing = nodes["PoseEvaluator"]["outputs"]["blessing"][0]
    with open(os.path.join(blessing["uri"], "blessing.json")) as handle:
        record = json.load(handle)
    assert record["blessed"] is False and list(record["data_anomalies"]) == ["eval"]
    assert any(reason.startswith("data gate: split eval: bbox/score:") for reason in record["reasons"])
    assert nodes["Pusher"]["outputs"]["pushed_model"][0]["properties"]["pushed"] == 0
    assert sorted(os.listdir(os.path.join(runs, "serving"))) == before
    index = read_index(runs, "drift")
    assert index["verdict"] == "NOT_BLESSED" and index["data_gate"]["passed"] is False
    assert "data gate: anomalies in split(s) eval" in output


def _start_rival_run(metadata_path):
    """What a second run on the same --runs-dir has written while it evaluates: a newer pipeline_run context
    of this pipeline with its PoseEvaluator RUNNING (no blessing yet)."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as mlmd
    from tfx import v1 as tfx

    from pipeline import configs

    store = metadata_store.MetadataStore(tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path))
    pipeline = next(c for c in store.get_contexts_by_type("pipeline") if c.name == configs.PIPELINE_NAME)
    node = next(c for c in store.get_contexts_by_type("node") if c.name.endswith(".PoseEvaluator"))
    execution = mlmd.Execution(type_id=store.get_executions_by_context(node.id)[0].type_id,
                               last_known_state=mlmd.Execution.RUNNING)
    rival = mlmd.Context(type_id=store.get_context_type("pipeline_run").id, name="rival-run")
    store.put_execution(execution, [], [pipeline, node, rival])


def test_a_run_reports_its_own_run_when_a_newer_run_shares_the_store(tmp_path, monkeypatch, capsys):
    """Issue 22: run A, then a newer run's context appears in the same ML Metadata, then A's summary is built:
    A's summary, index.json and exit status are A's (before: the newest run's, FAILED with PoseEvaluator RUNNING)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    from pipeline import local_runner
    from pipeline import pipeline as definition

    runs = tmp_path / "runs"
    run_local = definition.run_local

    def run_then_rival(*args, **kwargs):
        result = run_local(*args, **kwargs)
        _start_rival_run(str(runs / local_runner.METADATA_FILE))
        return result

    monkeypatch.setattr(definition, "run_local", run_then_rival)
    code = local_runner.main(["--runner=DirectRunner", "--runs-dir", str(runs), *TINY, "--run-id", "own",
                              "--threshold", "AP=0", "--max-steps", "1"])
    output = capsys.readouterr().out
    assert code == 0, output[-4000:]
    index = read_index(str(runs), "own")
    assert index["verdict"] == "BLESSED" and index["pushed"] is True and index["run"].startswith("own.")
    assert {stage["state"] for stage in index["stages"].values()} == {"COMPLETE"}
    assert f"=== run {index['run']}: BLESSED ===" in output and "rival-run" not in output


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


def test_real_coco_impossible_threshold_is_not_blessed_and_nothing_is_pushed(workspace, second_run, shared_data,
                                                                                tmp_path):
    runs, _ = workspace
    det_file = _coco_layout(shared_data, str(tmp_path / "coco"))
    before = sorted(os.listdir(os.path.join(runs, "serving")))
    code, output = run_pipeline(workspace, "--data", "coco", "--coco-root", str(tmp_path / "coco"),
                                "--det-file", det_file, "--config", DEMO_CONFIG, "--small-run", "--max-steps", "1",
                                "--run-id", "coco", "--threshold", "AP=1.01")
    assert code == 1, output[-4000:]
    record = mlmd_record(runs)
    nodes = record["nodes"]
    examples = nodes["PoseExampleGen"]["outputs"]["examples"][0]
    assert nodes["PoseExampleGen"]["state"] == "COMPLETE"   # new data: no cache hit
    assert examples["properties"]["num_records_train"] > 0 and examples["properties"]["num_records_eval"] > 0
    blessing = nodes["PoseEvaluator"]["outputs"]["blessing"][0]
    assert blessing["properties"]["blessed"] == 0
    assert os.path.exists(os.path.join(blessing["uri"], "NOT_BLESSED"))
    assert not os.path.exists(os.path.join(blessing["uri"], "BLESSED"))
    # The baseline is the latest blessed model (the second run's).
    second_model = second_run[2]["nodes"]["Trainer"]["outputs"]["model"][0]
    assert nodes["PoseEvaluator"]["inputs"]["baseline_model"][0]["id"] == second_model["id"]
    assert nodes["Pusher"]["outputs"]["pushed_model"][0]["properties"]["pushed"] == 0
    assert sorted(os.listdir(os.path.join(runs, "serving"))) == before
    index = read_index(runs, "coco")
    assert index["verdict"] == "NOT_BLESSED" and index["pushed"] is False and index["pushed_path"] is None
    assert "NOT_BLESSED" in output and "pushed: nothing" in output


def test_corrupt_input_exits_2_naming_the_component(workspace, tmp_path):
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (coco / "images" / split).mkdir(parents=True)
        (coco / "annotations" / f"person_keypoints_{split}.json").write_text('{"images": [')
    code, output = run_pipeline(workspace, "--data", "coco", "--coco-root", str(coco), "--small-run",
                                "--config", DEMO_CONFIG, "--run-id", "corrupt")
    assert code == 2, output[-4000:]
    assert "component PoseExampleGen failed" in output
    assert "person_keypoints_train2017.json" in output


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
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    runs = str(tmp_path / "runs")
    code, output = run_pipeline((runs, str(scratch)), "--data", "mpii", "--mpii-root", str(root),
                                "--config", str(config), "--max-steps", "1", "--run-id", "mpii",
                                "--threshold", "PCKh@0.5=0")
    assert code == 0, output[-4000:]
    index = read_index(runs, "mpii")
    assert index["verdict"] == "BLESSED" and index["pushed"] is True
    examples = mlmd_record(runs)["nodes"]["PoseExampleGen"]["outputs"]["examples"][0]
    assert (examples["properties"]["num_records_train"], examples["properties"]["num_records_eval"]) == (2, 2)
    assert "PCKh@0.5" in index["metrics"]
    assert os.path.exists(os.path.join(index["pushed_path"], "saved_model.pb"))


def test_bottom_up_pipeline_on_the_embedded_data(tmp_path):
    """--approach bottom_up: image records, the bottom-up model, its export and the evaluator's bottom-up path."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    runs = str(tmp_path / "runs")
    code, output = run_pipeline((runs, str(scratch)), "--approach", "bottom_up", "--small-run",
                                "--synthetic-train-images", "8", "--synthetic-val-images", "3",
                                "--max-steps", "2", "--run-id", "bu", "--threshold", "AP=0")
    assert code == 0, output[-4000:]
    index = read_index(runs, "bu")
    assert index["verdict"] == "BLESSED" and index["pushed"] is True and "AP" in index["metrics"]
    nodes = mlmd_record(runs)["nodes"]
    examples = nodes["PoseExampleGen"]["outputs"]["examples"][0]
    with open(os.path.join(examples["uri"], "manifest.json")) as handle:
        manifest = json.load(handle)
    assert manifest["approach"] == "bottom_up" and manifest["record"] == "image"
    assert examples["properties"]["num_records_eval"] == 3          # one record per image, not per person
    import tensorflow as tf

    loaded = tf.saved_model.load(index["pushed_path"])
    assert {"predict_image", "heatmaps", "serving_default"} <= set(loaded.signatures)
    assert "person_scores" in loaded.signatures["predict_image"].structured_outputs
    # A bottom-up config and --approach top_down disagree: exit 2 before any work.
    code, output = run_pipeline((runs, str(scratch)), "--approach", "top_down", "--config",
                                os.path.join(ROOT, "configs", "bottom_up", "demo_res18_129.yaml"))
    assert code == 2 and "has approach 'bottom_up'" in output


TINY_META_CONFIG = """\
model: {name: simplebaseline, depth: 18, backbone_stages: 3, deconv_filters: [64, 64]}
data: {input_size: [64, 48], heatmap_stride: 4}
train: {batch_size: 2, epochs: 1, max_steps: 1}
eval: {batch_size: 2, report_overlays: 1}
"""


def test_any_keypoint_set_with_dataset_meta(shared_data, tmp_path):
    """--dataset-meta on the real OneHand10K samples (21 joints, no flip pairs, no sigmas): the pipeline
    ingests, trains, evaluates PCK@0.2 / AUC / EPE, gates on PCK@0.2 and pushes a model carrying its meta."""
    samples = os.path.join(shared_data, "onehand10k_mmpose4")
    config = tmp_path / "tiny_hand.yaml"
    config.write_text(TINY_META_CONFIG)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    runs = str(tmp_path / "runs")
    code, output = run_pipeline((runs, str(scratch)), "--dataset-meta", os.path.join(samples, "dataset_meta.json"),
                                "--coco-root", samples, "--train-annotations", "test_onehand10k.json",
                                "--val-annotations", "test_onehand10k.json", "--train-images", "images",
                                "--val-images", "images", "--config", str(config), "--max-steps", "1",
                                "--run-id", "hand", "--threshold", "PCK@0.2=0", "--threshold", "EPE=100000")
    assert code == 0, output[-4000:]
    index = read_index(runs, "hand")
    assert index["verdict"] == "BLESSED" and index["pushed"] is True
    assert {"PCK@0.2", "AUC", "EPE"} <= set(index["metrics"]) and "AP" not in index["metrics"]
    nodes = mlmd_record(runs)["nodes"]
    examples = nodes["PoseExampleGen"]["outputs"]["examples"][0]
    assert (examples["properties"]["num_records_train"], examples["properties"]["num_records_eval"]) == (4, 4)
    with open(os.path.join(examples["uri"], "manifest.json")) as handle:
        assert json.load(handle)["dataset"] == "onehand10k"
    with open(os.path.join(index["pushed_path"], "assets.extra", "dataset_meta.json")) as handle:
        carried = json.load(handle)
    assert carried["dataset_name"] == "onehand10k" and len(carried["joint_names"]) == 21
    assert carried["flip_pairs"] == [] and carried["metric"] == "pck"
    # The gate was the meta's metric: EPE (lower is better) as an upper bound.
    blessing_uri = nodes["PoseEvaluator"]["outputs"]["blessing"][0]["uri"]
    with open(os.path.join(blessing_uri, "blessing.json")) as handle:
        blessing_record = json.load(handle)
    assert blessing_record["thresholds"]["EPE"] == {"upper_bound": 100000.0}
    assert blessing_record["metric"] == "pck"

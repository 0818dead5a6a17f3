"""pipeline.py --compile (KubeflowV2DagRunner) and the runner's argument handling."""
import json
import os

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline import configs, local_runner
from pipeline.pipeline import create_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATAFLOW_FLAGS = ["--runner=DataflowRunner", "--project=my-project", "--region=europe-west4",
                  "--temp_location=gs://my-bucket/tmp", "--setup_file=./setup.py"]


def compile_job(path, *flags):
    assert local_runner.main(["--compile", str(path), *flags]) == 0
    job = json.loads(open(path).read())
    return job, json_format.ParseDict(job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())


def test_compile_has_every_component_the_blessing_dependency_and_the_config(tmp_path):
    job, spec = compile_job(tmp_path / "pipeline.json", "--config", os.path.join(ROOT, "configs", "coco", "w32_256x192.yaml"),
                            "--image", "example.org/darkpose:1", "--threshold", "AP=0.71", *DATAFLOW_FLAGS)
    tasks = spec.root.dag.tasks
    assert {"PoseExampleGen", "Trainer", "PoseEvaluator", "Pusher"} <= set(tasks)
    assert any(name.startswith("latest_blessed_model_resolver") for name in tasks)
    # The Pusher waits for the Evaluator's blessing; the Evaluator gets the resolved baseline.
    assert "PoseEvaluator" in tasks["Pusher"].dependent_tasks
    assert "model_blessing" in tasks["Pusher"].inputs.artifacts
    assert "baseline_model" in tasks["PoseEvaluator"].inputs.artifacts
    # The config (with the flag's threshold) travels in the spec.
    evaluator_config = json.loads(
        tasks["PoseEvaluator"].inputs.parameters["config_json"].runtime_value.constant_value.string_value)
    assert evaluator_config["model"]["name"] == "hrnet"
    assert evaluator_config["eval"]["thresholds"]["AP"]["lower_bound"] == 0.71
    trainer_config = json.loads(
        tasks["Trainer"].inputs.parameters["custom_config"].runtime_value.constant_value.string_value)
    assert trainer_config["config"] == evaluator_config
    # Every executor runs in the component image, with the Dataflow flags as Beam args.
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    containers = [executor["container"] for executor in executors.values() if "container" in executor]
    assert containers and all(container["image"] == "example.org/darkpose:1" for container in containers)
    example_gen = next(c for name, c in ((n, e.get("container")) for n, e in executors.items())
                       if c and "PoseExampleGen" in name)
    assert "--project=my-project" in example_gen["args"]
    assert not any(arg.startswith("--direct_running_mode") for arg in example_gen["args"])


def test_trainer_resources_in_spec(tmp_path):
    job, _ = compile_job(tmp_path / "gpu.json", "--trainer-accelerator", "NVIDIA_TESLA_A100",
                         "--trainer-accelerator-count", "4", "--trainer-memory", "64G", "--trainer-cpu", "8")
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    trainer = next(executor["container"] for name, executor in executors.items() if "Trainer" in name)
    assert trainer["resources"]["accelerator"] == {"type": "NVIDIA_TESLA_A100", "count": "4"}
    assert trainer["resources"]["memoryLimit"] == 64.0 and trainer["resources"]["cpuLimit"] == 8.0
    others = [executor["container"] for name, executor in executors.items()
              if "Trainer" not in name and "container" in executor]
    assert others and all("resources" not in container for container in others)


def test_create_pipeline_validates_arguments():
    arguments = dict(pipeline_name="p", pipeline_root="/tmp/root", config={"dataset": "coco"},
                     train_annotations="a.json", train_images="i", eval_annotations="b.json", eval_images="j",
                     push_destination="/tmp/serving")
    with pytest.raises(ValueError, match="push_destination must be non-empty"):
        create_pipeline(**{**arguments, "push_destination": ""})
    with pytest.raises(ValueError, match="max_steps must be >= 0"):
        create_pipeline(**arguments, max_steps=-1)
    with pytest.raises(ValueError, match="trainer_accelerator_count must be >= 1"):
        create_pipeline(**arguments, trainer_accelerator_type="NVIDIA_TESLA_A100")


def test_beam_flags_pass_through_unchanged():
    flags = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    assert local_runner.beam_flags(flags) == flags
    assert local_runner.beam_flags(["--runner=DirectRunner"]) == [
        "--runner=DirectRunner", "--direct_running_mode=in_memory"]
    assert local_runner.beam_flags(DATAFLOW_FLAGS) == DATAFLOW_FLAGS
    assert local_runner.beam_flags(["--project", "my-project"]) == [
        "--project", "my-project", "--direct_running_mode=in_memory"]
    with pytest.raises(ValueError, match="unexpected argument"):
        local_runner.beam_flags(["stray"])


def test_gate_flags_and_config_checks():
    parser = local_runner.build_parser()
    config = local_runner.load_run_config(parser.parse_args(["--threshold", "AP=0.5", "--max-drop", "AP50=0.02"]))
    assert config["eval"]["thresholds"]["AP"] == {"lower_bound": 0.5, "max_drop": 0.03}
    assert config["eval"]["thresholds"]["AP50"] == {"max_drop": 0.02}
    with pytest.raises(ValueError, match="--threshold expects METRIC=NUMBER"):
        local_runner.load_run_config(parser.parse_args(["--threshold", "AP"]))
    with pytest.raises(ValueError, match="needs a 'mpii' config"):
        local_runner.load_run_config(parser.parse_args(
            ["--data", "mpii", "--config", os.path.join(ROOT, "configs", "demo.yaml")]))


def test_missing_real_data_is_a_clear_error(tmp_path, capsys):
    code = local_runner.main(["--runner=DirectRunner", "--data", "coco", "--coco-root", str(tmp_path),
                              "--config", os.path.join(ROOT, "configs", "demo.yaml"),
                              "--runs-dir", str(tmp_path / "runs")])
    assert code == configs.EXIT_FAILED
    message = capsys.readouterr().err
    assert "train_annotations not found" in message and "person_keypoints_train2017.json" in message
    code = local_runner.main(["--data", "coco", "--config", os.path.join(ROOT, "configs", "demo.yaml"),
                              "--runs-dir", str(tmp_path / "runs")])
    assert code == configs.EXIT_FAILED
    assert "--coco-root" in capsys.readouterr().err
    # Bad inputs fail before a run directory is made.
    assert not os.path.exists(tmp_path / "runs")


def test_input_fingerprint_follows_the_real_inputs(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "1.jpg").write_bytes(b"x")
    annotations = tmp_path / "train.json"
    annotations.write_text("{}")
    inputs = {"train_annotations": str(annotations), "train_images": str(images),
              "eval_annotations": str(annotations), "eval_images": str(images), "det_file": ""}
    first = local_runner.input_fingerprint(inputs, "a")
    assert local_runner.input_fingerprint(inputs, "b") == first          # same files: a cache hit
    annotations.write_text('{"images": []}')
    changed = local_runner.input_fingerprint(inputs, "a")
    assert changed != first
    (images / "2.jpg").write_bytes(b"y")
    assert local_runner.input_fingerprint(inputs, "a") != changed
    remote = dict(inputs, train_images="gs://bucket/images")
    assert local_runner.input_fingerprint(remote, "a") == "run:a"    # not checkable: no cache hit

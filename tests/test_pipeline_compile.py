"""pipeline.py --compile (KubeflowV2DagRunner) and the runner's argument handling."""
import json
import os

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline import configs, local_runner
from toolkit import cli
from pipeline.pipeline import create_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATAFLOW_FLAGS = ["--runner=DataflowRunner", "--project=my-project", "--region=europe-west4",
                  "--temp_location=gs://my-bucket/tmp", "--setup_file=./setup.py"]


def compile_job(path, *flags):
    if "--pipeline-root" not in flags:
        flags = (*flags, "--pipeline-root", "gs://my-bucket/tfx")
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


def test_data_and_push_destination_are_pipeline_parameters(tmp_path, capsys):
    from pipeline import kubeflow_v2_runner

    job, spec = compile_job(tmp_path / "p.json", "--data", "coco", "--coco-root", "gs://data-bucket/coco/",
                            "--det-file", "gs://data-bucket/coco/dets.json",
                            "--pipeline-root", "gs://my-bucket/tfx", "--data-validation")
    assert {"StatisticsGen", "PoseDataValidator"} <= set(spec.root.dag.tasks)
    assert "anomalies" in spec.root.dag.tasks["PoseEvaluator"].inputs.artifacts
    assert set(spec.root.input_definitions.parameters) == set(kubeflow_v2_runner.PARAMETERS)
    tasks = spec.root.dag.tasks
    example_gen = tasks["PoseExampleGen"].inputs.parameters
    assert example_gen["train_annotations"].component_input_parameter == "train_annotations"
    assert example_gen["input_fingerprint"].component_input_parameter == "data_version"
    assert tasks["PoseEvaluator"].inputs.parameters["gt_annotations"].component_input_parameter == "gt_annotations"
    assert tasks["Pusher"].inputs.parameters["push_destination"].component_input_parameter == "push_destination"
    values = {name: value["stringValue"] for name, value in job["runtimeConfig"]["parameters"].items()}
    assert values["train_annotations"] == "gs://data-bucket/coco/annotations/person_keypoints_train2017.json"
    assert values["eval_images"] == "gs://data-bucket/coco/images/val2017"
    assert values["det_file"] == "gs://data-bucket/coco/dets.json"
    assert json.loads(values["push_destination"]) == {"filesystem": {"base_directory": "gs://my-bucket/tfx/serving/darkpose"}}
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://my-bucket/tfx"
    assert "YOUR_BUCKET" not in json.dumps(job)
    # No data root: the data parameters are left to the submission, and the command says so.
    job, _ = compile_job(tmp_path / "q.json", "--push-destination", "gs://serve/darkpose")
    assert set(job["runtimeConfig"]["parameters"]) == {"push_destination", "data_version"}
    assert "parameters to give when submitting the job: train_annotations" in capsys.readouterr().out
    # The Pusher is TFX's component with our committed-push executor.
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    pusher = next(executor["container"] for name, executor in executors.items() if "Pusher" in name)
    assert any("PosePusherExecutor" in arg for arg in pusher["args"])


def test_compile_needs_a_pipeline_root(tmp_path, capsys):
    assert local_runner.main(["--compile", str(tmp_path / "p.json")]) == configs.EXIT_FAILED
    assert "--compile needs --pipeline-root" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "p.json")


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


def test_a_gate_of_change_thresholds_alone_is_refused_before_any_work(tmp_path, capsys):
    """Issue 22: with max_drop alone the first run has no baseline, is never blessed, and nothing is ever pushed."""
    config = tmp_path / "drop_only.yaml"
    config.write_text(open(os.path.join(ROOT, "configs", "demo.yaml")).read() +
                      "eval:\n  thresholds:\n    AP: {max_drop: 0.01}\n")
    runs = tmp_path / "runs"
    code = local_runner.main(["--config", str(config), "--data", "coco", "--coco-root", str(tmp_path / "no-coco"),
                              "--runs-dir", str(runs)])
    error = capsys.readouterr().err.strip()
    assert code == configs.EXIT_FAILED and len(error.splitlines()) == 1 and not runs.exists()
    assert f"{config}: eval.thresholds holds no value threshold" in error
    # A value threshold from the command line completes the gate.
    args, _ = local_runner.build_parser().parse_known_args(["--config", str(config), "--threshold", "AP=0.5"])
    assert local_runner.load_run_config(args)["eval"]["thresholds"]["AP"] == {"max_drop": 0.01, "lower_bound": 0.5}


def test_beam_flags_pass_through_unchanged():
    skip_prism = cli.SKIP_PRISM_FLAG
    flags = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    assert local_runner.beam_flags(flags) == flags + [skip_prism]
    assert local_runner.beam_flags(["--runner=DirectRunner"]) == [
        "--runner=DirectRunner", "--direct_running_mode=in_memory", skip_prism]
    assert local_runner.beam_flags(DATAFLOW_FLAGS) == DATAFLOW_FLAGS
    assert local_runner.beam_flags(["--runner", "PrismRunner"]) == ["--runner", "PrismRunner"]
    assert local_runner.beam_flags(["--project", "my-project"]) == [
        "--project", "my-project", "--direct_running_mode=in_memory", skip_prism]
    with pytest.raises(ValueError, match="unexpected argument"):
        local_runner.beam_flags(["stray"])


def test_local_defaults_run_beam_without_the_prism_attempt(caplog):
    """The DirectRunner with our local flags goes straight to the FnApiRunner: no sdist, no Prism download."""
    import logging

    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    caplog.set_level(logging.INFO)
    flags = cli.local_beam_flags(["--runner=DirectRunner", f"--setup_file={os.path.join(ROOT, 'setup.py')}"])
    with beam.Pipeline(argv=flags) as pipeline:
        assert_that(pipeline | beam.Create([1, 2]) | beam.Map(lambda x: 2 * x), equal_to([2, 4]))
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "PrismRunner" not in messages and "sdist" not in messages


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


def test_compile_the_bottom_up_pipeline(tmp_path):
    job, spec = compile_job(tmp_path / "bu.json", "--approach", "bottom_up", "--data", "coco",
                            "--coco-root", "gs://data-bucket/coco")
    tasks = spec.root.dag.tasks
    example_gen = json.loads(
        tasks["PoseExampleGen"].inputs.parameters["config_json"].runtime_value.constant_value.string_value)
    assert example_gen["approach"] == "bottom_up" and example_gen["bottom_up"]["max_people"] == 30
    trainer = json.loads(tasks["Trainer"].inputs.parameters["custom_config"].runtime_value.constant_value.string_value)
    assert trainer["config"]["model"]["name"] == "bottom_up"
    assert trainer["config"]["eval"]["thresholds"]["AP"]["lower_bound"] == configs.BOTTOM_UP_COCO_THRESHOLDS[
        "AP"]["lower_bound"]
    assert job["runtimeConfig"]["parameters"]["det_file"]["stringValue"] == ""


def test_compile_to_yaml_writes_kfp_pipeline_spec(tmp_path):
    """`--compile pipeline.yaml` (kfp's usual name) writes kfp's YAML PipelineSpec with the JSON job's content."""
    import yaml
    from kfp import components

    from pipeline import kubeflow_v2_runner

    flags = ("--data", "coco", "--coco-root", "gs://data-bucket/coco", "--image", "example.org/darkpose:1",
             "--pipeline-root", "gs://my-bucket/tfx", *DATAFLOW_FLAGS)
    job, json_spec = compile_job(tmp_path / "pipeline.json", *flags)
    path = tmp_path / "pipeline.yaml"
    assert local_runner.main(["--compile", str(path), *flags]) == 0
    text = path.read_text()
    assert text.startswith("# PIPELINE DEFINITION\n")
    loaded = yaml.safe_load(text)
    assert loaded["schemaVersion"] == "2.1.0" and loaded["defaultPipelineRoot"] == "gs://my-bucket/tfx"
    spec = json_format.ParseDict(loaded, pipeline_spec_pb2.PipelineSpec())
    # the same pipeline as the JSON job: tasks, dependencies, executors' images and arguments, component parameters
    assert set(spec.root.dag.tasks) == set(json_spec.root.dag.tasks)
    for name, task in spec.root.dag.tasks.items():
        reference = json_spec.root.dag.tasks[name]
        assert list(task.dependent_tasks) == list(reference.dependent_tasks), name
        assert set(task.inputs.parameters) == set(reference.inputs.parameters), name
        for key, parameter in task.inputs.parameters.items():
            assert parameter.component_input_parameter == reference.inputs.parameters[key].component_input_parameter
    executors = {name: executor.get("container") for name, executor in loaded["deploymentSpec"]["executors"].items()}
    json_executors = {name: executor.get("container")
                      for name, executor in job["pipelineSpec"]["deploymentSpec"]["executors"].items()}
    assert set(executors) == set(json_executors) and any(executors.values())
    for name, container in executors.items():
        reference = json_executors[name]
        if reference is None:
            assert container is None, name
            continue
        # schema 2.1.0 adds TFX's --json_serialized_inputs_spec_args (the inputs' types) to the same arguments
        assert container["image"] == reference["image"] and container["command"] == reference["command"], name
        args = list(container["args"])
        at = args.index("--json_serialized_inputs_spec_args")
        assert json.loads(args[at + 1])["parameters"] and args[:at] + args[at + 2:] == reference["args"], name
    # the compile-time values are the parameters' defaults (a YAML pipeline has no runtimeConfig)
    defaults = {name: parameter["defaultValue"]
                for name, parameter in loaded["root"]["inputDefinitions"]["parameters"].items()}
    assert defaults == {name: value["stringValue"] for name, value in job["runtimeConfig"]["parameters"].items()}
    assert set(defaults) == set(kubeflow_v2_runner.PARAMETERS)
    # kfp reads it as a pipeline with those inputs
    component = components.load_component_from_file(str(path))
    assert set(component.component_spec.inputs) == set(kubeflow_v2_runner.PARAMETERS)
    assert component.component_spec.inputs["train_images"].default == "gs://data-bucket/coco/images/train2017"


def test_bottom_up_with_a_dataset_meta_is_a_one_line_exit_2(shared_data, tmp_path, capsys):
    """Issue 23: python pipeline.py --dataset-meta <meta> --approach bottom_up stops before any work,
    with one line naming the meta and what to do instead (bottom-up knows COCO's / MPII's layouts only)."""
    meta = os.path.join(shared_data, "crowdpose_mmpose2", "dataset_meta.json")
    runs = tmp_path / "runs"
    code = local_runner.main(["--dataset-meta", meta, "--approach", "bottom_up", "--coco-root", str(tmp_path),
                              "--runs-dir", str(runs)])
    error = capsys.readouterr().err.strip()
    assert code == configs.EXIT_FAILED and len(error.splitlines()) == 1 and not runs.exists()
    assert "takes no dataset_meta" in error and meta in error and "'crowdpose', 14 joints" in error
    assert "use approach top_down" in error


def test_deploy_flag_sets_exports_and_evaluation(capsys):
    """Issue 24: --deploy all|none|<formats> sets export.formats and eval.deploy_artifacts alike; a bad one is a
    one-line error with exit status 2 before any work."""
    parser = local_runner.build_parser()
    demo = ["--config", os.path.join(ROOT, "configs", "demo.yaml")]
    config = local_runner.load_run_config(parser.parse_args([*demo, "--small-run", "--deploy", "all"]))
    assert config["export"]["formats"] == config["eval"]["deploy_artifacts"] == [
        "tflite_fp32", "tflite_fp16", "tflite_int8", "onnx"]
    config = local_runner.load_run_config(parser.parse_args([*demo, "--deploy", "onnx,tflite_int8"]))
    assert config["export"]["formats"] == config["eval"]["deploy_artifacts"] == ["onnx", "tflite_int8"]
    config = local_runner.load_run_config(parser.parse_args([*demo, "--deploy", "none"]))
    assert config["export"]["formats"] == config["eval"]["deploy_artifacts"] == []
    assert local_runner.load_run_config(parser.parse_args([*demo, "--small-run"]))["export"]["formats"] == []
    code = local_runner.main([*demo, "--deploy", "tflite_int4"])
    error = capsys.readouterr().err.strip()
    assert code == configs.EXIT_FAILED and len(error.splitlines()) == 1 and "unknown: tflite_int4" in error

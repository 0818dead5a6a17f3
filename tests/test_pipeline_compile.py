"""pipeline.py --compile: the Kubeflow / Vertex AI spec, and the runner's argument handling."""
import json
import os

import pytest
import yaml

from pipeline import configs, local_runner
from pipeline.pipeline import create_pipeline, pipeline_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATAFLOW_FLAGS = ["--runner=DataflowRunner", "--project=my-project", "--region=europe-west4",
                  "--temp_location=gs://my-bucket/tmp", "--setup_file=./setup.py"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("compile") / "pipeline.yaml")
    code = local_runner.main(["--compile", path, "--image", "example.com/darkpose-tf-python:test",
                              "--config", os.path.join(ROOT, "configs", "demo.yaml"), *DATAFLOW_FLAGS])
    assert code == 0
    with open(path) as handle:
        return yaml.safe_load(handle)


def test_spec_has_the_four_components_and_the_blessing_condition(compiled):
    assert compiled["pipelineInfo"]["name"] == configs.PIPELINE_NAME
    components = set(compiled["components"])
    assert {"comp-example-gen", "comp-trainer", "comp-evaluator", "comp-pusher"} <= components
    tasks = compiled["root"]["dag"]["tasks"]
    assert set(tasks) == {"example-gen", "trainer", "evaluator", "condition-1"}
    # Order: ExampleGen -> Trainer -> Evaluator -> condition(blessed) -> Pusher.
    assert tasks["trainer"]["inputs"]["artifacts"]["examples"]["taskOutputArtifact"]["producerTask"] == "example-gen"
    evaluator_inputs = tasks["evaluator"]["inputs"]["artifacts"]
    assert evaluator_inputs["model"]["taskOutputArtifact"]["producerTask"] == "trainer"
    assert evaluator_inputs["examples"]["taskOutputArtifact"]["producerTask"] == "example-gen"
    condition = tasks["condition-1"]
    assert condition["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--evaluator-Output'] == true"
    assert set(condition["dependentTasks"]) == {"evaluator", "trainer"}
    branch = compiled["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert set(branch) == {"pusher"}
    assert set(branch["pusher"]["inputs"]["artifacts"]) == {"model", "blessing"}
    # TFX-style artifacts on kfp system types.
    outputs = {name: compiled["components"][f"comp-{name}"]["outputDefinitions"]["artifacts"]
               for name in ("example-gen", "trainer", "evaluator", "pusher")}
    assert outputs["example-gen"]["examples"]["artifactType"]["schemaTitle"] == "system.Dataset"
    assert outputs["trainer"]["model"]["artifactType"]["schemaTitle"] == "system.Model"
    assert outputs["evaluator"]["blessing"]["artifactType"]["schemaTitle"] == "system.Artifact"
    assert outputs["pusher"]["pushed_model"]["artifactType"]["schemaTitle"] == "system.Artifact"
    evaluator_parameters = compiled["components"]["comp-evaluator"]["outputDefinitions"]["parameters"]
    assert evaluator_parameters["Output"]["parameterType"] == "BOOLEAN"


def test_spec_parameters_and_image(compiled):
    parameters = pipeline_parameters(compiled)
    expected = {"config_json", "dataset", "train_annotations", "train_images", "eval_annotations", "eval_images",
                "det_file", "gt_annotations", "beam_args", "push_destination", "run_id", "max_steps"}
    assert set(parameters) == expected
    # Beam flags reach the spec unchanged (no local DirectRunner default added).
    assert parameters["beam_args"]["defaultValue"] == DATAFLOW_FLAGS
    config = json.loads(parameters["config_json"]["defaultValue"])
    assert config["name"] == "demo" and config["data"]["input_size"] == [64, 48]
    assert config["eval"]["thresholds"] == configs.DEMO_THRESHOLDS
    assert parameters["dataset"]["defaultValue"] == "coco"
    assert parameters["max_steps"]["parameterType"] == "NUMBER_INTEGER"
    executors = compiled["deploymentSpec"]["executors"]
    assert len(executors) == 4
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == "example.com/darkpose-tf-python:test"
        # Nothing is pip-installed at run time: the image carries the project.
        assert "pip install" not in " ".join(container["command"])
        assert "from pipeline import stages" in " ".join(container["command"])


def test_create_pipeline_validates_arguments():
    config = local_runner.load_run_config(local_runner.build_parser().parse_args([]))
    arguments = dict(pipeline_name="p", image="python:3.11", config=config, train_annotations="a",
                     train_images="b", eval_annotations="c", eval_images="d", push_destination="/tmp/x")
    create_pipeline(**arguments)
    with pytest.raises(ValueError, match="push_destination"):
        create_pipeline(**{**arguments, "push_destination": ""})
    with pytest.raises(ValueError, match="max_steps"):
        create_pipeline(**arguments, max_steps=-1)


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


def test_trainer_resources_in_spec(tmp_path):
    path = str(tmp_path / "gpu.yaml")
    assert local_runner.main(["--compile", path, "--trainer-accelerator", "NVIDIA_TESLA_A100",
                              "--trainer-accelerator-count", "4", "--trainer-memory", "64G"]) == 0
    with open(path) as handle:
        spec = yaml.safe_load(handle)
    executors = spec["deploymentSpec"]["executors"]
    trainer = next(executor for name, executor in executors.items() if "trainer" in name)["container"]
    assert trainer["resources"]["accelerator"]["resourceType"] == "NVIDIA_TESLA_A100"
    assert trainer["resources"]["accelerator"]["resourceCount"] == "4"
    assert trainer["resources"]["resourceMemoryLimit"] == "64G"
    others = [executor["container"] for name, executor in executors.items() if "trainer" not in name]
    assert all("resources" not in container for container in others)

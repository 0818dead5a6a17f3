"""Compiles the TFX pipeline for Kubeflow Pipelines / Vertex AI Pipelines (KubeflowV2DagRunner).

``python pipeline.py --compile pipeline.json --pipeline-root gs://BUCKET/tfx [--coco-root gs://BUCKET/coco]
[--push-destination gs://BUCKET/serving/darkpose] [--image <component image>] [--config <yaml>]``
writes a PipelineJob (its ``pipelineSpec`` is a kfp ``PipelineSpec``): the same
:func:`pipeline.pipeline.create_pipeline` as the local run, each component run in the
component image (``Dockerfile``), the config in the components' parameters.

Where the data is and where blessed models go are **pipeline parameters**
(TFX ``RuntimeParameter``s, :data:`PARAMETERS`), set when a job is submitted
(Vertex AI: ``aiplatform.PipelineJob(..., parameter_values={...})``); the values
given at compile time (``--coco-root`` / ``--mpii-root``, ``--det-file``,
``--push-destination``) are written into the job's ``runtimeConfig`` and can be
overridden there. A parameter without a value must be given at submission
(Vertex AI refuses the job naming it). ``push_destination`` is TFX's
``PushDestination`` as JSON (TFX's Pusher takes the whole proto as one
parameter), e.g. ``{"filesystem": {"base_directory": "gs://BUCKET/serving/darkpose"}}``.
The pipeline root is the job's ``gcsOutputDirectory`` (``--pipeline-root``; Vertex AI's
``pipeline_root`` at submission overrides it).

Caching: ExampleGen's cache key is its parameters, so new data under the same
paths must change ``data_version`` (e.g. a date) or run with caching off.

File format, by the ``--compile`` file's extension:

* ``.yaml`` / ``.yml``: kfp's pipeline file, a ``PipelineSpec`` (schema 2.1.0)
  in YAML, as ``kfp.compiler`` writes it (kfp's client, Vertex AI's
  ``PipelineJob(template_path=...)`` and ``kfp.components.load_component_from_file``
  read it). A YAML pipeline file has no ``runtimeConfig``: the compile-time
  values are the parameters' ``defaultValue`` and the pipeline root is
  ``defaultPipelineRoot``; a submission overrides both. TFX's own YAML
  writer cannot be used (it stops with ``KeyError: 'parameterType'`` on the
  2.0.0 schema, and it drops the runtime values).
* anything else (``.json``): TFX's ``PipelineJob`` JSON (schema 2.0.0), the
  values in ``runtimeConfig``.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict

from pipeline import configs
from schemas import jsonio

PARAMETERS = ("train_annotations", "train_images", "eval_annotations", "eval_images", "det_file",
              "gt_annotations", "data_version", "push_destination")
"""The compiled job's pipeline parameters."""

YAML_SUFFIXES = (".yaml", ".yml")
"""``--compile`` file names written as kfp's YAML ``PipelineSpec`` (others: TFX's ``PipelineJob`` JSON)."""

DEFAULT_PUSH_SUBDIR = "serving/darkpose"
"""``push_destination`` when ``--push-destination`` is not given: ``<pipeline root>/serving/darkpose``."""


def data_paths(data: str, root: str, det_file: str = "") -> Dict[str, str]:
    """The ExampleGen / Evaluator inputs under a dataset root laid out the DarkPose way (as the local run).

    Args:
        data: ``coco`` or ``mpii``.
        root: the dataset root (``gs://`` or local), without a trailing slash.
        det_file: COCO person detections for the eval split ("" = ground-truth boxes).
    """
    root = root.rstrip("/")
    if data == "mpii":
        return {"train_annotations": f"{root}/annot/train.json", "train_images": f"{root}/images",
                "eval_annotations": f"{root}/annot/valid.json", "eval_images": f"{root}/images",
                "det_file": "", "gt_annotations": f"{root}/annot/gt_valid.mat"}
    return {"train_annotations": f"{root}/annotations/person_keypoints_train2017.json",
            "train_images": f"{root}/images/train2017",
            "eval_annotations": f"{root}/annotations/person_keypoints_val2017.json",
            "eval_images": f"{root}/images/val2017", "det_file": det_file,
            "gt_annotations": f"{root}/annotations/person_keypoints_val2017.json"}


def push_destination_json(base_directory: str) -> str:
    """TFX's ``PushDestination`` (filesystem) as the JSON string the ``push_destination`` parameter takes."""
    return jsonio.dumps({"filesystem": {"base_directory": base_directory}})


def parameter_values(args, data: str) -> Dict[str, str]:
    """The job's ``runtimeConfig`` values from the compile flags (missing ones are left to the submission)."""
    root = args.mpii_root if data == "mpii" else args.coco_root
    values: Dict[str, str] = {}
    if root:
        values.update(data_paths(data, root, args.det_file or ""))
    elif args.det_file:
        values["det_file"] = args.det_file
    destination = args.push_destination or f"{args.pipeline_root.rstrip('/')}/{DEFAULT_PUSH_SUBDIR}"
    values["push_destination"] = push_destination_json(destination)
    values["data_version"] = ""
    return values


def compile_pipeline(args, config: Dict[str, Any]) -> str:
    """Writes the Kubeflow / Vertex AI pipeline job (KubeflowV2DagRunner) to ``args.compile``.

    Returns:
        the job file's path.

    Raises:
        ValueError: no ``--pipeline-root``, or ``--data synthetic`` (the embedded data is local only).
    """
    from tfx import v1 as tfx

    from pipeline import pipeline as pipeline_definition

    if not args.pipeline_root:
        raise ValueError("--compile needs --pipeline-root (where the job writes its artifacts, e.g. "
                         "gs://BUCKET/tfx; Vertex AI's pipeline_root at submission overrides it)")
    data = "mpii" if args.data == "mpii" else "coco"
    parameter = tfx.dsl.experimental.RuntimeParameter
    parameters = {name: parameter(name=name, ptype=str) for name in PARAMETERS}
    inputs = {name: parameters[name] for name in PARAMETERS if name not in ("push_destination", "data_version")}
    pipeline = pipeline_definition.create_pipeline(
        pipeline_name=configs.PIPELINE_NAME, pipeline_root=args.pipeline_root, config=config,
        push_destination=parameters["push_destination"], input_fingerprint=parameters["data_version"],
        beam_pipeline_args=list(getattr(args, "user_beam_args", args.beam_args)),
        max_steps=args.max_steps, trainer_accelerator_type=args.trainer_accelerator,
        trainer_accelerator_count=args.trainer_accelerator_count or (1 if args.trainer_accelerator else 0),
        trainer_cpu_limit=args.trainer_cpu, trainer_memory_limit=args.trainer_memory,
        data_validation=args.data_validation,
        previous_statistics_strategy=tfx.dsl.experimental.LatestArtifactStrategy, **inputs)
    path = os.path.abspath(args.compile)
    as_yaml = path.lower().endswith(YAML_SUFFIXES)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=args.image, use_pipeline_spec_2_1=as_yaml),
        output_dir=os.path.dirname(path), output_filename=os.path.basename(path))
    values = parameter_values(args, data)
    if as_yaml:
        write_yaml_spec(path, yaml_pipeline_spec(runner.run(pipeline, parameter_values=values, write_out=False)))
    else:
        runner.run(pipeline, parameter_values=values)
    missing = [name for name in PARAMETERS if name not in values]
    if missing:
        print(f"[pipeline] parameters to give when submitting the job: {', '.join(missing)} "
              f"(or compile with --{data}-root)", flush=True)
    return path


def yaml_pipeline_spec(job: Dict[str, Any]) -> Dict[str, Any]:
    """kfp's pipeline file content from a schema-2.1.0 ``PipelineJob`` dict (``KubeflowV2DagRunner.run``).

    Returns:
        the job's ``pipelineSpec`` (a copy) with each ``runtimeConfig.parameterValues``
        entry as its root input's ``defaultValue`` and ``runtimeConfig.gcsOutputDirectory``
        as ``defaultPipelineRoot``.

    Raises:
        ValueError: the job is not schema 2.1.0 (2.0.0 inputs have no ``parameterType``).
    """
    spec = copy.deepcopy(job["pipelineSpec"])
    if spec.get("schemaVersion") != "2.1.0":
        raise ValueError(f"a YAML pipeline file needs PipelineSpec schema 2.1.0, got {spec.get('schemaVersion')}")
    runtime = job.get("runtimeConfig", {})
    parameters = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    for name, value in runtime.get("parameterValues", {}).items():
        parameters[name]["defaultValue"] = value
    if runtime.get("gcsOutputDirectory"):
        spec["defaultPipelineRoot"] = runtime["gcsOutputDirectory"]
    return spec


def write_yaml_spec(path: str, spec: Dict[str, Any]) -> None:
    """Writes ``spec`` (:func:`yaml_pipeline_spec`) as one YAML document, keys sorted, after a comment header."""
    import yaml

    header = (f"# PIPELINE DEFINITION\n# Name: {spec['pipelineInfo']['name']}\n"
              f"# darkpose-tf: TFX KubeflowV2DagRunner's PipelineSpec (schema {spec['schemaVersion']}); "
              f"compile-time parameter values are the defaults\n")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(header)
        yaml.safe_dump(spec, handle, sort_keys=True, default_flow_style=False, allow_unicode=True)

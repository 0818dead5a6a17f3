"""The TFX pipeline definition: PoseExampleGen -> Trainer -> Resolver(baseline) -> PoseEvaluator -> Pusher.

:func:`create_pipeline` takes every value as an argument and returns a
``tfx.dsl.Pipeline`` without running it; :func:`run_local` runs it with
``LocalDagRunner`` and ML Metadata in a SQLite file, under a ``pipeline_run``
context name chosen beforehand (:func:`pipeline_run_name`) so the run can be read
back on its own; :func:`metadata_config` names that file.

- ExampleGen: :class:`components.tfx_components.PoseExampleGen` (our Beam core).
- Trainer: TFX's standard ``Trainer`` with ``run_fn=trainer.task.run_fn`` and the
  loaded YAML config as ``custom_config={"config": ...}``; output ``Model``
  with ``Format-Serving``.
- Data gate (optional, ``data_validation=True``): TFX's ``StatisticsGen`` ->
  :class:`components.tfx_components.PoseDataValidator` (schema + drift against the
  previous run's statistics, resolved from ML Metadata) -> ``ExampleAnomalies``,
  which the Evaluator reads.
- Baseline: a ``Resolver`` with ``LatestBlessedModelStrategy``: the latest
  blessed model is found through ML Metadata.
- Evaluator: :class:`components.tfx_components.PoseEvaluator` (our Beam + TFMA
  core), a standard ``ModelEvaluation`` and ``ModelBlessing``.
- Pusher: TFX's standard ``Pusher`` to a filesystem destination (local or
  ``gs://``); it pushes nothing when the blessing says not blessed. Its copy is
  :class:`components.tfx_components.PosePusherExecutor` (staged, committed
  versions, see :mod:`components.pusher`).
"""
from __future__ import annotations

import datetime
import os
import uuid
from typing import Any, Mapping, Sequence

from tfx import v1 as tfx

from tfx.dsl.components.base import executor_spec
from tfx.orchestration.data_types import RuntimeParameter

from components.tfx_components import (PoseDataValidator, PoseEvaluator, PoseExampleGen, PosePusherExecutor,
                                      PreviousArtifactStrategy)

TRAINER_RUN_FN = "trainer.task.run_fn"
RESOLVER_ID = "latest_blessed_model_resolver"
PREVIOUS_STATISTICS_RESOLVER_ID = "previous_statistics_resolver"
METADATA_FILE = "metadata.sqlite"


def metadata_config(path: str):
    """ML Metadata connection config of a SQLite file (created on first use)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return tfx.orchestration.metadata.sqlite_metadata_connection_config(path)


def _gigabytes(memory: str) -> float:
    """``"64G"``, ``"64Gi"``, ``"512M"``, ``"64"`` (GB) -> GB as Kubeflow V2's ResourceSpec takes it."""
    text = str(memory).strip()
    units = {"Gi": 1.073741824, "G": 1.0, "Mi": 0.001048576, "M": 0.001, "Ti": 1099.511627776, "T": 1000.0}
    for suffix, scale in units.items():
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * scale
    return float(text)


def resource_spec(accelerator_type: str = "", accelerator_count: int = 0, cpu_limit: str = "",
                  memory_limit: str = ""):
    """A Kubeflow V2 ``ResourceSpec`` for a component's ``with_platform_config``."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec()
    if cpu_limit:
        spec.cpu_limit = float(cpu_limit)
    if memory_limit:
        spec.memory_limit = _gigabytes(memory_limit)
    if accelerator_type:
        spec.accelerator.type = accelerator_type
        spec.accelerator.count = int(accelerator_count)
    return spec


def create_pipeline(
    *,
    pipeline_name: str,
    pipeline_root: str,
    config: Mapping[str, Any],
    train_annotations: str,
    train_images: str,
    eval_annotations: str,
    eval_images: str,
    push_destination: str,
    det_file: str = "",
    gt_annotations: str = "",
    input_fingerprint: str = "",
    beam_pipeline_args: Sequence[str] = (),
    max_steps: int = 0,
    run_id: str = "",
    metadata_path: str | None = None,
    enable_cache: bool = True,
    trainer_accelerator_type: str = "",
    trainer_accelerator_count: int = 0,
    trainer_cpu_limit: str = "",
    trainer_memory_limit: str = "",
    data_validation: bool = False,
    previous_statistics_strategy: type | None = None,
) -> tfx.dsl.Pipeline:
    """Builds the TFX pipeline.

    Args:
        pipeline_name: TFX pipeline name.
        pipeline_root: root of the artifacts (local folder or ``gs://``).
        config: the loaded experiment config (:func:`pose.config.load_config`), with its
            ``eval.thresholds``; goes to the Trainer's ``custom_config`` and to the components.
        train_annotations, train_images, eval_annotations, eval_images, det_file: ExampleGen inputs.
        push_destination: the Pusher's filesystem base directory.
        gt_annotations: ground truth for the evaluator ("" = rebuilt from the records).
        input_fingerprint: content hash of the inputs (ExampleGen's cache key).
        beam_pipeline_args: Beam flags for ExampleGen and the Evaluator.
        max_steps: caps training steps (0 = the config's schedule).
        run_id: recorded in the Trainer's ``custom_config``: a new id makes every run train a new
            model (TFX's cache still reuses ExampleGen's output for unchanged data); "" lets the
            cache reuse the Trainer's output too.
        metadata_path: SQLite ML Metadata file (None: the runner supplies the connection).
        enable_cache: TFX caching.
        trainer_accelerator_type, trainer_accelerator_count, trainer_cpu_limit, trainer_memory_limit:
            resources of the Trainer on Kubeflow / Vertex AI (e.g. ``NVIDIA_TESLA_A100``, 4, ``"8"``,
            ``"64G"``); "" / 0 = the cluster's default. Ignored by LocalDagRunner.
        data_validation: add the data gate (:mod:`components.data_validation`): TFX's
            ``StatisticsGen`` on the records' scalar features, a ``Resolver`` for the
            previous run's statistics and :class:`PoseDataValidator`; the Evaluator
            refuses to bless when it reports anomalies.
        previous_statistics_strategy: the data gate's resolver strategy (default
            :class:`components.tfx_components.PreviousArtifactStrategy`; the Kubeflow V2
            compiler takes only TFX's ``LatestArtifactStrategy``).

    Raises:
        ValueError: an empty required argument or a negative ``max_steps``.
    """
    for name, value in (("pipeline_name", pipeline_name), ("pipeline_root", pipeline_root),
                        ("push_destination", push_destination), ("train_annotations", train_annotations),
                        ("eval_annotations", eval_annotations)):
        if not value:
            raise ValueError(f"{name} must be non-empty, got {value!r}")
    if int(max_steps) < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps!r}")
    if trainer_accelerator_type and int(trainer_accelerator_count) < 1:
        raise ValueError(f"trainer_accelerator_count must be >= 1 with trainer_accelerator_type "
                         f"{trainer_accelerator_type!r}, got {trainer_accelerator_count!r}")
    config = dict(config)
    example_gen = PoseExampleGen(
        dataset=str(config.get("dataset", "coco")), config=config, train_annotations=train_annotations,
        train_images=train_images, eval_annotations=eval_annotations, eval_images=eval_images,
        det_file=det_file, input_fingerprint=input_fingerprint)
    trainer = tfx.components.Trainer(
        run_fn=TRAINER_RUN_FN,
        examples=example_gen.outputs["examples"],
        train_args=tfx.proto.TrainArgs(splits=["train"], num_steps=int(max_steps)),
        eval_args=tfx.proto.EvalArgs(splits=["eval"], num_steps=0),
        custom_config={"config": config, "run_id": run_id})
    if trainer_accelerator_type or trainer_cpu_limit or trainer_memory_limit:
        trainer.with_platform_config(resource_spec(trainer_accelerator_type, trainer_accelerator_count,
                                                   trainer_cpu_limit, trainer_memory_limit))
    resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(RESOLVER_ID)
    data_gate = []
    anomalies = None
    if data_validation:
        from components import data_validation as data_gate_lib

        previous_statistics = tfx.dsl.Resolver(
            strategy_class=previous_statistics_strategy or PreviousArtifactStrategy,
            statistics=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ExampleStatistics),
        ).with_id(PREVIOUS_STATISTICS_RESOLVER_ID)
        statistics_gen = tfx.components.StatisticsGen(
            examples=example_gen.outputs["examples"], stats_options=data_gate_lib.stats_options())
        statistics_gen.add_upstream_node(previous_statistics)  # resolve the previous run's before this run's exist
        validator = PoseDataValidator(statistics=statistics_gen.outputs["statistics"],
                                      previous_statistics=previous_statistics.outputs["statistics"])
        data_gate = [previous_statistics, statistics_gen, validator]
        anomalies = validator.outputs["anomalies"]
    evaluator = PoseEvaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=resolver.outputs["model"], config=config, gt_annotations=gt_annotations,
        anomalies=anomalies)
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        push_destination=(push_destination if isinstance(push_destination, RuntimeParameter) else
                          tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
                              base_directory=push_destination))),
        custom_executor_spec=executor_spec.ExecutorClassSpec(PosePusherExecutor))
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, *data_gate, trainer, resolver, evaluator, pusher],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_config(metadata_path) if metadata_path else None,
        beam_pipeline_args=[str(flag) for flag in beam_pipeline_args])


def pipeline_run_name(run_id: str) -> str:
    """A new, unique name for a run's ``pipeline_run`` context in ML Metadata: ``<run_id>.<UTC time>.<random>``.

    TFX's ``LocalDagRunner`` names the context by the local time alone, which the
    runner cannot know; :func:`run_local` uses this name instead, so the runner reads
    its own run back (:func:`pipeline.run_summary.run_record`) even while other runs
    write to the same ML Metadata store. The random part keeps two runs with the same
    ``run_id`` (or started in the same microsecond) apart.
    """
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{run_id}.{now}.{uuid.uuid4().hex[:8]}"


class _NamedRunLocalDagRunner(tfx.orchestration.LocalDagRunner):
    """``LocalDagRunner`` whose run id (TFX's ``pipeline-run-id`` runtime parameter) is given, not the clock's."""

    def __init__(self, pipeline_run_id: str):
        super().__init__()
        self._pipeline_run_id = pipeline_run_id

    def run_with_ir(self, pipeline, run_options=None, **kwargs):
        from tfx.dsl.compiler import constants
        from tfx.orchestration.portable import runtime_parameter_utils

        # Bound first, TFX's own substitution (the clock's time) then finds nothing left to bind.
        runtime_parameter_utils.substitute_runtime_parameter(
            pipeline, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: self._pipeline_run_id})
        return super().run_with_ir(pipeline, run_options=run_options, **kwargs)


def run_local(pipeline: tfx.dsl.Pipeline, pipeline_run_id: str | None = None) -> str:
    """Runs the pipeline with ``LocalDagRunner`` (raises on a failed component).

    Args:
        pipeline: from :func:`create_pipeline`.
        pipeline_run_id: the name of this run's ``pipeline_run`` context in ML Metadata
            (default: a new :func:`pipeline_run_name`).

    Returns:
        that name, to read this run (and no other) back from ML Metadata.
    """
    name = pipeline_run_id or pipeline_run_name("run")
    _NamedRunLocalDagRunner(name).run(pipeline)
    return name

"""TFX components over the project's pure cores: PoseExampleGen and PoseEvaluator.

Both are class-based TFX components (a ``ComponentSpec``, a Beam executor) with
standard artifact types, so they mix with TFX's own components:

- :class:`PoseExampleGen` -> ``Examples`` (``split_names`` ``["train", "eval"]``,
  ``Split-train/``, ``Split-eval/``, ``manifest.json``, ``dead_letter.jsonl``).
  The executor calls :func:`components.example_gen.run_example_gen` with the
  pipeline's ``beam_pipeline_args``. Why not ``FileBasedExampleGen`` with a
  custom executor: its executor contract is a per-split PTransform yielding
  ``tf.Example``s that TFX then writes itself from one ``input_base`` with
  split patterns; our core takes two annotation files plus image folders (and a
  detection file for the eval split), writes its own gzip'd shards byte-for-byte
  reproducibly, counts dead letters and publishes atomically with a manifest. A
  custom component keeps that core unchanged and is the thinner layer.
- :class:`PoseEvaluator` -> ``ModelEvaluation`` + ``ModelBlessing``. The
  executor calls :func:`components.evaluator.run_evaluator` (Beam inference
  through the exported ``serving_default`` signature, then TFMA with our custom
  metrics COCO OKS-AP / MPII PCKh and the value/change thresholds). Why not
  TFX's standard ``Evaluator``: our metrics are TFMA metrics over *joined*
  per-person examples (ground truth of the record + keypoints decoded by the
  model in original-image pixels) that the inference step builds and checks
  (dead letters, non-finite predictions); the standard Evaluator's extractors
  feed the metrics the raw record and the signature outputs, and COCO AP also
  needs the ground-truth annotation file, so the standard Evaluator would need
  these metrics rewritten over TFMA extracts. The blessing artifact carries the
  same custom properties as the standard Evaluator's (``blessed``,
  ``current_model``/``_id``, ``baseline_model``/``_id``), which is what TFX's
  ``Pusher`` and ``LatestBlessedModelStrategy`` read; with ``eval.deploy_artifacts`` it and the
  ``ModelEvaluation`` also carry ``deploy_artifacts``, a JSON property ``{"artifacts": [...]}`` with
  each LiteRT / ONNX artifact's metric, delta, verdict, size and ms/crop
  (:func:`components.deploy_eval.summary_rows`).
- :class:`PoseDataValidator` -> ``ExampleAnomalies``: the optional data gate
  (:mod:`components.data_validation`). TFX's ``ExampleValidator`` checks
  statistics against a schema only; this one also passes the previous run's
  statistics to TFDV, so the schema's drift comparators apply. It writes what
  ExampleValidator writes (``Split-*/SchemaDiff.pb``, ``blessed`` per split), and
  :class:`PoseEvaluator` takes either's ``ExampleAnomalies``.
- :class:`PosePusherExecutor`: the executor the pipeline gives TFX's standard
  ``Pusher`` component (``custom_executor_spec``): the component, its inputs,
  its ``PushedModel`` output and its blessing check (TFX's ``CheckBlessing``:
  nothing pushed without a blessed ``ModelBlessing``) are TFX's own; only the copy
  is ours (:func:`components.pusher.publish`): staged outside the version
  namespace, then renamed (local) or copied in commit order (``gs://``), with a
  ``push_record.json`` and the ``PUSH_COMPLETE`` marker, so TF Serving never sees
  a partial version. TFX's own executor copies straight into ``<base>/<unix
  time>/`` (``saved_model.pb`` last), where a push cut short leaves a partial
  variables folder under a live version name. Versions stay named by Unix time,
  as TFX's Pusher names them. The blessed deployment artifacts listed in our
  ``blessing.json`` are pushed into the same version (``deploy/<format>/`` and
  ``deploy/deploy_manifest.json``, :func:`components.pusher.deploy_files`).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.components.util import examples_utils
from tfx.dsl.components.base import (base_beam_component, base_beam_executor, base_component, base_executor,
                                      executor_spec)
from tfx.dsl.input_resolution.strategies import latest_artifact_strategy
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts
from tfx.proto import example_gen_pb2, pusher_pb2
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.types import standard_component_specs
from tfx.utils import io_utils, proto_utils

from schemas import examples as examples_layout
from schemas import jsonio

SPLITS = list(examples_layout.SPLITS)

# ModelBlessing custom properties, as TFX's own Evaluator writes them.
BLESSED_KEY = "blessed"
CURRENT_MODEL_KEY = "current_model"
CURRENT_MODEL_ID_KEY = "current_model_id"
BASELINE_MODEL_KEY = "baseline_model"
BASELINE_MODEL_ID_KEY = "baseline_model_id"


def _optional(value: str | None) -> str | None:
    return value or None


# The config sections ExampleGen reads (the same ones its content hash covers): passing only
# these keeps TFX's cache key free of training and evaluation settings.
EXAMPLE_GEN_CONFIG_KEYS = ("dataset", "data", "codec")
BOTTOM_UP_EXAMPLE_GEN_CONFIG_KEYS = ("approach", "bottom_up")   # only for approach bottom_up (top-down keys unchanged)


def example_gen_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """The part of an experiment config that ExampleGen uses."""
    keys = EXAMPLE_GEN_CONFIG_KEYS
    if config.get("approach", "top_down") == "bottom_up":
        keys = keys + BOTTOM_UP_EXAMPLE_GEN_CONFIG_KEYS
    if config.get("dataset_meta") is not None:   # only when set: COCO/MPII cache keys stay as they were
        keys = keys + ("dataset_meta",)
    return {key: config[key] for key in keys if key in config}


class PoseExampleGenSpec(types.ComponentSpec):
    """COCO / MPII annotations + images -> Examples."""
    PARAMETERS = {
        "dataset": ExecutionParameter(type=str),
        "config_json": ExecutionParameter(type=str),
        "train_annotations": ExecutionParameter(type=str),
        "train_images": ExecutionParameter(type=str),
        "eval_annotations": ExecutionParameter(type=str),
        "eval_images": ExecutionParameter(type=str),
        "det_file": ExecutionParameter(type=str, optional=True),
        # Content hash of the inputs: part of the execution's properties, so TFX's cache
        # reuses a previous ExampleGen output only when the data itself is unchanged.
        "input_fingerprint": ExecutionParameter(type=str, optional=True),
    }
    INPUTS: Dict[str, ChannelParameter] = {}
    OUTPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}


class PoseExampleGenExecutor(base_beam_executor.BaseBeamExecutor):
    """Runs :func:`components.example_gen.run_example_gen` into the Examples artifact."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from components.example_gen import run_example_gen
        from toolkit import cli

        # beam_pipeline_args edited in a compiled spec: stop naming the flag, before any work (issue 12).
        cli.check_beam_flags(list(self._beam_pipeline_args or []))
        examples = artifact_utils.get_single_instance(output_dict["examples"])
        config = json.loads(exec_properties["config_json"])
        manifest = run_example_gen(
            dataset=exec_properties["dataset"], out_dir=examples.uri, config=config,
            train_annotations=_optional(exec_properties.get("train_annotations")),
            train_images=_optional(exec_properties.get("train_images")),
            eval_annotations=_optional(exec_properties.get("eval_annotations")),
            eval_images=_optional(exec_properties.get("eval_images")),
            det_file=_optional(exec_properties.get("det_file")),
            beam_args=list(self._beam_pipeline_args or []))
        splits = manifest.get("splits", {})
        missing = [split for split in SPLITS if not splits.get(split)]
        if missing:
            raise ValueError(f"PoseExampleGen wrote no records for split(s) {missing}: splits={splits}, "
                             f"skipped={manifest.get('skipped')}")
        examples.split_names = artifact_utils.encode_split_names(SPLITS)
        # Serialized tf.Examples (schemas.features): what TFX's own components read them as.
        examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
        for split in SPLITS:
            examples.set_int_custom_property(f"num_records_{split}", int(splits[split]))
        examples.set_int_custom_property("num_skipped", int(sum((manifest.get("skipped") or {}).values())))
        examples.set_string_custom_property("dataset", exec_properties["dataset"])
        if manifest.get("content_hash"):
            examples.set_string_custom_property("content_hash", str(manifest["content_hash"]))


class PoseExampleGen(base_beam_component.BaseBeamComponent):
    """ExampleGen for COCO / MPII person crops with DARK heatmaps (see module doc)."""
    SPEC_CLASS = PoseExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(PoseExampleGenExecutor)

    def __init__(self, *, dataset: str, config: Dict[str, Any], train_annotations: str, train_images: str,
                 eval_annotations: str, eval_images: str, det_file: str = "", input_fingerprint: str = ""):
        spec = PoseExampleGenSpec(
            dataset=dataset, config_json=jsonio.dumps(example_gen_config(dict(config)), sort_keys=True),
            train_annotations=train_annotations, train_images=train_images,
            eval_annotations=eval_annotations, eval_images=eval_images, det_file=det_file,
            input_fingerprint=input_fingerprint,
            examples=types.Channel(type=standard_artifacts.Examples))
        super().__init__(spec=spec)


class PoseEvaluatorSpec(types.ComponentSpec):
    """Examples + candidate Model (+ baseline Model) -> ModelEvaluation + ModelBlessing."""
    PARAMETERS = {
        "config_json": ExecutionParameter(type=str),
        "gt_annotations": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "model": ChannelParameter(type=standard_artifacts.Model),
        "baseline_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
        # The data gate's verdict (PoseDataValidator or TFX's ExampleValidator): anomalies refuse the blessing.
        "anomalies": ChannelParameter(type=standard_artifacts.ExampleAnomalies, optional=True),
    }
    OUTPUTS = {
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


class PoseEvaluatorExecutor(base_beam_executor.BaseBeamExecutor):
    """Runs :func:`components.evaluator.run_evaluator`; the verdict goes on the ModelBlessing."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from components.evaluator import EVALUATION_DIR, run_evaluator
        from toolkit import cli

        cli.check_beam_flags(list(self._beam_pipeline_args or []))
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        model = artifact_utils.get_single_instance(input_dict["model"])
        baselines = input_dict.get("baseline_model") or []
        baseline = baselines[0] if baselines else None
        if baseline is not None and baseline.id == model.id:
            baseline = None   # the resolver found this very model (a cached re-run): no baseline
        evaluation = artifact_utils.get_single_instance(output_dict["evaluation"])
        blessing = artifact_utils.get_single_instance(output_dict["blessing"])
        config = json.loads(exec_properties["config_json"])
        data_anomalies = None
        for anomalies in input_dict.get("anomalies") or []:
            from components import data_validation

            data_anomalies = data_validation.read_anomalies(
                anomalies.uri, artifact_utils.decode_split_names(anomalies.split_names))
        record = run_evaluator(model.uri, examples.uri, config, blessing.uri, data_anomalies=data_anomalies,
                               baseline_model_dir=baseline.uri if baseline is not None else None,
                               gt_annotations=_optional(exec_properties.get("gt_annotations")),
                               beam_args=list(self._beam_pipeline_args or []))
        # ModelEvaluation: TFMA's output (metrics, validations) plus our metrics.json and report.
        io_utils.copy_dir(os.path.join(blessing.uri, EVALUATION_DIR), evaluation.uri)
        blessing.set_int_custom_property(BLESSED_KEY, 1 if record["blessed"] else 0)
        blessing.set_string_custom_property(CURRENT_MODEL_KEY, model.uri)
        blessing.set_int_custom_property(CURRENT_MODEL_ID_KEY, model.id)
        if baseline is not None:
            blessing.set_string_custom_property(BASELINE_MODEL_KEY, baseline.uri)
            blessing.set_int_custom_property(BASELINE_MODEL_ID_KEY, baseline.id)
        for name, value in (record.get("metrics") or {}).items():
            if value is not None:
                evaluation.set_float_custom_property(name, float(value))
                blessing.set_float_custom_property(name, float(value))
        if record.get("deploy_artifacts"):
            # Each deployment artifact's numbers and verdict (components/deploy_eval.py), one JSON property:
            # not float properties, which are the SavedModel's metrics to the run summary and the Pusher.
            from components import deploy_eval

            rows = {"artifacts": deploy_eval.summary_rows(record["deploy_artifacts"])}
            blessing.set_json_value_custom_property(deploy_eval.SUMMARY_KEY, rows)
            evaluation.set_json_value_custom_property(deploy_eval.SUMMARY_KEY, rows)
        if not fileio.exists(os.path.join(blessing.uri, "BLESSED" if record["blessed"] else "NOT_BLESSED")):
            raise RuntimeError(f"PoseEvaluator: run_evaluator left no verdict marker in {blessing.uri}")


class PoseEvaluator(base_beam_component.BaseBeamComponent):
    """Evaluator for COCO OKS-AP / MPII PCKh with value and change thresholds (see module doc)."""
    SPEC_CLASS = PoseEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(PoseEvaluatorExecutor)

    def __init__(self, *, examples: types.BaseChannel, model: types.BaseChannel, config: Dict[str, Any],
                 baseline_model: types.BaseChannel | None = None, gt_annotations: str = "",
                 anomalies: types.BaseChannel | None = None):
        """Raises ValueError for a gate without a value threshold (:func:`pose.config.require_value_threshold`):
        refused when the pipeline is defined, so ML Metadata never records a blessing that cannot pass."""
        from pose.config import require_value_threshold

        require_value_threshold(dict(config).get("eval", {}).get("thresholds"), "PoseEvaluator config")
        spec = PoseEvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model, anomalies=anomalies,
            config_json=jsonio.dumps(dict(config), sort_keys=True), gt_annotations=gt_annotations,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing))
        super().__init__(spec=spec)


class PreviousArtifactStrategy(latest_artifact_strategy.LatestArtifactStrategy):
    """TFX's ``LatestArtifactStrategy`` that resolves to nothing instead of failing when there is none yet.

    ``LatestArtifactStrategy.resolve_artifacts`` returns ``None`` when a channel
    has no artifact in ML Metadata, which LocalDagRunner turns into an input
    resolution error: the data gate's first run would fail. This one returns an
    empty list (as ``LatestBlessedModelStrategy`` does), so the validator runs
    without previous statistics. KubeflowV2DagRunner compiles only TFX's own two
    strategies: the compiled pipeline uses ``LatestArtifactStrategy`` itself
    (:func:`pipeline.pipeline.create_pipeline`'s ``previous_statistics_strategy``).
    """

    def resolve_artifacts(self, store, input_dict):
        resolved = self._resolve(input_dict)
        return {key: list(values) for key, values in resolved.items()}

class PoseDataValidatorSpec(types.ComponentSpec):
    """ExampleStatistics (+ the previous run's, + a Schema) -> ExampleAnomalies."""
    PARAMETERS: Dict[str, ExecutionParameter] = {}
    INPUTS = {
        "statistics": ChannelParameter(type=standard_artifacts.ExampleStatistics),
        "previous_statistics": ChannelParameter(type=standard_artifacts.ExampleStatistics, optional=True),
        "schema": ChannelParameter(type=standard_artifacts.Schema, optional=True),
    }
    OUTPUTS = {"anomalies": ChannelParameter(type=standard_artifacts.ExampleAnomalies)}


class PoseDataValidatorExecutor(base_executor.BaseExecutor):
    """TFDV ``validate_statistics`` per split against the schema and the previous statistics
    (:mod:`components.data_validation`); writes what TFX's ExampleValidator writes."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from tfx.components.statistics_gen import stats_artifact_utils
        from tfx.utils import writer_utils

        from components import data_validation

        statistics = artifact_utils.get_single_instance(input_dict["statistics"])
        previous = (input_dict.get("previous_statistics") or [None])[0]
        if previous is not None and previous.id == statistics.id:
            previous = None   # a cached StatisticsGen: the "previous" statistics are these very ones
        schemas = input_dict.get("schema") or []
        schema = (io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(schemas[0].uri)) if schemas
                  else data_validation.load_schema())
        anomalies = artifact_utils.get_single_instance(output_dict["anomalies"])
        splits = artifact_utils.decode_split_names(statistics.split_names)
        previous_splits = set(artifact_utils.decode_split_names(previous.split_names)) if previous else set()
        anomalies.split_names = artifact_utils.encode_split_names(splits)
        blessed = {}
        for split in splits:
            current = stats_artifact_utils.load_statistics(statistics, split).proto()
            before = (stats_artifact_utils.load_statistics(previous, split).proto()
                      if split in previous_splits else None)
            result = data_validation.validate(current, schema, before)
            writer_utils.write_anomalies(
                os.path.join(artifact_utils.get_split_uri([anomalies], split), data_validation.ANOMALIES_FILE), result)
            blessed[split] = 0 if data_validation.describe(result) else 1
        anomalies.set_json_value_custom_property(data_validation.BLESSED_KEY, blessed)
        if previous is not None:
            anomalies.set_int_custom_property("previous_statistics_id", previous.id)


class PoseDataValidator(base_component.BaseComponent):
    """The data gate (see :mod:`components.data_validation`): ExampleValidator with drift against the previous run."""
    SPEC_CLASS = PoseDataValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(PoseDataValidatorExecutor)

    def __init__(self, *, statistics: types.BaseChannel, previous_statistics: types.BaseChannel | None = None,
                 schema: types.BaseChannel | None = None):
        super().__init__(spec=PoseDataValidatorSpec(
            statistics=statistics, previous_statistics=previous_statistics, schema=schema,
            anomalies=types.Channel(type=standard_artifacts.ExampleAnomalies)))

class PosePusherExecutor(tfx_pusher_executor.Executor):
    """TFX's Pusher executor with the staged, committed push of :func:`components.pusher.publish`.

    Inputs, outputs and the blessing check are TFX's (``model``,
    ``model_blessing``, ``PushedModel`` with ``pushed``/``pushed_destination``/
    ``pushed_version``); a filesystem ``push_destination`` (local or ``gs://``)
    with ``AUTO`` or ``UNIX_TIMESTAMP`` versioning, as TFX's own executor takes.
    The push record holds the blessing's metrics (our evaluator's
    ``blessing.json`` where present, else the blessing artifact's float
    properties), the ML Metadata ids of the model and blessing, and the
    pipeline run id.

    Raises:
        NotImplementedError: a non-filesystem destination or another versioning.
    """

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        import time

        from components import blessing as blessing_lib
        from components import pusher

        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem":
            raise NotImplementedError(f"PosePusherExecutor pushes to a filesystem destination, got "
                                      f"{destination.WhichOneof('destination')!r}")
        filesystem = destination.filesystem
        if filesystem.versioning not in (pusher_pb2.Versioning.AUTO, pusher_pb2.Versioning.UNIX_TIMESTAMP):
            raise NotImplementedError(f"unsupported versioning {filesystem.versioning}")
        fields: Dict[str, Any] = {"blessed": True, "run_id": self._context.pipeline_run_id or "",
                                  "metrics": {}, "baseline": None}
        extra_files: Dict[str, str] = {}
        model = (input_dict.get(standard_component_specs.MODEL_KEY) or [None])[0]
        if model is not None:
            fields["model_artifact_id"] = model.id
        blessings = input_dict.get(standard_component_specs.MODEL_BLESSING_KEY) or []
        if blessings:
            blessing = blessings[0]
            fields["blessing_dir"] = blessing.uri
            fields["blessing_artifact_id"] = blessing.id
            try:
                record = blessing_lib.read_blessing(blessing.uri)
                fields["metrics"] = dict(record.get("metrics") or {})
                fields["baseline"] = record.get("baseline")
                # The blessed deployment artifacts go into the same version (deploy/ + deploy_manifest.json);
                # refused ones are named in the record's deploy_refused and not pushed.
                extra_files, deploy_fields = pusher.deploy_files(record.get("deploy_artifacts") or [])
                fields.update(deploy_fields)
            except blessing_lib.BlessingError:  # TFX's own Evaluator: the verdict is on the artifact only
                fields["metrics"] = {name: value for name, value in
                                     ((key, blessing.get_custom_property(key)) for key in blessing.mlmd_artifact.custom_properties)
                                     if isinstance(value, float)}
        record = pusher.publish(model_path, filesystem.base_directory, fields, min_version=int(time.time()),
                                extra_files=extra_files)
        io_utils.copy_dir(model_path, model_push.uri)  # the PushedModel's own copy, as TFX's executor keeps
        self._MarkPushed(model_push, pushed_destination=record["path"], pushed_version=str(record["version"]))

"""Compiles the TFX pipeline for Kubeflow Pipelines / Vertex AI Pipelines (KubeflowV2DagRunner).

``python pipeline.py --compile pipeline.json [--image <component image>] [--config <yaml>]``
writes a PipelineJob (its ``pipelineSpec`` is a kfp ``PipelineSpec``): the same
:func:`pipeline.pipeline.create_pipeline` as the local run, each component run in the
component image (``Dockerfile``), the config in the components' parameters.
"""
from __future__ import annotations

import os
from typing import Any, Dict

from pipeline import configs

COMPILE_DATA_ROOT = "gs://YOUR_BUCKET/data"
COMPILE_PIPELINE_ROOT = "gs://YOUR_BUCKET/tfx"
COMPILE_PUSH_DESTINATION = "gs://YOUR_BUCKET/serving/darkpose"


def compile_pipeline(args, config: Dict[str, Any]) -> str:
    """Writes the Kubeflow / Vertex AI pipeline job (KubeflowV2DagRunner) to ``args.compile``.

    The data paths are placeholders under ``gs://YOUR_BUCKET`` (edit them in the spec or
    recompile); the config travels in the components' parameters.
    """
    from tfx import v1 as tfx

    from pipeline import pipeline as pipeline_definition

    if args.data == "mpii":
        paths = {"train_annotations": f"{COMPILE_DATA_ROOT}/mpii/annot/train.json",
                 "train_images": f"{COMPILE_DATA_ROOT}/mpii/images",
                 "eval_annotations": f"{COMPILE_DATA_ROOT}/mpii/annot/valid.json",
                 "eval_images": f"{COMPILE_DATA_ROOT}/mpii/images",
                 "gt_annotations": f"{COMPILE_DATA_ROOT}/mpii/annot/gt_valid.mat"}
    else:
        paths = {"train_annotations": f"{COMPILE_DATA_ROOT}/coco/annotations/person_keypoints_train2017.json",
                 "train_images": f"{COMPILE_DATA_ROOT}/coco/images/train2017",
                 "eval_annotations": f"{COMPILE_DATA_ROOT}/coco/annotations/person_keypoints_val2017.json",
                 "eval_images": f"{COMPILE_DATA_ROOT}/coco/images/val2017",
                 "gt_annotations": f"{COMPILE_DATA_ROOT}/coco/annotations/person_keypoints_val2017.json"}
    beam_args = [flag for flag in args.beam_args if not flag.startswith("--direct_running_mode")]
    pipeline = pipeline_definition.create_pipeline(
        pipeline_name=configs.PIPELINE_NAME, pipeline_root=COMPILE_PIPELINE_ROOT, config=config,
        push_destination=COMPILE_PUSH_DESTINATION, det_file=args.det_file, beam_pipeline_args=beam_args,
        max_steps=args.max_steps, trainer_accelerator_type=args.trainer_accelerator,
        trainer_accelerator_count=args.trainer_accelerator_count or (1 if args.trainer_accelerator else 0),
        trainer_cpu_limit=args.trainer_cpu, trainer_memory_limit=args.trainer_memory, **paths)
    path = os.path.abspath(args.compile)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=args.image),
        output_dir=os.path.dirname(path), output_filename=os.path.basename(path))
    runner.run(pipeline)
    return path

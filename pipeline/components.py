"""Thin kfp lightweight components around :mod:`pipeline.stages`.

kfp ships each function's *source* to the container (or, locally, to a
subprocess), so every body imports what it needs and calls one stage
function; the logic lives in the project's code, installed in the component
image (``Dockerfile``) or found through ``PYTHONPATH`` locally.

Artifacts follow the TFX conventions, on kfp's ``system.*`` artifact types
(kfp accepts only the ``system`` and ``google`` schema namespaces), with the
TFX type name in the artifact metadata (``tfx_type``):

===============  ===============  =====================================================
output           kfp type         TFX type and content
===============  ===============  =====================================================
``examples``     ``Dataset``      Examples: ``Split-train/``, ``Split-eval/``
                                  (``data_tfrecord-*.gz``), ``manifest.json``
``model``        ``Model``        Model: ``Format-Serving/`` (SavedModel),
                                  ``model.keras``, ``run/`` (ModelRun: checkpoints, TensorBoard)
``blessing``     ``Artifact``     ModelBlessing: ``BLESSED`` or ``NOT_BLESSED``, ``blessing.json``,
                                  ``evaluation/`` (ModelEvaluation)
``pushed_model`` ``Artifact``     PushedModel: ``push_record.json``
===============  ===============  =====================================================

Every output directory also holds ``stage_summary.json`` (timing, inputs,
result) or, on failure, ``stage_error.json``.
"""

import types
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output


def example_gen(
    dataset: str,
    config_json: str,
    train_annotations: str,
    train_images: str,
    eval_annotations: str,
    eval_images: str,
    det_file: str,
    beam_args: list,
    examples: Output[Dataset],
) -> NamedTuple("ExampleGenOutputs", [("train_records", int), ("eval_records", int)]):
    """ExampleGen (Beam): annotations + images -> person-crop TFRecords (TFX Examples)."""
    import json
    from collections import namedtuple

    from pipeline import stages

    summary = stages.example_gen_stage(
        examples.path, dataset, json.loads(config_json), train_annotations, train_images, eval_annotations,
        eval_images, det_file, stages.beam_args_list(beam_args))
    splits = summary["result"]["splits"]
    examples.metadata.update({"tfx_type": "Examples", "split_names": '["train", "eval"]',
                              "records": splits, "wall_s": summary["wall_s"]})
    outputs = namedtuple("ExampleGenOutputs", ["train_records", "eval_records"])
    return outputs(int(splits["train"]), int(splits["eval"]))


def trainer(
    config_json: str,
    max_steps: int,
    examples: Input[Dataset],
    model: Output[Model],
) -> NamedTuple("TrainerOutputs", [("steps", int), ("final_loss", float)]):
    """Trainer: trains on Split-train and exports Format-Serving (TFX Model + ModelRun)."""
    import json
    from collections import namedtuple

    from pipeline import stages
    from schemas import serving

    summary = stages.trainer_stage(model.path, examples.path, json.loads(config_json),
                                   max_steps=max_steps if max_steps > 0 else None)
    result = summary["result"]
    model.metadata.update({"tfx_type": "Model", "serving_dir": serving.SAVED_MODEL_DIR, "wall_s": summary["wall_s"]})
    outputs = namedtuple("TrainerOutputs", ["steps", "final_loss"])
    return outputs(int(result.get("steps") or 0), float(result.get("final_loss") or 0.0))


def evaluator(
    config_json: str,
    push_destination: str,
    gt_annotations: str,
    beam_args: list,
    examples: Input[Dataset],
    model: Input[Model],
    blessing: Output[Artifact],
) -> bool:
    """Evaluator: COCO AP / MPII PCKh on Split-eval, gated against the latest blessed model.

    Returns the verdict as the single output (``Output``) that the pipeline's
    ``dsl.If`` tests (kfp.local 2.17 resolves conditions on single outputs only).
    """
    import json

    from pipeline import stages

    summary = stages.evaluator_stage(blessing.path, model.path, examples.path, json.loads(config_json),
                                     push_destination=push_destination, gt_annotations=gt_annotations,
                                     beam_args=stages.beam_args_list(beam_args))
    result = summary["result"]
    blessed = bool(result["blessed"])
    blessing.metadata.update({"tfx_type": "ModelBlessing", "blessed": int(blessed),
                              "baseline": result.get("baseline") or "", "wall_s": summary["wall_s"],
                              "metrics": stages.blessing_metrics(result)})
    return blessed


def pusher(
    push_destination: str,
    run_id: str,
    model: Input[Model],
    blessing: Input[Artifact],
    pushed_model: Output[Artifact],
) -> str:
    """Pusher: versioned copy of the blessed model to push_destination (TFX PushedModel)."""
    import time

    from pipeline import stages

    summary = stages.pusher_stage(pushed_model.path, model.path, blessing.path, push_destination,
                                  run_id or time.strftime("%Y%m%d-%H%M%S"))
    record = summary["result"]
    destination = stages.pushed_path(record)
    pushed_model.metadata.update({"tfx_type": "PushedModel", "pushed": int(bool(record.get("pushed"))),
                                  "pushed_destination": destination, "wall_s": summary["wall_s"]})
    return destination


def make_components(image: str) -> types.SimpleNamespace:
    """Wraps the stage functions as kfp components running in ``image``.

    ``install_kfp_package=False``: the image (and the local environment)
    already has the project and kfp installed, so the components install nothing.
    """
    if not image:
        raise ValueError("image must be a non-empty container image name")
    decorate = dsl.component(base_image=image, install_kfp_package=False)
    return types.SimpleNamespace(
        example_gen=decorate(example_gen),
        trainer=decorate(trainer),
        evaluator=decorate(evaluator),
        pusher=decorate(pusher),
    )

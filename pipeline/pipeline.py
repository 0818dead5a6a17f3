"""The one pipeline definition: ExampleGen -> Trainer -> Evaluator -> dsl.If(blessed) -> Pusher.

:func:`create_pipeline` takes every value as an argument and returns the kfp
pipeline (a ``GraphComponent``) without running it. The same object is run
locally through ``kfp.local`` (``pipeline.py --runner=DirectRunner``) and
compiled to a Kubeflow / Vertex AI pipeline spec (``pipeline.py --compile``).
Its arguments become the pipeline parameters' defaults, so a compiled spec
carries the config it was compiled with and every value can be overridden at
submission time.
"""
from typing import Any, Dict, Mapping, Sequence

from kfp import dsl

from pipeline import components as pipeline_components
from schemas import jsonio


def create_pipeline(
    *,
    pipeline_name: str,
    image: str,
    config: Mapping[str, Any],
    train_annotations: str,
    train_images: str,
    eval_annotations: str,
    eval_images: str,
    det_file: str = "",
    gt_annotations: str = "",
    beam_args: Sequence[str] = (),
    push_destination: str,
    run_id: str = "",
    max_steps: int = 0,
    description: str = "",
    trainer_accelerator_type: str = "",
    trainer_accelerator_count: int = 0,
    trainer_cpu_limit: str = "",
    trainer_memory_limit: str = "",
):
    """Builds the pipeline.

    Args:
        pipeline_name: kfp pipeline name (lower-case letters, digits, dashes).
        image: component image (see ``Dockerfile``).
        config: the loaded experiment config (:func:`pose.config.load_config`),
            serialised to JSON as the ``config_json`` parameter.
        train_annotations, train_images, eval_annotations, eval_images: ExampleGen
            inputs (COCO json + image dir, MPII json + image dir), local or ``gs://``.
        det_file: detector boxes for the eval split ("" = ground-truth boxes).
        gt_annotations: ground truth for the evaluator ("" = rebuilt from the records).
        beam_args: Beam pipeline flags passed unchanged to ExampleGen and Evaluator.
        push_destination: where blessed models are pushed; the latest blessed
            model there is the evaluator's baseline.
        run_id: the run's id, recorded in the push record ("" = a UTC timestamp); versions are integers.
        max_steps: caps training steps (0 = the config's schedule).
        description: pipeline description.
        trainer_accelerator_type: accelerator of the Trainer step on Kubeflow /
            Vertex AI, e.g. ``NVIDIA_TESLA_A100`` or ``nvidia.com/gpu`` ("" = CPU).
            With several GPUs the trainer uses ``MirroredStrategy``.
        trainer_accelerator_count: number of accelerators (>= 1 with a type).
        trainer_cpu_limit, trainer_memory_limit: e.g. ``"8"`` and ``"32G"`` ("" = cluster default).

    Returns:
        The kfp pipeline (call it under ``kfp.local`` or pass it to ``kfp.compiler``).

    Raises:
        ValueError: an empty required argument.
    """
    for name, value in (("pipeline_name", pipeline_name), ("image", image), ("push_destination", push_destination),
                        ("train_annotations", train_annotations), ("eval_annotations", eval_annotations)):
        if not value:
            raise ValueError(f"{name} must be non-empty, got {value!r}")
    if int(max_steps) < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps!r}")
    if trainer_accelerator_type and int(trainer_accelerator_count) < 1:
        raise ValueError(f"trainer_accelerator_count must be >= 1 with trainer_accelerator_type "
                         f"{trainer_accelerator_type!r}, got {trainer_accelerator_count!r}")
    ops = pipeline_components.make_components(image)
    config_default = jsonio.dumps(dict(config), sort_keys=True)
    dataset_default = str(config.get("dataset", "coco"))
    beam_default = [str(flag) for flag in beam_args]

    @dsl.pipeline(name=pipeline_name, description=description)
    def darkpose_pipeline(
        config_json: str = config_default,
        dataset: str = dataset_default,
        train_annotations: str = train_annotations,
        train_images: str = train_images,
        eval_annotations: str = eval_annotations,
        eval_images: str = eval_images,
        det_file: str = det_file,
        gt_annotations: str = gt_annotations,
        beam_args: list = beam_default,
        push_destination: str = push_destination,
        run_id: str = run_id,
        max_steps: int = int(max_steps),
    ):
        example_gen = ops.example_gen(
            dataset=dataset, config_json=config_json, train_annotations=train_annotations,
            train_images=train_images, eval_annotations=eval_annotations, eval_images=eval_images,
            det_file=det_file, beam_args=beam_args).set_display_name("ExampleGen")
        trainer = ops.trainer(
            config_json=config_json, max_steps=max_steps,
            examples=example_gen.outputs["examples"]).set_display_name("Trainer")
        if trainer_accelerator_type:
            trainer.set_accelerator_type(trainer_accelerator_type)
            trainer.set_accelerator_limit(int(trainer_accelerator_count))
        if trainer_cpu_limit:
            trainer.set_cpu_limit(trainer_cpu_limit)
        if trainer_memory_limit:
            trainer.set_memory_limit(trainer_memory_limit)
        evaluator = ops.evaluator(
            config_json=config_json, push_destination=push_destination, gt_annotations=gt_annotations,
            beam_args=beam_args, examples=example_gen.outputs["examples"],
            model=trainer.outputs["model"]).set_display_name("Evaluator")
        # The evaluator's single output is the verdict (BLESSED -> True).
        with dsl.If(evaluator.outputs["Output"] == True, name="model-blessed"):  # noqa: E712 (a kfp condition)
            pusher = ops.pusher(
                push_destination=push_destination, run_id=run_id, model=trainer.outputs["model"],
                blessing=evaluator.outputs["blessing"]).set_display_name("Pusher")
        for task in (example_gen, trainer, evaluator, pusher):
            task.set_caching_options(False)

    return darkpose_pipeline


def pipeline_parameters(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The input parameters of a compiled pipeline spec (dict loaded from the YAML)."""
    return dict(spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}))

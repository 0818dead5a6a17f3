"""Experiment configs: one loader that fills defaults, derives sizes and validates.

A YAML file under ``configs/`` holds only what differs from :data:`DEFAULTS`.
:func:`load_config` deep-merges it over the defaults, applies the file's
``small_run`` overrides when asked (a CPU smoke run of the same recipe),
derives the values that follow from others and validates everything, raising
``ValueError`` that names the offending key.

Derived values (never written by hand in the files):

* ``data.heatmap_size`` = :func:`output_size` of ``data.input_size`` and
  ``data.heatmap_stride``: ``(input - 1) // stride + 1`` = ``ceil(input / stride)``
  (what SAME-padded strided convolutions give; ``input // stride`` whenever the
  stride divides the input, as top-down requires; 401 at stride 8 -> 51 as
  PersonLab). With ``approach: bottom_up`` the input must be square and need
  not be a multiple of the stride (``S = 1 mod stride`` keeps the network's
  pixel alignment equal to the project's mapping, see docs/bottom_up.md).
* ``bottom_up.sigma`` / ``data.sigma`` (bottom-up: the two are one value, set
  either), ``bottom_up.mid_radius`` (= ``short_radius``),
  ``bottom_up.body_sigma`` (= 2 x sigma) and ``bottom_up.max_candidates``
  (:func:`default_max_candidates` of ``max_people``) unless set.
* ``data.sigma`` from the heatmap height: 32 -> 1, 64 -> 2, 96 -> 3 (the
  references' pairs), i.e. ``heatmap_height / 32`` rounded, at least 1.
* ``codec.blur_kernel``: 3 for heatmaps up to 32 rows, 11 up to 64, else 17.

Sections:

* ``dataset``: name of a bundled keypoint schema (``coco``, ``mpii``, ``crowdpose``,
  ``ap10k``, ``onehand10k``), see :mod:`schemas.keypoints`.
* ``dataset_meta``: a dataset meta file (YAML or JSON, local or ``gs://``) or an
  inline meta mapping, validated at load (:mod:`schemas.dataset_meta`); it owns the
  joint layout and sets ``dataset`` to its ``dataset_name``. Every stage turns a
  config into its layout with :func:`schemas.dataset_meta.schema_for`.
* ``model``: ``name`` plus the builder's keyword arguments (validated by the builder);
  ``model.pretrained``: backbone weights loaded before training (a local or
  ``gs://`` file; torchvision / HRNet ImageNet ``.pth`` or Keras ResNet ``.h5``,
  see :mod:`trainer.pretrained`), for every builder; ``model.pretrained_inexact``
  (default false): allow a file that cannot load exactly (keras.applications'
  ResNet v1 strides), which is otherwise refused.
* ``data``: crop/heatmap geometry and ExampleGen selection settings.
* ``codec``: decoding method, modulation kernel, and whether the exported
  decoder is XLA-compiled (``decode_jit_compile``, see :func:`pose.codec_tf.decode`).
* ``augmentation``, ``train``, ``eval``: trainer and evaluator settings.
* ``export``: the SavedModel's numeric precision (``precision``: ``float32`` or
  ``bfloat16``, the network's compute dtype; flip averaging and DARK decoding
  stay float32) and ``force_precision`` (export bfloat16 where this machine
  has no native bfloat16), see :func:`trainer.export.serving_network`; ``formats``: the
  deployment artifacts written beside the SavedModel (LiteRT / ONNX, default none;
  ``onnx_opset``, ``calibration_crops``), see :mod:`trainer.export_deploy`.
* ``approach``: ``top_down`` (person crops, the default) or ``bottom_up``
  (whole images, PersonLab/StrongPose; docs/bottom_up.md).
* ``bottom_up``: targets and decoder settings of ``approach: bottom_up``
  (:data:`BOTTOM_UP_DEFAULTS` lists them with their sources).
* ``small_run``: a partial config merged on top when ``small_run=True``.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, Mapping

import yaml

from schemas import dataset_meta
from schemas.keypoints import SCHEMAS
from schemas.serving import DEPLOY_FORMATS

DEFAULTS: Dict[str, Any] = {
    "name": None,  # defaults to the file's stem
    "dataset": "coco",
    "dataset_meta": None,              # a dataset meta file (YAML/JSON) or an inline mapping; sets `dataset`
    "approach": "top_down",            # top_down | bottom_up
    "model": {"name": "simplebaseline"},
    "data": {
        "input_size": [256, 192],      # (height, width) of the crop
        "heatmap_stride": 4,
        "heatmap_size": None,          # derived
        "sigma": None,                 # derived unless set
        "padding": 1.25,
        "image_format": "jpeg",
        "jpeg_quality": 95,
        "det_score_threshold": 0.0,    # detector boxes below are skipped (ExampleGen eval)
        "max_image_pixels": 50_000_000,  # decompression-bomb guard
        "num_shards": None,            # None: chosen from the record count
    },
    "codec": {
        "decoding": "dark",
        "blur_kernel": None,           # derived unless set
        "decode_jit_compile": False,   # XLA-compile the exported decoder (TF Serving then needs XLA)
    },
    "augmentation": {
        "enabled": True,
        "flip": True,
        "scale_factor": 0.35,
        "rotation_factor": 45.0,
        "rotation_prob": 0.6,
        "half_body_prob": 0.3,
        "half_body_min_joints": 8,
        "half_body_padding": 1.5,      # half-body window = joints' box (crop aspect) x this
    },
    "train": {
        "batch_size": 32,              # global batch
        "epochs": 210,
        "steps_per_epoch": None,       # None: records / batch_size
        "max_steps": None,             # caps the run (small runs, tests)
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "lr_schedule": "step",         # step | cosine | cyclic
        "lr_decay_epochs": [170, 200],
        "lr_decay_factor": 0.1,
        "warmup_steps": 0,
        "cyclic": {                    # lr_schedule: cyclic (Smith, WACV 2017), see trainer/optimization.py
            "policy": "triangular",    # triangular | triangular2 | exp_range
            "base_lr": None,           # lower bound, required
            "max_lr": None,            # upper bound, required, > base_lr
            "step_size": None,         # half cycle in optimizer steps, or
            "step_size_epochs": None,  # ... in epochs (exactly one of the two)
            "gamma": None,             # exp_range only: decay per step, in (0, 1]
        },
        "clip_norm": None,
        "mixed_precision": None,       # None | mixed_float16 | mixed_bfloat16
        "ohkm": False,
        "ohkm_topk": 8,
        "checkpoint_every_steps": 500,
        "log_every_steps": 50,
        "shuffle_buffer": 1024,
        "seed": 0,
    },
    "eval": {
        "batch_size": 32,
        "flip_test": True,
        "rescore_threshold": 0.2,
        "oks_nms_threshold": 0.9,
        "soft_nms": False,
        "thresholds": {},              # metric -> {lower_bound, upper_bound, max_drop}
        "slice_by_person_size": True,  # TFMA slices person_size=medium/large (COCO)
        "restrict_to_eval_images": False,  # COCO: score only images present in Split-eval
        "report_overlays": 6,          # PNG skeleton overlays in the evaluation report
        "deploy_artifacts": [],        # deployment formats the Evaluator scores and gates (components/deploy_eval.py)
        "deploy_max_delta": {},        # format -> max |primary metric - SavedModel's| (defaults in deploy_eval)
    },
    "export": {
        "precision": "float32",       # float32 | bfloat16 (network compute dtype; decoding stays float32)
        "force_precision": False,     # bfloat16 even without native bf16 on this machine
        "formats": [],                # deployment artifacts: tflite_fp32 | tflite_fp16 | tflite_int8 | onnx
        "onnx_opset": 17,             # ONNX opset of the onnx artifact
        "calibration_crops": 128,     # train crops the tflite_int8 artifact is calibrated on
    },
    "bottom_up": None,                 # filled from BOTTOM_UP_DEFAULTS below
    "small_run": {},
}

BOTTOM_UP_DEFAULTS: Dict[str, Any] = {
    # Targets (pose/bottom_up_codec.py), PersonLab (Papandreou et al., ECCV 2018) Sec. 3.1 unless said.
    "max_people": 30,                  # persons per image kept (records, decoder); HigherHRNet's MAX_NUM_PEOPLE
    "max_candidates": None,            # decoder peaks per joint grouped before the N best people are kept;
                                       # None = default_max_candidates(max_people); must be >= max_people
    "short_radius": 32.0,              # disk radius R of the short-range offsets, INPUT pixels (PersonLab R = 32)
    "mid_radius": None,                # disk radius of the mid-range offsets, INPUT pixels; None = short_radius
    "sigma": None,                     # keypoint Gaussian sigma, OUTPUT pixels; None = data.sigma (derived)
    "body_sigma": None,                # body (person-centre) Gaussian sigma, OUTPUT pixels; None = 2 x sigma
    # Decoder (pose/bottom_up_decode_tf.py; sources in docs/bottom_up.md, decoding section).
    "peak_threshold": 0.1,             # heatmap peaks below are dropped
    "nms_kernel": 3,                   # max-pool window of the peak NMS, output pixels (odd)
    "hough_refine": True,              # refine peaks with the short-range offsets (PersonLab Sec. 3.1)
    "min_person_score": 0.05,          # persons scoring below are dropped
    "keypoint_nms_radius": 10.0,       # INPUT pixels: same-type keypoints of two people closer than this are one
    # Loss weights (trainer/losses.py), PersonLab Sec. 4: heatmap 4, short 1, mid 0.25, segmentation (our body) 2.
    "loss_weights": {"heatmap": 4.0, "short": 1.0, "mid": 0.25, "body": 2.0},
}
DEFAULTS["bottom_up"] = BOTTOM_UP_DEFAULTS
APPROACHES = ("top_down", "bottom_up")


MIN_CANDIDATES = 64
"""Lower bound of the derived ``bottom_up.max_candidates`` (our choice, see :func:`default_max_candidates`)."""


def default_max_candidates(max_people: int) -> int:
    """The derived ``bottom_up.max_candidates``: ``max(2 * max_people, MIN_CANDIDATES)``.

    The decoder groups people from this many peaks per joint and only then
    keeps the ``max_people`` best whole people. A cap below the number of
    people in an image leaves some people's joints without candidates, and
    their skeletons take joints from neighbours (issue 22: 50 people at a cap
    of 20 gave 5 chimeras). Twice N, and at least 64, is our choice: room for
    crowds beyond N at a cost linear in the cap (docs/bottom_up.md).
    """
    return max(2 * int(max_people), MIN_CANDIDATES)


def output_size(input_size: int, stride: int) -> int:
    """The one rule for output (heatmap) sizes: ``(input - 1) // stride + 1`` = ``ceil(input / stride)``.

    It is the size SAME-padded strided convolutions give, ``input // stride``
    when the stride divides the input (every top-down config) and
    ``(S - 1) / stride + 1`` when ``S = 1 mod stride`` (PersonLab's 401 at
    stride 8 -> 51).
    """
    return (int(input_size) - 1) // int(stride) + 1


_VALID_SCHEDULES = ("step", "cosine", "cyclic")
_CYCLIC_POLICIES = ("triangular", "triangular2", "exp_range")
_VALID_PRECISION = (None, "mixed_float16", "mixed_bfloat16")
_EXPORT_PRECISIONS = ("float32", "bfloat16")


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any], path: str = "") -> Dict[str, Any]:
    """Returns ``base`` with ``override`` merged in; unknown keys raise ValueError.

    ``model``, ``eval.thresholds`` and ``small_run`` are open mappings and take any key.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        key_path = f"{path}{key}"
        if key not in merged and path not in ("model.", "eval.thresholds.", "eval.deploy_max_delta.", "small_run.") and key_path not in (
                "model", "small_run"):
            raise ValueError(f"unknown config key {key_path!r}")
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value, key_path + ".")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _derive(config: Dict[str, Any]) -> None:
    if config.get("approach") not in APPROACHES:
        raise ValueError(f"approach must be one of {APPROACHES}, got {config.get('approach')!r}")
    data, codec = config["data"], config["codec"]
    input_size = data["input_size"]
    if not (isinstance(input_size, (list, tuple)) and len(input_size) == 2
            and all(isinstance(v, int) and v >= 8 for v in input_size)):
        raise ValueError(f"data.input_size must be [height, width] integers >= 8, got {input_size!r}")
    stride = data["heatmap_stride"]
    bottom_up = config.get("approach") == "bottom_up"
    if not isinstance(stride, int) or stride < 1 or (not bottom_up and any(v % stride for v in input_size)):
        raise ValueError(f"data.heatmap_stride must divide data.input_size {input_size}, got {stride!r}")
    data["input_size"] = [int(v) for v in input_size]
    data["heatmap_size"] = [output_size(v, stride) for v in input_size]
    if bottom_up:
        _derive_bottom_up(config)
    heatmap_height = data["heatmap_size"][0]
    if data["sigma"] is None:
        data["sigma"] = float(max(1, round(heatmap_height / 32)))
    if float(data["sigma"]) <= 0:
        raise ValueError(f"data.sigma must be > 0, got {data['sigma']!r}")
    data["sigma"] = float(data["sigma"])
    if bottom_up:
        _finish_bottom_up(config)
    if codec["blur_kernel"] is None:
        codec["blur_kernel"] = 3 if heatmap_height <= 32 else 11 if heatmap_height <= 64 else 17
    kernel = codec["blur_kernel"]
    if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"codec.blur_kernel must be a positive odd integer, got {kernel!r}")
    if codec["decoding"] not in ("dark", "standard", "argmax"):
        raise ValueError(f"codec.decoding must be dark, standard or argmax, got {codec['decoding']!r}")
    if not isinstance(codec["decode_jit_compile"], bool):
        raise ValueError(f"codec.decode_jit_compile must be true or false, got {codec['decode_jit_compile']!r}")


def _derive_bottom_up(config: Dict[str, Any]) -> None:
    """``approach: bottom_up``: square input, one sigma, derived radii; validates the ``bottom_up`` section."""
    data, section = config["data"], config["bottom_up"]
    if not isinstance(section, Mapping):
        raise ValueError(f"bottom_up must be a mapping, got {section!r}")
    if data["input_size"][0] != data["input_size"][1]:
        raise ValueError(f"approach bottom_up needs a square data.input_size [S, S], got {data['input_size']}")
    if section["sigma"] is not None and data["sigma"] is not None and float(section["sigma"]) != float(data["sigma"]):
        raise ValueError(f"bottom_up.sigma ({section['sigma']!r}) and data.sigma ({data['sigma']!r}) differ; "
                         "set one of them")
    if section["sigma"] is not None:
        if not _is_number(section["sigma"]) or not section["sigma"] > 0:
            raise ValueError(f"bottom_up.sigma must be a number > 0, got {section['sigma']!r}")
        data["sigma"] = float(section["sigma"])
    max_people = section["max_people"]
    if isinstance(max_people, bool) or not isinstance(max_people, int) or max_people < 1:
        raise ValueError(f"bottom_up.max_people must be an integer >= 1, got {max_people!r}")
    if section["max_candidates"] is None:
        section["max_candidates"] = default_max_candidates(max_people)
    candidates = section["max_candidates"]
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < max_people:
        raise ValueError(f"bottom_up.max_candidates must be an integer >= bottom_up.max_people ({max_people}), "
                         f"got {candidates!r}")
    if section["mid_radius"] is None:
        section["mid_radius"] = section["short_radius"]
    for key in ("short_radius", "mid_radius", "keypoint_nms_radius"):
        if not _is_number(section[key]) or not section[key] >= (0 if key == "keypoint_nms_radius" else 1e-9):
            raise ValueError(f"bottom_up.{key} must be a number {'>=' if key == 'keypoint_nms_radius' else '>'} 0 "
                             f"(input pixels), got {section[key]!r}")
        section[key] = float(section[key])
    for key in ("peak_threshold", "min_person_score"):
        if not _is_number(section[key]) or not 0.0 <= section[key] <= 1.0:
            raise ValueError(f"bottom_up.{key} must be in [0, 1], got {section[key]!r}")
        section[key] = float(section[key])
    kernel = section["nms_kernel"]
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"bottom_up.nms_kernel must be a positive odd integer, got {kernel!r}")
    if not isinstance(section["hough_refine"], bool):
        raise ValueError(f"bottom_up.hough_refine must be true or false, got {section['hough_refine']!r}")
    weights = section["loss_weights"]
    if not isinstance(weights, Mapping) or any(not _is_number(v) or v < 0 for v in weights.values()):
        raise ValueError(f"bottom_up.loss_weights must map heatmap/short/mid/body to numbers >= 0, got {weights!r}")


def _finish_bottom_up(config: Dict[str, Any]) -> None:
    """After ``data.sigma`` is derived: ``bottom_up.sigma`` = it, ``body_sigma`` = 2 x sigma unless set."""
    section = config["bottom_up"]
    section["sigma"] = float(config["data"]["sigma"])
    if section["body_sigma"] is None:
        section["body_sigma"] = 2.0 * section["sigma"]
    if not _is_number(section["body_sigma"]) or not section["body_sigma"] > 0:
        raise ValueError(f"bottom_up.body_sigma must be a number > 0, got {section['body_sigma']!r}")
    section["body_sigma"] = float(section["body_sigma"])


def _validate_meta(config: Dict[str, Any]) -> None:
    meta = config.get("dataset_meta")
    if meta is None:
        return
    if not (isinstance(meta, str) and meta.strip()) and not isinstance(meta, Mapping):
        raise ValueError(f"dataset_meta must be a meta file path or a mapping, got {meta!r}")
    schema = dataset_meta.schema_for(config)  # DatasetMetaError (a ValueError) naming file and field
    if config["dataset"] not in ("coco", schema.name):
        raise ValueError(f"dataset {config['dataset']!r} disagrees with dataset_meta's dataset_name "
                         f"{schema.name!r}: leave dataset out when dataset_meta is set")
    config["dataset"] = schema.name
    if config.get("approach") == "bottom_up":
        source = meta if isinstance(meta, str) else "(inline mapping)"
        raise ValueError(f"approach bottom_up takes no dataset_meta (its channel layout and edge graph exist for the "
                         f"bundled coco and mpii layouts only, schemas/bottom_up.py); got dataset_meta {source} "
                         f"({schema.name!r}, {schema.num_joints} joints): use approach top_down for this keypoint "
                         "set (for COCO itself, leave dataset_meta out)")


def _validate(config: Dict[str, Any]) -> None:
    _validate_meta(config)
    if config.get("dataset_meta") is None and config["dataset"] not in SCHEMAS:
        raise ValueError(f"dataset must be one of {sorted(SCHEMAS)}, got {config['dataset']!r}")
    if config.get("approach") == "bottom_up":
        from schemas.bottom_up import BOTTOM_UP_GRAPHS   # here: the module imports TensorFlow

        if config["dataset"] not in BOTTOM_UP_GRAPHS:
            raise ValueError(f"approach bottom_up has an edge graph for {sorted(BOTTOM_UP_GRAPHS)} only "
                             f"(schemas/bottom_up.py), not dataset {config['dataset']!r}: use approach top_down")
    if not isinstance(config["model"], Mapping) or not config["model"].get("name"):
        raise ValueError("model.name is required")
    pretrained = config["model"].get("pretrained")
    if pretrained is not None and (not isinstance(pretrained, str) or not pretrained.strip()):
        raise ValueError(f"model.pretrained must be a file path (local or gs://) or null, got {pretrained!r}")
    inexact = config["model"].get("pretrained_inexact", False)
    if not isinstance(inexact, bool):
        raise ValueError(f"model.pretrained_inexact must be true or false, got {inexact!r}")
    train = config["train"]
    for key in ("batch_size", "epochs"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise ValueError(f"train.{key} must be a positive integer, got {train[key]!r}")
    if train["lr_schedule"] not in _VALID_SCHEDULES:
        raise ValueError(f"train.lr_schedule must be one of {_VALID_SCHEDULES}, got {train['lr_schedule']!r}")
    if train["mixed_precision"] not in _VALID_PRECISION:
        raise ValueError(f"train.mixed_precision must be one of {_VALID_PRECISION}, got {train['mixed_precision']!r}")
    if not train["learning_rate"] > 0:
        raise ValueError(f"train.learning_rate must be > 0, got {train['learning_rate']!r}")
    _validate_cyclic(train)
    export = config["export"]
    if export["precision"] not in _EXPORT_PRECISIONS:
        raise ValueError(f"export.precision must be one of {_EXPORT_PRECISIONS}, got {export['precision']!r}")
    if not isinstance(export["force_precision"], bool):
        raise ValueError(f"export.force_precision must be true or false, got {export['force_precision']!r}")
    formats = export["formats"]
    if not isinstance(formats, list) or any(name not in DEPLOY_FORMATS for name in formats) \
            or len(set(formats)) != len(formats):
        raise ValueError(f"export.formats must be a list of distinct formats from {DEPLOY_FORMATS}, got {formats!r}")
    artifacts = config["eval"]["deploy_artifacts"]
    if not isinstance(artifacts, list) or any(name not in DEPLOY_FORMATS for name in artifacts):
        raise ValueError(f"eval.deploy_artifacts must be a list of formats from {DEPLOY_FORMATS}, got {artifacts!r}")
    deltas = config["eval"]["deploy_max_delta"]
    if not isinstance(deltas, Mapping) or any(name not in DEPLOY_FORMATS or isinstance(value, bool)
                                              or not isinstance(value, (int, float)) or not value >= 0
                                              for name, value in deltas.items()):
        raise ValueError(f"eval.deploy_max_delta must map formats from {DEPLOY_FORMATS} to numbers >= 0, "
                         f"got {deltas!r}")
    for key, low in (("onnx_opset", 13), ("calibration_crops", 1)):
        if isinstance(export[key], bool) or not isinstance(export[key], int) or export[key] < low:
            raise ValueError(f"export.{key} must be an integer >= {low}, got {export[key]!r}")
    augmentation = config["augmentation"]
    for key in ("rotation_prob", "half_body_prob"):
        if not 0.0 <= float(augmentation[key]) <= 1.0:
            raise ValueError(f"augmentation.{key} must be in [0, 1], got {augmentation[key]!r}")
    if not 0.0 <= float(config["data"]["det_score_threshold"]) <= 1.0:
        raise ValueError(f"data.det_score_threshold must be in [0, 1], got {config['data']['det_score_threshold']!r}")


VALUE_THRESHOLD_KEYS = ("lower_bound", "upper_bound")


def require_value_threshold(thresholds: Any, source: str) -> None:
    """The gate rule: ``eval.thresholds`` must hold at least one value threshold.

    A value threshold (``lower_bound`` / ``upper_bound`` of a metric) is checked on
    every run; a change threshold (``max_drop``) only against a baseline, the latest
    blessed model. With change thresholds alone the first model has nothing to be
    checked against (TFMA reports ``missing_thresholds``), it is not blessed, nothing
    is pushed, the next run has no baseline either: no model is ever blessed. Such a
    gate, and one with no threshold at all, is refused wherever a gate is set up
    (``python pipeline.py``, ``pipeline.gate``, the Evaluator); docs/evaluator.md.
    Training configs need no thresholds: :func:`load_config` does not apply this rule.

    Args:
        thresholds: the ``eval.thresholds`` mapping (``{metric: {kind: number}}``).
        source: what the message names first (the config file, or the component).

    Raises:
        ValueError: one line naming ``source`` and ``eval.thresholds``.
    """
    if not isinstance(thresholds, Mapping) or not thresholds:
        raise ValueError(f"{source}: eval.thresholds is empty: a blessing gate needs at least one value threshold "
                         "(lower_bound or upper_bound of a metric, e.g. AP: {lower_bound: 0.5})")
    if not any(isinstance(bounds, Mapping) and any(key in bounds for key in VALUE_THRESHOLD_KEYS)
               for bounds in thresholds.values()):
        listed = ", ".join(f"{metric}: {dict(bounds) if isinstance(bounds, Mapping) else bounds!r}"
                           for metric, bounds in thresholds.items())
        raise ValueError(f"{source}: eval.thresholds holds no value threshold, only change thresholds ({listed}); "
                         "max_drop is checked only against a blessed baseline, so the first model could never be "
                         "blessed and nothing would ever be pushed: add lower_bound or upper_bound to a metric "
                         "(e.g. AP: {lower_bound: 0.5})")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and value not in (float("inf"), float("-inf"))


def _validate_cyclic(train: Mapping[str, Any]) -> None:
    """``train.cyclic``: required with ``lr_schedule: cyclic``, and left at its defaults otherwise."""
    cyclic = train["cyclic"]
    if not isinstance(cyclic, Mapping):
        raise ValueError(f"train.cyclic must be a mapping, got {cyclic!r}")
    if train["lr_schedule"] != "cyclic":
        changed = sorted(key for key, value in cyclic.items() if value != DEFAULTS["train"]["cyclic"][key])
        if changed:
            raise ValueError(f"train.cyclic.{changed[0]} is set but train.lr_schedule is "
                             f"{train['lr_schedule']!r}; set train.lr_schedule: cyclic to use it")
        return
    if cyclic["policy"] not in _CYCLIC_POLICIES:
        raise ValueError(f"train.cyclic.policy must be one of {_CYCLIC_POLICIES}, got {cyclic['policy']!r}")
    for key in ("base_lr", "max_lr"):
        if not _is_number(cyclic[key]) or not cyclic[key] > 0:
            raise ValueError(f"train.cyclic.{key} must be a number > 0 with lr_schedule: cyclic, got {cyclic[key]!r}")
    if not cyclic["max_lr"] > cyclic["base_lr"]:
        raise ValueError(f"train.cyclic.max_lr ({cyclic['max_lr']!r}) must be > train.cyclic.base_lr "
                         f"({cyclic['base_lr']!r})")
    step_size, epochs = cyclic["step_size"], cyclic["step_size_epochs"]
    if (step_size is None) == (epochs is None):
        raise ValueError("exactly one of train.cyclic.step_size (optimizer steps) and train.cyclic.step_size_epochs "
                         f"must be set, got {step_size!r} and {epochs!r}")
    if step_size is not None and (isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1):
        raise ValueError(f"train.cyclic.step_size must be an integer >= 1, got {step_size!r}")
    if epochs is not None and (not _is_number(epochs) or not epochs > 0):
        raise ValueError(f"train.cyclic.step_size_epochs must be a number > 0, got {epochs!r}")
    gamma = cyclic["gamma"]
    if cyclic["policy"] == "exp_range":
        if not _is_number(gamma) or not 0 < gamma <= 1:
            raise ValueError(f"train.cyclic.gamma must be in (0, 1] with policy exp_range, got {gamma!r}")
    elif gamma is not None:
        raise ValueError(f"train.cyclic.gamma is only used by policy exp_range, got gamma={gamma!r} with policy "
                         f"{cyclic['policy']!r}")


def build_config(overrides: Mapping[str, Any] | None = None, small_run: bool = False,
                 name: str | None = None, extra: Mapping[str, Any] | None = None) -> Dict[str, Any]:
    """Builds a validated config from a mapping of overrides (what a YAML file holds).

    ``extra`` (e.g. command-line overrides) is merged last, after ``small_run``.
    """
    config = deep_merge(DEFAULTS, overrides or {})
    if small_run and config["small_run"]:
        config = deep_merge(config, config["small_run"])
    config = deep_merge(config, extra or {})
    config["small_run_applied"] = bool(small_run)
    if config["name"] is None:
        config["name"] = name or "custom"
    _derive(config)
    _validate(config)
    return config


def meta_overrides(dataset: str | None, meta_path: str | None) -> Dict[str, Any] | None:
    """Config overrides of ``--dataset`` / ``--dataset-meta`` (``None`` when neither is given).

    ``--dataset-meta`` wins over the config's ``dataset_meta``; ``--dataset`` names a bundled
    meta and clears the config's ``dataset_meta``. Both at once are refused.

    Raises:
        ValueError: both flags given.
    """
    if dataset and meta_path:
        raise ValueError("give --dataset (a bundled meta) or --dataset-meta (a meta file), not both")
    if meta_path:
        return {"dataset_meta": meta_path}
    if dataset:
        return {"dataset": dataset, "dataset_meta": None}
    return None


def load_config(path: str, small_run: bool = False, overrides: Mapping[str, Any] | None = None) -> Dict[str, Any]:
    """Loads ``path`` (YAML), merges it over the defaults and validates it.

    Args:
        path: config file, e.g. ``configs/coco/res50_256x192.yaml``.
        small_run: apply the file's ``small_run`` section (CPU smoke run).
        overrides: extra overrides applied last (e.g. from the command line).

    Returns:
        A plain nested dict with every key of :data:`DEFAULTS` and the derived values.

    Raises:
        ValueError: malformed YAML, unknown keys, or invalid values (the key is named).
        FileNotFoundError: ``path`` does not exist.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        try:
            raw = yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"config {path} is not valid YAML: {error}") from error
    if not isinstance(raw, Mapping):
        raise ValueError(f"config {path} must hold a mapping at the top level")
    meta = raw.get("dataset_meta")
    if isinstance(meta, str) and "://" not in meta and not os.path.isabs(meta) and not os.path.exists(meta):
        beside = os.path.join(os.path.dirname(os.path.abspath(path)), meta)
        if os.path.exists(beside):  # a relative meta path is read from the cwd, else beside the config
            raw = {**raw, "dataset_meta": beside}
    stem = os.path.splitext(os.path.basename(path))[0]
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    default_name = f"{parent}/{stem}" if parent in SCHEMAS else stem
    try:
        return build_config(raw, small_run=small_run, name=default_name, extra=overrides)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error

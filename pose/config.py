"""Experiment configs: one loader that fills defaults, derives sizes and validates.

A YAML file under ``configs/`` holds only what differs from :data:`DEFAULTS`.
:func:`load_config` deep-merges it over the defaults, applies the file's
``small_run`` overrides when asked (a CPU smoke run of the same recipe),
derives the values that follow from others and validates everything, raising
``ValueError`` that names the offending key.

Derived values (never written by hand in the files):

* ``data.heatmap_size`` = ``data.input_size // data.heatmap_stride``
* ``data.sigma`` from the heatmap height: 32 -> 1, 64 -> 2, 96 -> 3 (the
  references' pairs), i.e. ``heatmap_height / 32`` rounded, at least 1.
* ``codec.blur_kernel``: 3 for heatmaps up to 32 rows, 11 up to 64, else 17.

Sections:

* ``dataset``: keypoint schema name (``coco`` / ``mpii``), see :mod:`schemas.keypoints`.
* ``model``: ``name`` plus the builder's keyword arguments (validated by the builder).
* ``data``: crop/heatmap geometry and ExampleGen selection settings.
* ``codec``: decoding method, modulation kernel, and whether the exported
  decoder is XLA-compiled (``decode_jit_compile``, see :func:`pose.codec_tf.decode`).
* ``augmentation``, ``train``, ``eval``: trainer and evaluator settings.
* ``small_run``: a partial config merged on top when ``small_run=True``.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, Mapping

import yaml

from schemas.keypoints import SCHEMAS

DEFAULTS: Dict[str, Any] = {
    "name": None,  # defaults to the file's stem
    "dataset": "coco",
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
        "lr_schedule": "step",         # step | cosine
        "lr_decay_epochs": [170, 200],
        "lr_decay_factor": 0.1,
        "warmup_steps": 0,
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
    },
    "small_run": {},
}

_VALID_SCHEDULES = ("step", "cosine")
_VALID_PRECISION = (None, "mixed_float16", "mixed_bfloat16")


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any], path: str = "") -> Dict[str, Any]:
    """Returns ``base`` with ``override`` merged in; unknown keys raise ValueError.

    ``model``, ``eval.thresholds`` and ``small_run`` are open mappings and take any key.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        key_path = f"{path}{key}"
        if key not in merged and path not in ("model.", "eval.thresholds.", "small_run.") and key_path not in (
                "model", "small_run"):
            raise ValueError(f"unknown config key {key_path!r}")
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value, key_path + ".")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _derive(config: Dict[str, Any]) -> None:
    data, codec = config["data"], config["codec"]
    input_size = data["input_size"]
    if not (isinstance(input_size, (list, tuple)) and len(input_size) == 2
            and all(isinstance(v, int) and v >= 8 for v in input_size)):
        raise ValueError(f"data.input_size must be [height, width] integers >= 8, got {input_size!r}")
    stride = data["heatmap_stride"]
    if not isinstance(stride, int) or stride < 1 or any(v % stride for v in input_size):
        raise ValueError(f"data.heatmap_stride must divide data.input_size {input_size}, got {stride!r}")
    data["input_size"] = [int(v) for v in input_size]
    data["heatmap_size"] = [v // stride for v in input_size]
    heatmap_height = data["heatmap_size"][0]
    if data["sigma"] is None:
        data["sigma"] = float(max(1, round(heatmap_height / 32)))
    if float(data["sigma"]) <= 0:
        raise ValueError(f"data.sigma must be > 0, got {data['sigma']!r}")
    data["sigma"] = float(data["sigma"])
    if codec["blur_kernel"] is None:
        codec["blur_kernel"] = 3 if heatmap_height <= 32 else 11 if heatmap_height <= 64 else 17
    kernel = codec["blur_kernel"]
    if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"codec.blur_kernel must be a positive odd integer, got {kernel!r}")
    if codec["decoding"] not in ("dark", "standard", "argmax"):
        raise ValueError(f"codec.decoding must be dark, standard or argmax, got {codec['decoding']!r}")
    if not isinstance(codec["decode_jit_compile"], bool):
        raise ValueError(f"codec.decode_jit_compile must be true or false, got {codec['decode_jit_compile']!r}")


def _validate(config: Dict[str, Any]) -> None:
    if config["dataset"] not in SCHEMAS:
        raise ValueError(f"dataset must be one of {sorted(SCHEMAS)}, got {config['dataset']!r}")
    if not isinstance(config["model"], Mapping) or not config["model"].get("name"):
        raise ValueError("model.name is required")
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
    augmentation = config["augmentation"]
    for key in ("rotation_prob", "half_body_prob"):
        if not 0.0 <= float(augmentation[key]) <= 1.0:
            raise ValueError(f"augmentation.{key} must be in [0, 1], got {augmentation[key]!r}")
    if not 0.0 <= float(config["data"]["det_score_threshold"]) <= 1.0:
        raise ValueError(f"data.det_score_threshold must be in [0, 1], got {config['data']['det_score_threshold']!r}")


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
    stem = os.path.splitext(os.path.basename(path))[0]
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    default_name = f"{parent}/{stem}" if parent in SCHEMAS else stem
    try:
        return build_config(raw, small_run=small_run, name=default_name, extra=overrides)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error

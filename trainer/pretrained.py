"""Pretrained backbone weights before training: the config key ``model.pretrained``.

::

    model:
      name: hrnet
      width: 32
      pretrained: gs://my-bucket/imagenet/hrnet_w32-36af842e.pth

Before the first training step (not when resuming from a checkpoint, which
holds the trained weights), :func:`build_model_with_pretrained` builds the
model and loads the file (local or ``gs://``):

* PyTorch ``.pth`` / ``.pt`` (needs ``pip install -e .[torch]``): torchvision's
  ImageNet ResNet-50/101/152 (``resnet50-19c8e357.pth``, ``resnet50-0676ba61.pth``,
  ``resnet101-5d3b4d8f.pth``, ``resnet152-b121ed2d.pth``; also ResNet-18/34) for
  ``simplebaseline``; HRNet's ImageNet HRNet (``hrnet_w32-36af842e.pth``,
  ``hrnet_w48-8ef0771d.pth``, ``hrnetv2_w32_imagenet_pretrained.pth``) for
  ``hrnet``; also full pose checkpoints (:mod:`trainer.import_weights` names,
  original or mmpose), to fine-tune from. The same name tables and exact
  conversions as :mod:`trainer.import_weights`.
* Keras weight files for the ResNets in ``keras.applications`` naming
  (``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` and the like,
  ``.h5`` or Keras 3 ``.weights.h5``; with or without the top): layer names are
  ours already. keras.applications' ResNet differs from ours in four ways,
  converted as follows: conv biases (folded into the next BN's moving mean,
  exact), BN eps 1.001e-5 (gamma rescaled, exact), Caffe-style input (BGR,
  mean subtraction, no scaling: the first conv's input channels are reversed
  and scaled by 255 * std, the mean difference folded into its BN; exact
  except within 3 pixels of the border, where the zero padding differs) and
  ResNet v1 strides (on the first ``1x1`` conv of ``conv3_block1``,
  ``conv4_block1`` and ``conv5_block1``; ours, like torchvision and the pose
  papers, on the ``3x3``: not convertible). Since every model that takes them
  has ``conv3_block1``, such a load cannot be exact (the features from
  ``conv3_block1`` on are 18-28 % off) and is refused
  (:class:`InexactWeightsError`, exit status 2 from the CLIs) unless the
  config asks for it with ``model.pretrained_inexact: true``. Then the
  weights load and the report's ``inexact`` entry holds the measured
  difference: each stage's output of our model against keras.applications'
  own ResNet with the same weights, on a fixed input
  (:func:`measure_keras_difference`).

Only the backbone is required: the head (SimpleBaseline's deconvolutions and
final conv, HRNet's final conv, attention convs) may be absent and stays
initialised. A backbone tensor missing or mis-shaped is an error naming it;
checkpoint tensors no weight takes (``fc.*``, HRNet's classification head,
stage 4's lower-resolution fuse outputs) are reported as unused. The report
(loaded / left initialised / unused) is logged and written to
``<run dir>/pretrained_report.json``.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Dict, List, Mapping

import numpy as np

from trainer import import_weights

REPORT_FILE = "pretrained_report.json"
TORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".bin")
KERAS_SUFFIXES = (".h5", ".hdf5")

# keras.applications.resnet (Keras 3): BatchNormalization(epsilon=1.001e-5); preprocess_input "caffe": RGB->BGR
# and subtracting these BGR means (the ImageNet means in 0..255), no scaling.
KERAS_RESNET_BN_EPSILON = 1.001e-5
KERAS_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
KERAS_RESNET_DEPTHS = {50: "ResNet50", 101: "ResNet101", 152: "ResNet152"}


class InexactWeightsError(import_weights.WeightImportError):
    """A by-name load that cannot reproduce the file's network (keras.applications' ResNet v1 strides) and was
    not asked for with ``model.pretrained_inexact: true``; nothing is read or assigned."""


# The blocks whose stride keras.applications' ResNet (v1) puts on the first 1x1 conv, ours (v1.5) on the 3x3.
KERAS_V1_STRIDED_BLOCKS = ("conv3_block1", "conv4_block1", "conv5_block1")
MEASURE_SEED = 0
"""Seed of the fixed input of :func:`measure_keras_difference` (one RGB image, uniform 0..255)."""


def _summary(names: List[str], limit: int = 6) -> str:
    if not names:
        return "none"
    return f"{len(names)} ({', '.join(names[:limit])}{', ...' if len(names) > limit else ''})"


def load_pretrained(model, config: Mapping[str, Any], path: str | None = None,
                    log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Loads backbone weights from ``path`` (default ``config["model"]["pretrained"]``) into ``model``.

    Args:
        model: the model :func:`trainer.models.build_model` built from ``config``.
        config: loaded experiment config.
        path: weights file, local or ``gs://``; ``.pth``/``.pt`` or ``.h5``/``.weights.h5``.

    Returns:
        The report: ``source``, ``format``, ``scheme``, ``loaded`` (``{tensor, weight, shape}``),
        ``left_initialised`` (Keras weight paths), ``unused`` (checkpoint tensors), ``ignored``,
        ``notes``, ``counts``; for an inexact load (Keras ResNet weights with
        ``model.pretrained_inexact: true``) also ``inexact``: the reason and the measured
        difference (:func:`measure_keras_difference`).

    Raises:
        InexactWeightsError: Keras ResNet weights (not exact: v1 strides) without
            ``model.pretrained_inexact: true``; nothing is read or assigned then.
        trainer.import_weights.WeightImportError: a required tensor is missing or mis-shaped (named),
            or the file holds another architecture; nothing is assigned then.
        ValueError: an unknown file type; FileNotFoundError; ImportError (``.pth`` without torch).
    """
    path = path or config["model"].get("pretrained")
    if not path:
        raise ValueError("no pretrained weights: model.pretrained is not set")
    model_name = config["model"]["name"]
    if model_name not in import_weights.MODEL_RULES:
        raise ValueError(f"model.pretrained is supported for {sorted(import_weights.MODEL_RULES)}, "
                         f"not model.name {model_name!r}")
    lower = path.lower()
    if lower.endswith(TORCH_SUFFIXES):
        report = _load_torch(model, model_name, path)
    elif lower.endswith(KERAS_SUFFIXES):
        report = _load_keras(model, config, path)
    else:
        raise ValueError(f"model.pretrained {path}: unknown file type; expected {TORCH_SUFFIXES} (PyTorch) or "
                         f"{KERAS_SUFFIXES} (Keras)")
    report["source"] = path
    report["counts"] = {"loaded": len(report["loaded"]), "left_initialised": len(report["left_initialised"]),
                        "unused": len(report["unused"]), "ignored_bookkeeping": len(report["ignored"])}
    log(f"model.pretrained {path}: {report['scheme']}; loaded {len(report['loaded'])} tensors; "
        f"left initialised: {_summary(report['left_initialised'])}; "
        f"unused checkpoint tensors: {_summary(report['unused'])}")
    for note in report["notes"]:
        log(f"model.pretrained: {note}")
    return report


def _inexact_blocks(model) -> List[str]:
    """The blocks of ``model`` where keras.applications' ResNet v1 strides differ from ours."""
    names = {layer.name for layer in model.layers}
    return [block for block in KERAS_V1_STRIDED_BLOCKS if f"{block}_1_conv" in names]


def _load_torch(model, model_name: str, path: str) -> Dict[str, Any]:
    state = import_weights.read_torch_checkpoint(path)
    scheme, tensors, notes = import_weights.detect_scheme(state)
    if model_name not in import_weights.BACKBONE_MODELS[scheme]:
        raise import_weights.WeightImportError(
            f"model.pretrained {path} holds a {import_weights.SCHEME_DESCRIPTION[scheme]}, "
            f"which does not fit model.name {model_name!r}")
    if scheme == import_weights.POSE_RESNET and not any(note.startswith("mmpose") for note in notes):
        notes = notes + ["the original pose_resnet recipes train on BGR images; loaded as they are "
                         "(python -m trainer.import_weights converts the channel order exactly)"]
    report = import_weights.convert(model, model_name, tensors, path, "rgb",
                                    optional_layers=import_weights.HEAD_LAYERS[model_name], allow_unused=True)
    report.update({"format": "pytorch", "scheme": import_weights.SCHEME_DESCRIPTION[scheme], "notes": notes})
    return report


# --------------------------------------------------------------------------
# Keras (keras.applications ResNet) weight files
# --------------------------------------------------------------------------

def _read_legacy_h5(path: str) -> Dict[str, Dict[str, np.ndarray]] | None:
    """Layer name -> {variable name: array} of a Keras 2 style ``.h5`` (``layer_names`` attribute), else None."""
    import h5py

    with h5py.File(path, "r") as handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in group.attrs:
            return None
        layers = {}
        for layer_name in group.attrs["layer_names"]:
            layer_name = layer_name.decode() if isinstance(layer_name, bytes) else str(layer_name)
            layer_group = group[layer_name]
            variables = {}
            for weight_name in layer_group.attrs.get("weight_names", []):
                weight_name = weight_name.decode() if isinstance(weight_name, bytes) else str(weight_name)
                variables[weight_name.split("/")[-1].split(":")[0]] = np.asarray(layer_group[weight_name])
            if variables:
                layers[layer_name] = variables
        return layers


def _read_keras3_weights(path: str, depth: int) -> Dict[str, Dict[str, np.ndarray]]:
    """Layer name -> {variable name: array} of a Keras 3 ``.weights.h5`` saved from keras.applications' ResNet."""
    import keras

    errors = []
    for include_top in (False, True):
        reference = getattr(keras.applications, KERAS_RESNET_DEPTHS[depth])(
            weights=None, include_top=include_top, input_shape=(224, 224, 3))
        try:
            reference.load_weights(path)
        except Exception as error:  # noqa: BLE001 -- Keras raises ValueError / KeyError on a mismatch
            errors.append(" ".join(str(error).split())[:200])
            continue
        return {layer.name: {variable.name: variable.numpy() for variable in layer.weights}
                for layer in reference.layers if layer.weights}
    raise import_weights.WeightImportError(
        f"model.pretrained {path} is not a keras.applications {KERAS_RESNET_DEPTHS[depth]} weight file: "
        + " / ".join(errors))


def _keras_resnet_to_ours(source: Mapping[str, Mapping[str, np.ndarray]]) -> Dict[str, Dict[str, np.ndarray]]:
    """keras.applications ResNet weights -> our layers' variables (see the module docstring)."""
    from trainer.models.common import BN_EPSILON, IMAGENET_MEAN, IMAGENET_STD

    converted: Dict[str, Dict[str, np.ndarray]] = {}
    biases: Dict[str, np.ndarray] = {}
    for name, variables in source.items():
        if name.endswith("_conv"):
            kernel = np.asarray(variables["kernel"], np.float64)
            bias = np.asarray(variables.get("bias", np.zeros(kernel.shape[-1])), np.float64)
            if name == "conv1_conv":
                # Caffe input q_rgb[c] = x[c] - caffe[c]; ours z[c] = (x[c] - 255 m[c]) / (255 s[c]):
                # q_rgb[c] = 255 s[c] z[c] + (255 m[c] - caffe[c]).
                kernel = kernel[:, :, ::-1, :]  # BGR -> RGB input channels
                caffe_rgb = np.asarray(KERAS_CAFFE_MEAN_BGR[::-1])
                offset = 255.0 * np.asarray(IMAGENET_MEAN) - caffe_rgb
                bias = bias + np.einsum("hwco,c->o", kernel, offset)
                kernel = kernel * (255.0 * np.asarray(IMAGENET_STD))[None, None, :, None]
            converted[name] = {"kernel": kernel}
            biases[name[:-len("_conv")] + "_bn"] = bias
    for name, variables in source.items():
        if name.endswith("_bn"):
            variance = np.asarray(variables["moving_variance"], np.float64)
            mean = np.asarray(variables["moving_mean"], np.float64) - biases.get(name, 0.0)
            gamma = np.asarray(variables["gamma"], np.float64) * np.sqrt(
                (variance + BN_EPSILON) / (variance + KERAS_RESNET_BN_EPSILON))
            converted[name] = {"gamma": gamma, "beta": np.asarray(variables["beta"], np.float64),
                               "moving_mean": mean, "moving_variance": variance}
    return converted


def _load_keras(model, config: Mapping[str, Any], path: str) -> Dict[str, Any]:
    import re

    model_name = config["model"]["name"]
    depth = config["model"].get("depth", 50)
    if model_name != "simplebaseline" or depth not in KERAS_RESNET_DEPTHS:
        raise ValueError(f"model.pretrained {path}: Keras weight files are supported for the keras.applications "
                         f"ResNets (simplebaseline depth {sorted(KERAS_RESNET_DEPTHS)}), not {model_name} "
                         f"depth {depth}")
    strided = _inexact_blocks(model)
    allowed = config["model"].get("pretrained_inexact", False) is True
    if strided and not allowed:
        raise InexactWeightsError(
            f"model.pretrained {path}: keras.applications {KERAS_RESNET_DEPTHS[depth]} weights cannot load exactly: "
            f"Keras' ResNet is v1 (stride 2 on the first 1x1 conv of {', '.join(strided)}), ours v1.5 (on the 3x3), "
            "so the features differ from conv3_block1 on; use torchvision's .pth (exact), or set "
            "model.pretrained_inexact: true to start from them anyway (the report then gives the measured difference)")
    with tempfile.TemporaryDirectory() as directory:
        local = import_weights._local_copy(path, directory)  # pylint: disable=protected-access
        source = _read_legacy_h5(local)
        if source is None:
            source = _read_keras3_weights(local, depth)
    converted = _keras_resnet_to_ours(source)
    head = import_weights.HEAD_LAYERS[model_name]
    assignments, loaded, left_initialised = [], [], []
    for layer in model.layers:
        if not layer.weights or layer.name == import_weights.NORMALIZE_LAYER:
            continue
        if layer.name not in converted:
            if re.fullmatch(head, layer.name):
                left_initialised += [variable.path for variable in layer.weights]
                continue
            raise import_weights.WeightImportError(f"model.pretrained {path}: missing layer {layer.name} "
                                                   f"(for Keras weights {[v.path for v in layer.weights]})")
        for variable in layer.weights:
            value = converted[layer.name].get(variable.name)
            if value is None or tuple(value.shape) != tuple(variable.shape):
                found = "missing" if value is None else f"shape {list(value.shape)}"
                raise import_weights.WeightImportError(
                    f"model.pretrained {path}: weight {layer.name}/{variable.name} is {found}, the model needs "
                    f"{list(variable.shape)}")
            assignments.append((variable, value.astype(variable.dtype)))
            loaded.append({"tensor": f"{layer.name}/{variable.name}", "weight": variable.path,
                           "shape": list(value.shape)})
    taken = {layer.name for layer in model.layers}
    unused = sorted(f"{name}/{variable}" for name, variables in source.items() if name not in taken
                    for variable in variables)
    for variable, value in assignments:
        variable.assign(value)
    notes = ["conv biases folded into the BN moving means, BN eps 1.001e-5 -> 1e-5 folded into gamma, Caffe BGR "
             "mean-subtracted input folded into conv1 (exact but within 3 pixels of the border)"]
    report = {"format": "keras", "scheme": f"keras.applications {KERAS_RESNET_DEPTHS[depth]}", "loaded": loaded,
              "left_initialised": sorted(left_initialised), "unused": unused, "ignored": [], "notes": notes}
    if strided:
        difference = measure_keras_difference(model, source, depth)
        measured = (", ".join(f"{name} {value['relative_l2']:.2%}" for name, value in difference["stages"].items())
                    if "stages" in difference else difference["error"])
        report["inexact"] = {
            "reason": f"keras.applications ResNets are v1 (stride 2 on the first 1x1 conv of {', '.join(strided)}), "
                      "ours v1.5 (on the 3x3, as torchvision and the pose papers): not convertible; loaded because "
                      "model.pretrained_inexact is true",
            "blocks": strided, **difference}
        notes.insert(0, f"INEXACT (model.pretrained_inexact: true): v1 strides in {', '.join(strided)}; relative "
                        f"difference of each stage's output from keras.applications' {KERAS_RESNET_DEPTHS[depth]} "
                        f"with these weights on a fixed input: {measured}")
    return report


def measure_keras_difference(model, source: Mapping[str, Mapping[str, np.ndarray]], depth: int) -> Dict[str, Any]:
    """How far ``model`` (weights loaded from ``source``) is from keras.applications' ResNet with those weights.

    Builds ``keras.applications.ResNet{depth}(weights=None, include_top=False)``
    at the model's input size, assigns ``source`` to it by layer and variable
    name, and runs both in inference mode on one fixed image (uniform 0..255
    RGB, seed :data:`MEASURE_SEED`; Caffe-preprocessed for Keras as
    ``keras.applications.resnet.preprocess_input`` does, raw for ours). For
    the last block of every stage both have (``convN_blockM_out``) it gives
    ``relative_l2`` = ||ours - keras|| / ||keras|| and ``relative_max`` =
    max |ours - keras| / max |keras|, over the whole map (stage 2, before any
    stride, shows the border effect of the input folding alone).

    Args:
        model: our model, weights already loaded.
        source: layer name -> {variable name: array} as read from the file.
        depth: 50, 101 or 152.

    Returns:
        ``{"input": description, "metric": description, "stages": {layer: {"relative_l2", "relative_max"}}}``,
        or ``{"error": message}`` when the reference cannot be built or run (the load itself stands).
    """
    import keras

    height, width = (int(v) for v in model.input.shape[1:3])
    description = {"input": f"1 x {height} x {width} x 3 RGB image, uniform 0..255, numpy seed {MEASURE_SEED}",
                   "metric": "relative_l2 = ||ours - keras|| / ||keras||, relative_max = max|ours - keras| / "
                             "max|keras|, whole stage output, inference mode"}
    try:
        reference = getattr(keras.applications, KERAS_RESNET_DEPTHS[depth])(
            weights=None, include_top=False, input_shape=(height, width, 3))
        for layer in reference.layers:
            for variable in layer.weights:
                variable.assign(np.asarray(source[layer.name][variable.name], variable.dtype))
        ours_names = {layer.name for layer in model.layers}
        stages = {}
        for layer in reference.layers:
            stage = layer.name.split("_")[0]
            if layer.name.endswith("_out") and layer.name in ours_names:
                stages[stage] = layer.name                        # the last block of the stage wins
        names = list(stages.values())
        image = np.random.default_rng(MEASURE_SEED).uniform(0.0, 255.0, (1, height, width, 3)).astype(np.float32)
        expected = keras.Model(reference.input, [reference.get_layer(n).output for n in names])(
            keras.applications.resnet.preprocess_input(image.copy()), training=False)
        ours = keras.Model(model.input, [model.get_layer(n).output for n in names])(image, training=False)
        result = {}
        for name, mine, theirs in zip(names, ours, expected):
            mine, theirs = np.asarray(mine, np.float64), np.asarray(theirs, np.float64)
            result[name] = {"relative_l2": float(np.linalg.norm(mine - theirs) / (np.linalg.norm(theirs) or 1.0)),
                            "relative_max": float(np.abs(mine - theirs).max() / (np.abs(theirs).max() or 1.0))}
    except Exception as error:  # noqa: BLE001 -- the measurement is a report entry; the load stands without it
        return {**description, "error": f"not measured: {type(error).__name__}: {' '.join(str(error).split())[:300]}"}
    return {**description, "stages": result}


# --------------------------------------------------------------------------
# The training hook
# --------------------------------------------------------------------------

def build_model_with_pretrained(config: Mapping[str, Any], run_dir: str | None = None,
                                log: Callable[[str], None] = print):
    """:func:`trainer.models.build_model`, then ``model.pretrained`` loaded unless a checkpoint will be restored.

    Called inside the distribution strategy's scope (``train_loop.train``'s
    ``model_fn``). The report goes to ``<run_dir>/pretrained_report.json``.
    """
    from schemas import jsonio
    from trainer.models import build_model
    from trainer.train_loop import CHECKPOINT_SUBDIR

    model = build_model(config)
    path = config["model"].get("pretrained")
    if not path:
        return model
    if run_dir:
        import tensorflow as tf

        if tf.train.latest_checkpoint(os.path.join(run_dir, CHECKPOINT_SUBDIR)):
            log(f"model.pretrained {path}: not loaded, the run resumes from its checkpoint")
            return model
    report = load_pretrained(model, config, path, log)
    if run_dir:
        import tensorflow as tf

        tf.io.gfile.makedirs(run_dir)
        jsonio.write(os.path.join(run_dir, REPORT_FILE), report, indent=2)
    return model

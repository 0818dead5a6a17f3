"""Import published PyTorch pose checkpoints into our Keras models, exactly.

::

    python -m trainer.import_weights --checkpoint <file.pth | gs://...> --config configs/coco/w32_256x192.yaml \
        --model-dir <dir> [--input-order auto|rgb|bgr] [--allow-pickle] [--precision float32|bfloat16]
        [--force-precision]

converts a full pose checkpoint (SimpleBaseline ResNet-50/101/152, HRNet-W32/W48)
into the model ``--config`` builds and writes the model directory the Trainer
writes: ``<dir>/Format-Serving/`` (the SavedModel with in-graph DARK decoding
and flip test, :func:`trainer.export.export_serving_model`), ``<dir>/model.keras``
and ``<dir>/import_report.json`` (what was loaded from where), so
``python -m pipeline.gate --candidate <dir>`` and the Pusher take it as is.

Naming schemes, detected from the tensor names (the report says which one):

* original repositories: SimpleBaseline's ``pose_resnet`` (Microsoft
  human-pose-estimation.pytorch, HRNet's and DarkPose's ``lib/models/pose_resnet.py``:
  ``conv1.weight``, ``layer1.0.conv1.weight``, ``deconv_layers.0.weight``,
  ``final_layer.weight``) and HRNet's ``pose_hrnet`` (``transition1.0.0.weight``,
  ``stage2.0.branches.0.0.conv1.weight``, ``stage2.0.fuse_layers.0.1.0.weight``);
* mmpose: the same networks under ``backbone.`` and ``keypoint_head.``
  (mmpose 0.x ``TopdownHeatmapSimpleHead``) or ``head.`` (mmpose 1.x ``HeatmapHead``);
* ``module.`` prefixes (``nn.DataParallel``) are removed first; a checkpoint
  dict holding ``state_dict`` / ``model`` / ``net`` is unwrapped.

The backbone-only ImageNet checkpoints (torchvision ResNets, HRNet's ImageNet
HRNet) are detected too; they are for training (``model.pretrained``, see
:mod:`trainer.pretrained`), not for this command.

Conversions (one table per architecture maps our stable Keras layer names to
the PyTorch module names: :data:`RESNET_RULES`, :data:`SIMPLEBASELINE_HEAD_RULES`,
:data:`HRNET_RULES`; every Keras weight must come from exactly one tensor and,
for a full import, every tensor must be used):

* ``Conv2d`` weight ``(O, I, kh, kw)`` -> Keras kernel ``(kh, kw, I, O)``; biases as they are.
* ``ConvTranspose2d`` weight ``(I, O, kh, kw)`` -> ``Conv2DTranspose`` kernel
  ``(kh, kw, O, I)``, no spatial flip: both are the gradient of a
  cross-correlation. SimpleBaseline's ``kernel 4, stride 2, padding 1,
  output_padding 0`` writes input ``i`` with tap ``k`` to output ``2i - 1 + k``,
  as Keras' ``padding="same"`` (which pads ``(4 - 2) / 2 = 1`` on each side of
  the ``2n`` output) does; kernel 2 (padding 0) agrees as well. Kernel 3
  (padding 1, output_padding 1) does not (Keras pads 0 before, 1 after) and is
  refused. Checked numerically in ``tests/test_import_weights.py``.
* ``BatchNorm2d`` ``weight, bias, running_mean, running_var`` -> ``gamma, beta,
  moving_mean, moving_variance``; our BN uses PyTorch's eps 1e-5 and momentum
  0.1 (Keras 0.9) (:mod:`trainer.models.common`); ``num_batches_tracked`` is
  bookkeeping and ignored.
* Input channel order: our models take RGB. SimpleBaseline's and DarkPose's
  ResNet recipes read images with OpenCV and train on **BGR**
  (``DATASET.COLOR_RGB: false`` in their ``res*`` configs); HRNet's
  (``COLOR_RGB: true``) and mmpose's (``to_rgb`` / ``bgr_to_rgb``) train on RGB.
  ``--input-order auto`` takes BGR for the original ``pose_resnet`` naming and
  RGB otherwise; for BGR the first conv's input channels and the input
  normalisation's per-channel mean/std are reversed, which is exact (the zero
  padding of the normalised image is the same).

Shape mismatches, missing tensors and unused tensors are errors naming the
tensor (:class:`WeightImportError`, a ``ValueError``), raised before anything is written.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

REPORT_FILE = "import_report.json"
BOOKKEEPING_SUFFIX = "num_batches_tracked"

# Names of the DataParallel / mmpose wrappers, removed before matching.
DATAPARALLEL_PREFIX = "module."
MMPOSE_BACKBONE_PREFIX = "backbone."
MMPOSE_HEAD_PREFIXES = {"keypoint_head.": "mmpose 0.x (backbone. / keypoint_head.)",
                        "head.": "mmpose 1.x (backbone. / head.)"}

# Schemes (architecture families) -> the model builder they fit.
POSE_RESNET = "pose_resnet"
POSE_HRNET = "pose_hrnet"
TORCHVISION_RESNET = "torchvision_resnet"
IMAGENET_HRNET = "imagenet_hrnet"
SCHEME_MODEL = {POSE_RESNET: "simplebaseline", TORCHVISION_RESNET: "simplebaseline",
                POSE_HRNET: "hrnet", IMAGENET_HRNET: "hrnet"}
# Backbone-only loading (model.pretrained): the builders whose backbone a scheme's tensors fit.
# The bottom-up model's trunk (trainer.models.bottom_up) has the SimpleBaseline ResNet's layer names.
BACKBONE_MODELS = {POSE_RESNET: ("simplebaseline", "bottom_up"), TORCHVISION_RESNET: ("simplebaseline", "bottom_up"),
                   POSE_HRNET: ("hrnet",), IMAGENET_HRNET: ("hrnet",)}
SCHEME_DESCRIPTION = {
    POSE_RESNET: "SimpleBaseline pose_resnet (human-pose-estimation.pytorch / HRNet / DarkPose naming)",
    POSE_HRNET: "HRNet pose_hrnet (deep-high-resolution-net.pytorch / DarkPose naming)",
    TORCHVISION_RESNET: "torchvision ResNet (ImageNet classifier)",
    IMAGENET_HRNET: "HRNet ImageNet classifier (HRNet-Image-Classification naming)",
}

# First convolution of each model (where the input channel order matters).
FIRST_CONV = {"simplebaseline": "conv1_conv", "hrnet": "stem1_conv", "bottom_up": "conv1_conv"}
NORMALIZE_LAYER = "normalize"


class WeightImportError(ValueError):
    """A checkpoint that does not fit the model: the message names the tensor (and the file)."""


# --------------------------------------------------------------------------
# Name tables: Keras layer name (regex) -> PyTorch module name
# --------------------------------------------------------------------------

def _conv_or_bn(kind: str, conv: str, bn: str) -> str:
    return conv if kind == "conv" else bn


Rule = Tuple[str, Callable[[re.Match], str]]

RESNET_RULES: List[Rule] = [
    (r"conv1_(conv|bn)", lambda m: _conv_or_bn(m[1], "conv1", "bn1")),
    # conv{S}_block{B}_0: the projection shortcut, torchvision's downsample.{0: conv, 1: BN}.
    (r"conv(\d)_block(\d+)_0_(conv|bn)",
     lambda m: f"layer{int(m[1]) - 1}.{int(m[2]) - 1}.downsample.{_conv_or_bn(m[3], '0', '1')}"),
    (r"conv(\d)_block(\d+)_([123])_(conv|bn)", lambda m: f"layer{int(m[1]) - 1}.{int(m[2]) - 1}.{m[4]}{m[3]}"),
]
"""ResNet backbone (:mod:`trainer.models.simple_baseline`, keras.applications names) -> torchvision names."""

SIMPLEBASELINE_HEAD_RULES: List[Rule] = [
    # deconv_layers = Sequential(ConvTranspose2d, BN, ReLU) x n: indices 3(n-1) and 3(n-1)+1 hold weights.
    (r"deconv(\d+)_(conv|bn)", lambda m: f"deconv_layers.{3 * (int(m[1]) - 1) + (0 if m[2] == 'conv' else 1)}"),
    (r"final_conv", lambda m: "final_layer"),
]
"""SimpleBaseline head -> pose_resnet's ``deconv_layers`` / ``final_layer``."""


def _hrnet_transition(m: re.Match) -> str:
    transition, branch = int(m[1]), int(m[2])
    # Transition t feeds stage t + 1 (t + 1 branches): branch t is the new one, Sequential(Sequential(conv, BN, ReLU)).
    inner = "0." if branch == transition else ""
    return f"transition{transition}.{branch}.{inner}{_conv_or_bn(m[3], '0', '1')}"


HRNET_RULES: List[Rule] = [
    (r"stem([12])_(conv|bn)", lambda m: f"{m[2]}{m[1]}"),
    (r"stage1_block(\d+)_shortcut_(conv|bn)",
     lambda m: f"layer1.{int(m[1]) - 1}.downsample.{_conv_or_bn(m[2], '0', '1')}"),
    (r"stage1_block(\d+)_conv([123])_(conv|bn)", lambda m: f"layer1.{int(m[1]) - 1}.{m[3]}{m[2]}"),
    (r"transition(\d)_branch(\d)_(conv|bn)", _hrnet_transition),
    (r"stage(\d)_module(\d+)_branch(\d)_block(\d+)_conv([12])_(conv|bn)",
     lambda m: f"stage{m[1]}.{int(m[2]) - 1}.branches.{m[3]}.{int(m[4]) - 1}.{m[6]}{m[5]}"),
    # From a higher resolution (j < i): Sequential of stride-2 Sequential(conv, BN[, ReLU]).
    (r"stage(\d)_module(\d+)_fuse(\d)_from(\d)_down(\d)_(conv|bn)",
     lambda m: f"stage{m[1]}.{int(m[2]) - 1}.fuse_layers.{m[3]}.{m[4]}.{m[5]}.{_conv_or_bn(m[6], '0', '1')}"),
    # From a lower resolution (j > i): Sequential(conv 1x1, BN, Upsample).
    (r"stage(\d)_module(\d+)_fuse(\d)_from(\d)_(conv|bn)",
     lambda m: f"stage{m[1]}.{int(m[2]) - 1}.fuse_layers.{m[3]}.{m[4]}.{_conv_or_bn(m[5], '0', '1')}"),
    (r"final_conv", lambda m: "final_layer"),
]
"""HRNet (:mod:`trainer.models.hrnet`) -> pose_hrnet names."""

MODEL_RULES: Dict[str, List[Rule]] = {
    "simplebaseline": RESNET_RULES + SIMPLEBASELINE_HEAD_RULES,
    "hrnet": HRNET_RULES,
    "bottom_up": RESNET_RULES,   # backbone only (model.pretrained); its heads have no published counterpart
}
# Head layers: left initialised when a backbone-only checkpoint is loaded (model.pretrained).
HEAD_LAYERS: Dict[str, str] = {"simplebaseline": r"deconv\d+_(conv|bn)|final_conv|attention_conv",
                               "hrnet": r"final_conv", "bottom_up": r"head_\w+|upsample\d+_deconv"}

# Keras variable name -> PyTorch parameter suffix, per layer kind.
_CONV_VARIABLES = {"kernel": "weight", "bias": "bias"}
_BN_VARIABLES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def torch_module_name(model_name: str, layer_name: str) -> str:
    """The PyTorch module name of our Keras layer ``layer_name`` (``stage2_module1_fuse0_from1_conv`` ->
    ``stage2.0.fuse_layers.0.1.0``).

    Raises:
        WeightImportError: the model has no table, or the layer matches no rule.
    """
    if model_name not in MODEL_RULES:
        raise WeightImportError(f"importing PyTorch weights is supported for {sorted(MODEL_RULES)}, "
                                f"not model.name {model_name!r}")
    for pattern, template in MODEL_RULES[model_name]:
        match = re.fullmatch(pattern, layer_name)
        if match:
            return template(match)
    raise WeightImportError(f"no PyTorch name for Keras layer {layer_name!r} of {model_name}")


# --------------------------------------------------------------------------
# Reading checkpoints and detecting the naming scheme
# --------------------------------------------------------------------------

def _local_copy(path: str, directory: str) -> str:
    """``path`` itself when local, else a copy of the ``gs://`` (or other tf.io.gfile) file in ``directory``."""
    if "://" not in path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return path
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    local = os.path.join(directory, os.path.basename(path))
    tf.io.gfile.copy(path, local, overwrite=True)
    return local


def read_torch_checkpoint(path: str, allow_pickle: bool = False) -> Dict[str, np.ndarray]:
    """Reads a PyTorch ``.pth`` / ``.pt`` file (local or ``gs://``) into name -> float32/int NumPy arrays.

    Unwraps ``{"state_dict": ...}`` (mmpose, HRNet's ``checkpoint.pth``), ``{"model": ...}`` and
    ``{"net": ...}``. Loads with ``torch.load(weights_only=True)`` (tensors and plain containers
    only) unless ``allow_pickle`` (for files you trust that pickle other objects, e.g. NumPy
    arrays in mmpose 1.x ``meta``).

    Raises:
        ImportError: PyTorch is not installed (``pip install -e .[torch]``).
        FileNotFoundError: no such file.
        WeightImportError: the file is not a readable checkpoint, or holds no tensors.
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError("reading .pth checkpoints needs PyTorch: pip install -e '.[torch]'") from error
    with tempfile.TemporaryDirectory() as directory:
        local = _local_copy(path, directory)
        try:
            loaded = torch.load(local, map_location="cpu", weights_only=not allow_pickle)
        except Exception as error:  # noqa: BLE001 -- torch raises UnpicklingError, RuntimeError, EOFError...
            hint = ("" if allow_pickle else " (it may pickle objects other than tensors: pass --allow-pickle "
                    "for a file you trust)")
            raise WeightImportError(f"{path}: not a readable PyTorch checkpoint{hint}: "
                                    f"{' '.join(str(error).split())[:300]}") from error
    for key in ("state_dict", "model", "net"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
            break
    if not isinstance(loaded, Mapping):
        raise WeightImportError(f"{path}: expected a state dict (name -> tensor), got {type(loaded).__name__}")
    state = {}
    for name, value in loaded.items():
        if isinstance(value, torch.Tensor):
            state[str(name)] = value.detach().cpu().numpy()
    if not state:
        raise WeightImportError(f"{path}: holds no tensors")
    return state


def detect_scheme(state: Mapping[str, np.ndarray]) -> Tuple[str, Dict[str, np.ndarray], List[str]]:
    """Detects the naming scheme and returns the tensors under the original repositories' names.

    Returns:
        ``(scheme, tensors, notes)``: ``scheme`` one of :data:`SCHEME_DESCRIPTION`'s keys;
        ``tensors`` renamed (``module.`` / ``backbone.`` / head prefixes removed);
        ``notes``: human-readable lines (prefixes removed, mmpose version).

    Raises:
        WeightImportError: names of no known scheme.
    """
    notes: List[str] = []
    tensors = dict(state)
    while tensors and all(name.startswith(DATAPARALLEL_PREFIX) for name in tensors):
        tensors = {name[len(DATAPARALLEL_PREFIX):]: value for name, value in tensors.items()}
        notes.append(f"removed the DataParallel prefix {DATAPARALLEL_PREFIX!r}")
    if any(name.startswith(MMPOSE_BACKBONE_PREFIX) for name in tensors):
        head_prefixes = [prefix for prefix in MMPOSE_HEAD_PREFIXES if any(n.startswith(prefix) for n in tensors)]
        notes.append(MMPOSE_HEAD_PREFIXES[head_prefixes[0]] if head_prefixes
                     else "mmpose backbone (backbone.; no head)")
        renamed = {}
        for name, value in tensors.items():
            for prefix in (MMPOSE_BACKBONE_PREFIX, *head_prefixes):
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    break
            renamed[name] = value
        tensors = renamed
    names = set(tensors)
    if any(name.startswith(("transition1.", "stage2.")) for name in names):
        scheme = IMAGENET_HRNET if any(name.startswith(("incre_modules.", "classifier.")) for name in names) \
            else POSE_HRNET
    elif "layer1.0.conv1.weight" in names:
        scheme = TORCHVISION_RESNET if "fc.weight" in names else POSE_RESNET
    else:
        sample = ", ".join(sorted(names)[:5])
        raise WeightImportError(f"unrecognised tensor names (first: {sample}); supported: "
                                f"{'; '.join(SCHEME_DESCRIPTION.values())}, with optional mmpose / module. prefixes")
    return scheme, tensors, notes


# --------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------

def _layer_variables(layer) -> Dict[str, str]:
    """Keras variable name -> PyTorch suffix for the weight-holding layers we convert."""
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return _BN_VARIABLES
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
        return _CONV_VARIABLES
    raise WeightImportError(f"Keras layer {layer.name!r} ({type(layer).__name__}) has no PyTorch conversion")


def _to_keras(layer, variable_name: str, value: np.ndarray) -> np.ndarray:
    """PyTorch layout -> Keras layout (conv OIHW -> HWIO, transposed conv IOHW -> HWOI)."""
    if variable_name == "kernel":
        return np.transpose(value, (2, 3, 1, 0))
    return value


def _torch_shape(layer, variable_name: str, keras_shape: Sequence[int]) -> Tuple[int, ...]:
    if variable_name == "kernel":
        height, width, third, fourth = keras_shape
        return (fourth, third, height, width)
    return tuple(keras_shape)


def _check_transposed_conv(layer) -> None:
    import keras

    if isinstance(layer, keras.layers.Conv2DTranspose):
        kernel = tuple(layer.kernel_size)
        if any(size % 2 for size in kernel) or layer.padding != "same" or tuple(layer.strides) != (2, 2):
            raise WeightImportError(
                f"Keras layer {layer.name!r}: a {kernel} stride {tuple(layer.strides)} '{layer.padding}' "
                "Conv2DTranspose does not align with PyTorch's ConvTranspose2d (odd kernels need output_padding); "
                "use model.deconv_kernel 4 (the published setting) or 2")


def plan_assignments(model, model_name: str, tensors: Mapping[str, np.ndarray], source: str,
                     optional_layers: Optional[str] = None) -> Dict[str, Any]:
    """Matches every Keras weight of ``model`` to its tensor; checks names and shapes; assigns nothing.

    Args:
        model: the Keras model (built by :func:`trainer.models.build_model`).
        model_name: ``config["model"]["name"]``.
        tensors: PyTorch tensors under the original names (:func:`detect_scheme`).
        source: the checkpoint path, for messages.
        optional_layers: regex of Keras layer names that may be absent altogether
            (left initialised: the head when loading a backbone).

    Returns:
        ``{"assignments": [(variable, value)], "loaded": [...], "left_initialised": [...],
        "unused": [...], "ignored": [...]}`` (names sorted; ``loaded`` entries are
        ``{"tensor", "weight", "shape"}``).

    Raises:
        WeightImportError: a required tensor is missing or has the wrong shape (named, with the
            expected shape in PyTorch's layout), or a layer is half present.
    """
    assignments = []
    loaded, left_initialised, used = [], [], set()
    for layer in model.layers:
        if not layer.weights or layer.name == NORMALIZE_LAYER:
            continue
        optional = bool(optional_layers) and re.fullmatch(optional_layers, layer.name) is not None
        try:
            module = torch_module_name(model_name, layer.name)
        except WeightImportError:
            if not optional:  # e.g. an attention head: no published checkpoint has one
                raise
            left_initialised += [variable.path for variable in layer.weights]
            continue
        mapping = _layer_variables(layer)
        names = {variable.name: f"{module}.{mapping[variable.name]}" for variable in layer.weights}
        present = [name for name in names.values() if name in tensors]
        if not present and optional:
            left_initialised += [variable.path for variable in layer.weights]
            continue
        _check_transposed_conv(layer)
        for variable in layer.weights:
            torch_name = names[variable.name]
            expected = _torch_shape(layer, variable.name, tuple(variable.shape))
            if torch_name not in tensors:
                raise WeightImportError(f"{source}: missing tensor {torch_name} {list(expected)} "
                                        f"(for Keras weight {variable.path})")
            value = np.asarray(tensors[torch_name])
            if tuple(value.shape) != expected:
                raise WeightImportError(f"{source}: tensor {torch_name} has shape {list(value.shape)}, the model "
                                        f"needs {list(expected)} (Keras weight {variable.path}); check the config's "
                                        "model (depth / width / deconv filters) and dataset (joints)")
            assignments.append((variable, _to_keras(layer, variable.name, value).astype(variable.dtype)))
            loaded.append({"tensor": torch_name, "weight": variable.path, "shape": list(value.shape)})
            used.add(torch_name)
    ignored = sorted(name for name in tensors if name.endswith(BOOKKEEPING_SUFFIX))
    unused = sorted(name for name in tensors if name not in used and not name.endswith(BOOKKEEPING_SUFFIX))
    return {"assignments": assignments, "loaded": loaded, "left_initialised": sorted(left_initialised),
            "unused": unused, "ignored": ignored}


def reverse_input_channels(model) -> Any:
    """A copy of ``model`` for BGR-trained weights: the input normalisation's mean/std reversed.

    With the first conv's input channels reversed as well (:func:`convert`), the
    model fed RGB computes exactly what the BGR-trained network computes on BGR:
    normalised channel ``c`` of ours is ``(x_rgb[c] / 255 - mean[2 - c]) / std[2 - c]``,
    the BGR network's channel ``2 - c``.
    """
    import keras

    def clone(layer):
        config = layer.get_config()
        if layer.name == NORMALIZE_LAYER:
            config["mean"] = list(np.asarray(config["mean"]).reshape(-1)[::-1])
            config["variance"] = list(np.asarray(config["variance"]).reshape(-1)[::-1])
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def convert(model, model_name: str, tensors: Mapping[str, np.ndarray], source: str, input_order: str = "rgb",
            optional_layers: Optional[str] = None, allow_unused: bool = False) -> Dict[str, Any]:
    """Checks, then assigns ``tensors`` to ``model``'s weights (nothing is assigned on error).

    Args:
        input_order: ``rgb`` or ``bgr``: the channel order the weights were trained on. For
            ``bgr`` the first conv's input channels are reversed; the caller must use a model
            from :func:`reverse_input_channels`.
        allow_unused: tolerate checkpoint tensors that no weight takes (backbone loading);
            otherwise they are an error naming them.

    Returns:
        The report of :func:`plan_assignments` without the assignments.

    Raises:
        WeightImportError: see :func:`plan_assignments`; unused tensors unless ``allow_unused``.
    """
    if input_order not in ("rgb", "bgr"):
        raise ValueError(f"input_order must be rgb or bgr, got {input_order!r}")
    plan = plan_assignments(model, model_name, tensors, source, optional_layers)
    if plan["unused"] and not allow_unused:
        shown = ", ".join(plan["unused"][:8]) + (" ..." if len(plan["unused"]) > 8 else "")
        raise WeightImportError(f"{source}: {len(plan['unused'])} tensors fit no weight of the model "
                                f"({shown}); the checkpoint is another architecture than the config's")
    first_conv = model.get_layer(FIRST_CONV[model_name]).kernel if model_name in FIRST_CONV else None
    for variable, value in plan.pop("assignments"):
        if input_order == "bgr" and variable is first_conv:
            value = value[:, :, ::-1, :]
        variable.assign(value)
    return plan


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------

def default_input_order(scheme: str, notes: Sequence[str]) -> str:
    """``bgr`` for the original pose_resnet naming (those recipes train on BGR), else ``rgb``."""
    mmpose = any(note.startswith("mmpose") for note in notes)
    return "bgr" if scheme == POSE_RESNET and not mmpose else "rgb"


def convert_checkpoint(checkpoint: str, config: Mapping[str, Any], input_order: str = "auto",
                       allow_pickle: bool = False, log: Callable[[str], None] = print) -> Tuple[Any, Dict[str, Any]]:
    """Reads a full pose checkpoint and returns ``(model, report)``: ``config``'s model with its weights.

    Args:
        checkpoint: ``.pth`` file, local or ``gs://``.
        config: loaded experiment config (model, dataset, input size).
        input_order: ``auto`` (see :func:`default_input_order`), ``rgb`` or ``bgr``.
        allow_pickle: see :func:`read_torch_checkpoint`.

    Raises:
        WeightImportError: the checkpoint does not fit (named tensor), is backbone-only, or is
            another architecture than the config's.
    """
    from trainer.models import build_model

    if input_order not in ("auto", "rgb", "bgr"):
        raise ValueError(f"input_order must be auto, rgb or bgr, got {input_order!r}")
    model_name = config["model"]["name"]
    state = read_torch_checkpoint(checkpoint, allow_pickle)
    scheme, tensors, notes = detect_scheme(state)
    log(f"{checkpoint}: {len(state)} tensors, naming {SCHEME_DESCRIPTION[scheme]}"
        + (f" ({'; '.join(notes)})" if notes else ""))
    if scheme in (TORCHVISION_RESNET, IMAGENET_HRNET):
        raise WeightImportError(f"{checkpoint} is an ImageNet backbone ({SCHEME_DESCRIPTION[scheme]}), not a pose "
                                "checkpoint: set model.pretrained in the config to train from it")
    if SCHEME_MODEL[scheme] != model_name:
        raise WeightImportError(f"{checkpoint} holds a {SCHEME_DESCRIPTION[scheme]} but the config builds "
                                f"model.name {model_name!r}")
    order = default_input_order(scheme, notes) if input_order == "auto" else input_order
    model = build_model(config)
    if order == "bgr":
        model = reverse_input_channels(model)
    report = convert(model, model_name, tensors, checkpoint, order)
    report.update({
        "checkpoint": checkpoint, "scheme": scheme, "scheme_description": SCHEME_DESCRIPTION[scheme],
        "notes": notes, "input_order": order, "model": dict(config["model"]), "config_name": config["name"],
        "counts": {"loaded": len(report["loaded"]), "left_initialised": len(report["left_initialised"]),
                   "unused": len(report["unused"]), "ignored_bookkeeping": len(report["ignored"])},
    })
    log(f"loaded {len(report['loaded'])} tensors into {model.name} ({model.count_params():,} parameters), "
        f"input order {order}; {len(report['ignored'])} BN counters ignored")
    return model, report


def write_model_dir(model, config: Mapping[str, Any], model_dir: str, report: Mapping[str, Any],
                    log: Callable[[str], None] = print) -> None:
    """Writes ``model_dir`` as the Trainer does: ``Format-Serving/``, ``model.keras``, then ``import_report.json``."""
    import tensorflow as tf

    from pose.codec import HeatmapCodec
    from schemas import jsonio, serving
    from trainer import export

    serving_dir = os.path.join(model_dir, serving.SAVED_MODEL_DIR)
    tf.io.gfile.makedirs(model_dir)
    export.export_serving_model(model, config, HeatmapCodec.from_config(config), serving_dir)
    export.save_keras_model(model, os.path.join(model_dir, serving.KERAS_FILE))
    jsonio.write(os.path.join(model_dir, REPORT_FILE), report, indent=2)  # last: marks the directory complete
    log(f"wrote {serving_dir}, {serving.KERAS_FILE} and {REPORT_FILE} in {model_dir}")


def import_checkpoint(checkpoint: str, config: Mapping[str, Any], model_dir: str, input_order: str = "auto",
                      allow_pickle: bool = False, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Converts a full pose checkpoint into ``config``'s model and writes ``model_dir`` as the Trainer does.

    :func:`convert_checkpoint` (every check) then :func:`write_model_dir`: nothing is written
    unless the whole checkpoint fits.

    Returns:
        The report written to ``<model_dir>/import_report.json``.

    Raises:
        WeightImportError: see :func:`convert_checkpoint`; ``model_dir`` already holds a model.
    """
    import tensorflow as tf

    from schemas import serving

    serving_dir = os.path.join(model_dir, serving.SAVED_MODEL_DIR)
    if tf.io.gfile.exists(serving_dir):
        raise WeightImportError(f"{serving_dir} exists already: choose an empty --model-dir")
    model, report = convert_checkpoint(checkpoint, config, input_order, allow_pickle, log)
    write_model_dir(model, config, model_dir, report, log)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    from toolkit import cli
    from pose.config import load_config

    parser = cli.ArgumentParser(prog="python -m trainer.import_weights",
                                description="Convert a PyTorch pose checkpoint (SimpleBaseline / HRNet, original or "
                                            "mmpose naming) into a model directory the gate and Pusher take.")
    parser.add_argument("--checkpoint", required=True, help=".pth file (local or gs://)")
    parser.add_argument("--config", required=True, help="experiment config matching the checkpoint "
                                                        "(e.g. configs/coco/w32_256x192.yaml)")
    parser.add_argument("--model-dir", required=True, help="output model directory (local or gs://)")
    parser.add_argument("--input-order", choices=("auto", "rgb", "bgr"), default="auto",
                        help="channel order the checkpoint was trained on (auto: bgr for the original "
                             "pose_resnet naming, rgb otherwise)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load checkpoints that pickle non-tensor objects (only for files you trust)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default=None,
                        help="network precision of the SavedModel (default: the config's export.precision; "
                             "docs/serving.md)")
    parser.add_argument("--force-precision", action="store_true",
                        help="export bfloat16 even where this machine has no native bfloat16")
    args = parser.parse_args(argv)
    export_overrides = {key: value for key, value in (("precision", args.precision),
                                                      ("force_precision", args.force_precision or None))
                        if value is not None}
    try:
        config = load_config(args.config, overrides={"export": export_overrides} if export_overrides else None)
        import_checkpoint(args.checkpoint, config, args.model_dir, args.input_order, args.allow_pickle,
                          log=lambda message: print(message, flush=True))
    except (ValueError, OSError, ImportError) as error:  # ours: the message names the file and tensor
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from toolkit import cli as _cli

    sys.exit(_cli.run(main, prog="python -m trainer.import_weights"))

"""Person boxes from a detector SavedModel in the TF Object Detection API convention (``pipeline.predict --detector``).

The convention (TF2 Object Detection API exporter, ``exporter_main_v2.py``, and
the TF Hub object detection models exported with it): a ``serving_default``
signature with one image input and these outputs, batch of one:

* ``detection_boxes`` (1, N, 4) float: ``[ymin, xmin, ymax, xmax]`` normalised to
  [0, 1] by the image height and width;
* ``detection_scores`` (1, N) float, ``detection_classes`` (1, N) float or int
  (COCO label map: person = 1);
* ``num_detections`` (1,) optional: only the first ``num_detections`` rows are boxes.

The input is the decoded image, as the exporter's input types take it: uint8
(1, H, W, 3) RGB (``image_tensor``, the zoo's default), float32 (1, H, W, 3) RGB
0..255 (``float_image_tensor``), or the encoded JPEG/PNG bytes, a (1,) or () string
(``encoded_image_string_tensor``). The pixels are those of :mod:`pose.images`' rule
(the ones ``predict_image`` decodes).

A box is kept when its class is ``person_class`` and its score is ``>=
score_threshold``; the others are counted (``not_person``,
``det_score_below_threshold``, the names of the det-file selection). Kept boxes
become COCO ``[x, y, w, h]`` image pixels: ``x = xmin * W``, ``y = ymin * H``,
``w = (xmax - xmin) * W``, ``h = (ymax - ymin) * H`` (normalised 0 and 1 are the
image's outer edges, as for COCO boxes: ``[0, 0, W, H]`` is the whole image); no
clipping or checking here, :func:`pose.coordinates.clip_boxes` in the graph does it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Tuple

import numpy as np

SIGNATURE = "serving_default"
BOXES = "detection_boxes"
SCORES = "detection_scores"
CLASSES = "detection_classes"
NUM_DETECTIONS = "num_detections"
REQUIRED_OUTPUTS = (BOXES, SCORES, CLASSES)
DEFAULT_PERSON_CLASS = 1
DEFAULT_SCORE_THRESHOLD = 0.5
SKIP_NOT_PERSON = "not_person"
SKIP_SCORE = "det_score_below_threshold"


def boxes_to_pixels(normalised: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, 4) normalised ``[ymin, xmin, ymax, xmax]`` -> (n, 4) float64 COCO ``[x, y, w, h]`` image pixels."""
    boxes = np.asarray(normalised, np.float64).reshape(-1, 4)
    ymin, xmin, ymax, xmax = boxes.T
    return np.stack([xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height], axis=-1)


@dataclasses.dataclass
class Detector:
    """A loaded detector (module docstring). Call it with an image's RGB pixels and encoded bytes.

    Attributes:
        path: SavedModel directory.
        person_class: class id of a person (COCO label map: 1).
        score_threshold: boxes scored below are left out.
        input_name, input_dtype, input_rank: the signature's one image input.
    """

    path: str
    person_class: int
    score_threshold: float
    function: Any
    input_name: str
    input_dtype: str
    input_rank: int
    _loaded: Any = None

    def __call__(self, pixels: np.ndarray, data: bytes) -> Tuple[np.ndarray, np.ndarray, Dict[str, int]]:
        """One image -> person boxes (n, 4) COCO pixels, their scores (n,) and ``{reason: n}`` of the boxes left out.

        Args:
            pixels: (H, W, 3) uint8 RGB; data: the encoded image (for a string input).

        Raises:
            ValueError: outputs whose shapes do not follow the convention (the message names the detector).
        """
        import tensorflow as tf

        if self.input_dtype == "string":
            value = tf.constant([data] if self.input_rank == 1 else data, tf.string)
        else:
            value = tf.constant(np.asarray(pixels)[None], tf.as_dtype(self.input_dtype))
        outputs = self.function(**{self.input_name: value})
        boxes = np.asarray(outputs[BOXES].numpy(), np.float64)
        scores = np.asarray(outputs[SCORES].numpy(), np.float64)
        classes = np.asarray(outputs[CLASSES].numpy(), np.float64)
        if boxes.ndim != 3 or boxes.shape[0] != 1 or boxes.shape[2] != 4 or scores.shape != boxes.shape[:2] \
                or classes.shape != boxes.shape[:2]:
            raise ValueError(f"--detector {self.path}: outputs {BOXES} {boxes.shape}, {SCORES} {scores.shape}, "
                             f"{CLASSES} {classes.shape}; expected (1, N, 4), (1, N), (1, N)")
        count = boxes.shape[1]
        if NUM_DETECTIONS in outputs:
            count = min(count, int(np.asarray(outputs[NUM_DETECTIONS].numpy()).reshape(-1)[0]))
        boxes, scores, classes = boxes[0, :count], scores[0, :count], classes[0, :count]
        person = np.round(classes) == self.person_class
        kept = person & (scores >= self.score_threshold)              # a NaN score is below any threshold
        left_out = {SKIP_NOT_PERSON: int((~person).sum()), SKIP_SCORE: int((person & ~kept).sum())}
        height, width = pixels.shape[:2]
        return boxes_to_pixels(boxes[kept], height, width), scores[kept], {k: v for k, v in left_out.items() if v}


def load_detector(path: str, person_class: int = DEFAULT_PERSON_CLASS,
                  score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> Detector:
    """Loads a detector SavedModel and checks its signature against the convention.

    Raises:
        FileNotFoundError: no ``saved_model.pb`` at ``path``.
        ValueError: no ``serving_default`` signature, not one image input of a supported type, or a
            required output missing (the message names the missing outputs and the ones it has).
    """
    import tensorflow as tf

    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        raise FileNotFoundError(f"--detector {path}: no saved_model.pb (a TF Object Detection API SavedModel dir)")
    loaded = tf.saved_model.load(path)
    if SIGNATURE not in loaded.signatures:
        raise ValueError(f"--detector {path}: no {SIGNATURE} signature (has {sorted(loaded.signatures)})")
    function = loaded.signatures[SIGNATURE]
    outputs = sorted(function.structured_outputs)
    missing = [name for name in REQUIRED_OUTPUTS if name not in outputs]
    if missing:
        raise ValueError(f"--detector {path}: the {SIGNATURE} signature has no {', '.join(missing)} output "
                         f"(has {outputs}); expected the TF Object Detection API outputs "
                         f"{', '.join(REQUIRED_OUTPUTS)} [, {NUM_DETECTIONS}]")
    inputs = function.structured_input_signature[1]
    if len(inputs) != 1:
        raise ValueError(f"--detector {path}: the {SIGNATURE} signature takes {sorted(inputs)}; expected one image "
                         "input")
    (name, spec), = inputs.items()
    dtype = spec.dtype.name
    rank = spec.shape.rank
    image_input = dtype in ("uint8", "float32") and rank == 4 and spec.shape[-1] in (None, 3)
    string_input = dtype == "string" and rank in (0, 1)
    if not (image_input or string_input):
        raise ValueError(f"--detector {path}: input {name!r} is {dtype} {spec.shape}; expected uint8 or float32 "
                         "(1, H, W, 3) RGB, or encoded image bytes (string)")
    if not np.isfinite(score_threshold):
        raise ValueError(f"--detector-score-threshold must be a number, got {score_threshold!r}")
    return Detector(path, int(person_class), float(score_threshold), function, name, dtype, int(rank), loaded)


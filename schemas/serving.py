"""The exported model's signature contract (names of inputs and outputs).

Written by ``trainer/export.py``, read by the evaluator, the gate and users.
The SavedModel lives at ``<model_dir>/Format-Serving/`` (TFX layout).

``serving_default``:
    input ``examples``: (B,) serialized person-crop records (:mod:`schemas.features`).
    outputs:
        ``keypoints_crop``  (B, K, 2) float32, crop pixels (x, y)
        ``keypoints_image`` (B, K, 2) float32, original-image pixels (x, y)
        ``scores``          (B, K)    float32, heatmap maxima (flip-averaged)
        ``image_id``, ``annotation_id`` (B,) int64; ``bbox_score``, ``area`` (B,) float32;
        ``center``, ``scale`` (B, 2) float32 -- passed through from the records.

``predict_image``:
    inputs ``image`` () string (encoded JPEG/PNG), ``boxes`` (N, 4) float32 COCO [x, y, w, h].
    outputs ``keypoints`` (N, K, 2) float32 image pixels, ``scores`` (N, K) float32.

``heatmaps``:
    input ``images`` (B, H_in, W_in, 3) float32 RGB 0..255 crops.
    output ``heatmaps`` (B, H_hm, W_hm, K) float32.
"""
SAVED_MODEL_DIR = "Format-Serving"
KERAS_FILE = "model.keras"

SERVING_DEFAULT = "serving_default"
PREDICT_IMAGE = "predict_image"
HEATMAPS = "heatmaps"

INPUT_EXAMPLES = "examples"
OUTPUT_KEYPOINTS_CROP = "keypoints_crop"
OUTPUT_KEYPOINTS_IMAGE = "keypoints_image"
OUTPUT_SCORES = "scores"
PASSTHROUGH = {
    "image_id": "image/id",
    "annotation_id": "annotation/id",
    "bbox_score": "bbox/score",
    "area": "person/area",
    "center": "bbox/center",
    "scale": "bbox/scale",
}

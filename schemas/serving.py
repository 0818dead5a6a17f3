"""The exported model's signature contract (names of inputs and outputs).

Written by ``trainer/export.py``, read by the evaluator, the gate and users.
The SavedModel lives at ``<model_dir>/Format-Serving/`` (TFX layout), pushed
copies at ``<push_destination>/<version>/``. It loads with the TF2 loader and
with the session loader of TF Serving / ``saved_model_cli run`` (docs/serving.md).

``serving_default``:
    input ``examples``: (B,) serialized person-crop records (:mod:`schemas.features`).
    outputs:
        ``keypoints_crop``  (B, K, 2) float32, crop pixels (x, y)
        ``keypoints_image`` (B, K, 2) float32, original-image pixels (x, y)
        ``scores``          (B, K)    float32, heatmap maxima (flip-averaged)
        ``image_id``, ``annotation_id`` (B,) int64; ``bbox_score``, ``area`` (B,) float32;
        ``center``, ``scale`` (B, 2) float32 -- passed through from the records.

``predict_image``:
    inputs ``image`` () string (encoded JPEG or PNG, decoded by ExampleGen's rule
    ``pose.images``; other formats: InvalidArgument), ``boxes`` (N, 4) float32
    COCO [x, y, w, h] in image pixels.
    outputs:
        ``keypoints``  (N, K, 2) float32, image pixels (x, y)
        ``scores``     (N, K)    float32, heatmap maxima (flip-averaged)
        ``box_valid``  (N,)      bool, the box passed ExampleGen's box rule
        ``box_status`` (N,)      int32, index into ``pose.coordinates.BOX_STATUS``:
                                 0 ``valid``, 1 ``invalid_box`` (a non-finite
                                 coordinate, or w <= 0 or h <= 0),
                                 2 ``box_outside_image`` (zero area after clipping)
    Boxes follow ExampleGen's rule (``pose.coordinates.clip_boxes``): a valid
    box is clipped to ``[0, W-1] x [0, H-1]`` before it is padded to the input
    aspect ratio (COCO models; MPII models use it unclipped, as ExampleGen
    uses MPII windows), so a box partly outside the image gives the crop
    ExampleGen makes for it. A box that is not valid gets ``keypoints`` 0 and
    ``scores`` 0 (never NaN, never a widened box) and does not go through the
    network; the other boxes' outputs do not depend on it (beyond float
    rounding). No error is raised for a bad box; a bad ``image`` (not
    decodable) fails the request with InvalidArgument.

``heatmaps``:
    input ``images`` (B, H_in, W_in, 3) float32 RGB 0..255 crops.
    outputs:
        ``heatmaps``  (B, H_hm, W_hm, K) float32 (raw model output, no flip).
        ``attention`` (B, H_hm, W_hm, A) float32 in [0, 1], only for models with
                      attention heads (``model.attention``): A = 1 (holistic,
                      one map per person) or A = K (part-wise, map k for joint k
                      in the schema's order); channels-last, the heatmaps' grid.
                      Absent for every other model; the other outputs and
                      signatures are the same with or without it.

Bottom-up models (``approach: bottom_up``, ``trainer/export_bottom_up.py``)
have the same three signature names with these contracts (N = ``bottom_up.max_people``):

``predict_image``: input ``image`` () string -> ``keypoints`` (N, K, 3) float32
    (x, y original-image pixels, keypoint score), ``person_scores`` (N,) float32
    (best first), ``num_people`` () int32; rows after ``num_people`` are zeros.
``heatmaps``: input ``images`` (B, S, S, 3) float32 RGB 0..255 letterboxed inputs ->
    ``outputs`` (B, H_out, W_out, C) float32, the layout of ``schemas.bottom_up``.
``serving_default``: input ``examples`` (B,) serialized bottom-up records ->
    ``keypoints`` (B, N, K, 3), ``person_scores`` (B, N), ``num_people`` (B,),
    ``image_id`` (B,) int64.
"""
SAVED_MODEL_DIR = "Format-Serving"
KERAS_FILE = "model.keras"

SERVING_DEFAULT = "serving_default"
PREDICT_IMAGE = "predict_image"
HEATMAPS = "heatmaps"

INPUT_EXAMPLES = "examples"
INPUT_IMAGE = "image"
INPUT_BOXES = "boxes"
INPUT_IMAGES = "images"
OUTPUT_KEYPOINTS_CROP = "keypoints_crop"
OUTPUT_KEYPOINTS_IMAGE = "keypoints_image"
OUTPUT_SCORES = "scores"
OUTPUT_KEYPOINTS = "keypoints"
OUTPUT_BOX_VALID = "box_valid"
OUTPUT_BOX_STATUS = "box_status"
OUTPUT_HEATMAPS = "heatmaps"
OUTPUT_ATTENTION = "attention"
PASSTHROUGH = {
    "image_id": "image/id",
    "annotation_id": "annotation/id",
    "bbox_score": "bbox/score",
    "area": "person/area",
    "center": "bbox/center",
    "scale": "bbox/scale",
}
# Bottom-up signatures (see the module docstring).
OUTPUT_PERSON_SCORES = "person_scores"
OUTPUT_NUM_PEOPLE = "num_people"
OUTPUT_OUTPUTS = "outputs"
OUTPUT_IMAGE_ID = "image_id"

# Deployment artifacts (trainer/export_deploy.py; docs/deploy.md): one folder per format beside
# Format-Serving, each holding the model file and its spec (deploy.json). Contract of every artifact:
# input ``images`` (B, H_in, W_in, 3) RGB 0..255 crops (float32; uint8 for tflite_int8), outputs
# ``keypoints_crop`` (B, K, 2) float32 crop pixels, ``scores`` (B, K) float32, ``heatmaps``
# (B, H_hm, W_hm, K) float32 (the decoded maps: flip-averaged under eval.flip_test).
DEPLOY_DIR = "Format-Deploy"
DEPLOY_SPEC_FILE = "deploy.json"
DEPLOY_MANIFEST_FILE = "deploy_manifest.json"
# format -> (runtime, precision, file name)
DEPLOY_FORMAT_INFO = {
    "tflite_fp32": ("litert", "float32", "model.tflite"),
    "tflite_fp16": ("litert", "float16", "model.tflite"),
    "tflite_int8": ("litert", "int8", "model.tflite"),
    "onnx": ("onnxruntime", "float32", "model.onnx"),
}
DEPLOY_FORMATS = tuple(DEPLOY_FORMAT_INFO)
DEPLOY_OUTPUTS = (OUTPUT_KEYPOINTS_CROP, OUTPUT_SCORES, OUTPUT_HEATMAPS)

"""Plain constants of the pipeline: names, default paths, image, gate thresholds.

Importing this module does nothing else (no I/O, no auth). The runner
(``pipeline.py``) and the compile step read these values and pass them as
arguments to :func:`pipeline.pipeline.create_pipeline`.
"""
PIPELINE_NAME = "darkpose-tf"
PIPELINE_DESCRIPTION = (
    "Top-down 2D human pose estimation with DARK: ExampleGen (Beam) -> Trainer -> "
    "Evaluator (baseline = latest blessed model) -> Pusher when blessed."
)

# Component image for Kubeflow / Vertex AI (built from the repository's Dockerfile).
# Override with `python pipeline.py --compile pipeline.yaml --image <registry>/<name>:<tag>`.
PIPELINE_IMAGE = "us-docker.pkg.dev/YOUR_PROJECT/darkpose/darkpose-tf-python:0.1.0"

# Local runs (python pipeline.py --runner=DirectRunner).
RUNS_DIR = "runs"                     # one sub-directory per run: runs/<timestamp>/
SERVING_SUBDIR = "serving"            # push destination shared across runs: runs/serving/
SYNTHETIC_SUBDIR = "datasets"         # cache of the embedded dataset: runs/datasets/synthetic-.../
DEMO_CONFIG = "configs/demo.yaml"
COCO_CONFIG = "configs/coco/w32_256x192.yaml"
MPII_CONFIG = "configs/mpii/w32_256x256.yaml"
# Bottom-up (box-free) pipeline: python pipeline.py --approach bottom_up [--data coco ...]
BOTTOM_UP_DEMO_CONFIG = "configs/bottom_up/demo_res18_129.yaml"
BOTTOM_UP_COCO_CONFIG = "configs/bottom_up/res101_401.yaml"

# Embedded synthetic dataset (pipeline/synthetic.py) used with no --data.
SYNTHETIC_TRAIN_IMAGES = 720
SYNTHETIC_VAL_IMAGES = 80
SYNTHETIC_SEED = 0
# Evaluate the demo on the detector-like boxes (True) or on the ground-truth boxes.
SYNTHETIC_USE_DETECTIONS = True

# Blessing gates, used when the experiment config has no eval.thresholds of its own.
# Value thresholds: {metric: {"lower_bound": x}}; change thresholds against the
# latest blessed (pushed) model: {metric: {"max_drop": y}} (absolute drop).
DEMO_THRESHOLDS = {
    "AP": {"lower_bound": 0.8, "max_drop": 0.03},
}
COCO_THRESHOLDS = {
    "AP": {"lower_bound": 0.70, "max_drop": 0.005},
    "AP50": {"lower_bound": 0.88},
}
# Bottom-up: the demo bar on the embedded data (issue 16: >= 0.6 expected) and a COCO bar below
# StrongPose's published ResNet-101 test-dev AP 0.708.
BOTTOM_UP_DEMO_THRESHOLDS = {
    "AP": {"lower_bound": 0.6, "max_drop": 0.03},
}
BOTTOM_UP_COCO_THRESHOLDS = {
    "AP": {"lower_bound": 0.65, "max_drop": 0.005},
}
MPII_THRESHOLDS = {
    "PCKh@0.5": {"lower_bound": 0.88, "max_drop": 0.005},
}
# Any other dataset meta (--dataset-meta) without eval.thresholds of its own: a bar by its metric
# (OKS AP with the meta's sigmas, or PCK@0.2 of the box's longer side; EPE is gated with upper_bound).
META_OKS_THRESHOLDS = {
    "AP": {"lower_bound": 0.5, "max_drop": 0.01},
}
PCK_THRESHOLDS = {
    "PCK@0.2": {"lower_bound": 0.8, "max_drop": 0.01},
}

# Exit codes of python pipeline.py.
EXIT_BLESSED = 0
EXIT_NOT_BLESSED = 1
EXIT_FAILED = 2

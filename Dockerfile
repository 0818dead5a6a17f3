# Component image of the darkpose-tf pipeline (Kubeflow Pipelines / Vertex AI Pipelines),
# also usable as a Dataflow custom SDK container base.
#
#   docker build -t us-docker.pkg.dev/$PROJECT/darkpose/darkpose-tf-python:0.1.0 .
#   docker push  us-docker.pkg.dev/$PROJECT/darkpose/darkpose-tf-python:0.1.0
#   python pipeline.py --compile pipeline.yaml --image us-docker.pkg.dev/$PROJECT/darkpose/darkpose-tf-python:0.1.0
#
# GPU trainer image (NVIDIA GPUs on Vertex AI / GKE):
#   docker build --build-arg TF_EXTRA="[and-cuda]" -t .../darkpose-tf-python-gpu:0.1.0 .
# The components are kfp lightweight components built with install_kfp_package=False:
# everything they import (kfp, the project, TF, Beam) must be installed here.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ARG TF_EXTRA=""
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# libgl/libglib are not needed by opencv-python-headless; libgomp is used by TF/OpenCV.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first (cached layer): the pinned lock file constrains the ranges in setup.py.
COPY requirements.lock setup.py README.md ./
RUN mkdir -p pose schemas trainer/models components pipeline \
    && touch pose/__init__.py schemas/__init__.py trainer/__init__.py trainer/models/__init__.py \
             components/__init__.py pipeline/__init__.py \
    && pip install -c requirements.lock . \
    && if [ -n "$TF_EXTRA" ]; then pip install -c requirements.lock "tensorflow${TF_EXTRA}"; fi \
    && pip uninstall -y darkpose-tf

# The project itself (installed non-editable so components import it from site-packages).
COPY pose/ pose/
COPY schemas/ schemas/
COPY trainer/ trainer/
COPY components/ components/
COPY pipeline/ pipeline/
COPY configs/ configs/
COPY pipeline.py ./
RUN pip install --no-deps -c requirements.lock . \
    && python -c "import pose, schemas, trainer, components, pipeline.stages, kfp, apache_beam, tensorflow"

# kfp runs `python3 -m kfp.dsl.executor_main ...` from the component spec; no entrypoint needed.

# Component image of the darkpose-tf TFX pipeline (Kubeflow Pipelines / Vertex AI Pipelines),
# based on the official TFX image of the same version (glibc >= 2.39 there: no shim needed).
# It cannot be built on the development machine (no registry access); build it where Docker
# and the registry are reachable:
#
#   docker build -t us-docker.pkg.dev/$PROJECT/darkpose/darkpose-tf-tfx:0.1.0 .
#   docker push  us-docker.pkg.dev/$PROJECT/darkpose/darkpose-tf-tfx:0.1.0
#   python pipeline.py --compile pipeline.json --image us-docker.pkg.dev/$PROJECT/darkpose/darkpose-tf-tfx:0.1.0
#
# KubeflowV2DagRunner runs each component as `python -m tfx.orchestration.kubeflow.v2.container.
# kubeflow_v2_run_executor` in this image: TFX, kfp and the project must all be importable here.
ARG TFX_IMAGE=gcr.io/tfx-oss-public/tfx:1.21.0
FROM ${TFX_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /pipeline

# Dependencies first (cached layer): the lock constrains the ranges in setup.py, with the
# image's own tfx kept.
COPY requirements.lock setup.py README.md ./
RUN mkdir -p toolkit pose schemas trainer/models components pipeline \
    && touch toolkit/__init__.py pose/__init__.py schemas/__init__.py trainer/__init__.py trainer/models/__init__.py \
             components/__init__.py pipeline/__init__.py \
    && pip install -c requirements.lock . \
    && pip uninstall -y darkpose-tf

# The project itself (non-editable: the executors import it from site-packages).
COPY toolkit/ toolkit/
COPY pose/ pose/
COPY schemas/ schemas/
COPY trainer/ trainer/
COPY components/ components/
COPY pipeline/ pipeline/
COPY configs/ configs/
COPY pipeline.py ./
RUN pip install --no-deps -c requirements.lock . \
    && python -c "import toolkit.cli, pose, schemas, trainer, components.tfx_components, pipeline.pipeline, tfx.v1, kfp" \
    && cd / && python -c "import os, components.data_validation as d; assert os.path.isfile(d.SCHEMA_FILE), d.SCHEMA_FILE"

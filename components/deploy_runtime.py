"""Runs a deployment artifact (``model.tflite`` / ``model.onnx``, :mod:`trainer.export_deploy`) in its own runtime.

LiteRT artifacts run in ``ai_edge_litert``'s interpreter (XNNPACK on CPU), ONNX artifacts in ONNX Runtime's
CPU provider. This module imports neither TensorFlow nor the trainer: it is what a deployment target runs
(the Evaluator and ``pipeline.predict`` use it too), and ``tests/test_export_deploy.py`` runs it in a fresh
process with ``tensorflow`` absent from ``sys.modules``.

Contract (:data:`schemas.serving.DEPLOY_OUTPUTS`): :meth:`DeployRunner.run` takes (B, H_in, W_in, 3) RGB crops
0..255 (any real dtype; uint8-input artifacts get them rounded and quantized with the input's own scale and
zero point) and returns ``keypoints_crop`` (B, K, 2) crop pixels, ``scores`` (B, K) and ``heatmaps``
(B, H_hm, W_hm, K), all float32.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping

import numpy as np

from schemas import serving


class DeployArtifactError(ValueError):
    """An artifact that cannot be loaded or does not follow the deployment contract."""


def read_spec(model_path: str) -> Dict[str, Any]:
    """The ``deploy.json`` beside ``model_path`` (:func:`trainer.export_deploy.artifact_spec`).

    Without one the spec is inferred from the suffix (``.tflite`` -> LiteRT, ``.onnx`` -> ONNX Runtime).

    Raises:
        DeployArtifactError: an unknown suffix, or a spec file that is not JSON.
    """
    spec_path = os.path.join(os.path.dirname(os.path.abspath(model_path)), serving.DEPLOY_SPEC_FILE)
    if os.path.exists(spec_path):
        try:
            with open(spec_path, encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError) as error:
            raise DeployArtifactError(f"{spec_path}: not a readable deploy spec ({error})") from error
    if model_path.endswith(".tflite"):
        return {"format": "tflite", "runtime": "litert", "precision": None}
    if model_path.endswith(".onnx"):
        return {"format": "onnx", "runtime": "onnxruntime", "precision": "float32"}
    raise DeployArtifactError(f"{model_path}: not a .tflite or .onnx model")


class DeployRunner:
    """One loaded artifact.

    Args:
        model_path: ``model.tflite`` or ``model.onnx`` (local path).
        threads: CPU threads of the runtime (None: the runtime's default).

    Raises:
        FileNotFoundError: ``model_path`` does not exist.
        DeployArtifactError: see :func:`read_spec`; the model lacks an output of the contract.
    """

    def __init__(self, model_path: str, threads: int | None = None):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"model not found: {model_path}")
        self.path = model_path
        self.spec = read_spec(model_path)
        self.runtime = self.spec["runtime"]
        if self.runtime == "litert":
            from ai_edge_litert.interpreter import Interpreter

            self._interpreter = Interpreter(model_path=model_path, num_threads=threads)
            self._runner = self._interpreter.get_signature_runner()
            detail = self._interpreter.get_input_details()[0]
            self.input_dtype = np.dtype(detail["dtype"])
            self._quantization = detail["quantization"]
            names = set(self._interpreter.get_signature_list()["serving_default"]["outputs"])
        elif self.runtime == "onnxruntime":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if threads:
                options.intra_op_num_threads = int(threads)
                options.inter_op_num_threads = 1
            self._session = onnxruntime.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
            self.input_dtype = np.dtype(np.float32)
            self._input_name = self._session.get_inputs()[0].name
            names = {output.name for output in self._session.get_outputs()}
        else:
            raise DeployArtifactError(f"{model_path}: unknown runtime {self.runtime!r}")
        missing = sorted(set(serving.DEPLOY_OUTPUTS) - names)
        if missing:
            raise DeployArtifactError(f"{model_path}: outputs {sorted(names)} lack {missing} (schemas.serving)")
        if self.spec.get("precision") is None:
            self.spec["precision"] = "int8" if self.input_dtype == np.uint8 else "float32"

    def _prepare(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise DeployArtifactError(f"{self.path}: crops must be (B, H, W, 3), got {crops.shape}")
        if self.input_dtype == np.uint8:
            scale, zero_point = self._quantization
            scale = scale or 1.0
            return np.clip(np.rint(crops.astype(np.float32) / scale + zero_point), 0, 255).astype(np.uint8)
        return crops.astype(np.float32)

    def run(self, crops: np.ndarray) -> Dict[str, np.ndarray]:
        """(B, H_in, W_in, 3) crops 0..255 -> ``{keypoints_crop, scores, heatmaps}`` float32 (B may be 0)."""
        feed = self._prepare(crops)
        if not len(feed):
            return self._empty()
        if self.runtime == "litert":
            outputs = self._runner(**{serving.INPUT_IMAGES: feed})
        else:
            outputs = dict(zip([o.name for o in self._session.get_outputs()],
                               self._session.run(None, {self._input_name: feed})))
        return {name: np.asarray(outputs[name], np.float32) for name in serving.DEPLOY_OUTPUTS}

    def _empty(self) -> Dict[str, np.ndarray]:
        joints = self.spec.get("outputs", [{}])[0].get("shape", [None, 0, 2])[1] or 0
        hm_h, hm_w = self.spec.get("heatmap_size", [0, 0])
        return {serving.OUTPUT_KEYPOINTS_CROP: np.zeros((0, joints, 2), np.float32),
                serving.OUTPUT_SCORES: np.zeros((0, joints), np.float32),
                serving.OUTPUT_HEATMAPS: np.zeros((0, hm_h, hm_w, joints), np.float32)}


def artifact_path(deploy_dir: str, name: str) -> str:
    """``<deploy_dir>/<format>/<file>`` of format ``name`` (:data:`schemas.serving.DEPLOY_FORMAT_INFO`)."""
    return os.path.join(deploy_dir, name, serving.DEPLOY_FORMAT_INFO[name][2])


def describe(spec: Mapping[str, Any]) -> str:
    """One line: ``format (runtime, precision)``."""
    return f"{spec.get('format')} ({spec.get('runtime')}, {spec.get('precision')})"

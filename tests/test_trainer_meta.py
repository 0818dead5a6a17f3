"""Trainer with a dataset meta: K channels, joint weights, half-body off, refusal of other-meta Examples."""
import json
import os

import numpy as np
import pytest

from pose.config import build_config
from schemas import dataset_meta
from trainer import input_pipeline, task

DATA = "/work/shared/data"


def _config(folder):
    return build_config({"dataset_meta": os.path.join(DATA, folder, "dataset_meta.json"),
                         "data": {"input_size": [64, 64]}, "model": {"name": "simplebaseline", "depth": 18}})


def test_examples_of_another_meta_are_refused(tmp_path):
    split = tmp_path / "Split-train"
    split.mkdir()
    files = [str(split / "data_tfrecord-00000-of-00001.gz")]
    ap10k = dataset_meta.schema_for(_config("ap10k_mmpose2"))
    (tmp_path / "manifest.json").write_text(json.dumps({"dataset": "ap10k", "dataset_meta_hash": ap10k.hash}))
    task.check_examples_meta(files, _config("ap10k_mmpose2"))  # same meta: fine
    with pytest.raises(ValueError, match=r"made with dataset meta 'ap10k' .* config's is 'crowdpose'"):
        task.check_examples_meta(files, _config("crowdpose_mmpose2"))
    (tmp_path / "manifest.json").write_text(json.dumps({"dataset": "coco"}))  # an older manifest: not refused
    task.check_examples_meta(files, _config("crowdpose_mmpose2"))


def test_joint_weights_and_channels_from_the_meta():
    crowdpose = _config("crowdpose_mmpose2")
    weights = input_pipeline.joint_weights(crowdpose).numpy()
    np.testing.assert_allclose(weights, json.load(open(os.path.join(DATA, "crowdpose_mmpose2",
                                                                     "dataset_meta.json")))["joint_weights"])
    assert input_pipeline.joint_weights(_config("onehand10k_mmpose4")) is None  # all 1
    assert input_pipeline.joint_weights(build_config({})) is None  # COCO: unchanged
    from trainer.models import build_model

    model = build_model(_config("onehand10k_mmpose4"))
    assert model.output_shape[-1] == 21


def test_half_body_is_off_without_upper_body():
    hand = dataset_meta.schema_for(_config("onehand10k_mmpose4"))
    assert not hand.has_half_body and not hand.upper_body_mask.any()
    assert dataset_meta.bundled("coco").has_half_body

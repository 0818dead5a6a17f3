"""The Evaluator on a bottom-up model (issue 16): whole-image records in, COCO OKS-AP against the GT file out.

The models are constant-output networks whose outputs are the encoded targets of
COCO val image 196141's people (all four, or two of them), exported with the
real bottom-up exporter, so the AP the evaluator reports is known: 1.0 for all
four people, and lower for two (half the people found). Scored by the same
path as top-down models: joined examples, TFMA metric, pycocotools, blessing.
"""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import evaluator
from pose import bottom_up_codec, coordinates
from pose.config import build_config
from schemas import bottom_up as layout
from schemas import serving
from tests.test_bottom_up_decode import ConstantOutputs
from trainer import export

IMAGE_ID = 196141
SIZE = 257


def _config(thresholds):
    return build_config({"approach": "bottom_up", "data": {"input_size": [SIZE, SIZE], "heatmap_stride": 4},
                         "eval": {"flip_test": False, "batch_size": 2, "thresholds": thresholds}},
                        name="bottom_up_eval_test")


@pytest.fixture(scope="module")
def scene(shared_data, tmp_path_factory):
    """GT file of the one image, its bottom-up eval record, and two exported constant models."""
    coco = os.path.join(shared_data, "coco_val2017_mmpose4")
    with open(os.path.join(coco, "person_keypoints_val2017_mmpose4.json"), encoding="utf-8") as handle:
        annotations = json.load(handle)
    info = next(image for image in annotations["images"] if image["id"] == IMAGE_ID)
    people = [a for a in annotations["annotations"] if a["image_id"] == IMAGE_ID and a["num_keypoints"] > 0]
    assert len(people) == 4
    root = tmp_path_factory.mktemp("bottom_up_eval")
    gt_path = str(root / "gt.json")
    with open(gt_path, "w", encoding="utf-8") as handle:
        json.dump({**annotations, "images": [info],
                   "annotations": [a for a in annotations["annotations"] if a["image_id"] == IMAGE_ID]}, handle)
    config = _config({"AP": {"lower_bound": 0.9}})
    truth = np.array([a["keypoints"] for a in people], np.float64).reshape(-1, 17, 3)
    affine = coordinates.letterbox_affine(info["height"], info["width"], SIZE)
    scene = truth.copy()
    scene[..., :2] = coordinates.apply_affine(truth[..., :2], affine)
    targets = bottom_up_codec.encode(scene, config)
    with open(os.path.join(coco, "images", f"{IMAGE_ID:012d}.jpg"), "rb") as handle:
        letterboxed = coordinates.warp_image(tf.io.decode_jpeg(handle.read()).numpy(), affine, (SIZE, SIZE))
    record = layout.build_example({
        "dataset": "coco", "image/encoded": tf.io.encode_png(letterboxed).numpy(), "image/format": "png",
        "image/id": IMAGE_ID, "image/height": info["height"], "image/width": info["width"], "input/size": SIZE,
        "affine": affine, "targets": targets, "mask": np.ones(targets.shape[:2]),
        "person/annotation_id": [a["id"] for a in people], "person/area": [a["area"] for a in people],
        "person/keypoints": scene}).SerializeToString()
    records = root / "examples" / "Split-eval"
    records.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(records / "data_tfrecord-00000-of-00001.gz"), options="GZIP") as writer:
        writer.write(record)
        writer.write(b"not a record")   # a dead letter, counted, the rest still scored

    def exported(name, persons):
        inputs = keras.Input((SIZE, SIZE, 3))
        model = keras.Model(inputs, ConstantOutputs(bottom_up_codec.encode(scene[persons], config))(inputs))
        model_dir = root / name
        export.export_serving_model(model, config, None, str(model_dir / serving.SAVED_MODEL_DIR))
        return str(model_dir)

    return dict(config=config, gt=gt_path, examples=str(root / "examples"), root=root,
                all_people=exported("all", [0, 1, 2, 3]), two_people=exported("two", [0, 1]))


def test_all_people_found_scores_ap_one_and_a_bad_record_is_counted(scene):
    record = evaluator.run_evaluator(scene["all_people"], scene["examples"], scene["config"],
                                     str(scene["root"] / "blessing_all"), gt_annotations=scene["gt"])
    assert record["metrics"]["AP"] == pytest.approx(1.0)
    assert record["tfma_metrics"]["AP"] == pytest.approx(record["metrics"]["AP"])
    assert record["num_persons"] == 4 and record["skipped"] == {"unparsable_record": 1}
    assert record["blessed"] is False   # the unparsable record refuses the blessing, as for top-down records
    assert any("could not be evaluated" in reason for reason in record["reasons"])


def test_against_a_baseline_with_fewer_people(scene, tmp_path):
    # Only the good record: the candidate finds two of four people, the baseline all four.
    (tmp_path / "Split-eval").mkdir()
    source = os.path.join(scene["examples"], "Split-eval", "data_tfrecord-00000-of-00001.gz")
    first = next(iter(tf.data.TFRecordDataset(source, compression_type="GZIP"))).numpy()
    with tf.io.TFRecordWriter(str(tmp_path / "Split-eval" / "data.gz"), options="GZIP") as writer:
        writer.write(first)
    config = _config({"AP": {"lower_bound": 0.0, "max_drop": 0.01}})
    record = evaluator.run_evaluator(scene["two_people"], str(tmp_path), config, str(tmp_path / "blessing"),
                                     baseline_model_dir=scene["all_people"], gt_annotations=scene["gt"])
    assert record["baseline_metrics"]["AP"] == pytest.approx(1.0)
    assert 0.0 < record["metrics"]["AP"] < 0.9
    # Four joined rows (the baseline's count); the candidate's two absent rows are not scored as people.
    assert record["num_persons"] == 4
    assert record["blessed"] is False and any("AP" in reason for reason in record["reasons"])


def test_gt_file_is_required(scene, tmp_path):
    with pytest.raises(ValueError, match="gt_annotations .* required for approach bottom_up"):
        evaluator.run_evaluator(scene["all_people"], scene["examples"], scene["config"], str(tmp_path / "b"))


def test_pipeline_predict_runs_a_bottom_up_model_box_free_and_refuses_boxes(scene, shared_data, tmp_path, capsys):
    """Issue 25: pipeline.predict runs the bottom-up model through its own predict_image (no boxes);
    boxes for it (--det-file / --detector) are a clear exit 2 naming the model as bottom-up."""
    from pipeline import predict

    image = os.path.join(shared_data, "coco_val2017_mmpose4", "images", f"{IMAGE_ID:012d}.jpg")
    out = tmp_path / "out"
    assert predict.main(["--model", scene["all_people"], "--images", image, "--out", str(out)]) == 0
    with open(out / predict.RESULTS_FILE, encoding="utf-8") as handle:
        results = json.load(handle)
    assert len(results) == 4 and {r["image_id"] for r in results} == {IMAGE_ID}
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    code = predict.main(["--model", scene["all_people"], "--images", image, "--out", str(tmp_path / "out2"),
                         "--det-file", str(dets)])
    assert code == 2 and "a bottom-up (box-free) model" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()

"""ExampleGen --approach bottom_up: whole-image records on the shared COCO samples and the embedded synthetic data.

Run: .venv/bin/python -m pytest -q tests/test_example_gen_bottom_up.py
"""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components import example_gen, ingest_bottom_up, ingest_core
from pipeline import synthetic
from pose import bottom_up_codec, bottom_up_codec_tf, coordinates
from pose.config import build_config
from schemas import bottom_up as layout

IN_MEMORY = ["--direct_running_mode=in_memory"]
TRAIN = "coco_train2017_mini28"
EVAL = "coco_val2017_mmpose4"


def _config(**section):
    overrides = {"approach": "bottom_up", "data": {"input_size": [129, 129], "heatmap_stride": 4}}
    if section:
        overrides["bottom_up"] = section
    return build_config(overrides)


def _paths(shared_data):
    return {
        "train_annotations": os.path.join(shared_data, TRAIN, "person_keypoints_train2017_mini28.json"),
        "train_images": os.path.join(shared_data, TRAIN, "images"),
        "eval_annotations": os.path.join(shared_data, EVAL, "person_keypoints_val2017_mmpose4.json"),
        "eval_images": os.path.join(shared_data, EVAL, "images"),
    }


def read_records(out_dir, split, config):
    """All records of a split, decoded with pose.bottom_up_codec_tf.decode_record_tf, as dicts of NumPy values."""
    files = sorted(glob.glob(os.path.join(out_dir, f"Split-{split}", "data_tfrecord-*-of-*.gz")))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").map(
        lambda serialized: bottom_up_codec_tf.decode_record_tf(serialized, config))
    return [{key: value.numpy() for key, value in record.items()} for record in dataset]


@pytest.fixture(scope="module")
def config():
    return _config()


@pytest.fixture(scope="module")
def coco_run(shared_data, config, tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("bottom_up") / "examples")
    manifest = example_gen.run_example_gen("coco", out_dir, config, beam_args=IN_MEMORY, **_paths(shared_data))
    return out_dir, manifest


def test_one_record_per_image_with_masked_regions_counted(shared_data, coco_run, config):
    out_dir, manifest = coco_run
    assert manifest["approach"] == "bottom_up" and manifest["schema_version"] == layout.SCHEMA_VERSION
    assert manifest["splits"] == {"train": 28, "eval": 4}
    assert manifest["skipped"] == {} and manifest["dead_letter_count"] == 0
    # 5 crowd regions and 56 persons without keypoints in train (README of the samples), 2 such persons in eval
    assert manifest["masked"] == {"train": {"crowd": 5, "no_keypoints": 56}, "eval": {"no_keypoints": 2}}
    assert manifest["num_channels"] == 136 and manifest["heatmap_size"] == [33, 33]
    records = read_records(out_dir, "train", config)
    assert [int(r["image_id"]) for r in records] == sorted(int(r["image_id"]) for r in records)
    data = json.load(open(_paths(shared_data)["train_annotations"], encoding="utf-8"))
    people = {}
    for ann in data["annotations"]:
        if not ann["iscrowd"] and ann["num_keypoints"] > 0:
            people.setdefault(ann["image_id"], []).append(ann)
    assert sum(int(r["num_people"]) for r in records) == sum(len(v) for v in people.values()) == 86
    for record in records:
        anns = {ann["id"]: ann for ann in people[int(record["image_id"])]}
        count = int(record["num_people"])
        areas = record["areas"][:count]
        assert np.all(np.diff(areas) <= 0)  # largest first
        back = coordinates.apply_affine(record["keypoints"][:count, :, :2],
                                        coordinates.invert_affine(record["affine"]))
        for index, ann_id in enumerate(record["annotation_ids"][:count]):
            source = np.asarray(anns[int(ann_id)]["keypoints"], dtype=np.float64).reshape(17, 3)
            labelled = source[:, 2] > 0
            np.testing.assert_array_equal(record["keypoints"][index, :, 2] > 0, labelled)
            np.testing.assert_allclose(back[index][labelled], source[labelled, :2], atol=2e-3)


def test_stored_targets_equal_the_re_encoded_keypoints(coco_run, config):
    """What the trainer relies on with augmentation off: re-encoding the stored keypoints = the stored targets."""
    out_dir, _ = coco_run
    for record in read_records(out_dir, "eval", config) + read_records(out_dir, "train", config)[:6]:
        count = int(record["num_people"])
        expected = bottom_up_codec.encode(record["keypoints"][:count].astype(np.float64), config)
        assert np.abs(expected - record["targets"]).max() <= 0.5 / layout.OFFSET_SCALE + 1e-4


def test_crowd_regions_are_masked_at_the_output_resolution(shared_data, coco_run, config):
    out_dir, _ = coco_run
    records = {int(r["image_id"]): r for r in read_records(out_dir, "train", config)}
    data = json.load(open(_paths(shared_data)["train_annotations"], encoding="utf-8"))
    sizes = {image["id"]: (image["height"], image["width"]) for image in data["images"]}
    crowds = [ann for ann in data["annotations"] if ann["iscrowd"]]
    assert len(crowds) == 5
    for ann in crowds:
        record = records[ann["image_id"]]
        height, width = sizes[ann["image_id"]]
        crowd = ingest_bottom_up.segmentation_mask(ann["segmentation"], height, width)
        assert crowd.sum() > 0
        # every output pixel whose centre maps into the crowd region is masked (mask = 0)
        image_to_output = record["affine"] * np.asarray([32 / 128, 32 / 128])[:, None]
        rows, cols = np.mgrid[0:33, 0:33]
        centres = coordinates.apply_affine(np.stack([cols.ravel(), rows.ravel()], -1)[None].astype(float),
                                           coordinates.invert_affine(image_to_output))[0]
        x, y = np.rint(centres[:, 0]).astype(int), np.rint(centres[:, 1]).astype(int)
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        covered = np.zeros(33 * 33, bool)
        covered[inside] = crowd[y[inside], x[inside]] > 0
        mask = record["mask"][..., 0].ravel()
        assert covered.sum() > 0 and np.all(mask[covered] == 0), ann["image_id"]
        # and the padding below/right of the letterboxed image counts in the loss
        assert record["mask"][-1, -1, 0] == 1
    # an image without crowd or keypoint-less persons is not masked anywhere
    clean = [r for image_id, r in records.items()
             if not any(a["image_id"] == image_id and (a["iscrowd"] or a["num_keypoints"] == 0)
                        for a in data["annotations"])]
    assert clean and all(r["mask"].min() == 1 for r in clean)


def test_too_many_people_keeps_the_largest_and_masks_the_rest(shared_data, tmp_path):
    config = _config(max_people=2)
    paths = _paths(shared_data)
    manifest = example_gen.run_example_gen("coco", str(tmp_path / "out"), config, eval_annotations=paths[
        "train_annotations"], eval_images=paths["train_images"], beam_args=IN_MEMORY)
    records = read_records(str(tmp_path / "out"), "eval", config)
    assert max(int(r["num_people"]) for r in records) == 2
    dropped = 86 - sum(int(r["num_people"]) for r in records)
    assert dropped > 0
    assert manifest["skipped"]["too_many_people"] == dropped == manifest["masked"]["eval"]["too_many_people"]


def test_bad_inputs_are_dead_lettered_and_nothing_half_written(shared_data, tmp_path):
    config = _config()
    paths = _paths(shared_data)
    images = tmp_path / "images"
    images.mkdir()
    data = json.load(open(paths["eval_annotations"], encoding="utf-8"))
    for image in data["images"]:
        os.symlink(os.path.join(paths["eval_images"], image["file_name"]), images / image["file_name"])
    (images / "corrupt.jpg").write_bytes(b"not an image" * 20)
    template = next(ann for ann in data["annotations"] if ann["num_keypoints"] > 0)
    data["images"] += [{"id": 900001, "file_name": "corrupt.jpg", "width": 640, "height": 425},
                       {"id": 900002, "file_name": "missing.jpg", "width": 640, "height": 425},
                       {"id": 900003, "file_name": "../../etc/passwd", "width": 640, "height": 425}]
    data["annotations"] += [dict(template, id=800001 + i, image_id=900001 + i) for i in range(3)]
    data["annotations"] += [
        dict(template, id=810001, iscrowd=1, segmentation={"size": [1, 1], "counts": "??"}),  # bad RLE: bbox masked
        dict(template, id=810002, keypoints="nope"),
        dict(template, id=810003, image_id=424242)]
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps(data))
    out_dir = tmp_path / "out"
    manifest = example_gen.run_example_gen("coco", str(out_dir), config, eval_annotations=str(annotations),
                                           eval_images=str(images), beam_args=IN_MEMORY)
    assert manifest["splits"] == {"eval": 4}
    assert manifest["skipped"] == {"corrupt_image": 1, "missing_image": 1, "unsafe_file_name": 1,
                                   "malformed_segmentation": 1, "malformed_annotation": 1, "unknown_image": 1}
    lines = [json.loads(line) for line in open(out_dir / "dead_letter.jsonl", encoding="utf-8")]
    segmentation = next(entry for entry in lines if entry["reason"] == "malformed_segmentation")
    assert segmentation["annotation_id"] == 810001 and "bbox masked" in segmentation["message"]
    record = next(r for r in read_records(str(out_dir), "eval", config) if r["image_id"] == template["image_id"])
    assert record["mask"].min() == 0  # the crowd's bbox
    # a run whose every image is bad fails and publishes nothing
    data["images"] = [image for image in data["images"] if image["id"] >= 900001]
    annotations.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no records"):
        example_gen.run_example_gen("coco", str(tmp_path / "none"), config, eval_annotations=str(annotations),
                                    eval_images=str(images), beam_args=IN_MEMORY)
    assert not (tmp_path / "none").exists() and not glob.glob(str(tmp_path / "none.tmp-*"))


def test_synthetic_images_hold_several_people(tmp_path):
    info = synthetic.generate_dataset(str(tmp_path / "data"),
                                      synthetic.SyntheticSpec(num_train_images=3, num_val_images=2))["paths"]
    config = _config()
    manifest = example_gen.run_example_gen(
        "coco", str(tmp_path / "out"), config, train_annotations=info["train_annotations"],
        train_images=info["train_images"], eval_annotations=info["val_annotations"],
        eval_images=info["val_images"], beam_args=IN_MEMORY)
    assert manifest["splits"] == {"train": 3, "eval": 2} and manifest["masked"] == {"train": {}, "eval": {}}
    for record in read_records(str(tmp_path / "out"), "train", config):
        assert int(record["num_people"]) >= 2 and record["mask"].min() == 1
        parts = layout.split_channels(record["targets"], "coco")
        assert parts["heatmaps"].max() > 0.9 and parts["body"].max() > 0.9
        # the synthetic 192x256 image fills the width of the 129x129 input; the bottom rows are padding
        assert np.asarray(record["image"])[-10:].max() == 0


def test_argument_errors_and_cli(shared_data, tmp_path):
    config = _config()
    paths = _paths(shared_data)
    with pytest.raises(ValueError, match="bottom_up needs COCO"):
        example_gen.run_example_gen("mpii", str(tmp_path), dict(config, dataset="mpii"),
                                    eval_annotations="a.json", eval_images="images")
    with pytest.raises(ValueError, match="det_file is not used"):
        example_gen.run_example_gen("coco", str(tmp_path), config, det_file="d.json", **paths)
    config_file = tmp_path / "top_down.yaml"
    config_file.write_text("dataset: coco\n")
    code = example_gen.main(["--dataset", "coco", "--approach", "bottom_up", "--config", str(config_file),
                             "--eval-annotations", paths["eval_annotations"], "--eval-images", paths["eval_images"],
                             "--out", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()
    assert example_gen.default_config("coco", approach="bottom_up")["data"]["heatmap_size"] == [51, 51]


def test_record_bytes_are_deterministic(shared_data, config):
    paths = _paths(shared_data)
    loaded = ingest_bottom_up.load_coco("eval", paths["eval_annotations"], paths["eval_images"], config)
    task = next(task for task in loaded["tasks"] if task["image_path"])
    image, _ = ingest_core.read_image(task["image_path"], 10**8)
    first = ingest_bottom_up.build_image_record(image, json.loads(json.dumps(task)), config)
    second = ingest_bottom_up.build_image_record(image, json.loads(json.dumps(task)), config)
    assert first == second
    # the record's image decodes to the same pixels in TF (pose.images rule) as in ExampleGen's Pillow decoder
    example = tf.train.Example.FromString(first[0])
    encoded = example.features.feature["image/encoded"].bytes_list.value[0]
    decoded = bottom_up_codec_tf.decode_record_tf(tf.constant(first[0]), config)["image"].numpy()
    np.testing.assert_array_equal(decoded, ingest_core.decode_image(encoded, 10**8))


def test_a_crowd_rle_of_another_size_is_dead_lettered_naming_both_sizes(shared_data, config):
    paths = _paths(shared_data)
    loaded = ingest_bottom_up.load_coco("eval", paths["eval_annotations"], paths["eval_images"], config)
    task = json.loads(json.dumps(next(task for task in loaded["tasks"] if task["image_path"])))
    image, _ = ingest_core.read_image(task["image_path"], 10**8)
    height, width = image.shape[:2]
    wrong = [height + 7, width]   # e.g. an RLE made for another copy of the image
    task["ignore"] = [{"annotation_id": 777, "reason": ingest_bottom_up.MASK_CROWD, "bbox": [10, 10, 20, 20],
                       "segmentation": {"size": wrong, "counts": [wrong[0] * wrong[1]]}}]
    _, skips, masked = ingest_bottom_up.build_image_record(image, task, config)
    entry = next(skip for skip in skips if skip["reason"] == ingest_bottom_up.SKIP_MALFORMED_SEGMENTATION)
    assert entry["annotation_id"] == 777 and "bbox masked" in entry["message"]
    assert str(wrong) in entry["message"] and str([height, width]) in entry["message"], entry["message"]
    assert masked[ingest_bottom_up.MASK_CROWD] == 1

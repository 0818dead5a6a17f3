"""ExampleGen on the real COCO / MPII samples in ../shared/data (Beam in_memory mostly).

Run: .venv/bin/python -m pytest -q tests/test_example_gen.py
"""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components import example_gen, ingest_core
from pose import coordinates
from pose.codec import HeatmapCodec
from schemas import features

IN_MEMORY = ["--direct_running_mode=in_memory"]


def _paths(shared_data):
    coco_val = os.path.join(shared_data, "coco_val2017_mmpose4")
    coco_train = os.path.join(shared_data, "coco_train2017_mini28")
    mpii = os.path.join(shared_data, "mpii_val_mmpose2")
    return {
        "train_annotations": os.path.join(coco_train, "person_keypoints_train2017_mini28.json"),
        "train_images": os.path.join(coco_train, "images"),
        "eval_annotations": os.path.join(coco_val, "person_keypoints_val2017_mmpose4.json"),
        "eval_images": os.path.join(coco_val, "images"),
        "det_file": os.path.join(coco_val, "person_detection_results_AP_H_56.json"),
        "mpii_annotations": os.path.join(mpii, "mpii_val_mmpose2.json"),
        "mpii_images": os.path.join(mpii, "images"),
    }


def read_split(out_dir, split, num_joints):
    """All records of a split, parsed, in file order (dict of NumPy arrays)."""
    files = sorted(glob.glob(os.path.join(out_dir, f"Split-{split}", "data_tfrecord-*-of-*.gz")))
    serialized = [record.numpy() for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    if not serialized:
        return {}, []
    parsed = features.parse_records(tf.constant(serialized), num_joints)
    return {key: value.numpy() for key, value in parsed.items()}, serialized


def expected_coco_persons(annotation_path):
    """Independent count of the selection rules: (image id, annotation id) pairs kept."""
    with open(annotation_path, encoding="utf-8") as handle:
        data = json.load(handle)
    sizes = {image["id"]: (image["width"], image["height"]) for image in data["images"]}
    kept = []
    for ann in data["annotations"]:
        if ann["category_id"] != 1 or ann["iscrowd"] or ann["num_keypoints"] == 0:
            continue
        width, height = sizes[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        if w <= 0 or h <= 0:
            continue
        x1, y1 = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
        x2, y2 = min(max(x + w, 0), width - 1), min(max(y + h, 0), height - 1)
        if x2 > x1 and y2 > y1:
            kept.append((ann["image_id"], ann["id"]))
    return sorted(kept), data


@pytest.fixture(scope="module")
def config():
    return example_gen.default_config("coco")


@pytest.fixture(scope="module")
def coco_run(shared_data, config, tmp_path_factory):
    paths = _paths(shared_data)
    out_dir = str(tmp_path_factory.mktemp("coco") / "examples")
    manifest = example_gen.run_example_gen(
        "coco", out_dir, config, train_annotations=paths["train_annotations"],
        train_images=paths["train_images"], eval_annotations=paths["eval_annotations"],
        eval_images=paths["eval_images"], beam_args=IN_MEMORY)
    return out_dir, manifest, paths


def test_record_counts_follow_selection_rules(coco_run):
    out_dir, manifest, paths = coco_run
    for split in ("train", "eval"):
        expected, data = expected_coco_persons(paths[f"{split}_annotations"])
        records, _ = read_split(out_dir, split, 17)
        got = sorted(zip(records["image/id"].tolist(), records["annotation/id"].tolist()))
        assert got == expected
        assert manifest["splits"][split] == len(expected)
    assert manifest["splits"] == {"train": 86, "eval": 12}  # the READMEs' numbers
    assert manifest["skipped_by_split"]["train"] == {"crowd": 5, "no_keypoints": 56}
    assert manifest["skipped_by_split"]["eval"] == {"no_keypoints": 2}
    on_disk = json.load(open(os.path.join(out_dir, "manifest.json"), encoding="utf-8"))
    assert on_disk == manifest
    assert manifest["input_size"] == [256, 192] and manifest["heatmap_size"] == [64, 48]
    assert manifest["sigma"] == 2.0 and manifest["schema_version"] == features.SCHEMA_VERSION
    assert len(manifest["content_hash"]) == 64
    assert manifest["images_read"] == {"train": 28, "eval": 4}
    assert not [name for name in os.listdir(os.path.dirname(out_dir)) if ".tmp-" in name]


def test_records_roundtrip_heatmaps_and_image_frame(coco_run, config):
    out_dir, _, paths = coco_run
    codec = HeatmapCodec.from_config(config)
    for split in ("train", "eval"):
        records, _ = read_split(out_dir, split, 17)
        _, data = expected_coco_persons(paths[f"{split}_annotations"])
        annotations = {ann["id"]: ann for ann in data["annotations"]}
        heatmaps = features.decode_heatmaps_tf(tf.constant(records["heatmaps/encoded"]), (64, 48), 17).numpy()
        decoded, _ = codec.decode(heatmaps)
        crop = records["keypoints/crop"]
        weight = records["target_weight"]
        visibility = records["keypoints/visibility"]
        in_map = coordinates.crop_to_heatmap(crop, (256, 192), (64, 48))
        inside = (weight > 0) & np.all((in_map >= 0) & (in_map <= np.array([47, 63])), axis=-1)
        error = np.linalg.norm(decoded - crop, axis=-1)
        assert inside.sum() > 0.9 * (weight > 0).sum()
        assert error[inside].mean() < 0.01, error[inside].mean()
        # The storage format itself adds almost nothing over float32 targets.
        reference, _ = codec.decode(codec.encode(crop, visibility)[0])
        assert np.abs(decoded - reference)[weight > 0].max() < 1e-3
        # Crop -> image gives back the annotation (0-based COCO frame).
        back = coordinates.crop_to_image(crop, records["bbox/center"], records["bbox/scale"], (256, 192))
        for index, ann_id in enumerate(records["annotation/id"]):
            raw = np.asarray(annotations[ann_id]["keypoints"], dtype=np.float64).reshape(17, 3)
            labelled = raw[:, 2] > 0
            np.testing.assert_array_equal(visibility[index], raw[:, 2].astype(np.int64))
            assert np.abs(back[index][labelled] - raw[labelled, :2]).max() < 0.05
            np.testing.assert_allclose(records["keypoints/image"][index][labelled], raw[labelled, :2], atol=1e-3)
            assert records["person/area"][index] == pytest.approx(annotations[ann_id]["area"], rel=1e-6)
        assert np.all(records["bbox/score"] == 1.0)
        # Window: input aspect ratio, contains the padded box.
        scale = records["bbox/scale"]
        np.testing.assert_allclose(scale[:, 0] / scale[:, 1], 192 / 256, rtol=1e-5)
        image = tf.io.decode_jpeg(records["image/encoded"][0]).numpy()
        assert image.shape == (256, 192, 3) and image.std() > 5


def test_detector_boxes_one_record_per_box(shared_data, config, tmp_path):
    paths = _paths(shared_data)
    threshold = 0.5
    det_config = example_gen.default_config("coco", {"data": {"det_score_threshold": threshold}})
    manifest = example_gen.run_example_gen(
        "coco", str(tmp_path / "det"), det_config, eval_annotations=paths["eval_annotations"],
        eval_images=paths["eval_images"], det_file=paths["det_file"], beam_args=IN_MEMORY)
    with open(paths["det_file"], encoding="utf-8") as handle:
        detections = json.load(handle)
    expected = sorted((det["image_id"], round(det["score"], 6)) for det in detections
                      if det["category_id"] == 1 and det["score"] >= threshold)
    assert 0 < len(expected) < len(detections)
    records, _ = read_split(str(tmp_path / "det"), "eval", 17)
    got = sorted(zip(records["image/id"].tolist(), np.round(records["bbox/score"].astype(np.float64), 6)))
    assert len(got) == len(expected) == manifest["splits"]["eval"]
    assert [image for image, _ in got] == [image for image, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-6)
    assert np.all(records["annotation/id"] == -1)
    assert np.all(records["keypoints/visibility"] == 0) and np.all(records["target_weight"] == 0)
    assert np.all(records["keypoints/crop"] == 0)
    boxes = {(det["image_id"], round(det["score"], 6)): det["bbox"] for det in detections}
    for image_id, score, area in zip(records["image/id"], records["bbox/score"], records["person/area"]):
        box = boxes[(int(image_id), round(float(score), 6))]
        assert area == pytest.approx(box[2] * box[3], rel=1e-5)
    assert manifest["skipped"]["det_score_below_threshold"] == len(detections) - len(expected)
    assert manifest["box_source"] == {"eval": "detector"}


def test_mpii_matlab_frame_center_and_scale(shared_data, tmp_path):
    paths = _paths(shared_data)
    mpii_config = example_gen.default_config("mpii")
    manifest = example_gen.run_example_gen(
        "mpii", str(tmp_path / "mpii"), mpii_config, eval_annotations=paths["mpii_annotations"],
        eval_images=paths["mpii_images"], beam_args=IN_MEMORY)
    assert manifest["splits"] == {"eval": 2} and manifest["input_size"] == [256, 256]
    records, _ = read_split(str(tmp_path / "mpii"), "eval", 16)
    with open(paths["mpii_annotations"], encoding="utf-8") as handle:
        rows = json.load(handle)
    codec = HeatmapCodec.from_config(mpii_config)
    decoded, _ = codec.decode(features.decode_heatmaps_tf(
        tf.constant(records["heatmaps/encoded"]), (64, 64), 16).numpy())
    for index, row_index in enumerate(records["annotation/id"]):
        row = rows[row_index]
        assert records["image/id"][index] == int(row["image"].split(".")[0])
        joints = np.asarray(row["joints"]) - 1.0  # MATLAB 1-based -> our 0-based frame
        labelled = np.asarray(row["joints_vis"]) > 0
        np.testing.assert_allclose(records["keypoints/image"][index][labelled], joints[labelled], atol=1e-3)
        assert np.all(records["keypoints/visibility"][index][~labelled] == 0)
        # HRNet's rule: c_y += 15 s, window 200 s * 1.25, then -1 for the 0-based frame.
        s = row["scale"]
        np.testing.assert_allclose(records["bbox/center"][index],
                                   [row["center"][0] - 1, row["center"][1] + 15 * s - 1], atol=1e-3)
        np.testing.assert_allclose(records["bbox/scale"][index], [250 * s, 250 * s], rtol=1e-5)
        back = coordinates.crop_to_image(records["keypoints/crop"][index], records["bbox/center"][index],
                                         records["bbox/scale"][index], (256, 256))
        assert np.abs(back[labelled] - joints[labelled]).max() < 0.05
        weight = records["target_weight"][index] > 0
        assert np.linalg.norm(decoded[index] - records["keypoints/crop"][index], axis=-1)[weight].mean() < 0.01
    assert (records["image/width"].tolist(), records["image/height"].tolist()) in (
        ([854, 1280], [480, 720]), ([1280, 854], [720, 480]))


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------

def _patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrites the SOF header of a JPEG to claim another size (a decompression bomb)."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            patched = bytearray(data)
            patched[at + 5:at + 7] = height.to_bytes(2, "big")
            patched[at + 7:at + 9] = width.to_bytes(2, "big")
            return bytes(patched)
    raise AssertionError("no SOF marker")


@pytest.fixture(scope="module")
def bad_dataset(shared_data, tmp_path_factory):
    paths = _paths(shared_data)
    root = tmp_path_factory.mktemp("bad")
    images = root / "images"
    images.mkdir()
    data = json.load(open(paths["eval_annotations"], encoding="utf-8"))
    for image in data["images"]:
        os.symlink(os.path.join(paths["eval_images"], image["file_name"]), images / image["file_name"])
    source = open(os.path.join(paths["eval_images"], "000000000785.jpg"), "rb").read()
    (images / "truncated.jpg").write_bytes(source[: len(source) // 2])
    (images / "corrupt.jpg").write_bytes(b"definitely not an image" * 50)
    (images / "bomb.jpg").write_bytes(_patch_jpeg_size(source, 40000, 40000))
    os.symlink(os.path.join(paths["eval_images"], "000000000785.jpg"), images / "mismatch.jpg")
    template = next(ann for ann in data["annotations"] if ann["image_id"] == 785)
    bad_images = {  # file name -> (id, width, height)
        "truncated.jpg": (900001, 640, 425), "corrupt.jpg": (900002, 640, 425), "bomb.jpg": (900003, 640, 425),
        "missing.jpg": (900004, 640, 425), "../../etc/passwd": (900005, 640, 425),
        "mismatch.jpg": (900006, 100, 100)}
    next_id = 800000
    for file_name, (image_id, width, height) in bad_images.items():
        data["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        next_id += 1
        data["annotations"].append(dict(template, id=next_id, image_id=image_id))
    extra = {
        "unknown_image": dict(template, id=810001, image_id=424242),
        "invalid_box": dict(template, id=810002, bbox=[10.0, 10.0, 0.0, 50.0]),
        "box_outside_image": dict(template, id=810003, bbox=[5000.0, 5000.0, 80.0, 90.0]),
        "malformed_annotation": dict(template, id=810004, keypoints="not a list"),
    }
    outside = list(template["keypoints"])
    outside[0] = 640 + 30.0  # joint 0 (nose) to the right of the 640-wide image
    extra["keypoint_outside_image"] = dict(template, id=810005, keypoints=outside)
    data["annotations"].extend(extra.values())
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps(data))
    return {"annotations": str(annotations), "images": str(images), "root": root}


def test_bad_inputs_are_skipped_and_counted(bad_dataset, config, tmp_path):
    out_dir = str(tmp_path / "out")
    manifest = example_gen.run_example_gen(
        "coco", out_dir, config, eval_annotations=bad_dataset["annotations"],
        eval_images=bad_dataset["images"], beam_args=IN_MEMORY)
    skipped = manifest["skipped"]
    expected = {"missing_image": 1, "corrupt_image": 2, "image_too_large": 1, "unsafe_file_name": 1,
                "image_size_mismatch": 1, "unknown_image": 1, "invalid_box": 1, "box_outside_image": 1,
                "malformed_annotation": 1, "keypoint_outside_image": 1, "no_keypoints": 2}
    assert skipped == expected
    # The 12 good persons plus the one that lost a joint outside the image.
    assert manifest["splits"] == {"eval": 13}
    lines = [json.loads(line) for line in open(os.path.join(out_dir, "dead_letter.jsonl"), encoding="utf-8")]
    assert sorted(entry["reason"] for entry in lines) == sorted(
        reason for reason, count in expected.items() if reason != "no_keypoints" for _ in range(count))
    by_reason = {entry["reason"]: entry for entry in lines}
    assert by_reason["unsafe_file_name"]["file_name"] == "../../etc/passwd"
    assert "truncated" in " ".join(entry.get("message", "") for entry in lines if entry["reason"] == "corrupt_image")
    assert "max_image_pixels" in by_reason["image_too_large"]["message"]
    assert by_reason["keypoint_outside_image"]["joints"] == [0]
    records, _ = read_split(out_dir, "eval", 17)
    index = list(records["annotation/id"]).index(810005)
    assert records["keypoints/visibility"][index][0] == 0 and records["target_weight"][index][0] == 0
    assert records["keypoints/visibility"][index][1:].min() > 0


@pytest.mark.parametrize("case", ["malformed_json", "missing_file", "empty_dataset", "all_images_bad"])
def test_fatal_inputs_fail_without_publishing(case, bad_dataset, shared_data, config, tmp_path):
    paths = _paths(shared_data)
    annotations, images = paths["eval_annotations"], paths["eval_images"]
    if case == "malformed_json":
        annotations = str(tmp_path / "broken.json")
        open(annotations, "w").write('{"images": [')
    elif case == "missing_file":
        annotations = str(tmp_path / "nope.json")
    elif case == "empty_dataset":
        annotations = str(tmp_path / "empty.json")
        open(annotations, "w").write(json.dumps({"images": [], "annotations": [], "categories": []}))
    else:
        data = json.load(open(bad_dataset["annotations"], encoding="utf-8"))
        data["annotations"] = [ann for ann in data["annotations"] if ann["image_id"] >= 900001]
        annotations = str(tmp_path / "only_bad.json")
        open(annotations, "w").write(json.dumps(data))
        images = bad_dataset["images"]
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError) as error:
        example_gen.run_example_gen("coco", str(out_dir), config, eval_annotations=annotations,
                                    eval_images=images, beam_args=IN_MEMORY)
    message = str(error.value)
    assert {"malformed_json": "not valid JSON", "missing_file": "not found", "empty_dataset": "no person",
            "all_images_bad": "no records"}[case] in message
    assert not out_dir.exists()
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]


def test_argument_validation(config, tmp_path):
    with pytest.raises(ValueError, match="dataset"):
        example_gen.run_example_gen("coco", str(tmp_path), dict(config, dataset="mpii"),
                                    eval_annotations="a.json", eval_images="images")
    with pytest.raises(ValueError, match="at least one split"):
        example_gen.run_example_gen("coco", str(tmp_path), config)
    with pytest.raises(ValueError, match="together"):
        example_gen.run_example_gen("coco", str(tmp_path), config, train_annotations="a.json")
    with pytest.raises(ValueError, match="det_file"):
        example_gen.run_example_gen("coco", str(tmp_path), config, train_annotations="a.json",
                                    train_images="images", det_file="d.json")


def test_cli_exit_code_and_message(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2")
    code = example_gen.main(["--dataset", "mpii", "--eval-annotations", str(broken), "--eval-images",
                             str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------
# Core functions (no Beam)
# --------------------------------------------------------------------------

def test_safe_join_rejects_traversal():
    assert ingest_core.safe_join("gs://bucket/images", "a/b.jpg") == "gs://bucket/images/a/b.jpg"
    for name in ("../../etc/passwd", "/etc/passwd", "a/../../b.jpg", "..", "", None, "a\\..\\b", "x\x00.jpg",
                 "http://evil/x.jpg"):
        assert ingest_core.safe_join("/data/images", name) is None, name


def test_clip_boxes_reasons():
    boxes = [[-10, -10, 50, 40], [10, 10, 0, 5], [700, 10, 20, 20], [float("nan"), 0, 1, 1]]
    clipped, reason = ingest_core.clip_boxes(boxes, width=640, height=480)
    np.testing.assert_allclose(clipped[0], [0, 0, 40, 30])
    assert list(reason) == [None, "invalid_box", "box_outside_image", "invalid_box"]


def test_decode_image_guards(shared_data):
    data = open(os.path.join(_paths(shared_data)["eval_images"], "000000000785.jpg"), "rb").read()
    image = ingest_core.decode_image(data, max_pixels=10**8)
    assert image.shape == (425, 640, 3) and image.dtype == np.uint8
    with pytest.raises(ingest_core.ImageError) as error:
        ingest_core.decode_image(data, max_pixels=640 * 425 - 1)
    assert error.value.reason == "image_too_large"
    with pytest.raises(ingest_core.ImageError) as error:
        ingest_core.decode_image(data[:-2000], max_pixels=10**8)
    assert error.value.reason == "corrupt_image"


def test_heatmap_storage_is_exact_and_rejects_out_of_range():
    rng = np.random.default_rng(0)
    heatmaps = rng.uniform(0, 1, (8, 6, 3)).astype(np.float32)
    data = features.encode_heatmaps(heatmaps)
    assert len(data) == heatmaps.size * 2
    restored = features.decode_heatmaps(data, (8, 6), 3)
    assert np.abs(restored - heatmaps).max() <= 0.5 / 65535 + 1e-7
    restored_tf = features.decode_heatmaps_tf(tf.constant([data]), (8, 6), 3).numpy()[0]
    np.testing.assert_array_equal(restored_tf, restored)
    # Joint-major storage: the first H*W values are joint 0's map.
    first = np.frombuffer(data, dtype="<u2")[:48].reshape(8, 6)
    np.testing.assert_array_equal(first, np.rint(heatmaps[..., 0] * 65535))
    batch = features.decode_heatmaps_tf(tf.constant([[data, data]]), (8, 6), 3).numpy()
    assert batch.shape == (1, 2, 8, 6, 3)
    np.testing.assert_array_equal(batch[0, 1], restored)
    with pytest.raises(ValueError, match="0, 1"):
        features.encode_heatmaps(heatmaps * 2.0)


# --------------------------------------------------------------------------
# Determinism and multi-processing
# --------------------------------------------------------------------------

@pytest.mark.slow
def test_multi_processing_is_byte_identical(shared_data, config, coco_run, tmp_path):
    out_dir, manifest, paths = coco_run
    two = str(tmp_path / "two")
    shard_config = example_gen.default_config("coco", {"data": {"num_shards": 3}})
    second = example_gen.run_example_gen(
        "coco", two, shard_config, eval_annotations=paths["eval_annotations"], eval_images=paths["eval_images"],
        beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    again = str(tmp_path / "again")
    third = example_gen.run_example_gen(
        "coco", again, shard_config, eval_annotations=paths["eval_annotations"], eval_images=paths["eval_images"],
        beam_args=IN_MEMORY)
    names = sorted(os.listdir(os.path.join(two, "Split-eval")))
    assert names == [f"data_tfrecord-{i:05d}-of-00003.gz" for i in range(3)]
    for name in names:
        assert open(os.path.join(two, "Split-eval", name), "rb").read() == open(
            os.path.join(again, "Split-eval", name), "rb").read()
    assert second == third
    # Same records as the 1-shard run, in sorted order within each shard.
    _, one_shard = read_split(out_dir, "eval", 17)
    _, three_shards = read_split(two, "eval", 17)
    assert sorted(one_shard) == sorted(three_shards)


def test_cli_success_passes_beam_flags_through(shared_data, tmp_path, capsys):
    paths = _paths(shared_data)
    out_dir = tmp_path / "cli"
    code = example_gen.main(["--dataset", "mpii", "--eval-annotations", paths["mpii_annotations"],
                             "--eval-images", paths["mpii_images"], "--out", str(out_dir), "--num-shards", "2",
                             "--direct_running_mode=in_memory"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["splits"] == {"eval": 2}
    assert sorted(os.listdir(out_dir / "Split-eval")) == [
        "data_tfrecord-00000-of-00002.gz", "data_tfrecord-00001-of-00002.gz"]
    manifest = json.load(open(out_dir / "manifest.json", encoding="utf-8"))
    assert manifest["num_shards"] == {"eval": 2} and manifest["dataset"] == "mpii"

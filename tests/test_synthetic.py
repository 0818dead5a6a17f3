"""Tests of the embedded synthetic dataset (pipeline/synthetic.py)."""
import contextlib
import io
import json
import os

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO as CocoApi

from pipeline import synthetic
from schemas.keypoints import COCO

SMALL = synthetic.SyntheticSpec(num_train_images=6, num_val_images=3, seed=3)


def _files(root):
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = handle.read()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    return root, synthetic.generate_dataset(root, SMALL)


def test_deterministic_bytes(dataset, tmp_path):
    root, info = dataset
    again = synthetic.generate_dataset(str(tmp_path), SMALL)
    assert again["content_hash"] == info["content_hash"]
    first, second = _files(root), _files(str(tmp_path))
    first.pop("dataset_info.json"), second.pop("dataset_info.json")   # holds absolute paths
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)
    other = synthetic.generate_dataset(str(tmp_path / "other"),
                                       synthetic.SyntheticSpec(num_train_images=6, num_val_images=3, seed=4))
    assert other["content_hash"] != info["content_hash"]


def test_layout_and_coco_api(dataset):
    root, info = dataset
    assert info["splits"]["train"]["images"] == 6 and info["splits"]["val"]["images"] == 3
    for split, offset in (("train", synthetic.TRAIN_IMAGE_ID_OFFSET), ("val", synthetic.VAL_IMAGE_ID_OFFSET)):
        path = os.path.join(root, "annotations", f"person_keypoints_{split}.json")
        with contextlib.redirect_stdout(io.StringIO()):
            api = CocoApi(path)
        assert api.loadCats(1)[0]["keypoints"] == list(COCO.joint_names)
        image_ids = api.getImgIds()
        assert len(image_ids) == info["splits"][split]["images"]
        people = 0
        for image_id in image_ids:
            assert image_id > offset
            meta = api.loadImgs(image_id)[0]
            image = cv2.imread(os.path.join(root, "images", split, meta["file_name"]))
            assert image.shape == (meta["height"], meta["width"], 3)
            annotations = api.loadAnns(api.getAnnIds(imgIds=image_id))
            assert SMALL.min_people <= len(annotations) <= SMALL.max_people
            people += len(annotations)
        assert people == info["splits"][split]["people"]


def test_keypoint_labels_are_consistent(dataset):
    root, _ = dataset
    with open(os.path.join(root, "annotations", "person_keypoints_train.json")) as handle:
        data = json.load(handle)
    height, width = SMALL.image_size
    all_visibility = []
    for annotation in data["annotations"]:
        keypoints = np.asarray(annotation["keypoints"], np.float64).reshape(COCO.num_joints, 3)
        visibility = keypoints[:, 2]
        all_visibility.append(visibility)
        assert annotation["num_keypoints"] == int(np.count_nonzero(visibility))
        # Unlabelled joints are (0, 0); labelled ones lie inside the image and near the box.
        assert np.all(keypoints[visibility == 0, :2] == 0)
        labelled = keypoints[visibility > 0, :2]
        assert np.all((labelled >= 0) & (labelled <= [width - 1, height - 1]))
        x, y, w, h = annotation["bbox"]
        assert w > 0 and h > 0 and 0 < annotation["area"] <= w * h
        assert np.all((labelled >= [x - 2, y - 2]) & (labelled <= [x + w + 2, y + h + 2]))
        # Front-facing figures: the person's left shoulder/hip is on the image's right.
        for left, right in ((5, 6), (11, 12)):
            if visibility[left] and visibility[right]:
                assert keypoints[left, 0] > keypoints[right, 0]
        assert annotation["segmentation"] and len(annotation["segmentation"][0]) >= 6
    all_visibility = np.concatenate(all_visibility)
    # All three label kinds occur, most joints are visible.
    counts = np.bincount(all_visibility.astype(int), minlength=3)
    assert counts[2] > 0.7 * all_visibility.size and counts[1] > 0


def test_occlusion_labels():
    # Visibility 1 comes from figures drawn later or from rectangles: without
    # rectangles the last-drawn figure is never occluded, the others sometimes are;
    # with rectangles every image has some occluded joint somewhere.
    rng = np.random.default_rng(5)
    no_rectangles = synthetic.SyntheticSpec(occluder_prob=0.0, min_people=3, max_people=3)
    occluded_by_figures = 0
    for _ in range(6):
        image, people = synthetic.render_image(rng, no_rectangles)
        assert image.dtype == np.uint8 and image.shape == (*no_rectangles.image_size, 3)
        assert len(people) == 3
        assert not np.any(people[-1]["visibility"] == 1)
        occluded_by_figures += sum(int(np.sum(person["visibility"] == 1)) for person in people[:-1])
    assert occluded_by_figures > 0
    with_rectangles = synthetic.SyntheticSpec(occluder_prob=1.0, min_people=1, max_people=1)
    occluded = [int(np.sum(synthetic.render_image(rng, with_rectangles)[1][0]["visibility"] == 1))
                for _ in range(6)]
    assert sum(occluded) > 0


def test_detections(dataset):
    root, info = dataset
    with open(info["paths"]["detections"]) as handle:
        detections = json.load(handle)
    with open(info["paths"]["val_annotations"]) as handle:
        ground_truth = json.load(handle)
    assert len(detections) == info["splits"]["val"]["num_detections"] >= len(ground_truth["annotations"])
    for detection in detections:
        assert set(detection) == {"image_id", "category_id", "bbox", "score"}
        assert 0 < detection["score"] <= 1 and detection["bbox"][2] > 0 and detection["bbox"][3] > 0
    # Every person has a high-scoring box overlapping its ground-truth box.
    for annotation in ground_truth["annotations"]:
        x, y, w, h = annotation["bbox"]
        best = 0.0
        for detection in (d for d in detections if d["image_id"] == annotation["image_id"]):
            dx, dy, dw, dh = detection["bbox"]
            inter = max(0, min(x + w, dx + dw) - max(x, dx)) * max(0, min(y + h, dy + dh) - max(y, dy))
            best = max(best, inter / (w * h + dw * dh - inter))
        assert best > 0.7


def test_reuse_and_validation(dataset, tmp_path):
    root, info = dataset
    again = synthetic.generate_dataset(root, SMALL)
    assert again["reused"] and again["content_hash"] == info["content_hash"]
    with pytest.raises(ValueError, match="num_train_images"):
        synthetic.generate_dataset(str(tmp_path), synthetic.SyntheticSpec(num_train_images=0))
    with pytest.raises(ValueError, match="image_size"):
        synthetic.generate_dataset(str(tmp_path), synthetic.SyntheticSpec(image_size=(32, 32)))
    with pytest.raises(ValueError, match="min_people"):
        synthetic.generate_dataset(str(tmp_path), synthetic.SyntheticSpec(min_people=3, max_people=2))

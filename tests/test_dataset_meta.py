"""Dataset meta files: loading (YAML/JSON, the shared sets as they are), validation, annotation checks."""
import copy
import json
import os

import numpy as np
import pytest

from pose import config as config_lib
from schemas import dataset_meta
from schemas.dataset_meta import DatasetMetaError
from schemas.keypoints import COCO, MPII, SCHEMAS, get_schema

DATA = "/work/shared/data"
SETS = {  # folder: (annotation file, joints, flip pairs)
    "crowdpose_mmpose2": ("test_crowdpose.json", 14, 6),
    "onehand10k_mmpose4": ("test_onehand10k.json", 21, 0),
    "ap10k_mmpose2": ("test_ap10k.json", 17, 7),
}

GOOD = {
    "dataset_name": "toy",
    "joint_names": ["a", "left_x", "right_x", "b"],
    "flip_pairs": [[1, 2]],
    "skeleton": [[0, 1], [0, 2], [0, 3]],
    "sigmas": [0.05, 0.06, 0.06, 0.07],
    "joint_weights": [1.0, 1.0, 1.0, 2.0],
}


def _write(tmp_path, meta, name="meta.json"):
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(meta))
    else:
        import yaml

        path.write_text(yaml.safe_dump(meta))
    return str(path)


@pytest.mark.parametrize("folder", sorted(SETS))
def test_shared_metas_load_as_they_are_and_match_their_annotations(folder):
    annotations, joints, pairs = SETS[folder]
    schema = dataset_meta.load_meta(os.path.join(DATA, folder, "dataset_meta.json"))
    assert schema.num_joints == joints and len(schema.flip_pairs) == pairs
    index = schema.flip_index
    np.testing.assert_array_equal(index[index], np.arange(joints))
    with open(os.path.join(DATA, folder, annotations)) as handle:
        categories = dataset_meta.check_annotations(schema, json.load(handle), annotations)
    assert categories == ([1] if folder != "ap10k_mmpose2" else list(range(1, 55)))
    bundled = get_schema(schema.name)  # the bundled meta agrees with the shared file on the layout
    assert bundled.joint_names == schema.joint_names and bundled.flip_pairs == schema.flip_pairs
    assert bundled.skeleton == schema.skeleton and bundled.oks_sigmas == schema.oks_sigmas
    assert bundled.joint_weights == schema.joint_weights or (schema.name == "onehand10k"
                                                             and set(schema.joint_weights) == {1.0})


def test_metric_defaults_and_identity_flip():
    hand = get_schema("onehand10k")
    assert hand.metric == "pck" and not hand.has_sigmas and not hand.has_half_body
    np.testing.assert_array_equal(hand.flip_index, np.arange(21))
    with pytest.raises(ValueError, match="no OKS sigmas"):
        hand.sigmas()
    assert get_schema("ap10k").metric == "oks" and get_schema("ap10k").category_ids is None
    assert COCO.metric == "oks" and MPII.metric == "pckh" and dict(MPII.pckh_groups)["Wrist"] == (10, 15)
    assert set(SCHEMAS) == {"coco", "mpii", "crowdpose", "ap10k", "onehand10k"}


def test_yaml_and_json_give_the_same_schema_and_hash(tmp_path):
    from_json = dataset_meta.load_meta(_write(tmp_path, GOOD, "m.json"))
    from_yaml = dataset_meta.load_meta(_write(tmp_path, GOOD, "m.yaml"))
    assert from_json == from_yaml and from_json.hash == from_yaml.hash
    by_names = dict(GOOD, flip_pairs=[["left_x", "right_x"]])
    assert dataset_meta.from_mapping(by_names).flip_pairs == ((1, 2),)
    assert dataset_meta.from_mapping(dataset_meta.from_mapping(GOOD).to_meta()) == from_json
    changed = dict(GOOD, skeleton=[[0, 1]])
    assert dataset_meta.from_mapping(changed).hash != from_json.hash
    assert COCO.hash != get_schema("ap10k").hash


MALFORMED = [
    ({"joint_names": ["a", "left_x", "left_x", "b"]}, "joint_names", "unique"),
    ({"flip_pairs": [[1, 4]]}, "flip_pairs", r"joint 4 is not an index in \[0, 3\]"),
    ({"flip_pairs": [[1, 2], [2, 3]]}, "flip_pairs", "not an involution"),
    ({"flip_pairs": [["left_x", "right_y"]]}, "flip_pairs", "'right_y' is not one of the joint_names"),
    ({"flip_pairs": [[1, 1]]}, "flip_pairs", "to itself"),
    ({"sigmas": [0.05, 0.06, 0.06]}, "sigmas", "has 3 values but joint_names has 4 joints"),
    ({"sigmas": [0.05, 0.06, 0.0, 0.1]}, "sigmas", "> 0"),
    ({"skeleton": [[0, 9]]}, "skeleton", "joint 9"),
    ({"joint_weights": [1.0, 1.0]}, "joint_weights", "has 2 values but joint_names has 4"),
    ({"metric": "ap"}, "metric", "'ap'"),
    ({"sigmas": [], "metric": "oks"}, "metric", "needs sigmas"),
    ({"flip_pair": []}, "flip_pair", "unknown key"),
    ({"dataset_name": "my set"}, "dataset_name", "letters"),
    ({"upper_body": [0, 7]}, "upper_body", "joint 7"),
]


@pytest.mark.parametrize("change, field, message", MALFORMED, ids=[m[1] + ":" + m[2] for m in MALFORMED])
def test_each_malformed_kind_is_one_line_naming_file_and_field(tmp_path, change, field, message):
    meta = dict(copy.deepcopy(GOOD), **change)
    path = _write(tmp_path, meta)
    with pytest.raises(DatasetMetaError, match=message) as error:
        dataset_meta.load_meta(path)
    text = str(error.value)
    assert "\n" not in text and text.startswith(path) and repr(field) in text


def test_missing_flip_pairs_and_bad_syntax(tmp_path):
    meta = {k: v for k, v in GOOD.items() if k != "flip_pairs"}
    with pytest.raises(DatasetMetaError, match="'flip_pairs': is required"):
        dataset_meta.load_meta(_write(tmp_path, meta))
    bad = tmp_path / "bad.json"
    bad.write_text('{"dataset_name": "x", "sigmas": [NaN]}')
    with pytest.raises(DatasetMetaError, match="bad.json: not a valid JSON"):
        dataset_meta.load_meta(str(bad))


def test_annotation_file_with_another_joint_count_names_both_counts():
    with open(os.path.join(DATA, "crowdpose_mmpose2", "test_crowdpose.json")) as handle:
        crowdpose = json.load(handle)
    with pytest.raises(DatasetMetaError, match=r"category 1 \('person'\) has 14 keypoint names but the dataset meta .coco. has 17"):
        dataset_meta.check_annotations(COCO, crowdpose, "test_crowdpose.json")
    no_names = copy.deepcopy(crowdpose)
    for category in no_names["categories"]:
        del category["keypoints"]
    with pytest.raises(DatasetMetaError, match=r"42 keypoint values \(14 joints\) .* 17 joints \(51 values\)"):
        dataset_meta.check_annotations(COCO, no_names, "test_crowdpose.json")
    reordered = copy.deepcopy(crowdpose)
    names = reordered["categories"][0]["keypoints"]
    names[0], names[1] = names[1], names[0]
    schema = dataset_meta.from_mapping(dict(get_schema("crowdpose").to_meta(), joint_names=list(
        crowdpose["categories"][0]["keypoints"])))
    with pytest.raises(DatasetMetaError, match="another order"):
        dataset_meta.check_annotations(schema, reordered, "x.json")
    ap10k = get_schema("ap10k")
    named = dataset_meta.from_mapping(dict(ap10k.to_meta(), category_ids=[1, 99]))
    with open(os.path.join(DATA, "ap10k_mmpose2", "test_ap10k.json")) as handle:
        with pytest.raises(DatasetMetaError, match=r"categories \[99\]"):
            dataset_meta.check_annotations(named, json.load(handle), "test_ap10k.json")


def test_config_key_sets_the_dataset_and_resolves_relative_to_the_config(tmp_path):
    meta_path = _write(tmp_path, GOOD, "toy.yaml")
    config_path = tmp_path / "exp.yaml"
    config_path.write_text("dataset_meta: toy.yaml\nmodel: {name: simplebaseline}\n")
    config = config_lib.load_config(str(config_path))
    assert config["dataset"] == "toy" and os.path.samefile(config["dataset_meta"], meta_path)
    assert dataset_meta.schema_for(config).num_joints == 4
    assert dataset_meta.schema_for({"dataset": "mpii"}) is MPII
    with pytest.raises(ValueError, match="'sigmas'"):
        config_lib.build_config({"dataset_meta": dict(GOOD, sigmas=[0.1])})
    with pytest.raises(ValueError, match="disagrees"):
        config_lib.build_config({"dataset": "mpii", "dataset_meta": GOOD})
    with pytest.raises(ValueError, match="unknown keypoint schema"):
        get_schema("toy")


def test_default_categories_are_those_with_the_meta_joint_count():
    dataset = {"categories": [{"id": 3, "keypoints": ["a"] * 5}, {"id": 4, "keypoints": ["a"] * 4}],
               "annotations": []}
    assert dataset_meta.check_annotations(dataset_meta.from_mapping(GOOD), dataset, "f.json") == [4]
    with pytest.raises(DatasetMetaError, match=r"no category has 17 keypoints .* have \[4, 5\]"):
        dataset_meta.check_annotations(get_schema("ap10k"), dataset, "f.json")


def test_serving_meta_round_trip(tmp_path):
    hand = get_schema("onehand10k")
    assert dataset_meta.read_serving_meta(str(tmp_path)) is None  # an export made before metas
    path = dataset_meta.write_serving_meta(hand, str(tmp_path))
    assert path.endswith("assets.extra/dataset_meta.json")
    carried = dataset_meta.read_serving_meta(str(tmp_path))
    assert carried == hand and carried.skeleton == hand.skeleton and carried.hash == hand.hash

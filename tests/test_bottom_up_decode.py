"""Bottom-up decoding (pose/bottom_up_decode_tf.py) and its serving export (trainer/export_bottom_up.py).

Targets come from D16's encoder (pose/bottom_up_codec.py), so every test here
is also a round trip encode -> decode. The oracle test encodes the ground truth
of the shared COCO samples and scores the decoded people with pycocotools.
"""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from pose import bottom_up_codec, bottom_up_decode_tf, codec_tf, coordinates
from pose.config import build_config
from schemas import bottom_up as layout
from schemas import serving
from schemas.keypoints import get_schema
from trainer import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO = get_schema("coco")

# A person template (x, y) in units of its size, COCO joint order, facing the viewer.
TEMPLATE = np.array([[0, -3], [-.4, -3.3], [.4, -3.3], [-.8, -3], [.8, -3], [-1.2, -2], [1.2, -2], [-1.5, -.8],
                     [1.5, -.8], [-1.6, .3], [1.6, .3], [-.8, .5], [.8, .5], [-.8, 2], [.8, 2], [-.8, 3.5],
                     [.8, 3.5]])


def _config(size=129, stride=4, **bottom_up):
    return build_config({"approach": "bottom_up", "data": {"input_size": [size, size], "heatmap_stride": stride},
                         "eval": {"flip_test": False}, "bottom_up": bottom_up}, name="decode_test")


def _person(cx, cy, scale, labelled=None):
    """(K, 3) keypoints (x, y input pixels, v) of the template at (cx, cy); ``labelled``: joints with v = 2."""
    visible = np.zeros(17) if labelled is not None else np.full(17, 2.0)
    if labelled is not None:
        visible[list(labelled)] = 2.0
    return np.concatenate([np.array([cx, cy]) + scale * TEMPLATE, visible[:, None]], axis=-1)


def _decode(targets, config):
    people = bottom_up_decode_tf.decode(tf.constant(np.asarray(targets)[None]), config)
    count = int(people["num_people"][0])
    return people["keypoints"].numpy()[0], people["person_scores"].numpy()[0], count


def _match(decoded, truth):
    """For every true person (K, 3) the decoded person whose labelled joints are nearest: index, max error."""
    labelled = truth[..., 2] > 0
    errors = np.linalg.norm(decoded[:, None, :, :2] - truth[None, :, :, :2], axis=-1)          # (D, T, K)
    worst = np.where(labelled[None], errors, 0.0).max(axis=-1)                                  # (D, T)
    return worst.argmin(axis=0), worst.min(axis=0)


def test_refine_peaks_is_the_top_down_dark_step():
    """codec_tf.refine_peaks at each map's argmax gives codec_tf.decode's keypoints and scores."""
    rng = np.random.default_rng(0)
    centres = rng.uniform(3, 28, (2, 5, 2))
    heatmaps, _ = codec_tf.encode(tf.constant(centres), tf.ones([2, 5]), (32, 32), 2.0)
    keypoints, scores = codec_tf.decode(heatmaps, blur_kernel=5)
    flat = tf.reshape(tf.transpose(heatmaps, [0, 3, 1, 2]), [2, 5, -1])
    index = tf.argmax(flat, axis=-1, output_type=tf.int32)
    refined, values = codec_tf.refine_peaks(heatmaps, index % 32, index // 32, tf.tile(tf.range(5)[None], [2, 1]),
                                            blur_kernel=5)
    np.testing.assert_allclose(refined.numpy(), keypoints.numpy(), atol=1e-5)
    np.testing.assert_allclose(values.numpy(), scores.numpy(), atol=1e-6)
    np.testing.assert_allclose(refined.numpy(), centres, atol=0.02)


@pytest.mark.parametrize("hough_refine", [True, False])
def test_separate_people_decode_to_their_keypoints(hough_refine):
    config = _config(hough_refine=hough_refine)
    truth = np.stack([_person(30, 45, 6), _person(90, 40, 7), _person(64, 95, 5)])
    keypoints, scores, count = _decode(bottom_up_codec.encode(truth, config), config)
    assert count == 3
    assert np.all(np.diff(scores[:count]) <= 0) and np.all(scores[count:] == 0)
    assert np.all(keypoints[count:] == 0)
    index, worst = _match(keypoints[:count], truth)
    assert sorted(index) == [0, 1, 2]
    assert worst.max() < 0.1, worst                     # input pixels (4 input px per output px)
    assert np.all(keypoints[:count, :, 2] > 0.5)                 # heatmap maxima, sigma = 1 output px


def test_missing_joint_is_bridged_by_short_offsets():
    """A person without nose (the tree's hub) is still one person: the short-range refinement
    (PersonLab Sec. 3.2) finds the joints beyond the gap when they are within the disk."""
    config = _config()
    truth = np.stack([_person(40, 60, 7, labelled=[j for j in range(17) if j != 0]), _person(95, 60, 7)])
    keypoints, _, count = _decode(bottom_up_codec.encode(truth, config), config)
    assert count == 2
    index, worst = _match(keypoints[:count], truth)
    assert sorted(index) == [0, 1] and worst.max() < 0.1


def test_fragment_beyond_a_missing_joint_is_reattached_by_the_body_map():
    """Left elbow unlabelled and the wrist beyond the short-offset disk: the wrist comes out of the grouping as
    its own fragment, and the body map (person centre) attaches it back. A lone wrist elsewhere (a person of its
    own, at its own body peak) stays a person."""
    config = _config(size=161, short_radius=8.0)
    person = _person(60, 80, 9, labelled=[j for j in range(17) if j != 7])
    lone = _person(135, 40, 5, labelled=[9])
    targets = bottom_up_codec.encode(np.stack([person, lone]), config)
    keypoints, _, count = _decode(targets, config)
    assert count == 2
    index, worst = _match(keypoints[:count], np.stack([person, lone]))
    assert sorted(index) == [0, 1] and worst.max() < 0.1, worst
    # Without the body channel (no re-attachment) the wrist is a separate third "person".
    parts = layout.split_channels(tf.constant(targets[None]), "coco")
    settings = bottom_up_decode_tf.DecoderSettings.from_config(config)
    without = bottom_up_decode_tf.decode_parts(parts["heatmaps"], parts["short"], parts["mid"], None, settings)
    assert int(without["num_people"][0]) == 3


def test_zero_people_give_no_output():
    config = _config()
    for targets in (bottom_up_codec.encode(np.zeros((0, 17, 3)), config),
                    np.zeros((33, 33, layout.num_channels("coco")), np.float32)):
        keypoints, scores, count = _decode(targets, config)
        assert count == 0 and keypoints.shape == (30, 17, 3) and scores.shape == (30,)
        assert not keypoints.any() and not scores.any()


def test_more_people_than_max_people_keeps_the_best():
    """Seven people, N = 4: the four with the highest person scores (mean keypoint score; here the
    ones with the most labelled joints) are kept, best first."""
    config = _config(size=161, max_people=4)
    labelled_counts = [11, 17, 12, 16, 13, 15, 14]
    positions = [(25, 40), (70, 40), (120, 40), (25, 115), (70, 115), (120, 115), (140, 80)]
    truth = np.stack([_person(x, y, 4, labelled=range(n)) for (x, y), n in zip(positions, labelled_counts)])
    keypoints, scores, count = _decode(bottom_up_codec.encode(truth, config), config)
    assert count == 4 and keypoints.shape == (4, 17, 3)
    kept = [int(np.argmin([np.abs(keypoints[i, 0, :2] - truth[j, 0, :2]).max() for j in range(7)]))
            for i in range(4)]
    assert [labelled_counts[j] for j in kept] == [17, 16, 15, 14]
    assert np.all(np.diff(scores) < 0)


def _crowd(count, size, seed=0):
    """(count, 17, 3) people on a jittered grid filling the S x S input, input pixels, all labelled."""
    rng = np.random.default_rng(seed)
    columns = int(np.ceil(np.sqrt(count * 0.6)))
    rows = int(np.ceil(count / columns))
    cell = np.array([size / columns, size / rows])
    unit = min(cell[0] / 4.0, cell[1] / 8.0)
    centres = (np.stack(np.divmod(np.arange(count), columns), axis=-1)[:, ::-1] + 0.5) * cell
    centres = centres + rng.uniform(-0.1, 0.1, (count, 2)) * unit
    return np.stack([_person(x, y, unit * rng.uniform(0.85, 1.0)) for x, y in centres])


def _oks(decoded, truth):
    """(D, T) COCO OKS of decoded (D, K, 3) against true (T, K, 3) people (all joints labelled), input pixels;
    the area is 0.53 x the joints' box (components.metrics_coco.AREA_FROM_BOX_FACTOR)."""
    from components.metrics_coco import AREA_FROM_BOX_FACTOR

    extent = truth[..., :2].max(axis=1) - truth[..., :2].min(axis=1)
    area = AREA_FROM_BOX_FACTOR * extent[:, 0] * extent[:, 1]                                  # (T,)
    squared = np.sum((decoded[:, None, :, :2] - truth[None, :, :, :2]) ** 2, axis=-1)          # (D, T, K)
    variances = (2.0 * COCO.sigmas()) ** 2
    return np.exp(-squared / variances / (2.0 * area[None, :, None])).mean(axis=-1)


@pytest.mark.parametrize("max_people", [20, 50])
def test_a_crowd_larger_than_max_people_gives_whole_people(max_people):
    """Issue 22: 50 people, N = 20 or 50 (PersonLab's 401 / stride 8). The candidates per joint are not capped
    at N (5 of 20 people were chimeras with a neighbour's joints when they were): every decoded person is whole,
    OKS >= 0.95 to a distinct true person, best first."""
    config = _config(size=401, stride=8, max_people=max_people)
    assert config["bottom_up"]["max_candidates"] >= 50
    truth = _crowd(50, 401)
    keypoints, scores, count = _decode(bottom_up_codec.encode(truth, config), config)
    assert count == max_people
    assert np.all(keypoints[:count, :, 2] > 0.5)                                        # all 17 joints kept
    oks = _oks(keypoints[:count], truth)
    best = oks.max(axis=1)
    assert best.min() >= 0.95, np.sort(best)[:8]
    assert len(set(oks.argmax(axis=1).tolist())) == count                             # distinct true people
    assert np.all(np.diff(scores[:count]) <= 0)


def test_max_candidates_is_derived_and_validated():
    assert _config()["bottom_up"]["max_candidates"] == 64                               # max(2 x 30, 64)
    assert _config(max_people=40)["bottom_up"]["max_candidates"] == 80
    assert _config(max_people=4, max_candidates=4)["bottom_up"]["max_candidates"] == 4
    with pytest.raises(ValueError, match="bottom_up.max_candidates"):
        _config(max_people=20, max_candidates=10)
    with pytest.raises(ValueError, match="max_candidates"):
        bottom_up_decode_tf.DecoderSettings(dataset="coco", input_size=129, output_size=(33, 33), max_people=8,
                                            max_candidates=4)
    settings = bottom_up_decode_tf.DecoderSettings.from_config(_config(max_people=10, max_candidates=25))
    assert (settings.max_people, settings.max_candidates) == (10, 25)


def test_flipped_targets_decode_to_mirrored_people():
    config = _config()
    truth = np.stack([_person(35, 50, 6), _person(85, 62, 5)])
    truth[1, 9, 2] = 0                                       # asymmetric: one wrist unlabelled
    targets = bottom_up_codec.encode(truth, config)
    keypoints, scores, count = _decode(targets, config)
    flipped, flipped_scores, flipped_count = _decode(layout.flip_channels(targets[:, ::-1], "coco"), config)
    assert flipped_count == count == 2
    mirrored = flipped[:count][:, COCO.flip_index].copy()
    mirrored[..., 0] = 128.0 - mirrored[..., 0]               # x -> S - 1 - x
    order = [int(np.argmin(np.abs(mirrored[:, 0, :2] - keypoints[i, 0, :2]).sum(-1))) for i in range(count)]
    np.testing.assert_allclose(mirrored[order][..., :2], keypoints[:count, :, :2], atol=0.05)
    np.testing.assert_allclose(flipped_scores[:count][order], scores[:count], atol=1e-3)


def test_two_people_never_share_a_keypoint():
    """Two people whose left wrists coincide: the wrist peak goes to one of them only."""
    config = _config()
    left, right = _person(45, 60, 7), _person(75, 60, 7)
    right[9, :2] = left[9, :2] + 0.5                        # both left wrists at the same spot
    keypoints, _, count = _decode(bottom_up_codec.encode(np.stack([left, right]), config), config)
    assert count == 2
    radius = config["bottom_up"]["keypoint_nms_radius"]
    for joint in range(17):
        kept = keypoints[:count, joint, 2] > 0
        points = keypoints[:count, joint, :2][kept]
        if len(points) == 2:
            assert np.linalg.norm(points[0] - points[1]) > radius, joint
    assert (keypoints[:count, 9, 2] > 0).sum() == 1


def test_batch_decodes_like_single_images():
    config = _config()
    scenes = [np.stack([_person(40, 50, 6), _person(90, 70, 6)]), np.zeros((0, 17, 3)),
              np.stack([_person(64, 64, 8)])]
    targets = np.stack([bottom_up_codec.encode(scene, config) for scene in scenes])
    batch = bottom_up_decode_tf.decode(tf.constant(targets), config)
    for index, scene in enumerate(targets):
        single = bottom_up_decode_tf.decode(tf.constant(scene[None]), config)
        for name in ("keypoints", "person_scores", "num_people"):
            np.testing.assert_allclose(batch[name].numpy()[index], single[name].numpy()[0], atol=1e-4, err_msg=name)
    assert batch["num_people"].numpy().tolist() == [2, 0, 1]


def test_settings_validate():
    with pytest.raises(ValueError, match="nms_kernel"):
        bottom_up_decode_tf.DecoderSettings(dataset="coco", input_size=129, output_size=(33, 33), nms_kernel=2)
    with pytest.raises(ValueError, match="channels"):
        bottom_up_decode_tf.decode(tf.zeros([1, 33, 33, 5]), _config())


# --------------------------------------------------------------------------
# Serving export (trainer/export_bottom_up.py), both loaders and saved_model_cli
# --------------------------------------------------------------------------

class ConstantOutputs(keras.layers.Layer):
    """Test network: ignores the image and returns fixed bottom-up outputs (a non-trainable weight).

    With the encoded targets of a known scene it makes a model whose exported
    people are known exactly, so every step around the network (letterbox,
    decode, inverse affine, record parsing) is checked against the scene.
    """

    def __init__(self, outputs, **kwargs):
        super().__init__(**kwargs)
        self._outputs = np.asarray(outputs, np.float32)

    def build(self, input_shape):
        self.table = self.add_weight(shape=self._outputs.shape, trainable=False, name="table",
                                     initializer=keras.initializers.Constant(self._outputs))

    def call(self, images):
        return keras.ops.zeros_like(images[:, :1, :1, :1]) + self.table[None]


CHILD = r"""
import json, sys
import numpy as np
import tensorflow as tf
args = json.loads(sys.argv[1])
with open(args["image"], "rb") as handle:
    image = handle.read()
with open(args["record"], "rb") as handle:
    record = handle.read()
calls = {"predict": ("predict_image", {"image": image}), "serving": ("serving_default", {"examples": [record]}),
         "heatmaps": ("heatmaps", {"images": np.zeros([2, args["size"], args["size"], 3], np.float32)})}
out = {}
loaded = tf.saved_model.load(args["export_dir"])
for prefix, (signature, feeds) in calls.items():
    for name, value in loaded.signatures[signature](**{k: tf.constant(v) for k, v in feeds.items()}).items():
        out[f"{prefix}/{name}"] = value.numpy()
with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
    meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], args["export_dir"])
    for prefix, (signature, feeds) in calls.items():
        signature_def = meta_graph.signature_def[signature]
        fetches = {name: info.name for name, info in signature_def.outputs.items()}
        feed_dict = {signature_def.inputs[name].name: value for name, value in feeds.items()}
        for name, value in session.run(fetches, feed_dict).items():
            out[f"session/{prefix}/{name}"] = value
np.savez(args["outputs"], **out)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_data):
    """A constant-output model of COCO val image 196141's four people, exported and run in a fresh process."""
    config = _config(size=257)
    coco = os.path.join(shared_data, "coco_val2017_mmpose4")
    with open(os.path.join(coco, "person_keypoints_val2017_mmpose4.json"), encoding="utf-8") as handle:
        annotations = json.load(handle)
    image_id = 196141
    info = next(image for image in annotations["images"] if image["id"] == image_id)
    people = [a for a in annotations["annotations"] if a["image_id"] == image_id and a["num_keypoints"] > 0]
    truth = np.array([a["keypoints"] for a in people], np.float64).reshape(-1, 17, 3)
    affine = coordinates.letterbox_affine(info["height"], info["width"], 257)
    scene = truth.copy()
    scene[..., :2] = coordinates.apply_affine(truth[..., :2], affine)
    targets = bottom_up_codec.encode(scene, config)
    inputs = keras.Input((257, 257, 3))
    model = keras.Model(inputs, ConstantOutputs(targets)(inputs))
    directory = tmp_path_factory.mktemp("bottom_up_export")
    export_dir = str(directory / serving.SAVED_MODEL_DIR)
    export.export_serving_model(model, config, None, export_dir)      # trainer.export dispatches on approach
    image_path = os.path.join(coco, "images", f"{image_id:012d}.jpg")
    with open(image_path, "rb") as handle:
        image_bytes = handle.read()
    letterboxed = coordinates.warp_image(tf.io.decode_jpeg(image_bytes).numpy(), affine, (257, 257))
    record = layout.build_example({
        "dataset": "coco", "image/encoded": tf.io.encode_png(letterboxed).numpy(), "image/format": "png",
        "image/id": image_id, "image/height": info["height"], "image/width": info["width"], "input/size": 257,
        "affine": affine, "targets": targets, "mask": np.ones(targets.shape[:2]),
        "person/annotation_id": [a["id"] for a in people], "person/area": [a["area"] for a in people],
        "person/keypoints": scene}).SerializeToString()
    record_path = str(directory / "record.bin")
    with open(record_path, "wb") as handle:
        handle.write(record)
    outputs_path = str(directory / "outputs.npz")
    args = {"export_dir": export_dir, "image": image_path, "record": record_path, "outputs": outputs_path,
            "size": 257}
    subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], check=True, cwd=ROOT,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    return dict(config=config, model=model, targets=targets, truth=truth, export_dir=export_dir,
                image_path=image_path, directory=directory, outputs=dict(np.load(outputs_path)))


@pytest.mark.slow
def test_predict_image_returns_the_people_in_original_pixels(exported):
    outputs, truth = exported["outputs"], exported["truth"]
    count = int(outputs["predict/num_people"])
    assert count == len(truth)
    keypoints = outputs["predict/keypoints"]
    assert keypoints.shape == (30, 17, 3) and outputs["predict/person_scores"].shape == (30,)
    index, worst = _match(keypoints[:count], truth)
    assert sorted(index) == list(range(len(truth)))
    assert worst.max() < 1.0, worst                     # original pixels (2.5 per input pixel here)
    assert not keypoints[count:].any() and not outputs["predict/person_scores"][count:].any()
    # serving_default (the letterboxed record, mapped back through its affine) gives the same people.
    assert outputs["serving/num_people"].tolist() == [count]
    assert outputs["serving/image_id"].tolist() == [196141]
    np.testing.assert_allclose(outputs["serving/keypoints"][0], keypoints, atol=1e-3)
    np.testing.assert_allclose(outputs["serving/person_scores"][0], outputs["predict/person_scores"], atol=1e-5)
    np.testing.assert_allclose(outputs["heatmaps/outputs"], np.stack([exported["targets"]] * 2), atol=1e-6)


@pytest.mark.slow
def test_session_loader_and_saved_model_cli_match_the_tf2_loader(exported):
    outputs = exported["outputs"]
    session = {key[len("session/"):]: value for key, value in outputs.items() if key.startswith("session/")}
    tf2 = {key: value for key, value in outputs.items() if not key.startswith("session/")}
    assert set(session) == set(tf2)
    for key, value in tf2.items():
        assert session[key].dtype == value.dtype and session[key].shape == value.shape, key
        np.testing.assert_allclose(session[key], value, atol=1e-5, err_msg=key)
    command = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    command = command if os.path.exists(command) else shutil.which("saved_model_cli")
    assert command, "saved_model_cli not found next to the interpreter or on PATH"
    image_npy, out_dir = str(exported["directory"] / "image.npy"), str(exported["directory"] / "cli")
    with open(exported["image_path"], "rb") as handle:
        np.save(image_npy, np.array(handle.read()))
    result = subprocess.run([command, "run", "--dir", exported["export_dir"], "--tag_set", "serve",
                             "--signature_def", "predict_image", "--inputs", f"image={image_npy}",
                             "--outdir", out_dir, "--overwrite"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("keypoints", "person_scores", "num_people"):
        np.testing.assert_allclose(np.load(os.path.join(out_dir, f"{name}.npy")), outputs[f"predict/{name}"],
                                   atol=1e-5, err_msg=name)


def test_flip_test_averages_the_mirrored_output():
    """eval.flip_test: the mirrored run is mirrored back with flip_channels and averaged (in process)."""
    from trainer.export_bottom_up import BottomUpServingModule
    config = _config()
    config["eval"]["flip_test"] = True
    targets = bottom_up_codec.encode(np.stack([_person(40, 50, 6), _person(90, 70, 5)]), config)
    inputs = keras.Input((129, 129, 3))
    module = BottomUpServingModule(keras.Model(inputs, ConstantOutputs(targets)(inputs)), config)
    got = module.predict_outputs(tf.zeros([1, 129, 129, 3])).numpy()[0]
    np.testing.assert_allclose(got, 0.5 * (targets + layout.flip_channels(targets[:, ::-1], "coco")), atol=1e-6)


def test_export_rejects_a_model_of_the_wrong_layout(tmp_path):
    config = _config()
    inputs = keras.Input((129, 129, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(17, 1)(keras.layers.AveragePooling2D(4, padding="same")(inputs)))
    with pytest.raises(ValueError, match="layout"):
        export.export_serving_model(model, config, None, str(tmp_path / "x"))


# --------------------------------------------------------------------------
# Oracle: ground truth of real COCO images -> targets -> decoder -> pycocotools
# --------------------------------------------------------------------------

ORACLE_SETS = (("coco_val2017_mmpose4", "person_keypoints_val2017_mmpose4.json"),
               ("coco_train2017_mini28", "person_keypoints_train2017_mini28.json"))


def _load_oracle_ground_truth(shared_data):
    """The two shared COCO samples as one COCO dataset (their image ids do not collide)."""
    merged = {"images": [], "annotations": [], "categories": None}
    for folder, name in ORACLE_SETS:
        with open(os.path.join(shared_data, folder, name), encoding="utf-8") as handle:
            data = json.load(handle)
        merged["images"] += data["images"]
        merged["annotations"] += data["annotations"]
        merged["categories"] = data["categories"]
    ids = [image["id"] for image in merged["images"]]
    assert len(ids) == len(set(ids))
    return merged


def _ambiguous(scene, config):
    """Whether two same-type labelled keypoints of different people lie within 3 sigma at the output resolution."""
    points = scene[..., :2] * bottom_up_decode_tf.DecoderSettings.from_config(config).input_to_output
    labelled = scene[..., 2] > 0
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)                       # (N, N, K)
    pairs = labelled[:, None] & labelled[None] & ~np.eye(len(scene), dtype=bool)[..., None]
    return bool(np.any(pairs & (distance < 3.0 * config["bottom_up"]["sigma"])))


def oracle(shared_data, config):
    """Encodes every image's ground truth (stored precision: the records' fixed point), decodes it with the
    serving decoder, maps it back to original pixels and scores it with pycocotools.

    Returns ``(ap_all, ap_unambiguous, unambiguous image ids, all image ids, evaluator)``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ground_truth = _load_oracle_ground_truth(shared_data)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = ground_truth
        coco.createIndex()
    size = int(config["data"]["input_size"][0])
    decode = tf.function(lambda outputs: bottom_up_decode_tf.decode(outputs, config))
    results, unambiguous = [], []
    for image_id in coco.getImgIds():
        info = coco.imgs[image_id]
        people = [a for a in coco.imgToAnns[image_id] if not a.get("iscrowd") and a["num_keypoints"] > 0]
        affine = coordinates.letterbox_affine(info["height"], info["width"], size)
        scene = np.array([a["keypoints"] for a in people], np.float64).reshape(-1, 17, 3)
        scene[..., :2] = coordinates.apply_affine(scene[..., :2], affine)
        targets = bottom_up_codec.encode(scene, config)
        targets = layout.decode_targets(*layout.encode_targets(targets, "coco"), targets.shape[:2], "coco")
        decoded = decode(tf.constant(targets[None]))
        count = int(decoded["num_people"][0])
        keypoints = decoded["keypoints"].numpy()[0, :count]
        original = coordinates.apply_affine(keypoints[..., :2], coordinates.invert_affine(affine))
        for person, score in zip(original, decoded["person_scores"].numpy()[0]):
            results.append({"image_id": image_id, "category_id": 1, "score": float(score),
                            "keypoints": np.concatenate([person, np.ones((17, 1))], axis=-1).ravel().tolist()})
        if not _ambiguous(scene, config):
            unambiguous.append(image_id)

    def average_precision(image_ids):
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(coco, coco.loadRes(results), "keypoints")
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return float(evaluator.stats[0]), evaluator

    ap_all, evaluator = average_precision(coco.getImgIds())
    ap_unambiguous, _ = average_precision(unambiguous)
    return ap_all, ap_unambiguous, unambiguous, coco.getImgIds(), evaluator


@pytest.mark.slow
def test_oracle_on_real_coco_images(shared_data):
    """Issue 16's oracle: AP >= 0.99 where no two same-type keypoints of different people are within
    3 sigma at the output resolution, AP >= 0.95 on all 32 images (crowded ones included).

    401 x 401 input, stride 4 (101 x 101 output, sigma 3), the decoder's default settings.
    """
    config = _config(size=401, stride=4)
    ap_all, ap_unambiguous, unambiguous, image_ids, _ = oracle(shared_data, config)
    print(f"oracle AP all {ap_all:.4f} ({len(image_ids)} images), "
          f"unambiguous {ap_unambiguous:.4f} ({len(unambiguous)} images)")
    assert len(image_ids) == 32 and 20 <= len(unambiguous) < 32
    assert ap_unambiguous >= 0.99
    assert ap_all >= 0.95


def test_empty_batches_give_empty_outputs():
    from trainer.export_bottom_up import BottomUpServingModule
    config = _config()
    inputs = keras.Input((129, 129, 3))
    zeros = np.zeros((33, 33, layout.num_channels("coco")), np.float32)
    module = BottomUpServingModule(keras.Model(inputs, ConstantOutputs(zeros)(inputs)), config)
    served = module.serving_default(tf.zeros([0], tf.string))
    assert served["keypoints"].shape == (0, 30, 17, 3) and served["person_scores"].shape == (0, 30)
    assert served["num_people"].shape == (0,) and served["image_id"].shape == (0,)
    assert module.heatmaps(tf.zeros([0, 129, 129, 3]))["outputs"].shape == (0, 33, 33, layout.num_channels("coco"))


@pytest.mark.parametrize("seed", [0, 1])
def test_grouping_in_blocks_equals_one_seed_per_step(seed):
    """group_people settles up to GROUPING_BLOCK seeds per step; the people (positions, scores, order) are
    bit for bit those of the one-seed-per-step greedy loop (block=1), on overlapping crowds with noise
    (seeds that use each other up and skeletons that collide inside one block)."""
    config = _config(max_people=30)
    settings = bottom_up_decode_tf.DecoderSettings.from_config(config)
    rng = np.random.default_rng(seed)
    batch = []
    for count in (6, 25):
        centres = rng.uniform(30, 100, (count, 1, 2))
        people = np.concatenate([centres + rng.normal(0, 12, (count, 17, 2)),
                                 np.where(rng.uniform(size=(count, 17, 1)) < 0.8, 2.0, 0.0)], axis=-1)
        targets = bottom_up_codec.encode(people, config)
        batch.append(targets + 0.1 * rng.normal(size=targets.shape) * (rng.uniform(size=targets.shape) < 0.1))
    parts = layout.split_channels(tf.constant(np.stack(batch), tf.float32), "coco")
    peaks = bottom_up_decode_tf.find_peaks(parts["heatmaps"], parts["short"], settings)
    skeletons = bottom_up_decode_tf.build_skeletons(peaks, parts["heatmaps"], parts["short"], parts["mid"], settings)
    body = bottom_up_decode_tf.find_peaks(parts["body"], None, settings)
    one = bottom_up_decode_tf.group_people(peaks, skeletons, settings, body, block=1)
    blocked = bottom_up_decode_tf.group_people(peaks, skeletons, settings, body)
    assert int(one["num_people"][1]) >= 20
    for name in one:
        np.testing.assert_array_equal(one[name].numpy(), blocked[name].numpy(), err_msg=name)

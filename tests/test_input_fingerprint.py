"""ExampleGen's cache key for real data is the inputs' content (pipeline/fingerprint.py, issue 22 item 3).

Run: .venv/bin/python -m pytest -q tests/test_input_fingerprint.py
"""
import os
import shutil
import time

from pipeline import local_runner

TRAIN = "coco_train2017_mini28"
EVAL = "coco_val2017_mmpose4"


def _same_size_same_mtime_edit(path):
    """Rewrites a file with other bytes of the same length and puts its times back (what `cp -p` of an edit leaves)."""
    stat = os.stat(path)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    with open(path, "r+b") as handle:
        handle.write(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def _coco_inputs(shared_data, tmp_path):
    """The shared COCO samples, with the annotation, detection and one image file copied (editable), the rest linked."""
    train, val = os.path.join(shared_data, TRAIN), os.path.join(shared_data, EVAL)
    images = tmp_path / "train_images"
    images.mkdir()
    names = sorted(os.listdir(os.path.join(train, "images")))
    for name in names[1:]:
        os.symlink(os.path.join(train, "images", name), images / name)
    shutil.copy2(os.path.join(train, "images", names[0]), images / names[0])
    annotations = tmp_path / "train.json"
    shutil.copy2(os.path.join(train, "person_keypoints_train2017_mini28.json"), annotations)
    det_file = tmp_path / "detections.json"
    shutil.copy2(os.path.join(val, "person_detection_results_AP_H_56.json"), det_file)
    return {"train_annotations": str(annotations), "train_images": str(images),
            "eval_annotations": os.path.join(val, "person_keypoints_val2017_mmpose4.json"),
            "eval_images": os.path.join(val, "images"), "det_file": str(det_file)}, images / names[0]


def test_an_edit_keeping_size_and_mtime_changes_the_key(shared_data, tmp_path):
    inputs, image = _coco_inputs(shared_data, tmp_path)
    first = local_runner.input_fingerprint(inputs, "a")
    assert len(first) == 64 and local_runner.input_fingerprint(inputs, "b") == first   # same content: a cache hit
    seen = {first}
    for path in (inputs["train_annotations"], inputs["det_file"], str(image)):
        _same_size_same_mtime_edit(path)
        key = local_runner.input_fingerprint(inputs, "a")
        assert key not in seen, path
        seen.add(key)


def test_folder_membership_and_names_count_but_not_paths_or_times(tmp_path):
    def inputs_under(root):
        images = root / "images"
        (images / "sub").mkdir(parents=True)
        (images / "1.jpg").write_bytes(b"one")
        (images / "sub" / "2.jpg").write_bytes(b"two")
        (root / "a.json").write_text("{}")
        return {"train_annotations": str(root / "a.json"), "train_images": str(images),
                "eval_annotations": str(root / "a.json"), "eval_images": str(images), "det_file": ""}

    inputs = inputs_under(tmp_path / "x")
    first = local_runner.input_fingerprint(inputs, "a")
    assert local_runner.input_fingerprint(inputs_under(tmp_path / "y"), "a") == first   # moved copy: same content
    os.utime(inputs["train_annotations"], (1, 1))
    assert local_runner.input_fingerprint(inputs, "a") == first                          # a touch is no change
    images = tmp_path / "x" / "images"
    (images / "sub" / "2.jpg").rename(images / "sub" / "3.jpg")
    renamed = local_runner.input_fingerprint(inputs, "a")
    assert renamed != first
    (images / "sub" / "4.jpg").write_bytes(b"")
    assert local_runner.input_fingerprint(inputs, "a") not in (first, renamed)


def test_remote_inputs_are_never_a_cache_hit(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    inputs = {"train_annotations": str(tmp_path / "a.json"), "train_images": "gs://bucket/images",
              "eval_annotations": str(tmp_path / "a.json"), "eval_images": str(tmp_path), "det_file": ""}
    assert local_runner.input_fingerprint(inputs, "run-7") == "run:run-7"


def test_every_byte_is_read_once(shared_data, tmp_path):
    inputs, _ = _coco_inputs(shared_data, tmp_path)
    mpii = os.path.join(shared_data, "mpii_val_mmpose2")
    stats = {}
    clock = time.perf_counter()
    local_runner.input_fingerprint(inputs, "a", stats)
    seconds = time.perf_counter() - clock
    expected = [os.path.join(root, name) for folder in (inputs["train_images"], inputs["eval_images"])
                for root, _, names in os.walk(folder) for name in names]
    expected += [inputs[role] for role in ("train_annotations", "eval_annotations", "det_file")]
    assert stats == {"files": len(expected), "bytes": sum(os.path.getsize(path) for path in expected)}
    print(f"hashed {stats['files']} files, {stats['bytes'] / 1e6:.2f} MB in {seconds:.3f} s")
    # MPII: one image folder for both splits, read once
    both = {"train_annotations": os.path.join(mpii, "mpii_val_mmpose2.json"), "train_images": os.path.join(mpii, "images"),
            "eval_annotations": os.path.join(mpii, "mpii_val_mmpose2.json"), "eval_images": os.path.join(mpii, "images")}
    local_runner.input_fingerprint(both, "a", stats)
    assert stats["files"] == len(os.listdir(os.path.join(mpii, "images"))) + 1

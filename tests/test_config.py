"""The experiment config loader and every shipped config."""
import glob
import os

import pytest

from pose.codec import HeatmapCodec
from pose.config import build_config, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_every_shipped_config_loads_with_and_without_small_run(path):
    for small_run in (False, True):
        config = load_config(path, small_run=small_run)
        HeatmapCodec.from_config(config)
        assert config["small_run_applied"] is small_run


@pytest.mark.parametrize("input_size,heatmap_size,sigma,kernel", [
    ([128, 96], [32, 24], 1.0, 3),
    ([256, 192], [64, 48], 2.0, 11),
    ([384, 288], [96, 72], 3.0, 17),
    ([256, 256], [64, 64], 2.0, 11),
])
def test_derived_geometry(input_size, heatmap_size, sigma, kernel):
    config = build_config({"data": {"input_size": input_size}})
    assert config["data"]["heatmap_size"] == heatmap_size
    assert config["data"]["sigma"] == sigma
    assert config["codec"]["blur_kernel"] == kernel


def test_explicit_values_win_over_derived_ones():
    config = build_config({"data": {"input_size": [256, 192], "sigma": 3}, "codec": {"blur_kernel": 5}})
    assert config["data"]["sigma"] == 3.0 and config["codec"]["blur_kernel"] == 5


@pytest.mark.parametrize("overrides,match", [
    ({"data": {"input_sise": [256, 192]}}, "data.input_sise"),
    ({"trian": {}}, "trian"),
    ({"data": {"input_size": [250, 192]}}, "heatmap_stride"),
    ({"codec": {"blur_kernel": 4}}, "codec.blur_kernel"),
    ({"codec": {"decode_jit_compile": "yes"}}, "codec.decode_jit_compile"),
    ({"dataset": "h36m"}, "dataset"),
    ({"train": {"lr_schedule": "linear"}}, "train.lr_schedule"),
    ({"augmentation": {"rotation_prob": 1.5}}, "augmentation.rotation_prob"),
])
def test_invalid_configs_name_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_config(overrides)


def test_small_run_and_cli_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  batch_size: 64\nsmall_run:\n  train:\n    batch_size: 4\n")
    assert load_config(str(path))["train"]["batch_size"] == 64
    assert load_config(str(path), small_run=True)["train"]["batch_size"] == 4
    assert load_config(str(path), small_run=True, overrides={"train": {"batch_size": 2}})["train"]["batch_size"] == 2
    assert load_config(str(path))["name"] == "exp"


def test_malformed_and_missing_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(str(bad))
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "missing.yaml"))


def test_bottom_up_with_a_dataset_meta_is_refused_at_load(shared_data, tmp_path):
    """Issue 23: bottom-up has channel layouts for COCO and MPII only; every entry point loads its config
    here, so a custom keypoint set with approach bottom_up stops before any work, naming the meta."""
    meta = os.path.join(shared_data, "ap10k_mmpose2", "dataset_meta.json")
    bottom_up = {"approach": "bottom_up", "data": {"input_size": [129, 129]}}
    with pytest.raises(ValueError, match=r"approach bottom_up takes no dataset_meta .* got dataset_meta "
                                         rf"{meta} \('ap10k', 17 joints\): use approach top_down"):
        build_config({**bottom_up, "dataset_meta": meta})
    path = tmp_path / "bu.yaml"
    path.write_text("approach: bottom_up\ndata: {input_size: [129, 129]}\n")
    with pytest.raises(ValueError, match=rf"^{path}: approach bottom_up takes no dataset_meta"):
        load_config(str(path), overrides={"dataset_meta": meta})
    with pytest.raises(ValueError, match=r"edge graph for \['coco', 'mpii'\] only .* not dataset 'onehand10k'"):
        build_config({**bottom_up, "dataset": "onehand10k"})
    assert build_config(bottom_up)["dataset"] == "coco"   # COCO bottom-up: unchanged

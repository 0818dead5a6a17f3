"""Preview grid of real ExampleGen records (COCO val samples)."""
import os

import cv2
import numpy as np
import pytest

from components import example_gen, preview


@pytest.fixture(scope="module")
def examples(shared_data, tmp_path_factory):
    root = os.path.join(shared_data, "coco_val2017_mmpose4")
    config = example_gen.default_config("coco", {"data": {"input_size": [128, 96]}})
    out_dir = str(tmp_path_factory.mktemp("preview") / "examples")
    example_gen.run_example_gen(
        "coco", out_dir, config, eval_annotations=os.path.join(root, "person_keypoints_val2017_mmpose4.json"),
        eval_images=os.path.join(root, "images"), beam_args=["--direct_running_mode=in_memory"])
    return out_dir


def test_preview_grid_draws_crops_keypoints_and_heatmaps(examples, tmp_path):
    out = str(tmp_path / "grid.png")
    assert preview.main([examples, "--out", out, "--num", "5", "--columns", "3"]) == 0
    grid = cv2.imread(out, cv2.IMREAD_COLOR)
    border = preview.TILE_BORDER
    assert grid.shape == (2 * (128 + border) + border, 3 * (96 + border) + border, 3)
    tiles = [grid[border + row * (128 + border):border + row * (128 + border) + 128,
                  border + column * (96 + border):border + column * (96 + border) + 96]
             for row in range(2) for column in range(3)]
    for tile in tiles[:5]:
        assert tile.std() > 10  # a real crop, not a blank
        green = (tile[..., 1] > 200) & (tile[..., 0] < 80) & (tile[..., 2] < 80)
        assert green.sum() > 20  # keypoint dots of visible joints
    assert np.all(tiles[5] == 40)  # the unused cell keeps the background
    summary = preview.render_grid(os.path.join(examples, "Split-eval", "*.gz"), out, num=100)
    assert summary["records"] == 12 and summary["columns"] == 4 and summary["rows"] == 3


def test_preview_errors(tmp_path):
    with pytest.raises(ValueError, match="no record files"):
        preview.render_grid(str(tmp_path / "nothing-*.gz"), str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="num"):
        preview.render_grid(str(tmp_path), str(tmp_path / "x.png"), num=0)
    assert preview.main([str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2

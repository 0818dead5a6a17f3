"""Preview of person-crop records: a PNG grid of crops with keypoints and heatmap overlay.

Command line::

    python -m components.preview <examples dir | Split-* dir | file pattern> --out grid.png \\
        [--split train] [--num 16] [--columns 4]

Each tile is one record: the stored crop (model input size), the maximum of
its stored heatmaps over joints (resized to the crop, JET colours, 40 %
opacity), the skeleton of :mod:`schemas.keypoints` between labelled joints
and a dot per labelled keypoint (``keypoints/crop``; filled when the joint has
target weight, hollow otherwise), plus the image and annotation ids.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Sequence

import numpy as np

from toolkit import cli
from schemas import examples as examples_layout

TILE_BORDER = 4


def find_files(source: str, split: str | None = None) -> List[str]:
    """Record files of an examples dir (``Split-*``), a split dir or a glob pattern, sorted."""
    import tensorflow as tf

    if tf.io.gfile.isdir(source):
        splits = [split] if split else list(examples_layout.SPLITS)
        files: List[str] = []
        for name in splits:
            files += tf.io.gfile.glob(f"{examples_layout.split_dir(source, name)}/*.gz")
        files = files or tf.io.gfile.glob(f"{source.rstrip('/')}/*.gz")
    else:
        files = tf.io.gfile.glob(source)
    return sorted(files)


def _read(files: Sequence[str], num: int) -> List[Dict[str, object]]:
    import tensorflow as tf

    records = []
    for serialized in tf.data.TFRecordDataset(list(files), compression_type="GZIP").take(num):
        example = tf.train.Example.FromString(serialized.numpy())
        feature = example.features.feature
        value = {}
        for key, item in feature.items():
            kind = item.WhichOneof("kind")
            value[key] = list(getattr(item, kind).value)
        records.append(value)
    return records


def render_tile(record: Dict[str, list]) -> np.ndarray:
    """One record -> RGB uint8 tile (H_in, W_in, 3) with heatmap overlay, skeleton and keypoints."""
    import cv2

    from pose import draw
    from schemas import features
    from schemas.keypoints import get_schema

    crop = cv2.imdecode(np.frombuffer(record["image/encoded"][0], np.uint8), cv2.IMREAD_COLOR)
    height, width = crop.shape[:2]
    visibility = np.asarray(record["keypoints/visibility"], dtype=np.int64)
    num_joints = visibility.size
    heatmaps = features.decode_heatmaps(record["heatmaps/encoded"][0],
                                        (record["heatmap/height"][0], record["heatmap/width"][0]), num_joints)
    peak = cv2.resize(heatmaps.max(axis=-1), (width, height), interpolation=cv2.INTER_LINEAR)
    overlay = cv2.applyColorMap(np.clip(peak * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    tile = cv2.addWeighted(crop, 0.6, overlay, 0.4, 0.0)
    points = np.asarray(record["keypoints/crop"], dtype=np.float64).reshape(num_joints, 2)
    weight = np.asarray(record["target_weight"], dtype=np.float64)
    dataset = record["dataset"][0].decode("utf-8")
    schema = get_schema(dataset) if dataset in ("coco", "mpii") else None
    # cv2 draws at fixed-point sub-pixel positions (shift=4) so the dots sit on the real coordinates.
    fixed = np.round(points * 16).astype(np.int32)
    if schema is not None:  # limbs between labelled joints (pose.draw owns skeleton drawing)
        draw.draw_limbs(tile, points[None], (visibility > 0)[None], schema.skeleton, (255, 255, 255), 1)
    for joint in np.flatnonzero(visibility > 0):
        colour = (0, 255, 0) if visibility[joint] == 2 else (0, 255, 255)
        cv2.circle(tile, tuple(map(int, fixed[joint])), 3 * 16, colour, -1 if weight[joint] > 0 else 1,
                   cv2.LINE_AA, shift=4)
    label = f"{record['image/id'][0]}/{record['annotation/id'][0]}"
    cv2.putText(tile, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return cv2.cvtColor(tile, cv2.COLOR_BGR2RGB)


def render_grid(source: str, out: str, split: str | None = None, num: int = 16, columns: int = 4) -> Dict[str, object]:
    """Writes a PNG grid of the first ``num`` records of ``source``; returns a summary dict.

    Raises:
        ValueError: bad ``num``/``columns``, or no records found.
    """
    import cv2

    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    files = find_files(source, split)
    if not files:
        raise ValueError(f"no record files found at {source!r}")
    records = _read(files, num)
    if not records:
        raise ValueError(f"no records in {len(files)} file(s) at {source!r}")
    tiles = [render_tile(record) for record in records]
    tile_height, tile_width = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    cell_height, cell_width = tile_height + TILE_BORDER, tile_width + TILE_BORDER
    grid = np.full((rows * cell_height + TILE_BORDER, min(columns, len(tiles)) * cell_width + TILE_BORDER, 3),
                   40, np.uint8)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        top, left = TILE_BORDER + row * cell_height, TILE_BORDER + column * cell_width
        grid[top:top + tile_height, left:left + tile_width] = tile
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV failed to encode the PNG")
    directory = os.path.dirname(out)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(out, "wb") as handle:
        handle.write(buffer.tobytes())
    return {"out": out, "records": len(tiles), "rows": rows, "columns": min(columns, len(tiles)),
            "size": [int(grid.shape[0]), int(grid.shape[1])]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m components.preview", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="examples dir (with Split-*), a Split-* dir, or a file pattern")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--split", choices=("train", "eval"), help="only this split of an examples dir")
    parser.add_argument("--num", type=int, default=16, help="number of records (default 16)")
    parser.add_argument("--columns", type=int, default=4, help="tiles per row (default 4)")
    args = parser.parse_args(argv)
    try:
        summary = render_grid(args.source, args.out, args.split, args.num, args.columns)
    except (ValueError, RuntimeError) as error:
        print(f"preview: error: {error}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m components.preview"))

"""Our TFX components inside a pipeline with TFX's own: StatisticsGen and SchemaGen on PoseExampleGen's Examples."""
import glob
import json
import os
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo.yaml")

pytestmark = pytest.mark.slow


def test_statistics_gen_and_schema_gen_run_on_pose_examples(tmp_path, monkeypatch):
    # Beam components leave files in $TMPDIR: keep them in the test's folder.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    from tfx import v1 as tfx

    from components.tfx_components import PoseExampleGen
    from pipeline import synthetic
    from pose.config import load_config

    info = synthetic.generate_dataset(str(tmp_path / "data"),
                                      synthetic.SyntheticSpec(num_train_images=4, num_val_images=2, seed=0))
    paths = info["paths"]
    example_gen = PoseExampleGen(
        dataset="coco", config=load_config(DEMO_CONFIG, small_run=True),
        train_annotations=paths["train_annotations"], train_images=paths["train_images"],
        eval_annotations=paths["val_annotations"], eval_images=paths["val_images"])
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"])
    root = tmp_path / "root"
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="mix", pipeline_root=str(root), components=[example_gen, statistics_gen, schema_gen],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(tmp_path / "metadata.sqlite")),
        beam_pipeline_args=["--direct_running_mode=in_memory", f"--setup_file={os.path.join(ROOT, 'setup.py')}"])
    tfx.orchestration.LocalDagRunner().run(pipeline)

    import tensorflow_data_validation as tfdv

    (manifest_path,) = glob.glob(str(root / "PoseExampleGen" / "examples" / "*" / "manifest.json"))
    with open(manifest_path) as handle:
        splits = json.load(handle)["splits"]
    for split, name in (("train", "train"), ("eval", "eval")):
        (stats_path,) = glob.glob(str(root / "StatisticsGen" / "statistics" / "*" / f"Split-{split}" / "FeatureStats.pb"))
        stats = tfdv.load_stats_binary(stats_path).datasets[0]
        assert stats.num_examples == splits[name]
        features = {feature.path.step[0]: feature for feature in stats.features}
        # The records' scalar features are there for a data gate (box area, box score, joints).
        assert {"person/area", "bbox/score", "keypoints/visibility", "image/id"} <= set(features)
        assert features["person/area"].num_stats.min > 0
    (schema_path,) = glob.glob(str(root / "SchemaGen" / "schema" / "*" / "schema.pbtxt"))
    schema = tfdv.load_schema_text(schema_path)
    assert "person/area" in {feature.name for feature in schema.feature}

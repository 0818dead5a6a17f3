"""ExampleGen DoFns on literal image tasks with TestPipeline / assert_that (in_memory)."""
import json
import os
import zlib

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from components import example_gen, ingest_core


def test_crop_persons_fn_outputs_and_counters(shared_data):
    config = example_gen.default_config("coco", {"data": {"input_size": [64, 48]}})
    root = os.path.join(shared_data, "coco_val2017_mmpose4")
    loaded = ingest_core.load_coco("eval", os.path.join(root, "person_keypoints_val2017_mmpose4.json"),
                                   os.path.join(root, "images"), config)
    task = json.loads(json.dumps(next(task for task in loaded["tasks"] if task["image_id"] == 40083)))  # 3 annotations, 2 with keypoints
    selection = next(task for task in loaded["tasks"] if task["image_id"] == -1)
    assert selection["selection_skips"] == {"no_keypoints": 2} and not selection["persons"]
    missing = dict(task, image_id=7, file_name="gone.jpg", image_path=os.path.join(root, "images", "gone.jpg"))
    options = PipelineOptions(["--direct_running_mode=in_memory"])
    pipeline = test_pipeline.TestPipeline(options=options)
    outputs = (pipeline
               | beam.Create([task, missing, selection])
               | beam.ParDo(example_gen.CropPersonsFn(config)).with_outputs(
                   example_gen.CropPersonsFn.DEAD_LETTER, example_gen.CropPersonsFn.DIGEST, main="persons"))
    keys = outputs.persons | "Keys" >> beam.Map(lambda person: person["sort_key"])
    expected_keys = [(40083, person["annotation_id"], 0) for person in task["persons"]]
    assert_that(keys, equal_to(expected_keys), label="persons")
    reasons = (outputs[example_gen.CropPersonsFn.DEAD_LETTER]
               | "Reasons" >> beam.Map(lambda line: (json.loads(line)["reason"], json.loads(line)["image_id"])))
    assert_that(reasons, equal_to([("missing_image", 7)]), label="dead letters")
    digests = outputs[example_gen.CropPersonsFn.DIGEST] | "Ids" >> beam.Map(lambda digest: digest[1])
    assert_that(digests, equal_to([40083]), label="digests")
    result = pipeline.run()
    result.wait_until_finish()
    counters = {counter.key.metric.name: counter.committed
                for counter in result.metrics().query(MetricsFilter().with_namespace("example_gen"))["counters"]}
    assert counters["skipped_missing_image"] == 1
    assert counters["images_read"] == 1
    assert counters["skipped_no_keypoints"] == 2  # selection rules: counted, not dead-lettered
    assert counters["persons_cropped"] == len(expected_keys) == 2


def test_shard_compression_is_plain_gzip_with_run_length_strategy():
    """Z_RLE output is ordinary gzip: zlib/gzip and TF read it back unchanged."""
    import gzip

    data = bytes(5000) + np.random.default_rng(0).integers(0, 255, 3000, dtype=np.uint8).tobytes()
    assert gzip.decompress(example_gen.gzip_bytes(data)) == data
    assert example_gen.GZIP_STRATEGY == zlib.Z_RLE

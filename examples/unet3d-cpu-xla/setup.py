"""Packaging for the cpu-xla example backend.

The one line that turns this package into a unet3d backend is the entry point:
its name (``cpu-xla``) is what users pass to ``--backend`` and must equal the
``name`` the plugin's ``unet3d_backend_info`` returns.
"""
from setuptools import setup

setup(
    name="unet3d-cpu-xla",
    version="0.1.0",
    description="Example unet3d backend: XLA JIT compilation and bfloat16 mixed precision on the CPU",
    python_requires=">=3.7",
    packages=["unet3d_cpu_xla"],
    # No install_requires: unet3d is installed from its repository, and a bare
    # "unet3d" requirement could pull an unrelated package of that name from an index.
    entry_points={"unet3d.backends": ["cpu-xla = unet3d_cpu_xla.plugin"]},
)

"""cpu-xla: an example third-party unet3d backend (see plugin.py)."""

__version__ = "0.1.0"

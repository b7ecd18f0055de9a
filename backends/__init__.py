"""The built-in backends. Each is a plugin like any third-party one: it uses
only the public names of ``unet3d_core`` (hook specs and types) and is
registered through the ``unet3d.backends`` entry-point group in setup.py."""

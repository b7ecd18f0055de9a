"""What the fake puts in place of the adapter's C++ library (``npu_bridge/_tf_adapter.so``).

Loading the real library registers the adapter's graph passes with TensorFlow; from then on
every session whose config carries the ``NpuOptimizer`` custom optimizer is partitioned and
compiled for the device. Here that is :mod:`.session` (hooks on ``Session.__init__`` and
``Session.run``), :mod:`.npu_attrs` (the ``parameter_map`` parser), :mod:`.ge_plugin` (GE start-up
and its environment) and :mod:`.log` (``LOG(FATAL)``). Rules cite the adapter's sources at
``hicann/tensorflow`` commit 82957b92d1ade2f48ca51dda811f0baec23b04c7 (see ../../README.md).

This package is the fake's own; the real ``npu_bridge`` has no Python module of this name.
"""
import sys

REPOSITORY = "hicann/tensorflow@82957b92d1ade2f48ca51dda811f0baec23b04c7"

# The npu_bridge package object of this load. When the tests' fake_npu fixture drops the fake from
# sys.modules, hooks left on TensorFlow's classes see another (or no) npu_bridge and step aside.
# The package holding this one: npu_bridge, or npu_device.compat.v1 in the TF 2 fake built from this tree.
_PACKAGE_NAME = __name__.rpartition(".")[0]
_PACKAGE = sys.modules.get(_PACKAGE_NAME)


def live():
    """Whether this load of the fake is still the importable adapter package."""
    return _PACKAGE is not None and sys.modules.get(_PACKAGE_NAME) is _PACKAGE

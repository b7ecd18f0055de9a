"""Build the fake TF Adapter 2.x (``npu_device``) the way the real one is built, from the 1.x fake.

The real build (tf_adapter_2.x/CMakeLists.txt:64, tf_adapter_2.x/compat_v1/CMakeLists.txt:31-34) copies the
whole ``npu_bridge`` tree into ``npu_device/compat/v1`` and rewrites it with
``tf_adapter_2.x/compat_v1/upgrade_tf1_compat_tf2.py``. :func:`build` applies the same rules to
tests/fake_npu/npu_bridge:

* in every line, the first ``from npu_bridge`` becomes ``from npu_device.compat.v1`` and the first
  ``import tensorflow`` becomes ``import tensorflow.compat.v1``; a line ending in ``import npu_bridge`` becomes
  ``from npu_device.compat import v1 as npu_bridge``;
* the lines importing NPULossScaleOptimizer, FixedLossScaleManager and ExponentialUpdateLossScaleManager,
  and ``@ops.RegisterGradient('HcomAllReduce')``, are removed;
* ``estimator/npu/npu_loss_scale_manager.py`` and ``npu_loss_scale_optimizer.py`` are deleted;
* ``helper/helper.py`` is replaced (replacement/helper/helper.py: no library loaded on import).

The rest of ``npu_device`` is this folder's hand-written fake; ``hccl`` and ``bin`` come from tests/fake_npu.
The result goes to a folder named after a hash of every source, built once and reused.
"""
import hashlib
import os
import re
import shutil
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE_V1 = os.path.join(os.path.dirname(HERE), "fake_npu")
REPLACE = (("from npu_bridge", "from npu_device.compat.v1"), ("import tensorflow", "import tensorflow.compat.v1"))
REGEXP = ((re.compile(r"import npu_bridge$"), "from npu_device.compat import v1 as npu_bridge"),)
REMOVED_LINES = (
    "@ops.RegisterGradient('HcomAllReduce')",
    "from npu_bridge.estimator.npu.npu_loss_scale_optimizer import NPULossScaleOptimizer",
    "from npu_bridge.estimator.npu.npu_loss_scale_manager import FixedLossScaleManager",
    "from npu_bridge.estimator.npu.npu_loss_scale_manager import ExponentialUpdateLossScaleManager",
)
REMOVED_FILES = (os.path.join("estimator", "npu", "npu_loss_scale_manager.py"),
                 os.path.join("estimator", "npu", "npu_loss_scale_optimizer.py"))
REPLACED_FILES = (os.path.join("helper", "helper.py"),)


def _sources():
    for top in (os.path.join(FAKE_V1, "npu_bridge"), os.path.join(FAKE_V1, "hccl"), os.path.join(FAKE_V1, "bin"),
                os.path.join(HERE, "npu_device"), os.path.join(HERE, "replacement"), os.path.abspath(__file__)):
        if os.path.isfile(top):
            yield top
            continue
        for folder, names, files in os.walk(top):
            names[:] = sorted(name for name in names if name != "__pycache__")
            for name in sorted(files):
                if not name.endswith(".pyc"):
                    yield os.path.join(folder, name)


def _digest():
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(path.encode())
        with open(path, "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()[:16]


def _upgrade_line(line):
    if line.strip() in REMOVED_LINES:
        return ""
    for old, new in REPLACE:
        line = line.replace(old, new, 1)
    ending = "\n" if line.endswith("\n") else ""
    body = line[:len(line) - len(ending)]
    for pattern, new in REGEXP:
        body = pattern.sub(new, body)
    return body + ending


def _build_v1(destination):
    source = os.path.join(FAKE_V1, "npu_bridge")
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for folder, _, files in os.walk(destination):
        for name in files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, destination)
            if not name.endswith(".py"):
                continue
            if relative in REMOVED_FILES:
                os.remove(path)
            elif relative in REPLACED_FILES:
                shutil.copyfile(os.path.join(HERE, "replacement", relative), path)
            else:
                with open(path) as handle:
                    lines = handle.readlines()
                with open(path, "w") as handle:
                    handle.writelines(_upgrade_line(line) for line in lines)


def build():
    """The folder to put on PYTHONPATH: ``npu_device`` (with ``compat/v1`` built) and ``hccl``; also ``bin``."""
    target = os.path.join(tempfile.gettempdir(), "unet3d-fake-npu-tf2-" + _digest())
    if os.path.isdir(target):
        return target
    partial = tempfile.mkdtemp(prefix="unet3d-fake-npu-tf2-partial-")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(HERE, "npu_device"), os.path.join(partial, "npu_device"), ignore=ignore)
    _build_v1(os.path.join(partial, "npu_device", "compat", "v1"))
    shutil.copytree(os.path.join(FAKE_V1, "hccl"), os.path.join(partial, "hccl"), ignore=ignore)
    shutil.copytree(os.path.join(FAKE_V1, "bin"), os.path.join(partial, "bin"))
    try:
        os.rename(partial, target)
    except OSError:  # another process built it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    return target


if __name__ == "__main__":
    print(build())

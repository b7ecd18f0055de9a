"""The cpu backend's own TensorFlow CPU ops, one library compiled from this folder's C++ sources.

- ``instance_norm.cc``: instance norm and leaky ReLU in one kernel, and its
  gradient. The tuned layer ops ("onednn", "eigen": backends/cpu/kernels.py)
  use it; without the library they use TensorFlow's FusedBatchNormV3 per
  sample and a LeakyRelu (the same numbers, more passes over memory).
- ``tap_sum.cc``: the shifted sum that finishes a 3x3x3 convolution to few
  channels computed as a 3x3x1 one (the "onednn" set's output convolution);
  without the library that convolution runs as a transposed convolution.
- ``kernel_gradient.cc``: the kernel gradient of a convolution or of a
  2x2x2 transposed convolution, on AVX-512, for the layers where it beats
  the library's own (TunedLayerOps._kernel_gradient_by_op says which).

    python -m backends.cpu.native build        # compile for this environment's TensorFlow (g++, about 15 s)
    python -m backends.cpu.native status       # where the library is and whether it loads

``tools/make_venv.sh`` builds it into each environment. The cpu backend's
``--cpu_native_ops off`` leaves it out (the fallback), e.g. to compare the two.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

DIRECTORY_VARIABLE = "UNET3D_NATIVE_DIR"
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(HERE, name) for name in ("instance_norm.cc", "tap_sum.cc", "kernel_gradient.cc")]
OP_NAME = "Unet3dInstanceNormLeakyRelu"
TAP_SUM_OP = "Unet3dTapSum"
KERNEL_GRADIENT_OP = "Unet3dConvKernelGradient"

_loaded = {}  # library path -> module, or None after a failed load


class NativeBuildError(RuntimeError):
    """The op library could not be compiled; the message names the command and the compiler's error."""


def _source_digest() -> str:
    digest = hashlib.sha256()
    for source in SOURCES:
        with open(source, "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()[:12]


def _tensorflow_version() -> str:
    import tensorflow as tf

    return tf.__version__


def library_path() -> str:
    """Where the library for this TensorFlow and this source lives (a changed source gets a new name)."""
    folder = os.environ.get(DIRECTORY_VARIABLE) or os.path.join(HERE, "build")
    return os.path.join(folder, "unet3d_ops-{}-tf{}.so".format(_source_digest(), _tensorflow_version()))


def cpu_flags():
    """The feature flags of the first CPU in /proc/cpuinfo (a set), or None where there is no such file."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def compile_command(output: str) -> list:
    import tensorflow as tf

    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise NativeBuildError("no C++ compiler found (install g++ or set CXX)")
    flags = list(tf.sysconfig.get_compile_flags())
    if not any(flag.startswith(("-std=", "--std=")) for flag in flags):
        flags.append("-std=c++14")  # TensorFlow 1.15 names none; its headers need C++11 or later
    # AVX2 and FMA where this CPU has them (the library is built on the machine that runs it).
    isa = ["-mavx2", "-mfma"] if {"avx2", "fma"} <= (cpu_flags() or set()) else []
    # No FP traps or errno: lets the compiler turn the activation's select into a vector blend.
    optimise = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"]
    return ([compiler, "-shared", "-fPIC"] + optimise + isa + flags + SOURCES + ["-o", output] +
            list(tf.sysconfig.get_link_flags()))


def build(force: bool = False, quiet: bool = False) -> str:
    """Compile the op library for this TensorFlow unless it is there already; return its path.

    Written to a temporary file and renamed, so an interrupted build never
    leaves a library that looks complete.
    """
    target = library_path()
    if os.path.exists(target) and not force:
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=".building-", suffix=".so", dir=os.path.dirname(target))
    os.close(handle)
    command = compile_command(partial)
    if not quiet:
        print("[unet3d] compiling the fused ops ({}) for TensorFlow {} (about 15 s)".format(
            ", ".join(os.path.basename(source) for source in SOURCES), _tensorflow_version()), flush=True)
    try:
        completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   universal_newlines=True)
        if completed.returncode != 0:
            errors = [line for line in completed.stdout.splitlines() if "error" in line] or \
                completed.stdout.splitlines()[-5:]
            raise NativeBuildError("compiling {} failed ({}): {}".format(
                " ".join(SOURCES), command[0], " | ".join(errors[:3])))
        os.replace(partial, target)
        # Libraries of older sources for the same TensorFlow are never loaded again.
        suffix = target[target.rindex("-tf"):]
        for name in os.listdir(os.path.dirname(target)):
            stale = os.path.join(os.path.dirname(target), name)
            if name.startswith("unet3d_ops-") and name.endswith(suffix) and stale != target:
                os.remove(stale)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def load():
    """The op module if it is built for this TensorFlow, else None (said once on stderr)."""
    path = library_path()
    if path in _loaded:
        return _loaded[path]
    module = None
    if not os.path.exists(path):
        sys.stderr.write("[unet3d] note: the project's fused CPU ops are not built for this TensorFlow "
                         "(python -m backends.cpu.native build); using TensorFlow's ops\n")
    else:
        import tensorflow as tf

        try:
            module = tf.load_op_library(path)
        except (tf.errors.NotFoundError, OSError) as error:  # built for another TensorFlow, or damaged
            sys.stderr.write("[unet3d] note: cannot load {} ({}); using TensorFlow's ops\n".format(
                path, str(error).splitlines()[0] if str(error) else type(error).__name__))
            module = None
        else:
            _register_gradient(module)
    _loaded[path] = module
    return module


_gradient_registered = []


def _register_gradient(module) -> None:
    if _gradient_registered:
        return
    from tensorflow.python.framework import ops

    @ops.RegisterGradient(OP_NAME)
    def _instance_norm_leaky_relu_gradient(op, dy, _dmean, _drstd):
        # Only y is differentiable: the statistics outputs are for the gradient's own use.
        x, gamma, beta = op.inputs
        _, mean, rstd = op.outputs
        return module.unet3d_instance_norm_leaky_relu_grad(dy, x, gamma, beta, mean, rstd,
                                                           alpha=op.get_attr("alpha"))

    @ops.RegisterGradient(TAP_SUM_OP)
    def _tap_sum_gradient(op, gradient):
        # The adjoint: group t of the input's gradient is the output's gradient shifted back by its tap.
        import tensorflow as tf

        taps = op.get_attr("taps")
        centre = (taps - 1) // 2
        rank = gradient.shape.ndims
        length = tf.shape(gradient)[rank - 2]
        padded = tf.pad(gradient, [[0, 0]] * (rank - 2) + [[centre, centre], [0, 0]])
        groups = [tf.gather(padded, tf.range(2 * centre - t, 2 * centre - t + length), axis=rank - 2)
                  for t in range(taps)]
        return tf.concat(groups, axis=-1)

    _gradient_registered.append(module)


def _required():
    """The op module; a RuntimeError where it is not built (callers check load() first)."""
    module = load()
    if module is None:
        raise RuntimeError("the fused CPU ops are not available (python -m backends.cpu.native build)")
    return module


def instance_norm_leaky_relu(x, gamma, beta, epsilon: float, alpha: float):
    """``leaky_relu(instance_norm(x) * gamma + beta, alpha)`` for x [batch, spatial..., channels]; needs load()."""
    module = _required()
    return module.unet3d_instance_norm_leaky_relu(x, gamma, beta, epsilon=epsilon, alpha=alpha)[0]


def tap_sum(p, taps: int):
    """``out[..., z, k] = sum_t p[..., z + t - (taps - 1) // 2, t * K + k]`` (zero outside); needs load()."""
    module = _required()
    return module.unet3d_tap_sum(p, taps=taps)


def has_avx512() -> bool:
    """Whether this CPU runs the kernel-gradient op (it needs AVX-512F)."""
    return "avx512f" in (cpu_flags() or set())


def convolution_kernel_gradient(a, b, kernel, pad, stride: int):
    """``dw[kd, kh, kw, i, j] = sum a[n, s*d + kd - pd, s*h + kh - ph, s*w + kw - pw, i] * b[n, d, h, w, j]``
    (``a`` zero outside its volume): a convolution's kernel gradient with ``a`` its input and ``b`` its output's
    gradient, or a transposed convolution's with ``a`` its output's gradient and ``b`` its input. Needs load(),
    an AVX-512 CPU and ``b`` channels a multiple of 16."""
    module = _required()
    return module.unet3d_conv_kernel_gradient(a, b, kernel=list(kernel), pad=list(pad), stride=stride)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else "status"
    if command == "build":
        existed = os.path.exists(library_path()) and "--force" not in argv
        try:
            path = build(force="--force" in argv)
        except NativeBuildError as error:
            print("error: {}".format(error), file=sys.stderr)
            return 1
        if load() is None:
            print("error: built {} but it does not load".format(path), file=sys.stderr)
            return 1
        if not existed:
            print("[unet3d] fused CPU ops ready: {}".format(path))
        return 0
    if command == "status":
        path = library_path()
        if not os.path.exists(path):
            state = "not built"
        else:
            state = "loads" if load() is not None else "does not load"
        print("{}: {}".format(path, state))
        return 0 if state == "loads" else 1
    print("usage: python -m backends.cpu.native build [--force] | status", file=sys.stderr)
    return 2

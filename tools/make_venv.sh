#!/usr/bin/env bash
# Create one of the project's two virtual environments, idempotently.
#   tools/make_venv.sh tf1   -> .venv-tf1 (Python 3.7, TensorFlow 1.15.5: the NPU adapter's host side)
#   tools/make_venv.sh tf2   -> .venv-tf2 (Python 3.11, tensorflow-cpu 2.15.1)
# Each gets Horovod 0.28.1 built with Gloo (no MPI), the project installed editable, and the
# project's fused CPU ops compiled for its TensorFlow (backends/cpu/native).
# A finished environment carries a stamp file; delete the folder to rebuild it.
set -euo pipefail
flavour=${1:?usage: tools/make_venv.sh tf1|tf2}
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv-$flavour"
stamp="$venv/.unet3d-ready"

find_python37() {
    if command -v pyenv >/dev/null 2>&1 && pyenv prefix 3.7.16 >/dev/null 2>&1; then
        echo "$(pyenv prefix 3.7.16)/bin/python"; return 0
    fi
    for candidate in python3.7 /usr/bin/python3.7 /usr/local/bin/python3.7; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 7)' 2>/dev/null; then
            command -v "$candidate"; return 0
        fi
    done
    return 1
}

case "$flavour" in
    tf1)
        if ! python=$(find_python37); then
            echo "error: Python 3.7 not found (needed for TensorFlow 1.15). Install it (e.g. 'pyenv install 3.7.16') or put python3.7 on PATH." >&2
            exit 3
        fi
        packages=("tensorflow==1.15.5" "protobuf<3.21" "numpy==1.18.5" "h5py<3" "nibabel<5" "pluggy>=1.0,<1.3" "pytest<8" "scipy<1.8" "matplotlib<3.6" "tqdm>=4.64,<5")
        ;;
    tf2)
        python=$(command -v python3.11 || command -v python3)
        packages=("tensorflow-cpu==2.15.1" "numpy<2" "nibabel>=5" "pluggy>=1.3" "pytest>=7" "scipy<1.14" "matplotlib" "ruff" "tqdm>=4.64,<5")
        ;;
    *) echo "error: unknown environment '$flavour' (expected tf1 or tf2)" >&2; exit 2 ;;
esac

if [ -f "$stamp" ]; then
    # A changed setup.py (new entry points, new extras) refreshes the editable install.
    if [ "$root/setup.py" -nt "$stamp" ]; then
        "$venv/bin/python" -m pip --disable-pip-version-check install -q --no-deps -e "$root" && touch "$stamp"
    fi
    # The project's fused CPU ops, compiled again whenever their source changes (seconds).
    TF_CPP_MIN_LOG_LEVEL=2 "$venv/bin/python" -m backends.cpu.native build
    exit
fi

echo "[unet3d] creating $venv with $("$python" --version 2>&1) (first use only; takes a few minutes)"
rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade "pip<24.1" "setuptools<68" wheel
# Horovod's own dependencies; it is installed with --no-deps below because its
# "tensorflow" extra would pull the full, newest TensorFlow over the pinned one.
"${pip[@]}" install -q "${packages[@]}" cloudpickle psutil pyyaml packaging
echo "[unet3d] building Horovod 0.28.1 with Gloo for $flavour (about 2-3 minutes)"
HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j2" \
    "${pip[@]}" install -q --no-build-isolation --no-cache-dir --no-deps "horovod==0.28.1"
"${pip[@]}" install -q --no-deps -e "$root"
TF_CPP_MIN_LOG_LEVEL=2 "$venv/bin/python" -m backends.cpu.native build
"$venv/bin/python" -c 'import tensorflow as tf, horovod.tensorflow as hvd, nibabel, pluggy; print("[unet3d] ready:", "tensorflow", tf.__version__)'
touch "$stamp"

#!/usr/bin/env bash
# Create one of the project's virtual environments, idempotently.
#   tools/make_venv.sh tf1   -> .venv-tf1 (Python 3.7, TensorFlow 1.15.5: the NPU 1.x adapter's host side)
#   tools/make_venv.sh tf2   -> .venv-tf2 (Python 3.11, tensorflow-cpu 2.15.1)
#   tools/make_venv.sh tf26  -> .venv-tf26 (Python 3.9, tensorflow-cpu 2.6.5: the NPU 2.x adapter's host side)
# tf1 and tf2 get Horovod 0.28.1 built with Gloo (no MPI) and the project's fused CPU ops compiled
# for their TensorFlow (backends/cpu/native); tf26 runs the NPU tests, and needs neither.
# A finished environment carries a stamp file; delete the folder to rebuild it.
set -euo pipefail
flavour=${1:?usage: tools/make_venv.sh tf1|tf2}
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv-$flavour"
stamp="$venv/.unet3d-ready"

# find_python MINOR PYENV_VERSION: python3.MINOR from pyenv, else from PATH.
find_python() {
    if command -v pyenv >/dev/null 2>&1 && pyenv prefix "$2" >/dev/null 2>&1; then
        echo "$(pyenv prefix "$2")/bin/python"; return 0
    fi
    for candidate in "python3.$1" "/usr/bin/python3.$1" "/usr/local/bin/python3.$1"; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import sys; assert sys.version_info[:2] == (3, $1)" 2>/dev/null; then
            command -v "$candidate"; return 0
        fi
    done
    return 1
}
with_horovod=1

case "$flavour" in
    tf1)
        if ! python=$(find_python 7 3.7.16); then
            echo "error: Python 3.7 not found (needed for TensorFlow 1.15). Install it (e.g. 'pyenv install 3.7.16') or put python3.7 on PATH." >&2
            exit 3
        fi
        packages=("tensorflow==1.15.5" "protobuf<3.21" "numpy==1.18.5" "h5py<3" "nibabel<5" "pluggy>=1.0,<1.3" "pytest<8" "pytest-xdist<3.3" "scipy<1.8" "matplotlib<3.6" "tqdm>=4.64,<5" "surface-distance==0.1")
        ;;
    tf2)
        python=$(command -v python3.11 || command -v python3)
        packages=("tensorflow-cpu==2.15.1" "numpy<2" "nibabel>=5" "pluggy>=1.3" "pytest>=7" "pytest-xdist>=3.5" "scipy<1.14" "matplotlib" "ruff" "tqdm>=4.64,<5" "surface-distance==0.1"
                  # Test-only: the challenge's 2026 scorer, the reference of tests/test_lesion_metrics.py
                  # (AGPL-3.0 metadata; never imported by unet3d itself).
                  "BraTS-evaluation==0.0.8" "panoptica==2.1.4"
                  # The onnx extra of 'cli.py export' and its check (tf2onnx 1.16 wants protobuf 3.20).
                  "tf2onnx==1.16.1" "onnx==1.16.2" "protobuf==3.20.3" "onnxruntime==1.26.0"
                  # 'cli.py synth --anatomical' (the anatomy extra): the MNI152 template in nilearn's wheel.
                  "nilearn==0.14.1")
        ;;
    tf26)
        if ! python=$(find_python 9 3.9.18); then
            echo "error: Python 3.9 not found (needed for TensorFlow 2.6.5). Install it (e.g. 'pyenv install 3.9.18') or put python3.9 on PATH." >&2
            exit 3
        fi
        packages=("tensorflow-cpu==2.6.5" "keras==2.6.0" "numpy~=1.19.2" "protobuf<3.20" "nibabel<5" "pluggy>=1.3" "pytest>=7,<8" "pytest-xdist<3.7" "scipy<1.8" "matplotlib<3.6" "tqdm>=4.64,<5" "surface-distance==0.1")
        with_horovod=0
        ;;
    *) echo "error: unknown environment '$flavour' (expected tf1, tf2 or tf26)" >&2; exit 2 ;;
esac

if [ -f "$stamp" ]; then
    # Environments made before the suite ran on several workers lack pytest-xdist.
    if ! "$venv/bin/python" -c "import xdist" 2>/dev/null; then
        for package in "${packages[@]}"; do
            case "$package" in pytest-xdist*) "$venv/bin/python" -m pip --disable-pip-version-check install -q "$package" ;; esac
        done
    fi
    # A changed setup.py (new entry points, new extras) refreshes the editable install.
    if [ "$root/setup.py" -nt "$stamp" ]; then
        "$venv/bin/python" -m pip --disable-pip-version-check install -q --no-deps -e "$root" && touch "$stamp"
    fi
    # The project's fused CPU ops, compiled again whenever their source changes (seconds).
    if [ "$with_horovod" = 1 ]; then TF_CPP_MIN_LOG_LEVEL=2 "$venv/bin/python" -m backends.cpu.native build; fi
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
if [ "$with_horovod" = 1 ]; then
    echo "[unet3d] building Horovod 0.28.1 with Gloo for $flavour (about 2-3 minutes)"
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j2" \
        "${pip[@]}" install -q --no-build-isolation --no-cache-dir --no-deps "horovod==0.28.1"
fi
"${pip[@]}" install -q --no-deps -e "$root"
if [ "$with_horovod" = 1 ]; then
    TF_CPP_MIN_LOG_LEVEL=2 "$venv/bin/python" -m backends.cpu.native build
    "$venv/bin/python" -c 'import tensorflow as tf, horovod.tensorflow as hvd, nibabel, pluggy; print("[unet3d] ready:", "tensorflow", tf.__version__)'
else
    "$venv/bin/python" -c 'import tensorflow as tf, nibabel, pluggy; print("[unet3d] ready:", "tensorflow", tf.__version__, "(no Horovod)")'
fi
touch "$stamp"

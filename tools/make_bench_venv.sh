#!/usr/bin/env bash
# Create .venv-bench, the benchmarks' own environment, idempotently: PyTorch (CPU
# build) and MONAI, for the side-by-side comparison with MONAI's DynUNet in
# benchmarks/train_throughput.py. Kept apart from .venv-tf1/.venv-tf2 so that
# the test environments never import torch. Delete the folder to rebuild it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv-bench"
stamp="$venv/.unet3d-ready"
# Exact pins: a bare "torch" (or a range a newer release satisfies) makes pip
# fetch a CUDA build of several GB; 2.13.0's CPU wheel is what we measured with.
packages=("torch==2.13.0" "monai==1.6.1" "numpy<2.3" "nibabel>=5" "scipy")
[ -f "$stamp" ] && exit 0

python=$(command -v python3.11 || command -v python3)
echo "[unet3d] creating $venv with $("$python" --version 2>&1) (PyTorch CPU + MONAI; first use only)"
rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade "pip<24.1"
"${pip[@]}" install -q "${packages[@]}"
"$venv/bin/python" -c 'import monai, torch; print("[unet3d] bench environment ready: torch", torch.__version__, "(CUDA:", torch.version.cuda, ") monai", monai.__version__)'
touch "$stamp"

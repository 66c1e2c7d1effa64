#!/usr/bin/env bash
# Create .venv with reelbatch and its test dependencies.
# torch: the CPU wheel on a machine without an NVIDIA GPU (never a multi-GB CUDA build), the CUDA build otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${REELBATCH_TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        pip install "torch==${TORCH_VERSION}"
    else
        # A local wheel (find-links) first; else PyTorch's CPU index. "+cpu" makes a CUDA build impossible.
        pip install -q "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
            || pip install -q "torch==${TORCH_VERSION}+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
    fi
fi

pip install -q -c constraints.txt -e ".[test,lint]"
.venv/bin/python -c "import torch, diffusers, prefect; print(f'torch {torch.__version__}, diffusers {diffusers.__version__}, prefect {prefect.__version__}: ready')"

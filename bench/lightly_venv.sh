#!/usr/bin/env bash
# Build lightly's own environment for bench/vs_lightly.py, outside the repository.
#   bash bench/lightly_venv.sh [VENV_DIR]      (default: ~/.cache/contrastkit-bench/lightly-venv)
# torch 2.14.1 + torchvision 0.29.1 + lightly, as lightly's documentation installs them
# (on the project machines torch comes from local disk). It never touches the project's .venv.
set -euo pipefail
VENV="${1:-${LIGHTLY_VENV:-$HOME/.cache/contrastkit-bench/lightly-venv}}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" lightly
"$VENV/bin/python" -c "import torch, torchvision, lightly; print('lightly venv ready:', '$VENV', 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'lightly', lightly.__version__)"

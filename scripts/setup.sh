#!/usr/bin/env bash
# Set everything up: a virtual environment (.venv) with the pinned packages, then the main job: download
# Kuzushiji-MNIST (verified) and train the `quick` preset end to end as a check that all works.
#   bash scripts/setup.sh             # everything
#   bash scripts/setup.sh --no-data   # packages only (CI, or when you will download later)
# Pass a mirror for the data with KUZUSHIJI_MIRROR=URL_OR_FOLDER if the official host is unreachable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -c "import fastai, torch; print(f'fastai {fastai.__version__}, torch {torch.__version__}, GPU: {torch.cuda.is_available()}')"
[ "${1:-}" = "--no-data" ] && exit 0
.venv/bin/python scripts/download_data.py --dataset kmnist
if [ -f scripts/train.py ]; then
  .venv/bin/python scripts/train.py --dataset kmnist --preset quick --out results/quick.json
fi

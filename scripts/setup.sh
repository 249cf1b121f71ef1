#!/usr/bin/env bash
# Set everything up: a virtual environment (.venv) with the pinned packages and JupyterLab, then the main job:
# download Kuzushiji-MNIST (verified) and train the `quick` preset end to end as a check that all works.
#   bash scripts/setup.sh                        # everything
#   bash scripts/setup.sh --no-data              # packages only (CI, or when you will download later)
#   bash scripts/setup.sh --torch cpu            # PyTorch's CPU-only build (the default on Linux without an NVIDIA GPU)
#   bash scripts/setup.sh --torch pypi           # PyPI's build: CUDA on Linux (about 4 GB of NVIDIA libraries more)
#   bash scripts/setup.sh --download-wheels DIR  # a teacher, online: every wheel into DIR (a wheelhouse), nothing else
#   bash scripts/setup.sh --wheelhouse DIR       # a laptop, offline: install from that DIR only, no network
# KUZUSHIJI_TORCH=cpu|pypi does what --torch does. Pass a mirror for the data with KUZUSHIJI_MIRROR=URL_OR_FOLDER if
# the official host is unreachable. Why the CPU build: PyPI's torch for Linux is the CUDA build, and a fresh .venv
# with it measured 6.6 GiB, 4.0 GiB of it NVIDIA's libraries and triton, which a laptop without an NVIDIA GPU cannot use.
set -euo pipefail
cd "$(dirname "$0")/.."

CPU_INDEX=${KUZUSHIJI_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}  # PyTorch's own index of CPU-only wheels
JUPYTER="jupyterlab==4.6.6"  # here, not in requirements.txt: Colab and Kaggle (hosted_setup.py) bring their own Jupyter
TORCH=${KUZUSHIJI_TORCH:-auto}
DATA=1 WHEELHOUSE="" DOWNLOAD=""
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --no-data) DATA="" ;;
    --torch) TORCH=${2:-}; shift ;;
    --torch=*) TORCH=${1#--torch=} ;;
    --wheelhouse) WHEELHOUSE=${2:-}; shift ;;
    --download-wheels) DOWNLOAD=${2:-}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup.sh: unknown option $1 (see bash scripts/setup.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
say() { echo "setup.sh: $*"; }
fail() { echo "setup.sh: $*" >&2; exit 1; }

WHY=""
if [ "$TORCH" = auto ]; then  # the CPU build where a CUDA build could not run: Linux without an NVIDIA driver
  if [ "$(uname -s)" != Linux ]; then TORCH=pypi WHY=" (auto: on $(uname -s) PyPI's build is the one to use)"
  elif nvidia-smi -L >/dev/null 2>&1; then TORCH=pypi WHY=" (auto: nvidia-smi found an NVIDIA GPU)"
  else TORCH=cpu WHY=" (auto: Linux, and nvidia-smi found no NVIDIA GPU; --torch pypi for the CUDA build)"; fi
fi
case "$TORCH" in cpu|pypi) ;; *) fail "--torch must be cpu or pypi, not '$TORCH'." ;; esac
PINS=$(grep -E '^(torch|torchvision)==' requirements.txt | cut -d' ' -f1 | tr '\n' ' ')
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}

reachable() {  # can pip read PyTorch's CPU index? Asked before anything is made, so a failure leaves nothing behind
  "$PY" - "$1" <<'EOF'
import sys, urllib.request
try: urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=15).close()
except Exception as e: print(getattr(e, 'reason', None) or e); sys.exit(1)
EOF
}
if [ -z "$WHEELHOUSE" ] && [ "$TORCH" = cpu ] && ! why=$(reachable "$CPU_INDEX"); then
  fail "PyTorch's CPU index $CPU_INDEX cannot be reached ($why), so nothing was installed: run again online, or with --torch pypi (PyPI's larger build), or --wheelhouse DIR (a teacher's wheels, offline)."
fi

if [ -n "$DOWNLOAD" ]; then  # a wheelhouse for laptops like this one (same OS, processor and Python)
  mkdir -p "$DOWNLOAD"
  say "downloading every wheel into $DOWNLOAD, torch: $TORCH$WHY"
  # shellcheck disable=SC2086
  if [ "$TORCH" = cpu ]; then "$PY" -m pip download -q -d "$DOWNLOAD" --index-url "$CPU_INDEX" $PINS; fi
  "$PY" -m pip download -q -d "$DOWNLOAD" --find-links "$DOWNLOAD" -r requirements.txt "$JUPYTER"
  say "done: $(ls "$DOWNLOAD" | wc -l | tr -d ' ') files, $(du -sh "$DOWNLOAD" | cut -f1). On each laptop: bash scripts/setup.sh --wheelhouse $DOWNLOAD"
  exit 0
fi

MADE=""
if [ -x .venv/bin/python ] && [ "$TORCH" = cpu ] && [ -z "$WHEELHOUSE" ] && .venv/bin/python -m pip show torch 2>/dev/null | grep -qx 'Version: [0-9.]*'; then
  say "note: .venv already holds PyPI's torch, which pip keeps; for the CPU-only build, remove .venv and run this again."
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv; MADE=1
  trap '[ -n "$MADE" ] && rm -rf .venv && echo "setup.sh: the install failed, so the new .venv was removed: fix what pip said above, then run this again." >&2' ERR
fi
if [ -n "$WHEELHOUSE" ]; then
  [ -d "$WHEELHOUSE" ] || { [ -n "$MADE" ] && rm -rf .venv; fail "no such folder: $WHEELHOUSE (make it with bash scripts/setup.sh --download-wheels $WHEELHOUSE)."; }
  say "installing from the wheelhouse $WHEELHOUSE only, no network"
  .venv/bin/python -m pip install -q --no-index --find-links "$WHEELHOUSE" -r requirements.txt "$JUPYTER"
else
  say "installing the pinned packages and $JUPYTER, torch: $TORCH$WHY"
  .venv/bin/python -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  if [ "$TORCH" = cpu ]; then .venv/bin/python -m pip install -q --index-url "$CPU_INDEX" $PINS; fi  # 2.14.1+cpu meets ==2.14.1
  .venv/bin/python -m pip install -q -r requirements.txt "$JUPYTER"
fi
MADE=""
.venv/bin/python -c "import fastai, torch; print(f'fastai {fastai.__version__}, torch {torch.__version__}, GPU: {torch.cuda.is_available()}')"
say "open the notebooks with: .venv/bin/jupyter lab notebooks/"
[ -z "$DATA" ] && exit 0
.venv/bin/python scripts/download_data.py --dataset kmnist
if [ -f scripts/train.py ]; then
  .venv/bin/python scripts/train.py --dataset kmnist --preset quick --out results/quick.json
fi

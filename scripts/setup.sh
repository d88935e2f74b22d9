#!/usr/bin/env bash
# One command on a fresh machine: Debian packages (if missing), .venv at the repo
# root with torch, the build of libq8 and the q8 package, then the main job.
#
#   bash scripts/setup.sh              # set up and run the main job (quickstart, then q8-demo)
#   bash scripts/setup.sh --no-run     # set up only
#
# Q8_TORCH picks the torch requirement (default torch==2.13.0, the CPU build;
# q8 supports torch 2.11 to 2.14). PYTHON picks the interpreter for the venv.
set -euo pipefail
cd "$(dirname "$0")/.."

run_main=1
[ "${1:-}" = "--no-run" ] && run_main=0

# 1. System packages: a C++ compiler, CMake, GoogleTest (Debian's libgtest-dev) and
#    espeak-ng (synthetic speech for examples/python/pretrained_lstm.py).
missing=()
for pkg in g++ cmake libgtest-dev espeak-ng; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "q8 setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# 2. The virtual environment, with torch and the test tools.
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "q8 setup: creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q "${Q8_TORCH:-torch==2.13.0}" -r requirements-dev.txt
# The pretrained model of examples/python/pretrained_lstm.py: only the weights file in
# the wheel is used (resemblyzer is never imported), so none of its dependencies.
.venv/bin/python -m pip install -q --no-deps resemblyzer==0.1.4

# 3. Build libq8 and install the package (editable; CMake does the build).
echo "q8 setup: building libq8 ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
MAX_JOBS="${MAX_JOBS:-$(nproc)}" .venv/bin/python -m pip install -q --no-build-isolation -e .
.venv/bin/python -c "import q8; print('q8', q8.__version__, 'loaded; CPU kernels:', q8.cpu_isa())"

# 4. The main job: the quickstart, then q8-demo (train a digits CNN, quantize it to
#    int8 three ways, export to TorchScript, compare; writes q8-demo-out/report.md).
if [ "$run_main" = 1 ]; then
  .venv/bin/python examples/python/quickstart.py
  .venv/bin/q8-demo --out q8-demo-out
fi

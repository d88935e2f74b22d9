#!/usr/bin/env bash
# Builds q8 against another torch release in a venv of its own and runs the
# Python tests with it (pytest-xdist on all cores: scripts/run_pytest.py).
# scripts/test.sh --matrix calls it for torch 2.11.0, 2.12.0 and 2.14.1. Those wheels are CUDA builds: with nvcc present, the CUDA sources in
# cuda/ compile and link here too, though nothing runs on a GPU.
#
#   bash scripts/test_torch.sh 2.14.1
set -euo pipefail
cd "$(dirname "$0")/.."
version="$1"
venv=".venv-torch-$version"
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q "torch==$version" -r requirements-dev.txt
# A regular (not editable) install into that venv, from its own CMake build folder,
# so the main .venv's q8 is left alone.
Q8_BUILD_DIR="build/torch-$version" Q8_BUILD_TESTS=ON MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$venv/bin/python" -m pip install -q --no-build-isolation --no-deps --force-reinstall .
# The C++ program that runs TorchScript models, built against this torch too.
cmake --build "build/torch-$version" --target q8_jit_run -j "${MAX_JOBS:-$(nproc)}" >/dev/null
export Q8_JIT_RUN="$PWD/build/torch-$version/q8_jit_run"
"$venv/bin/python" -c "import torch, q8; print('q8 built for torch', torch.__version__, '| CUDA kernels:', torch._C._dispatch_has_kernel_for_dispatch_key('q8::fake_quantize_per_tensor', 'CUDA'))"
"$venv/bin/python" scripts/run_pytest.py tests/python

#!/usr/bin/env bash
# Builds q8 against another torch release in a venv of its own and runs the
# Python tests with it (pytest-xdist on all cores: scripts/run_pytest.py).
# scripts/test.sh --matrix calls it for torch 2.11.0 and 2.14.1 (and 2.12.0 on request). Those wheels are CUDA builds: with nvcc
# present, the CUDA sources in cuda/ compile and link against the releases named in Q8_MATRIX_CUDA (default
# "2.14.1"; nothing runs on a GPU); the other releases build the CPU kernels only, which saves minutes of nvcc.
# Tests marked single_torch (long model-accuracy and numerics runs that touch no release-specific torch API)
# are deselected here: scripts/test.sh runs them with the installed torch.
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
# The CUDA leg is a compile-and-link check (no GPU here): one architecture
# (Q8_MATRIX_CUDA_ARCHS, default 90-real) instead of the default three saves two thirds of nvcc's time.
cmake_args="-DQ8_WITH_CUDA=OFF"
for v in ${Q8_MATRIX_CUDA-2.14.1}; do
  [ "$v" = "$version" ] && cmake_args="-DQ8_WITH_CUDA=AUTO -DCMAKE_CUDA_ARCHITECTURES=${Q8_MATRIX_CUDA_ARCHS:-90-real}"
done
Q8_CMAKE_ARGS="$cmake_args" Q8_BUILD_DIR="build/torch-$version" Q8_BUILD_TESTS=ON MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$venv/bin/python" -m pip install -q --no-build-isolation --no-deps --force-reinstall .
# The C++ program that runs TorchScript models, built against this torch too.
cmake --build "build/torch-$version" --target q8_jit_run -j "${MAX_JOBS:-$(nproc)}" >/dev/null
export Q8_JIT_RUN="$PWD/build/torch-$version/q8_jit_run"
"$venv/bin/python" -c "import torch, q8; print('q8 built for torch', torch.__version__, '| CUDA kernels:', torch._C._dispatch_has_kernel_for_dispatch_key('q8::fake_quantize_per_tensor', 'CUDA'))"
"$venv/bin/python" scripts/run_pytest.py tests/python -m "not single_torch"

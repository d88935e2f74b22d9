#!/usr/bin/env bash
# Compiles CUDA sources of q8 with nvcc into /tmp (no link), with the flags the
# CMake build uses, against a CUDA-enabled torch (default: .venv-torch-2.14.1).
# A quick check while writing kernels on a machine without a GPU:
#
#   bash scripts/cuda_compile_check.sh cuda/fake_quantize.cu [more.cu ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${Q8_CUDA_PYTHON:-.venv-torch-2.14.1/bin/python}"
TORCH_INC="$("$PY" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "include"))')"
# CUDA library headers (cuBLAS, cuSPARSE, ...) of the pip wheels torch depends on.
NV_INC=""
for d in "$TORCH_INC"/../../nvidia/*/include; do [ -d "$d" ] && NV_INC="$NV_INC -I $d"; done
ARCHS="${Q8_CUDA_ARCHS:--gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90}"
for f in "$@"; do
  echo "nvcc $f"
  nvcc -c "$f" -o "/tmp/$(basename "$f").o" -std=c++20 --fmad=false --expt-relaxed-constexpr --extended-lambda \
    -Xcompiler=-fPIC -DTORCH_EXTENSION_NAME=q8 -D_GLIBCXX_USE_CXX11_ABI=1 \
    -I csrc -I "$TORCH_INC" -I "$TORCH_INC/torch/csrc/api/include" -I /usr/local/cuda/include $NV_INC $ARCHS \
    -Xcudafe --diag_suppress=20012 -Xcudafe --diag_suppress=186
done

#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU (CUDA toolkit, CMake, ninja and a
# CUDA torch with pytest + hypothesis already installed; no internet needed), in
# one command:
#   1. build libq8 with its CUDA kernels for this GPU's architecture;
#   2. run every CUDA test (pytest -k cuda);
#   3. run compute-sanitizer on a smoke run of every op (scripts/cuda_smoke.py): memcheck
#      (out-of-bounds / misaligned accesses), racecheck (shared-memory data races) and
#      synccheck (__syncthreads / warp-sync misuse);
#   4. run the CUDA benchmarks (fake quantization, int8 linear, int8 conv2d).
# Logs and tables go to $OUT (default build/gpu-check); a summary ends the output.
# It keeps going after a failed step and exits non-zero if any step failed.
#
#   bash scripts/gpu_check.sh            # about 7-12 minutes on an H100/H200 with 16 cores
#   Q8_GPU_CHECK_QUICK=1 bash scripts/gpu_check.sh   # benchmarks in --quick mode
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/build/gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
START=$(date +%s)
declare -a SUMMARY
FAILED=0
elapsed() { echo "$(( $(date +%s) - START ))s"; }
record() {  # name status
  SUMMARY+=("$1: $2 (at $(elapsed))")
  [ "$2" = ok ] || FAILED=1
}

echo "=== machine ($(elapsed))"
{
  date -u +"date: %Y-%m-%d %H:%M UTC"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ local changes)')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null
  "$PY" -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '|', torch.cuda.get_device_name(0), '| capability', torch.cuda.get_device_capability(0))"
  nvcc --version | tail -1
  echo "cores: $(nproc)"
} 2>&1 | tee "$OUT/machine.txt"

echo "=== build ($(elapsed))"
ARCH="$("$PY" -c 'import torch; c = torch.cuda.get_device_capability(0); print(f"{c[0]}{c[1]}-real")')"
TORCH_PREFIX="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
BUILD="$ROOT/build/gpu"
if cmake -S . -B "$BUILD" -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DQ8_BUILD_TESTS=OFF -DQ8_WITH_CUDA=ON \
     -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DPython_EXECUTABLE="$(command -v "$PY")" >"$OUT/build.log" 2>&1 \
   && cmake --build "$BUILD" --target q8 -j "$(nproc)" >>"$OUT/build.log" 2>&1 \
   && cp "$BUILD/libq8.so" python/q8/libq8.so; then
  record build ok
else
  tail -40 "$OUT/build.log"
  record build FAILED
fi
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, q8; print('q8 CUDA kernels:', torch._C._dispatch_has_kernel_for_dispatch_key('q8::linear', 'CUDA'), torch._C._dispatch_has_kernel_for_dispatch_key('q8::fake_quantize_per_tensor', 'CUDA'), torch._C._dispatch_has_kernel_for_dispatch_key('q8::conv2d', 'CUDA'))" 2>&1 | tee -a "$OUT/machine.txt"

echo "=== CUDA tests ($(elapsed))"
if timeout 300 "$PY" -m pytest tests/python -q -p no:cacheprovider -k cuda -x -n 4 >"$OUT/pytest.log" 2>&1 \
   || { grep -q "unrecognized arguments: -n" "$OUT/pytest.log" && \
        timeout 300 "$PY" -m pytest tests/python -q -p no:cacheprovider -k cuda >"$OUT/pytest.log" 2>&1; }; then
  record "CUDA tests" ok
else
  record "CUDA tests" FAILED
fi
tail -25 "$OUT/pytest.log"

echo "=== compute-sanitizer memcheck ($(elapsed))"
if timeout 180 compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" scripts/cuda_smoke.py >"$OUT/memcheck.log" 2>&1; then
  record memcheck ok
else
  record memcheck FAILED
fi
tail -15 "$OUT/memcheck.log"

# racecheck and synccheck look at shared memory and barriers only (global-memory
# races such as a stride-0 state tensor are not theirs to find); racecheck is the
# slowest of the tools, hence the longer limit.
for tool in racecheck synccheck; do
  echo "=== compute-sanitizer $tool ($(elapsed))"
  if timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 1 "$PY" scripts/cuda_smoke.py \
       >"$OUT/$tool.log" 2>&1; then
    record "$tool" ok
  else
    record "$tool" FAILED
  fi
  tail -15 "$OUT/$tool.log"
done

echo "=== benchmarks ($(elapsed))"
QUICK=()
[ "${Q8_GPU_CHECK_QUICK:-0}" = 1 ] && QUICK=(--quick)
timeout 150 "$PY" benchmarks/bench_cuda_fake_quantize.py "${QUICK[@]}" --out "$OUT/bench_cuda_fake_quantize.md" \
  && record "fake-quant benchmark" ok || record "fake-quant benchmark" FAILED
timeout 200 "$PY" benchmarks/bench_cuda_linear.py "${QUICK[@]}" --json "$OUT/bench_cuda_linear.json" \
  | tee "$OUT/bench_cuda_linear.txt" && record "linear benchmark" ok || record "linear benchmark" FAILED
timeout 150 "$PY" benchmarks/bench_cuda_conv.py "${QUICK[@]}" --json "$OUT/bench_cuda_conv.json" \
  | tee "$OUT/bench_cuda_conv.txt" && record "conv benchmark" ok || record "conv benchmark" FAILED

echo "=== summary ($(elapsed))"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
exit $FAILED

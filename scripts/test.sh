#!/usr/bin/env bash
# Every test: C++ (GoogleTest through ctest, plain and under ASan+UBSan), a smoke
# run of the benchmark, and Python (pytest) with torch 2.13, then again built
# against torch 2.11, 2.12 and 2.14. Sets up .venv first if
# it is missing.
#
#   bash scripts/test.sh
#
# Q8_SKIP_SANITIZERS=1 skips the ASan+UBSan build (it compiles libq8 again).
# Q8_ALSO_TORCH (default "2.11.0 2.12.0 2.14.1") names the other torch releases to
# build and test against, each in a venv of its own (scripts/test_torch.sh, about
# 5 GB each: the wheels are CUDA builds); Q8_ALSO_TORCH= skips them.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv/bin/python -c "import q8" >/dev/null 2>&1; then
  bash scripts/setup.sh --no-run
fi
source .venv/bin/activate
TORCH_PREFIX="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')"
JOBS="${MAX_JOBS:-$(nproc)}"

echo "=== C++ tests (ctest) ==="
# The same CMake build folder as setup.py's, so libq8 is not compiled twice.
cmake -S . -B build/py -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DQ8_BUILD_TESTS=ON >/dev/null
cmake --build build/py -j "$JOBS"
(cd build/py && ctest --output-on-failure -j "$JOBS")

if [ "${Q8_SKIP_SANITIZERS:-0}" != 1 ]; then
  echo "=== C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer (ctest) ==="
  cmake -S . -B build/asan -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DQ8_BUILD_TESTS=ON -DQ8_SANITIZE=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build/asan -j "$JOBS" --target q8_cpp_tests
  (cd build/asan && ctest --output-on-failure -j "$JOBS")
fi

echo "=== C++ examples against the installed q8 package (ctest) ==="
# examples/cpp/* built with find_package(q8) from a `cmake --install` of build/py,
# compared with Python (scripts/test_examples.sh; about 1-2 minutes on 2 cores).
bash scripts/test_examples.sh

echo "=== Benchmark smoke run (numbers here are not measurements) ==="
python benchmarks/bench_fake_quantize.py --quick
python benchmarks/bench_linear.py --quick --no-torchao
python benchmarks/bench_observer.py --quick
python -W ignore benchmarks/bench_qat.py --quick
python benchmarks/bench_histogram.py --quick

echo "=== Python tests (pytest) ==="
python -m pytest tests/python -q -p no:cacheprovider

for version in ${Q8_ALSO_TORCH-2.11.0 2.12.0 2.14.1}; do
  echo "=== Python tests against torch $version (pytest) ==="
  bash scripts/test_torch.sh "$version"
done


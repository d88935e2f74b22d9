#!/usr/bin/env bash
# Every test against the torch you have (the one in .venv, set up first if missing):
# C++ (GoogleTest through ctest, plain and under ASan+UBSan), the C++ examples
# against the installed package, a smoke run of every benchmark, and Python (pytest,
# on all cores with pytest-xdist when it is installed).
#
#   bash scripts/test.sh              # the installed torch only
#   bash scripts/test.sh --matrix     # then the torch matrix too (what CI runs, .ci/run)
#
# The torch matrix builds q8 again and runs the Python tests against torch 2.11.0 (the
# oldest release q8 supports) and 2.14.1 (the newest, with the CUDA kernels compiled),
# each in a venv of its own (.venv-torch-<version>, made by scripts/test_torch.sh;
# those wheels are CUDA builds, about 5 GB each, downloaded once). With the installed
# 2.13.0 that brackets 2.12, which costs CI about 7 minutes more:
# Q8_ALSO_TORCH="2.11.0 2.12.0 2.14.1" adds it. Q8_TORCH_MATRIX=1 is the same as --matrix.
#
# Times on the 2-core dev machine, quiet (2026-12-07): C++ tests 2 min, the same under
# ASan+UBSan 5 min, C++ examples 1.5 min, benchmark smoke runs 1 min, pytest
# (1387 tests, pytest-xdist -n 2) 3 min; each torch of the matrix 6 to 9 min.
#
# Q8_SKIP_SANITIZERS=1 skips the ASan+UBSan build (it compiles libq8 again).
# Q8_PYTEST_WORKERS sets pytest-xdist's worker count (default: the number of cores;
# 0 runs pytest in one process).
set -euo pipefail
cd "$(dirname "$0")/.."

matrix="${Q8_TORCH_MATRIX:-0}"
for arg in "$@"; do
  case "$arg" in
    --matrix) matrix=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "scripts/test.sh: unknown argument '$arg' (use --matrix or nothing)" >&2; exit 2 ;;
  esac
done

if ! .venv/bin/python -c "import q8" >/dev/null 2>&1; then
  bash scripts/setup.sh --no-run
fi
source .venv/bin/activate
TORCH_PREFIX="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')"
JOBS="${MAX_JOBS:-$(nproc)}"
START=$(date +%s)
stamp() { echo "=== $1 (at $(( $(date +%s) - START )) s)"; }

stamp "C++ tests (ctest)"
# The same CMake build folder as setup.py's, so libq8 is not compiled twice.
cmake -S . -B build/py -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DQ8_BUILD_TESTS=ON >/dev/null
cmake --build build/py -j "$JOBS"
(cd build/py && ctest --output-on-failure -j "$JOBS")

if [ "${Q8_SKIP_SANITIZERS:-0}" != 1 ]; then
  stamp "C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer (ctest)"
  # -O1 -g1 (line tables): what the sanitizers need for fast code and readable reports,
  # in less than half the compile time of -O2 -g.
  cmake -S . -B build/asan -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DQ8_BUILD_TESTS=ON -DQ8_SANITIZE=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" >/dev/null
  cmake --build build/asan -j "$JOBS" --target q8_cpp_tests
  (cd build/asan && ctest --output-on-failure -j "$JOBS")
fi

stamp "C++ examples against the installed q8 package (ctest)"
# examples/cpp/* built with find_package(q8) from a `cmake --install` of build/py,
# compared with Python (scripts/test_examples.sh; about 1-2 minutes on 2 cores).
bash scripts/test_examples.sh

stamp "Benchmark smoke run (numbers here are not measurements)"
python benchmarks/bench_fake_quantize.py --quick
python benchmarks/bench_linear.py --quick --no-torchao
python benchmarks/bench_observer.py --quick
python -W ignore benchmarks/bench_qat.py --quick
python benchmarks/bench_histogram.py --quick
python -W ignore benchmarks/bench_models.py --quick
python -W ignore benchmarks/bench_rnn.py --quick
python benchmarks/bench_embedding.py --quick
python -W ignore benchmarks/bench_conv.py --quick

stamp "Python tests (pytest, torch $(python -c 'import torch; print(torch.__version__)'))"
python scripts/run_pytest.py tests/python

if [ "$matrix" = 1 ]; then
  for version in ${Q8_ALSO_TORCH-2.11.0 2.14.1}; do
    stamp "Python tests against torch $version (pytest)"
    bash scripts/test_torch.sh "$version"
  done
else
  echo "(torch matrix not run: bash scripts/test.sh --matrix, or Q8_TORCH_MATRIX=1, adds torch ${Q8_ALSO_TORCH-2.11.0 2.14.1})"
fi
stamp "all tests passed"

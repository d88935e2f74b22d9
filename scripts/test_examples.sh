#!/usr/bin/env bash
# The C++ examples (examples/cpp/infer, examples/cpp/qat_train) built against the
# INSTALLED q8 CMake package, as a user builds them, and run through ctest against
# Python's results (tests/examples/). scripts/test.sh calls it after the C++ tests.
#
#   bash scripts/test_examples.sh
#
# 1. libq8 from the CMake build folder $Q8_BUILD_DIR (default build/py, the one
#    setup.py and scripts/test.sh use: nothing is compiled twice) is installed with
#    `cmake --install` into build/examples/prefix;
# 2. tests/examples/make_data.py trains and saves two small int8 TorchScript models
#    (q8.prepare_qat -> q8.convert, and q8.quantize_dynamic), the test data, and
#    Python's logits on it, into build/examples/data;
# 3. tests/examples/CMakeLists.txt (find_package(q8) with
#    CMAKE_PREFIX_PATH="build/examples/prefix;<torch>") builds the examples and
#    three registration checks in build/examples/build, and ctest runs them:
#    infer's logits must be bit-equal to Python's, qat_train's loss must fall and
#    its saved model load back (in C++ and in Python); q8-demo's int8 models run in
#    infer too, when the demo's dependencies are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
  source .venv/bin/activate
fi
TORCH_PREFIX="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')"
JOBS="${MAX_JOBS:-$(nproc)}"
BUILD_DIR="${Q8_BUILD_DIR:-build/py}"
OUT="$PWD/build/examples"

if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" >/dev/null
fi
cmake --build "$BUILD_DIR" --target q8 -j "$JOBS" >/dev/null
cmake --install "$BUILD_DIR" --prefix "$OUT/prefix" >/dev/null
echo "q8 installed into $OUT/prefix (from $BUILD_DIR)"

python tests/examples/make_data.py --out "$OUT/data"

# q8-demo's int8 models too, when its dependencies are installed (about 10 s):
# infer runs them on the demo's test set. Q8_SKIP_DEMO=1 skips them.
DEMO=""
if [ "${Q8_SKIP_DEMO:-0}" != 1 ] && python -c "import sklearn, matplotlib, tqdm" >/dev/null 2>&1; then
  DEMO="$OUT/demo"
  python -m q8.demo --quick --threads 1 --no-progress --out "$DEMO" >"$OUT/demo.log" 2>&1 \
    || { cat "$OUT/demo.log"; exit 1; }
  grep -E "test accuracy" "$OUT/demo.log" || true
  python tests/examples/make_data.py --demo-out "$DEMO"
else
  echo "q8-demo's models skipped (Q8_SKIP_DEMO=1, or scikit-learn / matplotlib / tqdm missing)"
fi

cmake -S tests/examples -B "$OUT/build" -G Ninja -DCMAKE_PREFIX_PATH="$OUT/prefix;$TORCH_PREFIX" \
  -DQ8_EXAMPLES_DATA="$OUT/data" -DQ8_EXAMPLES_DEMO="$DEMO" -DQ8_PYTHON="$(command -v python)" >/dev/null
cmake --build "$OUT/build" -j "$JOBS"
(cd "$OUT/build" && ctest --output-on-failure -j "$JOBS")

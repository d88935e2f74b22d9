# Test programs driven from pytest; included by CMakeLists.txt inside the
# Q8_BUILD_TESTS block (after the q8 target and GTest are defined).
#
# q8_jit_run <model.pt> <inputs.pt> <out.pt> [device]: loads a TorchScript model with
# torch::jit::load (q8's ops registered by linking libq8) and runs it; used by
# tests/python/test_int8_linear_module.py, which looks for it at build/py/q8_jit_run.
add_executable(q8_jit_run ${CMAKE_CURRENT_LIST_DIR}/jit_run.cpp)
target_link_libraries(q8_jit_run PRIVATE q8)
set_target_properties(q8_jit_run PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
if(Q8_SANITIZE)
  target_compile_options(q8_jit_run PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer)
endif()

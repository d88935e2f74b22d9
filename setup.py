"""Builds q8's Python package.

The compiled part is the same libq8 that C++ programs link: setup.py only drives
CMakeLists.txt (one source list) and puts libq8.so inside the q8 package.

    pip install --no-build-isolation -e .

Environment: Q8_CMAKE_ARGS (extra -D options, e.g. -DQ8_WITH_CUDA=OFF),
Q8_BUILD_DIR (CMake build folder, default build/py), MAX_JOBS (parallel jobs).
"""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def get_ext_filename(self, fullname):
        # The library keeps its plain name: q8/libq8.so, loaded by q8/__init__.py.
        if fullname.split(".")[-1] == "libq8":
            return os.path.join(*fullname.split(".")[:-1], "libq8.so")
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        import torch

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(os.environ.get("Q8_BUILD_DIR", ROOT / "build" / "py")).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            # scripts/test.sh turns the C++ tests on in this same build folder.
            f"-DQ8_BUILD_TESTS={os.environ.get('Q8_BUILD_TESTS', 'OFF')}",
            f"-DPython_EXECUTABLE={sys.executable}",
        ]
        if _has_ninja():
            args += ["-G", "Ninja"]
        args += shlex.split(os.environ.get("Q8_CMAKE_ARGS", ""))
        subprocess.check_call(args)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", str(build_dir), "--target", "q8", "-j", jobs])
        # The package carries the library itself (not the versioned symlink chain).
        out_dir.mkdir(parents=True, exist_ok=True)
        # Copy to a temporary name, then rename: a process that has the old libq8.so
        # loaded keeps its (unlinked) file instead of seeing it rewritten under it.
        tmp = out_dir / "libq8.so.tmp"
        shutil.copyfile((build_dir / "libq8.so").resolve(), tmp)
        os.replace(tmp, out_dir / "libq8.so")


def _has_ninja():
    try:
        subprocess.check_output(["ninja", "--version"])
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


DEMO_REQUIRES = ["scikit-learn", "matplotlib", "tqdm"]

setup(
    name="q8",
    version="0.1.0",
    description="int8 quantization operators for PyTorch (C++/CUDA custom ops)",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[CMakeExtension("q8.libq8")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=["torch>=2.11,<2.15"],
    # q8-demo (python -m q8.demo) needs these; q8 itself does not.
    extras_require={"demo": DEMO_REQUIRES},
    entry_points={"console_scripts": ["q8-demo = q8.demo:main"]},
    zip_safe=False,
)

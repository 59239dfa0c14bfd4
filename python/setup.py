"""Builds the torch-mhc package: libmhc.so, compiled by the repository's CMake project (the op
library alone, -DMHC_OPS_ONLY=ON, target `mhc`), goes into the package beside its torch-version stamp.

The library is C++ against LibTorch's ABI, so it is built against the torch of the Python that runs
this build, and only that one: `pip install --no-build-isolation ./python`. pip's default isolated
build environment has no torch (naming torch in pyproject.toml's build requirements would have pip
download another one there).
"""
import os
import shlex
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the CMake project, python/'s parent
LIBRARY_FILES = ("libmhc.so", "libmhc.torch-version")

try:
    import torch
except ImportError as error:
    # Also what pip's default isolated build says: it hides the environment's torch.
    sys.exit(f"torch-mhc: {sys.executable} cannot import torch ({error}); the library is built against the "
             "installing environment's torch: install torch 2.11 to 2.14 there first, then "
             "`pip install --no-build-isolation ./python`")
TORCH_MAJOR_MINOR = ".".join(torch.__version__.split("+")[0].split(".")[:2])


class BuildPyWithLibrary(build_py):
    """The package's Python files, then libmhc.so built by CMake and copied into it."""

    def run(self):
        super().run()
        if not os.path.isfile(os.path.join(ROOT, "CMakeLists.txt")):
            sys.exit(f"torch-mhc: {ROOT}/CMakeLists.txt is missing; the package builds from the repository "
                     "checkout (python/ beside CMakeLists.txt, cmake/, include/ and src/)")
        tree = os.path.abspath(os.path.join(self.get_finalized_command("build").build_temp, "cmake"))
        configure = ["cmake", "-S", ROOT, "-B", tree, "-DCMAKE_BUILD_TYPE=Release", "-DMHC_OPS_ONLY=ON",
                     "-DMHC_BUILD_TESTS=OFF", f"-DMHC_PYTHON={sys.executable}",
                     # The installed library looks for torch's libraries beside it in site-packages,
                     # not in the environment that built it (a wheel may be installed elsewhere).
                     "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON", "-DCMAKE_INSTALL_RPATH=$ORIGIN/../torch/lib"]
        # A tree keeps the generator it was made with: name one only for a new tree.
        if shutil.which("ninja") and not os.path.isfile(os.path.join(tree, "CMakeCache.txt")):
            configure += ["-G", "Ninja"]
        # A CPU torch links no CUDA ops (CMakeLists.txt), so nvcc is not even looked for.
        if torch.version.cuda is None:
            configure.append("-DMHC_CUDA=off")
        # After ours, so that they override them: the convention scikit-build and conda follow.
        configure += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        self._run(configure)
        # CMAKE_BUILD_PARALLEL_LEVEL, when set, is cmake --build's job count.
        self._run(["cmake", "--build", tree, "--target", "mhc"])
        package = os.path.join(self.build_lib, "mhc")
        for name in LIBRARY_FILES:
            shutil.copy2(os.path.join(tree, name), os.path.join(package, name))

    @staticmethod
    def _run(command):
        print(shlex.join(command), flush=True)
        if subprocess.call(command) != 0:
            sys.exit(f"torch-mhc: `{shlex.join(command)}` failed (its output is above)")


class BinaryDistribution(Distribution):
    """A wheel for this platform and Python (libmhc.so is native code tied to this torch), not py3-none-any."""

    def has_ext_modules(self):
        return True


setup(
    cmdclass={"build_py": BuildPyWithLibrary},
    distclass=BinaryDistribution,
    # The library loads only into the torch major.minor it was built against (mhc/_library.py):
    # pip then flags an upgrade of torch that would break it.
    install_requires=[f"torch=={TORCH_MAJOR_MINOR}.*"],
)

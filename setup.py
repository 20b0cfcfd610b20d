"""Build driver: setuptools metadata lives in pyproject.toml; this file adds the C++ extension alignslm._C.

The extension (csrc/, pybind11) is built by CMake through the build_ext below.
Environment switches:
  ALIGNSLM_SKIP_CPP_BUILD=1   do not build it (the package then runs on its numpy path)
  ALIGNSLM_FORCE_CPP_BUILD=1  a failed build is an error (default: warn and install without it)
  ALIGNSLM_CMAKE_ARGS="..."   extra arguments for the CMake configure step
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _warn(msg: str) -> None:
    sys.stderr.write(f"alignslm setup: {msg}\n")


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


def _cmake_exe() -> str:
    try:  # the PyPI `cmake` package (a build requirement) first, then the system one
        import cmake

        exe = Path(cmake.CMAKE_BIN_DIR) / "cmake"
        if exe.exists():
            return str(exe)
    except (ImportError, AttributeError):
        pass
    exe = shutil.which("cmake")
    if exe is None:
        raise RuntimeError("CMake not found (pip install cmake, or install it with your system package manager)")
    return exe


class CMakeBuild(build_ext):
    def run(self) -> None:
        if _flag("ALIGNSLM_SKIP_CPP_BUILD"):
            _warn("ALIGNSLM_SKIP_CPP_BUILD is set: not building alignslm._C (numpy k-means path)")
            return
        super().run()

    def build_extension(self, ext: Extension) -> None:
        try:
            self._cmake_build(ext)
        except Exception as e:  # an optional extension: fall back unless forced
            if _flag("ALIGNSLM_FORCE_CPP_BUILD"):
                raise
            _warn(f"building alignslm._C failed ({type(e).__name__}: {e}); installing without it, "
                  "the k-means quantizer will use numpy. Set ALIGNSLM_FORCE_CPP_BUILD=1 to make this fatal.")

    def _cmake_build(self, ext: Extension) -> None:
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(self.build_temp).resolve() / "cmake"
        build_temp.mkdir(parents=True, exist_ok=True)
        cfg = "Debug" if self.debug else "Release"
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY_{cfg.upper()}={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DALIGNSLM_VERSION={self.distribution.get_version()}",
            *shlex.split(os.environ.get("ALIGNSLM_CMAKE_ARGS", "")),
        ]
        cmake = _cmake_exe()
        subprocess.run([cmake, "-S", str(ROOT), "-B", str(build_temp), *args], check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(min(4, os.cpu_count() or 1))
        subprocess.run([cmake, "--build", str(build_temp), "--config", cfg, "-j", jobs], check=True)


setup(ext_modules=[CMakeExtension("alignslm._C")], cmdclass={"build_ext": CMakeBuild})

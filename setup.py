"""Build driver. The C++ extension alignslm._C (csrc/, CMake + pybind11) is added by the k-means work."""
from setuptools import setup

setup()

"""Builds the native extension postemb_rt._C; all metadata lives in pyproject.toml."""
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

ext_modules = [
    Pybind11Extension(
        "postemb_rt._C",
        sorted(glob("csrc/*.cpp")),  # csrc/tests/ holds C++-only test programs, not built here
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3"],  # no -march=native: wheels must run on any x86-64
    ),
]

setup(
    packages=find_packages(include=["postemb_rt", "postemb_rt.*"]) + ["postemb_rt.kernels"],
    package_dir={"postemb_rt.kernels": "kernels"},
    package_data={"postemb_rt": ["models/*/*", "py.typed"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
)

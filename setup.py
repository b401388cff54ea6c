"""Builds the native extension postemb_rt._C; all metadata lives in pyproject.toml."""
from glob import glob
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

ext_modules = [
    Pybind11Extension(
        "postemb_rt._C",
        sorted(glob("csrc/*.cpp")),  # csrc/tests/ holds C++-only test programs, not built here
        include_dirs=["csrc"],
        # the headers: a change to one rebuilds the extension, and setuptools puts them in the sdist (without them
        # a wheel built from the sdist, `python -m build`'s default, fails: "batcher.h: No such file")
        depends=sorted(glob("csrc/*.h")),
        cxx_std=17,
        extra_compile_args=["-O3"],  # no -march=native: wheels must run on any x86-64
    ),
]

# The shipped models are data (package_data below), but setuptools sees a directory with an
# identifier name as a package and warns, for each, that it is missing from `packages` (a
# configuration it calls ambiguous): listing them says that they are meant to ship.
MODEL_DIRS = sorted(f"postemb_rt.models.{d.name}" for d in (Path(__file__).parent / "postemb_rt/models").iterdir()
                    if d.is_dir() and d.name.isidentifier())

setup(
    packages=find_packages(include=["postemb_rt", "postemb_rt.*"]) + ["postemb_rt.kernels", "postemb_rt.models",
                                                                     *MODEL_DIRS],
    package_dir={"postemb_rt.kernels": "kernels"},
    package_data={"postemb_rt": ["models/*/*"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
)

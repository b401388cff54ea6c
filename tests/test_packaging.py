"""The sdist holds everything a wheel is built from: `python -m build` (sdist, then a wheel from it) and
`pip install postemb_rt-X.tar.gz` compile the extension from the sdist alone."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# setup.py imports pybind11 (a build requirement, in the [test] extra to build the sdist in this venv)
pytest.importorskip("pybind11", reason="the [test] extra installs pybind11")


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to list the tracked files")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory) -> set[str]:
    """The files of an sdist built, as `python -m build --sdist` builds it, from a copy of the tracked files."""
    src = tmp_path_factory.mktemp("src")
    for rel in _tracked():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    out = tmp_path_factory.mktemp("dist")
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    name = done.stdout.strip().splitlines()[-1]
    with tarfile.open(out / name) as tar:
        top = name.removesuffix(".tar.gz")
        return {m.name.removeprefix(top + "/") for m in tar.getmembers() if m.isfile()}


def test_the_sdist_holds_every_file_the_extension_includes(sdist_names):
    needed = set()
    for f in sorted((ROOT / "csrc").glob("*.[ch]pp")) + sorted((ROOT / "csrc").glob("*.h")):
        local = [h for h in re.findall(r'#include "([^"]+)"', f.read_text()) if (ROOT / "csrc" / h).exists()]
        needed |= {f"csrc/{h}" for h in local}
    assert needed, "csrc/*.cpp include no local header: this test reads the wrong folder"
    assert needed <= sdist_names, f"missing from the sdist: {sorted(needed - sdist_names)}"
    assert {p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").glob("*.cpp")} <= sdist_names


def test_the_sdist_holds_the_package_its_models_kernels_and_license(sdist_names):
    shipped = [p for p in _tracked() if p.startswith(("postemb_rt/", "kernels/"))]
    assert any(p.startswith("postemb_rt/models/default/") for p in shipped)
    missing = sorted(set(shipped) - sdist_names)
    assert not missing, f"tracked files missing from the sdist: {missing[:20]}"
    assert {"LICENSE", "README.md", "pyproject.toml", "setup.py"} <= sdist_names

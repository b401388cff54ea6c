"""pytest plugin: with ``POSTEMB_REQUIRE_EXTRAS=1`` (set by ``.ci/run``), a test that skips
because an extra, a binary, the C++ extension or the fetched teacher is missing fails instead.

CI installs every extra (``make test``) and fetches the distillation teacher (``.ci/run``), so
such a skip there means a broken environment that would otherwise turn a whole folder of tests
green by not running them. Skips that depend on the hardware (CUDA, TensorRT, which CI machines
cannot have) or on optional shared data stay skips. Loaded by the root ``conftest.py``.
"""
from __future__ import annotations

import os
import re

import pytest

ENV = "POSTEMB_REQUIRE_EXTRAS"
# How the suite's skip reasons say "something that CI installs is missing" (pytest's own
# importorskip message included).
MISSING = re.compile(r"could not import|is not installed|not installed \(|is not built|is not loaded|"
                     r"binary not found|needs the \[\w+\] extra|no C\+\+ compiler|cannot build with -fsanitize|"
                     r"not fetched",
                     re.IGNORECASE)


def _reason(rep) -> str:
    lr = rep.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2])
    return str(lr)


def _strict(rep) -> None:
    if not (os.environ.get(ENV) == "1" and rep.skipped and not hasattr(rep, "wasxfail")):
        return
    reason = _reason(rep)
    if MISSING.search(reason):
        rep.outcome = "failed"
        rep.longrepr = (f"{ENV}=1: this test skipped because something CI installs is missing, which counts as a "
                        f"failure here. Skip reason: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _strict(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _strict(outcome.get_result())

"""Session set-up shared by tests/ and benchmarks/.

Unless POSTEMB_CACHE is set, a pytest session uses a fresh ONNX cache (removed at the
end), so the onnxruntime backend's first-use export is exercised on every CI run.
"""
import os
import shutil
import tempfile

_TMP_CACHE = None


def pytest_configure(config):
    global _TMP_CACHE
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not os.environ.get("POSTEMB_CACHE"):
        _TMP_CACHE = tempfile.mkdtemp(prefix="postemb-cache-")
        os.environ["POSTEMB_CACHE"] = _TMP_CACHE


def pytest_unconfigure(config):
    if _TMP_CACHE:
        shutil.rmtree(_TMP_CACHE, ignore_errors=True)


pytest_plugins = ["tests.ci_skips"]  # POSTEMB_REQUIRE_EXTRAS=1 (CI): a skip for a missing extra fails

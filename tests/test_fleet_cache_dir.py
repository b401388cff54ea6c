"""Where the caches go in a container: a user with no home directory (an arbitrary uid without a passwd
entry, HOME unset) gets one error naming POSTEMB_CACHE, not Python's 'Could not determine home directory'."""
import pytest

from postemb_rt import onnx_export
from postemb_rt.errors import PostEmbError


def test_no_home_directory_names_postemb_cache_as_the_fix(monkeypatch):
    for name in ("POSTEMB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(onnx_export.Path, "home", staticmethod(no_home))
    with pytest.raises(PostEmbError, match=r"no home directory.*Fix: set POSTEMB_CACHE to a writable folder"):
        onnx_export.cache_root()


def test_postemb_cache_then_xdg_cache_home_need_no_home(monkeypatch, tmp_path):
    monkeypatch.setattr(onnx_export.Path, "home", staticmethod(lambda: (_ for _ in ()).throw(RuntimeError("no"))))
    monkeypatch.delenv("POSTEMB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert onnx_export.cache_root() == tmp_path / "postemb_rt"
    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path / "c"))
    assert onnx_export.cache_root() == tmp_path / "c"

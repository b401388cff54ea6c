"""Caches are verified or rebuilt, never trusted blindly: the ONNX export / int8 cache
(``onnx_export._cached``: a manifest with each file's sha256) and the fidelity cache
(``fidelity.cached``: each entry sealed to its key and content). Damaged, partial, old-format,
moved and forged entries are rebuilt; new entries are written durably."""
from __future__ import annotations

import json
import logging

import pytest

from postemb_rt import durable, fidelity, onnx_export
from postemb_rt.fidelity import Fidelity
from postemb_rt.model_dir import _file_digest, load_model_dir

pytest.importorskip("onnxruntime")


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 2-layer, 32-wide sentence-transformers folder: exports in about a second."""
    from tests.st_models import build_st_folder

    return load_model_dir(build_st_folder(tmp_path_factory.mktemp("tiny") / "tiny-st", arch="bert"))


# -- the ONNX cache ---------------------------------------------------------------------------
def _export_counting(monkeypatch):
    calls = []
    real = onnx_export.export_onnx

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(onnx_export, "export_onnx", counting)
    return calls


def test_a_new_entry_has_a_manifest_and_is_fsynced_before_it_is_published(cache, tiny_model, monkeypatch):
    synced = []
    real = onnx_export.fsync_tree
    monkeypatch.setattr(onnx_export, "fsync_tree", lambda d: (synced.append(sorted(p.name for p in d.iterdir())),
                                                               real(d))[1])
    md = onnx_export.cached_export(tiny_model)
    man = json.loads((md.path / onnx_export.CACHE_MANIFEST).read_text())
    assert man["files"]["model.onnx"] == _file_digest(md.path / "model.onnx")
    assert {"model.onnx", "postemb.json", "tokenizer.json"} <= set(man["files"])
    assert synced and "model.onnx" in synced[0] and onnx_export.CACHE_MANIFEST in synced[0]


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "manifest removed", "manifest of another key",
                                    "forged file"])
def test_a_damaged_or_forged_onnx_entry_is_rebuilt(cache, tiny_model, monkeypatch, caplog, damage):
    first = onnx_export.cached_export(tiny_model)
    good = (first.path / "model.onnx").read_bytes()
    onnx = first.path / "model.onnx"
    if damage == "truncated":  # a power cut before the data reached the disk
        onnx.write_bytes(good[: len(good) // 2])
    elif damage == "flipped byte":
        onnx.write_bytes(good[:-10] + bytes([good[-10] ^ 0xFF]) + good[-9:])
    elif damage == "manifest removed":  # an entry written by an older version: a postemb.json is not enough
        (first.path / onnx_export.CACHE_MANIFEST).unlink()
    elif damage == "manifest of another key":
        man = json.loads((first.path / onnx_export.CACHE_MANIFEST).read_text())
        (first.path / onnx_export.CACHE_MANIFEST).write_text(json.dumps({**man, "key": "another"}))
    else:  # a different, valid-looking model.onnx under the old manifest
        onnx.write_bytes(good.replace(b"embedding", b"embeddinG", 1))
    calls = _export_counting(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="postemb_rt"):
        again = onnx_export.cached_export(tiny_model)
    assert calls == [1], "the damaged entry was trusted instead of rebuilt"
    assert "is not trusted" in caplog.text and "rebuilding it" in caplog.text
    assert again.path == first.path and (again.path / "model.onnx").read_bytes() == good
    assert not [p for p in again.path.parent.iterdir() if p.name.startswith((".build-", ".damaged-"))]
    assert onnx_export.cached_export(tiny_model) and calls == [1]  # the rebuilt entry is trusted


def _at_once(fn, n: int = 2) -> list:
    """``fn()`` in ``n`` threads started together (each takes the cache's OS file lock through its own
    file descriptor, as separate processes do); their results."""
    import threading

    start, out = threading.Barrier(n), [None] * n

    def run(i):
        start.wait()
        out[i] = fn()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_concurrent_first_uses_build_an_entry_once(cache, tiny_model, monkeypatch, caplog):
    """Two server workers (or Ray workers on a node) on a cold cache: one exports, the other waits."""
    import time

    calls, real = [], onnx_export.export_onnx

    def slow(*a, **k):
        calls.append(1)
        time.sleep(1)  # long enough that the other caller arrives while this one builds
        return real(*a, **k)

    monkeypatch.setattr(onnx_export, "export_onnx", slow)
    with caplog.at_level(logging.WARNING, logger="postemb_rt"):
        got = _at_once(lambda: onnx_export.cached_export(tiny_model))
    assert calls == [1], "both callers exported"
    assert got[0].path == got[1].path and "waiting for another process that is building" in caplog.text


# -- the fidelity cache -----------------------------------------------------------------------
GOOD = Fidelity(0.999, 0.99, 0.97, 120, "test posts")


def test_concurrent_first_uses_measure_a_fidelity_once(cache):
    import time

    calls = []

    def slow():
        calls.append(1)
        time.sleep(1)
        return GOOD
    assert _at_once(lambda: fidelity.cached("k", slow)) == [GOOD, GOOD] and calls == [1]


def _compute(results):
    def compute():
        results.append(GOOD)
        return GOOD
    return compute


def test_fidelity_is_measured_once_then_read_back(cache):
    calls = []
    assert fidelity.cached("k", _compute(calls)) == GOOD
    assert fidelity.cached("k", _compute(calls)) == GOOD and len(calls) == 1


@pytest.mark.parametrize("entry", [
    [1, 2, 3],  # valid JSON, another shape
    {"mean_cos": "high"},
    {"key": "k", "fidelity": {"mean_cos": 1.0}, "sha256": "0" * 64},
    "old format: a bare passing measurement",
    "moved from another key",
    "forced",
])
def test_a_wrong_shape_moved_or_forged_fidelity_entry_is_measured_again(cache, caplog, entry):
    path = fidelity.entry_path("k")
    path.parent.mkdir(parents=True)
    perfect = {"mean_cos": 1.0, "min_cos": 1.0, "overlap_at_10": 1.0, "posts": 1200, "source": "forged",
               "forced": False}
    if entry == "old format: a bare passing measurement":  # what the cache held before entries were sealed
        entry = perfect
    elif entry == "moved from another key":
        fidelity.cached("other", lambda: Fidelity(**perfect))
        entry = json.loads(fidelity.entry_path("other").read_text())
    elif entry == "forced":  # sealed correctly, but only an exported artefact may be forced
        d = {**perfect, "forced": True, "mean_cos": 0.5}
        entry = {"key": "k", "fidelity": d, "sha256": durable.seal("k", "fidelity", d)}
    path.write_text(json.dumps(entry))
    calls = []
    with caplog.at_level(logging.WARNING, logger="postemb_rt"):
        assert fidelity.cached("k", _compute(calls)) == GOOD
    assert len(calls) == 1 and "is not trusted" in caplog.text
    assert fidelity.cached("k", _compute(calls)) == GOOD and len(calls) == 1  # the new entry is trusted


def test_an_entry_sealed_before_numerics_existed_is_trusted(cache, caplog):
    """Fidelity.numerics came later: every entry of an upgraded cache was called untrusted and measured again."""
    d = {"mean_cos": 0.999, "min_cos": 0.99, "overlap_at_10": 0.95, "posts": 1200, "source": "before", "forced": False}
    path = fidelity.entry_path("k")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"key": "k", "fidelity": d, "sha256": durable.seal("k", "fidelity", d)}))
    calls = []
    with caplog.at_level(logging.WARNING, logger="postemb_rt"):
        assert fidelity.cached("k", _compute(calls)) == Fidelity(**d)
    assert not calls and "not trusted" not in caplog.text


def test_texts_key_tells_apart_lists_a_join_would_confuse():
    assert fidelity.texts_key(["a\x00b"]) != fidelity.texts_key(["a", "b"])

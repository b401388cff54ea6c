"""Fixtures for the scale-out tests (backfill on Ray Data, retrieval on FAISS).

They need the ``[scale]`` extra (``pip install -e '.[scale]'``); without it they skip with
that reason. Ray runs locally with 2 CPUs, started once per session and shut down after.
"""
from __future__ import annotations

import pytest

from tests.conftest import SAMPLE_TEXTS

# distinct posts of varied length for the small backfill sets (ids are positions)
POSTS = [t for t in SAMPLE_TEXTS if t] + [f"post number {i}: {w} and more about {w}" for i, w in enumerate(
    ["hiring", "climate", "python", "startups", "football", "music", "remote work", "AI safety", "coffee",
     "databases", "design", "marketing", "energy", "travel", "health", "finance", "open source", "robots",
     "teaching", "cycling", "books", "cooking", "security", "the cloud", "mentoring", "kubernetes", "art",
     "leadership", "sleep", "batteries", "space", "chess"])]


def prompted_model(tmp_path):
    """A copy of the default model with e5-style prompts in its postemb.json: query "query: ", passage
    "passage: " (its default prompt); document stays "" (same model version: its vectors are default's)."""
    import json
    import shutil

    from postemb_rt.model_dir import resolve

    d = tmp_path / "prompted"
    shutil.copytree(resolve("default").path, d)
    cfg = json.loads((d / "postemb.json").read_text())
    cfg.update(prompts={"query": "query: ", "passage": "passage: "}, default_prompt_name="passage")
    (d / "postemb.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[scale]')")
    pytest.importorskip("ray.data", reason="ray[data] is not installed (pip install -e '.[scale]')")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def default_encoder():
    from postemb_rt import Encoder

    enc = Encoder.from_pretrained("default", device="cpu")
    yield enc
    enc.close()

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

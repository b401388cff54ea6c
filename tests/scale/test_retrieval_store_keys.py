"""``PostIndex.from_redis`` reads the keys of its prefix and vector version only: glob characters
(``* ? [ ] \\``) in either are matched literally by its SCAN pattern, and a key under a longer version
(``{prefix}:{version}:more:{post}``) is another version's record, not this one's."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("faiss", reason="faiss is not installed (pip install -e '.[scale]')")
pytest.importorskip("redis", reason="redis-py is not installed")
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server not installed (apt-get install redis-server)")

from postemb_rt.errors import ValidationError  # noqa: E402
from postemb_rt.retrieval import PostIndex  # noqa: E402


@pytest.fixture
def store(tmp_path):
    from postemb_rt import nearline
    from tests.nearline.conftest import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    client = nearline.connect(server.url)
    rng = np.random.default_rng(0)

    def put(prefix: str, version: str, pid: str) -> None:
        v = rng.standard_normal(8).astype(np.float32)
        client.hset(nearline.store_key(version, pid, prefix),
                    mapping={"post_id": pid, "vector": (v / np.linalg.norm(v)).tobytes(), "prompt_name": ""})
    try:
        yield client, put
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("prefix, foreign", [("a[1]", "a1"), ("a*", "ab"), ("a?", "ax"), ("a\\b", "ab")])
def test_glob_characters_in_the_prefix_match_literally(store, prefix, foreign):
    client, put = store
    put(prefix, "v1", "mine")
    put(foreign, "v1", "theirs")
    assert PostIndex.from_redis(client, "v1", prefix=prefix).ids == ["mine"]


def test_glob_characters_in_the_vector_version_match_literally(store):
    client, put = store
    put("p", "v[2]", "mine")
    put("p", "v2", "theirs")
    assert PostIndex.from_redis(client, "v[2]", prefix="p").ids == ["mine"]
    with pytest.raises(ValidationError, match=r"`vector_version` 'v\*'.* Versions it holds: 'v2', 'v\[2\]'"):
        PostIndex.from_redis(client, "v*", prefix="p")  # nothing is stored under the literal 'v*'


def test_a_longer_versions_keys_are_not_read_as_this_versions(store):
    """``p:v3:b:zz`` is post 'zz' of version 'v3:b'; ``p:v3:a:b`` is post 'a:b' of 'v3' (ids may hold ':')."""
    client, put = store
    put("p", "v3", "a:b")
    put("p", "v3:b", "zz")
    assert PostIndex.from_redis(client, "v3", prefix="p").ids == ["a:b"]


def test_a_client_that_decodes_replies_is_refused_with_the_fix(store):
    """A vector is raw float32 bytes: a decode_responses=True client failed on it with a bare UnicodeDecodeError."""
    import redis

    client, put = store
    put("postemb", "v1", "p0")
    kw = client.connection_pool.connection_kwargs
    decoding = redis.Redis(host=kw["host"], port=kw["port"], decode_responses=True)
    try:
        with pytest.raises(ValidationError, match=r"`client` decodes replies to str \(decode_responses=True\).* Fix: "
                                                  r"nearline.connect\(url\)"):
            PostIndex.from_redis(decoding, "v1")
    finally:
        decoding.close()

"""``postemb_rt.retrieval``: the FAISS index (exact vs brute force, ANN recall, persistence,
incremental adds, sources) and member embeddings by Ward clustering (edge cases, merging)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="faiss is not installed (pip install -e '.[scale]')")
pytest.importorskip("scipy", reason="scipy is not installed (pip install -e '.[scale]')")

from postemb_rt.errors import ValidationError  # noqa: E402
from postemb_rt.retrieval import (PostIndex, choose_kind, mean_embedding, member_embedding, quotas,  # noqa: E402
                                  retrieve)
from tests.scale.conftest import POSTS  # noqa: E402

DIM = 50


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_unit(n, seed=0, dim=DIM):
    return unit(np.random.default_rng(seed).standard_normal((n, dim)))


def clustered_unit(n, centers=500, spread=0.5, seed=0, dim=DIM):
    """Unit vectors around `centers` random directions: closer to real embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim))
    return unit(c[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, dim)))


def recall_at(k, exact_pos, ann_pos):
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(exact_pos, ann_pos)]))


# -- the index ----------------------------------------------------------------------------------
def test_exact_search_agrees_with_brute_force():
    x, q = random_unit(800, 1), random_unit(25, 2)
    idx = PostIndex.build([f"p{i}" for i in range(800)], x)
    assert idx.kind == "flat"
    scores, pos = idx.search_positions(q, 10)
    sims = q @ x.T
    want = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    assert np.array_equal(pos, want)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, want, 1), atol=1e-5)
    hits = idx.search(q[0], k=3)[0]
    assert [h.id for h in hits] == [f"p{i}" for i in want[0, :3]]


def test_auto_kind_follows_size():
    assert [choose_kind(n) for n in (10, 20_000, 20_001, 2_000_000, 2_000_001)] == ["flat", "flat", "hnsw", "hnsw", "ivf"]


def test_hnsw_recall_at_10_vs_exact_on_50k_random_unit_vectors():
    # uniform random directions in 50-d: the hardest case for a graph index (no structure)
    x, q = random_unit(50_000, 3), random_unit(200, 4)
    ann = PostIndex.build(range(50_000), x)
    assert ann.kind == "hnsw"  # what auto picks at this size
    exact = PostIndex.build(range(50_000), x, kind="flat")
    assert recall_at(10, exact.search_positions(q, 10)[1], ann.search_positions(q, 10)[1]) >= 0.95


def test_ivf_recall_at_10_vs_exact_on_50k_clustered_unit_vectors():
    x = clustered_unit(50_000, seed=5)
    q = unit(x[np.random.default_rng(6).choice(50_000, 200, replace=False)] + 0.05 * random_unit(200, 7))
    ann = PostIndex.build(range(50_000), x, kind="ivf")
    exact = PostIndex.build(range(50_000), x, kind="flat")
    assert recall_at(10, exact.search_positions(q, 10)[1], ann.search_positions(q, 10)[1]) >= 0.95


def test_incremental_add_equals_one_build_and_skips_known_ids():
    x = random_unit(300, 8)
    ids = [f"post-{i}" for i in range(300)]
    whole = PostIndex.build(ids, x, kind="flat")
    inc = PostIndex(DIM, "flat")
    assert inc.add(ids[:100], x[:100]) == 100
    assert inc.add(ids[50:], x[50:]) == 200  # 50 already there: skipped
    assert inc.add(ids[:10] + ids[:10], np.concatenate([x[:10], x[:10]])) == 0
    assert len(inc) == 300
    q = random_unit(5, 9)
    assert [[h.id for h in r] for r in inc.search(q, 7)] == [[h.id for h in r] for r in whole.search(q, 7)]
    np.testing.assert_allclose(inc.vectors_of(["post-42"])[0], x[42])


def test_save_load_roundtrip_keeps_ids_kind_and_results(tmp_path):
    x = clustered_unit(3_000, seed=10)
    ids = [f"urn:li:share:{i}" for i in range(3_000)]
    idx = PostIndex.build(ids, x, kind="hnsw", vector_version="postemb-mt50-v1")
    q = random_unit(4, 11)
    before = idx.search(q, 5)
    idx.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert (meta["kind"], meta["count"], meta["dim"], meta["vector_version"]) == ("hnsw", 3_000, DIM, "postemb-mt50-v1")
    assert (meta["binary"], meta["rescore"], meta["bytes_per_post"]) == (False, 0, 4 * DIM)
    back = PostIndex.load(tmp_path / "idx")
    assert back.search(q, 5) == before
    assert back.add(["new"], random_unit(1, 12)) == 1 and len(back) == 3_001


def test_bad_arguments_are_named():
    idx = PostIndex.build([1, 2], random_unit(2))
    with pytest.raises(ValidationError, match=r"`queries` must have shape \(n, 50\). Given: \(1, 3\)"):
        idx.search(np.ones((1, 3), np.float32))
    with pytest.raises(ValidationError, match="unit L2 rows.*row 0 has norm 2"):
        idx.add([3], 2 * random_unit(1))
    with pytest.raises(ValidationError, match="`k` must be a positive int. Given: 0"):
        idx.search(random_unit(1), k=0)
    with pytest.raises(ValidationError, match="`ids` and `vectors` must have the same length. Given: 1 and 2"):
        idx.add([5], random_unit(2))
    with pytest.raises(ValidationError, match="needs >= .* vectors. Given: 100"):
        PostIndex(DIM, "ivf", expected_size=3_000_000).add(range(100), random_unit(100))
    with pytest.raises(ValidationError, match=r"`ids\[0\]` 'nope' is not in the index"):
        idx.vectors_of(["nope"])
    with pytest.raises(ValidationError, match="`vectors` must be finite. Given: NaN or inf in row 1"):
        idx.add([6, 7], np.vstack([random_unit(1), np.full((1, DIM), np.nan, np.float32)]))  # NaN passed the norm check


def test_queries_of_another_width_are_told_the_index_s_vector_version():
    idx = PostIndex.build([1, 2], random_unit(2, dim=16), vector_version="postemb-mt50-v4@16")
    with pytest.raises(ValidationError, match=r"`queries` must have shape \(n, 16\). Given: \(1, 50\). The index holds "
                                              r"'postemb-mt50-v4@16' vectors\. Fix: embed the queries as they were "
                                              r"\(its model, truncate_dim=16\)"):
        idx.search(random_unit(1))


def test_fewer_posts_than_k_returns_what_there_is():
    idx = PostIndex.build(["a", "b", "c"], random_unit(3))
    assert len(idx.search(random_unit(1, 1), k=10)[0]) == 3
    assert sorted(h.id for h in idx.search(idx.vectors_of(["a"]), k=10, exclude={"a"})[0]) == ["b", "c"]


@pytest.mark.parametrize("params", [{"kind": "flat"}, {"kind": "hnsw"}, {"binary": True, "rescore": 4}])
def test_a_k_far_beyond_the_index_returns_every_post_without_allocating_k(params):
    # k is a cap, as in FAISS: a k of 10**12 must not allocate (q, k) arrays (373 GiB at 10**11: a MemoryError)
    idx = PostIndex.build(range(30), random_unit(30, 2), **params)
    hits = idx.search(random_unit(2, 3), k=10**12, exclude={0})
    assert [len(h) for h in hits] == [29, 29] and all(0 not in [h.id for h in row] for row in hits)
    member = member_embedding(idx.vectors_of([1, 2, 3]))
    assert len(retrieve(idx, member, k=10**12, exclude=[1, 2, 3])) == 27


@pytest.mark.parametrize("params", [{"kind": "flat"}, {"kind": "hnsw"}, {"binary": True},
                                    {"binary": True, "rescore": 2}])
def test_tied_scores_come_in_the_order_the_posts_were_added(params):
    # one text posted under several ids (reposts) gives equal vectors: FAISS's float heap returned them last-added
    # first, its binary index and the rescoring first-added first; one order for every kind: insertion order
    x = random_unit(6, 5)
    vectors = np.concatenate([x[:1], np.repeat(x[1:2], 4, 0), x[2:]])  # ids 11..14: one vector
    idx = PostIndex.build([10, 11, 12, 13, 14, 15, 16, 17, 18], vectors, **params)
    hits = idx.search(x[1], k=9)[0]
    assert [h.id for h in hits[:4]] == [11, 12, 13, 14] and len({h.score for h in hits[:4]}) == 1
    if params == {"kind": "flat"}:
        assert [h.id for h in idx.search(x[1], k=2)[0]] == [11, 12]  # the cut keeps the first added too
        assert np.array_equal(idx.search_positions(x[1:2], 3)[1], [[1, 2, 3]])


def test_build_from_parquet_reads_committed_backfill_output_only(tmp_path):
    import pyarrow.parquet as pq

    from postemb_rt.backfill import STAGING, embeddings_table

    x = random_unit(40, 13)
    (tmp_path / "emb" / "a.parquet").mkdir(parents=True)
    (tmp_path / "emb" / STAGING / "b.parquet").mkdir(parents=True)
    pq.write_table(embeddings_table(list(range(30)), x[:30], "m1", "int"), tmp_path / "emb" / "a.parquet" / "part-00000.parquet")
    pq.write_table(embeddings_table(list(range(30, 40)), x[30:], "m1", "int"),
                   tmp_path / "emb" / STAGING / "b.parquet" / "part-00000.parquet")  # uncommitted
    idx = PostIndex.from_parquet(tmp_path / "emb")
    assert len(idx) == 30 and idx.model_version == "m1" and sorted(idx.ids) == list(range(30))
    np.testing.assert_allclose(idx.vectors_of([7])[0], x[7])
    pq.write_table(embeddings_table([99], x[:1], "m2", "int"), tmp_path / "emb" / "a.parquet" / "part-00001.parquet")
    with pytest.raises(ValidationError, match="mixes model versions"):
        PostIndex.from_parquet(tmp_path / "emb")



def test_a_backfill_output_without_vectors_says_where_its_rows_went(tmp_path):
    """Every row of a backfill bad or empty: its parts hold no rows. The refusal says so and where to look."""
    import pyarrow.parquet as pq

    from postemb_rt.backfill import embeddings_table

    (tmp_path / "emb" / "a.jsonl").mkdir(parents=True)
    pq.write_table(embeddings_table([], np.zeros((0, DIM), np.float32), "m1", "int"),
                   tmp_path / "emb" / "a.jsonl" / "part-00000.parquet")
    with pytest.raises(ValidationError, match=r"`path` '.*emb' holds no embeddings \(0 rows\)\. Fix: .*_errors-\*\.jsonl"):
        PostIndex.from_parquet(tmp_path / "emb")

@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed (apt-get install redis-server)")
def test_build_from_the_nearline_store(tmp_path, capsys, caplog):
    pytest.importorskip("redis", reason="redis-py is not installed")
    from postemb_rt import nearline
    from postemb_rt.cli import main
    from tests.nearline.conftest import RedisServer

    class StubEncoder:  # the Worker's contract; vectors are a fixed function of the text
        model_version, vector_version, dim = "stub-v1", "stub-v1+chunk", DIM  # stored under the vector version

        def encode(self, texts, **kw):
            return np.stack([random_unit(1, seed=sum(map(ord, t)))[0] for t in texts])

    server = RedisServer(tmp_path)
    server.start()
    try:
        client = nearline.connect(server.url)
        for i, t in enumerate(POSTS[:20]):
            nearline.publish(client, f"post{i}", t)
        nearline.Worker(client, StubEncoder(), batch_size=8, max_wait_ms=0).run(max_events=20)
        idx = PostIndex.from_redis(server.url, "stub-v1+chunk", scan_count=7)
        assert sorted(idx.ids) == sorted(f"post{i}" for i in range(20)) and idx.vector_version == "stub-v1+chunk"
        np.testing.assert_allclose(idx.vectors_of(["post3"])[0], StubEncoder().encode([POSTS[3]])[0])
        assert idx.prompt_name == ""  # every record says: no prompt
        client.hset(nearline.store_key("stub-v1+chunk", "post3"), "prompt_name", "query")
        with caplog.at_level("WARNING", logger="postemb_rt"):
            assert PostIndex.from_redis(client, "stub-v1+chunk").prompt_name is None  # records of two prompts
        assert "several prompts" in caplog.text
        client.hset(nearline.store_key("stub-v1+chunk", "post3"), "prompt_name", "")
        with pytest.raises(ValidationError, match=r"`vector_version` 'stub-v1': the store holds no embeddings under it "
                                                  r"\(keys postemb:stub-v1:\*\). Versions it holds: 'stub-v1\+chunk'"):
            PostIndex.from_redis(client, "stub-v1")  # the model version alone: not what the worker stored under
        client.close()
        assert main(["index", "build", "--redis", server.url, "--vector-version", "stub-v1+chunk", "--out",
                     str(tmp_path / "idx")]) == 0
        out = capsys.readouterr().out
        assert f"indexed 20 posts from redis 127.0.0.1:{server.port} db 0 in " in out  # no URL
        assert "posts' prompt=none -> " in out
    finally:
        server.stop()



@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed (apt-get install redis-server)")
def test_a_key_that_scan_returns_twice_is_read_once(tmp_path, caplog):
    """SCAN may return a key more than once (Redis documents it: the table was rehashed while it iterated,
    as it is while a worker writes). Each post is one row, and no warning speaks of repeated ids the store
    does not hold."""
    pytest.importorskip("redis", reason="redis-py is not installed")
    from postemb_rt import nearline
    from tests.nearline.conftest import RedisServer

    class Rescanning:  # a client whose SCAN pages each repeat a key of the page before
        def __init__(self, client):
            self.client, self.last = client, []

        def scan(self, **kw):
            cursor, keys = self.client.scan(**kw)
            keys, self.last = self.last[:1] + keys, keys
            return cursor, keys

        def pipeline(self, **kw):
            return self.client.pipeline(**kw)

    server = RedisServer(tmp_path)
    server.start()
    try:
        client = nearline.connect(server.url)
        x = random_unit(30, seed=3)
        for i in range(30):
            client.hset(nearline.store_key("v1", f"p{i}"), mapping={"post_id": f"p{i}", "vector": x[i].tobytes(),
                                                                    "prompt_name": ""})
        with caplog.at_level("WARNING", logger="postemb_rt"):
            idx = PostIndex.from_redis(Rescanning(client), "v1", scan_count=4)
        assert sorted(idx.ids) == sorted(f"p{i}" for i in range(30)) and idx.skipped == 0
        assert "came earlier" not in caplog.text
        client.close()
    finally:
        server.stop()

# -- member embeddings ----------------------------------------------------------------------
def three_interests(sizes=(12, 6, 3), seed=14):
    """A history drawn around three orthogonal directions, and a corpus around the same three."""
    rng = np.random.default_rng(seed)
    axes = np.eye(DIM, dtype=np.float32)[:3]
    hist = np.concatenate([unit(axes[g] + 0.05 * rng.standard_normal((n, DIM))) for g, n in enumerate(sizes)])
    groups = np.repeat(np.arange(3), 200)
    corpus = unit(axes[groups] + 0.05 * rng.standard_normal((600, DIM)))
    return hist, corpus, groups


def test_empty_and_single_post_histories():
    empty = member_embedding(np.empty((0, DIM), np.float32))
    assert len(empty) == 0 and empty.vectors.shape == (0, DIM)
    idx = PostIndex.build(range(50), random_unit(50, 15))
    assert retrieve(idx, empty, k=10) == [] and retrieve(idx, mean_embedding(np.empty((0, DIM))), 10) == []
    one = member_embedding(idx.vectors_of([7]))
    assert len(one) == 1 and one.weights.tolist() == [1.0]
    np.testing.assert_allclose(one.vectors[0], idx.vectors_of([7])[0])
    hits = retrieve(idx, one, k=5, exclude=[7])
    assert len(hits) == 5 and 7 not in [h.id for h in hits]
    assert [h.id for h in hits] == [h.id for h in idx.search(idx.vectors_of([7]), 5, exclude={7})[0]]


def test_ward_finds_each_interest_with_its_share_and_respects_the_cap():
    hist, _, _ = three_interests()
    m = member_embedding(hist)
    assert len(m) == 3 and np.allclose(m.weights, [12 / 21, 6 / 21, 3 / 21])
    assert np.array_equal(m.labels, np.repeat([0, 1, 2], [12, 6, 3]))
    assert np.allclose(np.linalg.norm(m.vectors, axis=1), 1, atol=1e-6)
    capped = member_embedding(hist, max_clusters=2)
    assert len(capped) == 2 and capped.weights.sum() == pytest.approx(1)
    assert len(member_embedding(hist, distance_threshold=100.0)) == 1
    with pytest.raises(ValidationError, match="`max_clusters` must be an int >= 1. Given: 0"):
        member_embedding(hist, max_clusters=0)


def test_quotas_are_proportional_and_give_every_cluster_a_slot():
    assert quotas([0.5, 0.3, 0.2], 10).tolist() == [5, 3, 2]
    assert quotas([0.9, 0.05, 0.05], 10).tolist() == [8, 1, 1]
    assert quotas([0.4, 0.3, 0.2, 0.1], 2).tolist() == [1, 1, 0, 0]
    assert quotas([], 10).tolist() == []
    assert all(quotas(w, k).sum() == k for w in ([0.34, 0.33, 0.33], [0.7, 0.2, 0.1], [1.0]) for k in (1, 7, 10, 50))


def test_multi_vector_retrieval_covers_every_interest_where_the_mean_misses_the_minority():
    hist, corpus, groups = three_interests()
    idx = PostIndex.build(range(600), corpus)
    ward = retrieve(idx, member_embedding(hist), k=10)
    mean = retrieve(idx, mean_embedding(hist), k=10)
    ward_groups = [groups[h.id] for h in ward]
    assert len({h.id for h in ward}) == 10 and np.bincount(ward_groups, minlength=3).tolist() == quotas([12, 6, 3], 10).tolist() == [6, 3, 1]
    assert scores_sorted(ward)
    assert 2 not in {groups[h.id] for h in mean}  # the mean vector leans to the big interests


def scores_sorted(hits):
    return all(a.score >= b.score for a, b in zip(hits, hits[1:]))


# -- the command --------------------------------------------------------------------------------
def test_cli_index_build_and_query_by_text_and_member(tmp_path, capsys, default_encoder):
    import pyarrow.parquet as pq

    from postemb_rt.backfill import embeddings_table
    from postemb_rt.cli import main

    ids = [f"p{i}" for i in range(len(POSTS))]
    (tmp_path / "emb").mkdir()
    pq.write_table(embeddings_table(ids, default_encoder.encode(POSTS), default_encoder.model_version, "string"),
                   tmp_path / "emb" / "part-00000.parquet")
    assert main(["index", "build", "--input", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]) == 0
    assert f"indexed {len(POSTS)} posts" in capsys.readouterr().out
    assert main(["index", "query", "--index", str(tmp_path / "idx"), "--text", POSTS[12], "--k", "3", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["hits"][0]["id"] == "p12" and got["hits"][0]["score"] > 0.999 and len(got["hits"]) == 3
    assert main(["index", "query", "--index", str(tmp_path / "idx"), "--member", "p12,p13,p20", "--k", "4", "--json"]) == 0
    member = json.loads(capsys.readouterr().out)
    assert len(member["hits"]) == 4 and not {"p12", "p13", "p20"} & {h["id"] for h in member["hits"]}
    assert main(["index", "query", "--index", str(tmp_path / "idx"), "--text", "x", "--model", "base"]) == 2
    assert (f"`--model` 'base' with --precision fp32 --long-posts truncate gives vectors of version 'all-MiniLM-L6-v2' "
            f"but the index holds '{default_encoder.model_version}'") in capsys.readouterr().err


def test_cli_query_by_text_takes_embeds_prompt_flags(tmp_path, capsys, default_encoder, monkeypatch):
    """`index query --text` encodes with --prompt-name / --prompt as `postemb embed` and Encoder.encode
    do; a bad one is refused before the model loads, and with --member (stored vectors) neither applies."""
    import pyarrow.parquet as pq

    from postemb_rt import Encoder
    from postemb_rt.backfill import embeddings_table
    from postemb_rt.cli import main

    ids = [f"p{i}" for i in range(len(POSTS))]
    pq.write_table(embeddings_table(ids, default_encoder.encode(POSTS), default_encoder.model_version, "string"),
                   tmp_path / "e.parquet")
    assert main(["index", "build", "--input", str(tmp_path / "e.parquet"), "--out", str(tmp_path / "idx")]) == 0
    idx = PostIndex.load(tmp_path / "idx")
    q = ["index", "query", "--index", str(tmp_path / "idx"), "--text", POSTS[12], "--k", "3", "--json"]
    capsys.readouterr()
    assert main([*q, "--prompt", "a post about: "]) == 0
    got = json.loads(capsys.readouterr().out)["hits"]
    want = idx.search(default_encoder.encode([POSTS[12]], prompt="a post about: "), 3)[0]
    assert [h["id"] for h in got] == [h.id for h in want] and got[0]["score"] < 0.999  # the prompt was applied
    np.testing.assert_allclose([h["score"] for h in got], [h.score for h in want], atol=1e-5)
    assert main([*q, "--prompt-name", "query"]) == 0  # every model has the (here empty) query prompt
    assert json.loads(capsys.readouterr().out)["hits"][0]["score"] > 0.999

    def no_load(*a, **k):
        raise AssertionError("the model loaded before the prompt was checked")
    monkeypatch.setattr(Encoder, "from_pretrained", no_load)
    assert main([*q, "--prompt-name", "passage"]) == 2
    assert "`--prompt-name` must be one of this model's prompts ['document', 'query']. Given: 'passage'" \
           in capsys.readouterr().err
    assert main([*q, "--prompt-name", "query", "--prompt", "q: "]) == 2
    assert "give `--prompt` or `--prompt-name`, not both" in capsys.readouterr().err
    member = ["index", "query", "--index", str(tmp_path / "idx"), "--member", "p1", "--prompt-name", "query"]
    assert main(member) == 2
    assert "`--prompt-name` / `--prompt` apply to `--text` queries" in capsys.readouterr().err

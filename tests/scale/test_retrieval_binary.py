"""``PostIndex(binary=True)``: sign-bit vectors in FAISS's binary indexes (Hamming), float
rescoring, persistence; and ``postemb index build|query`` with binary indexes and vector versions
(precision / long-post mode read from the index)."""
from __future__ import annotations

import json

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="faiss is not installed (pip install -e '.[scale]')")
pytest.importorskip("sentence_transformers",
                    reason="sentence-transformers is not installed (pip install -e '.[train]')")

from postemb_rt.errors import ValidationError  # noqa: E402
from postemb_rt.quantization import quantize  # noqa: E402
from postemb_rt.retrieval import PostIndex  # noqa: E402
from tests.scale.conftest import POSTS  # noqa: E402
from tests.scale.test_retrieval import DIM, clustered_unit, random_unit, recall_at  # noqa: E402


def exact_top(x, q, k):
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


# -- the index ----------------------------------------------------------------------------------
def test_binary_flat_index_ranks_by_hamming_distance_of_the_library_s_sign_bits():
    x, q = random_unit(600, 1), random_unit(20, 2)
    idx = PostIndex.build(range(600), x, kind="flat", binary=True)
    assert isinstance(idx.index, faiss.IndexBinaryFlat) and idx.index.d == 56 and idx.bits == 56  # 50 bits -> 7 bytes
    assert idx.describe()["bytes_per_post"] == 7
    # the stored codes are quantize_embeddings(..., "ubinary"): one implementation of the bits
    np.testing.assert_array_equal(idx.index.reconstruct(3), quantize(x[3:4], "ubinary")[0])
    scores, pos = idx.search_positions(q, 10)
    hamming = ((q > 0)[:, None, :] != (x > 0)[None, :, :]).sum(-1)  # (20, 600)
    want = np.sort(1 - 2 * hamming / DIM, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(scores, want, atol=1e-6)  # the cosine of the sign vectors, best first
    np.testing.assert_allclose(np.take_along_axis(1 - 2 * hamming / DIM, pos, 1), scores, atol=1e-6)
    assert idx.search(x[7], k=1)[0][0].id == 7 and idx.search(x[7], k=1)[0][0].score == 1.0


def test_binary_hnsw_and_ivf_find_what_binary_flat_finds():
    x, q = clustered_unit(4_000, centers=100, seed=3), clustered_unit(50, centers=100, seed=3)[::-1]
    flat = PostIndex.build(range(4_000), x, kind="flat", binary=True)
    hnsw = PostIndex.build(range(4_000), x, kind="hnsw", binary=True)
    ivf = PostIndex(DIM, "ivf", binary=True, nlist=16, nprobe=16)  # nprobe = nlist: every list scanned
    ivf.add(range(4_000), x)
    assert isinstance(hnsw.index, faiss.IndexBinaryHNSW) and isinstance(ivf.index, faiss.IndexBinaryIVF)
    want = flat.search_positions(q, 10)[0]
    np.testing.assert_allclose(ivf.search_positions(q, 10)[0], want)
    assert np.mean(hnsw.search_positions(q, 10)[0] >= want[:, -1:]) >= 0.95  # scores reach flat's 10th


def test_rescoring_improves_or_equals_recall_and_gives_exact_cosines():
    both = clustered_unit(5_200, centers=300, spread=0.8, seed=5)
    x, q = both[:5_000], both[5_000:]  # queries: other posts around the same centres
    truth = exact_top(x, q, 10)
    idx = PostIndex.build(range(5_000), x, kind="flat", binary=True, rescore=4)
    got = {m: recall_at(10, truth, idx.search_positions(q, 10, rescore=m)[1]) for m in (0, 1, 4, 10, 500)}
    assert got[1] == got[0]  # rescoring the top 10 only reorders them
    assert got[0] < got[4] <= got[10] <= got[500] == 1.0  # k*m >= n: every post rescored = exact
    assert got[0] < 0.9  # 50 bits lose much; rescoring is what recovers it
    scores, pos = idx.search_positions(q, 10)  # the index's default: rescore=4
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, pos, 1), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()


def test_vectors_of_a_binary_index_are_the_floats_or_the_unit_sign_vectors():
    x = random_unit(100, 7)
    with_floats = PostIndex.build(range(100), x, binary=True, rescore=2)
    np.testing.assert_array_equal(with_floats.vectors_of([4, 9]), x[[4, 9]])
    bits_only = PostIndex.build(range(100), x, binary=True)
    np.testing.assert_allclose(bits_only.vectors_of([4])[0], np.where(x[4] > 0, 1, -1) / np.sqrt(DIM), rtol=1e-6)


@pytest.mark.parametrize("rescore", [0, 3])
def test_binary_save_load_roundtrip(tmp_path, rescore):
    x, q = clustered_unit(2_000, seed=8), random_unit(5, 9)
    ids = [f"urn:li:share:{i}" for i in range(2_000)]
    idx = PostIndex.build(ids, x, kind="hnsw", binary=True, rescore=rescore, vector_version="m-v1+chunk")
    before = idx.search(q, 5)
    idx.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert {k: meta[k] for k in ("kind", "dim", "binary", "bits", "rescore", "count", "vector_version")} == {
        "kind": "hnsw", "dim": DIM, "binary": True, "bits": 56, "rescore": rescore, "count": 2_000,
        "vector_version": "m-v1+chunk"}
    assert (tmp_path / "idx" / "vectors.npy").exists() == bool(rescore)
    back = PostIndex.load(tmp_path / "idx")
    assert (back.binary, back.rescore, back.kind, back.vector_version) == (True, rescore, "hnsw", "m-v1+chunk")
    assert isinstance(back.index, faiss.IndexBinaryHNSW)
    assert back.search(q, 5) == before
    back.save(tmp_path / "idx")  # over the folder whose vectors.npy it has memory-mapped
    assert PostIndex.load(tmp_path / "idx").search(q, 5) == before and back.search(q, 5) == before
    assert back.add(["new"], random_unit(1, 12)) == 1 and len(back) == 2_001
    assert back.search(random_unit(1, 12), 1)[0][0].id == "new"
    back.save(tmp_path / "idx")
    assert len(PostIndex.load(tmp_path / "idx")) == 2_001


def test_a_float_index_saved_before_binary_existed_still_loads(tmp_path):
    idx = PostIndex.build([1, 2, 3], random_unit(3), vector_version="old-v1")
    idx.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    for key in ("binary", "bits", "rescore", "vector_version", "bytes_per_post"):
        meta.pop(key)
    meta["model_version"] = "old-v1"  # what index.json held before
    (tmp_path / "idx" / "index.json").write_text(json.dumps(meta))
    back = PostIndex.load(tmp_path / "idx")
    assert (back.binary, back.rescore, back.vector_version, back.model_version) == (False, 0, "old-v1", "old-v1")


def test_rescore_arguments_are_named():
    x = random_unit(50, 1)
    with pytest.raises(ValidationError,
                       match="`rescore` applies to a binary index only.*Given: rescore=4 with binary=False"):
        PostIndex.build(range(50), x, rescore=4)
    with pytest.raises(ValidationError, match=r"`rescore` must be an int >= 0 .*Given: -1"):
        PostIndex.build(range(50), x, binary=True, rescore=-1)
    bits_only = PostIndex.build(range(50), x, binary=True)
    with pytest.raises(ValidationError, match="`rescore` 4 needs the float vectors.*Fix: rebuild with rescore > 0"):
        bits_only.search(x[:1], 3, rescore=4)
    with pytest.raises(ValidationError, match="`vectors` must be finite"):
        bits_only.add([99], np.full((1, DIM), np.nan, np.float32))


# -- the command --------------------------------------------------------------------------------
def write_embeddings(folder, vectors, version):
    import pyarrow.parquet as pq

    from postemb_rt.backfill import embeddings_table

    folder.mkdir()
    pq.write_table(embeddings_table([f"p{i}" for i in range(len(vectors))], vectors, version, "string"),
                   folder / "part-00000.parquet")


def test_cli_errors_give_the_command_line_s_fix(tmp_path, capsys):
    # they said the library's: "Fix: binary=True, or rescore=0", "kind='hnsw'"
    from postemb_rt.cli import main

    write_embeddings(tmp_path / "emb", random_unit(50, 2), "m")
    assert main(["index", "build", "--input", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert main(["index", "query", "--index", str(tmp_path / "idx"), "--member", "p0", "--rescore", "2"]) == 2
    err = capsys.readouterr().err
    assert "`--rescore` 2 applies to a binary index" in err and "Fix: drop --rescore" in err
    assert "binary=True" not in err
    assert main(["index", "query", "--index", str(tmp_path / "idx"), "--member", "p0", "--rescore", "0"]) == 0
    assert main(["index", "build", "--input", str(tmp_path / "emb"), "--out", str(tmp_path / "ivf"),
                 "--kind", "ivf"]) == 2
    err = capsys.readouterr().err
    assert "`--kind` 'ivf': an IVF index with nlist=" in err and "Fix: `--kind` 'hnsw' or 'auto'" in err
    for flag in (["--mean"], ["--max-clusters", "2"], ["--distance-threshold", "0.5"]):  # were ignored
        assert main(["index", "query", "--index", str(tmp_path / "idx"), "--text", "x", *flag]) == 2
        err = capsys.readouterr().err
        assert f"`{flag[0]}` applies to `--member` queries" in err and f"Given: {' '.join(flag)} with --text." in err


def test_cli_binary_index_build_and_query(tmp_path, capsys, default_encoder):
    from postemb_rt.cli import main

    write_embeddings(tmp_path / "emb", default_encoder.encode(POSTS), default_encoder.vector_version)
    assert main(["index", "build", "--input", str(tmp_path / "emb"), "--out", str(tmp_path / "idx"),
                 "--binary", "--rescore", "4"]) == 0
    assert "binary (56 bits, rescore 4)" in capsys.readouterr().out
    assert main(["index", "query", "--index", str(tmp_path / "idx"), "--text", POSTS[12], "--k", "3", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["hits"][0]["id"] == "p12" and got["hits"][0]["score"] > 0.999 and len(got["hits"]) == 3
    assert main(["index", "query", "--index", str(tmp_path / "idx"), "--member", "p12,p13", "--k", "4",
                 "--rescore", "0", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 4
    assert main(["index", "build", "--input", str(tmp_path / "emb"), "--out", str(tmp_path / "x"),
                 "--rescore", "4"]) == 2
    assert "`--rescore` 4 needs `--binary`" in capsys.readouterr().err


def test_cli_query_loads_the_encoder_the_index_s_vector_version_names(tmp_path, capsys, default_encoder):
    # an index of chunk-mode vectors (version "<model>+chunk") was refused by `query --text` before
    from postemb_rt.cli import main

    version = default_encoder.model_version + "+chunk"
    write_embeddings(tmp_path / "emb", default_encoder.encode(POSTS, long_posts="chunk"), version)
    assert main(["index", "build", "--input", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]) == 0
    built = capsys.readouterr().out
    assert main(["index", "query", "--index", str(tmp_path / "idx"), "--text", POSTS[12], "--k", "2", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert f"vector version={version}" in built
    assert got["hits"][0]["id"] == "p12" and got["hits"][0]["score"] > 0.9999
    assert main(["index", "query", "--index", str(tmp_path / "idx"), "--text", "x", "--long-posts", "chunk"]) == 0
    capsys.readouterr()
    assert main(["index", "query", "--index", str(tmp_path / "idx"), "--text", "x", "--long-posts", "truncate"]) == 2
    err = capsys.readouterr().err
    assert f"gives vectors of version {default_encoder.model_version!r} but the index holds {version!r}" in err
    assert "--long-posts chunk (or leave both out" in err


def test_split_vector_version_inverts_vector_version():
    from postemb_rt.commands.index import split_vector_version
    from postemb_rt.model_dir import vector_version

    for args in [("m-v3", "fp32", "truncate", None, None), ("m-v3", "bf16", "chunk", None, None),
                 ("m-v3", "int8", "truncate", 8, None), ("m-v3", "fp32", "chunk", 16, 64),
                 ("odd+name", "fp16", "chunk", 32, None), ("odd+bf16-ish", "fp32", "truncate", None, 128),
                 ("at@home", "fp32", "truncate", None, None), ("at@home", "bf16", "truncate", 16, 32),
                 ("v@07", "fp32", "truncate", None, None), ("a+max07", "fp32", "truncate", None, None)]:
        assert split_vector_version(vector_version(*args)) == args
    assert vector_version("m-v4", "bf16", "chunk", 16) == "m-v4@16+bf16+chunk"
    assert vector_version("m-v4", "bf16", "chunk", 16, 64) == "m-v4@16+bf16+max64+chunk"


def _embed_index_query(tmp_path, capsys, flags: list[str], version: str, query: str) -> dict:
    """``postemb embed POSTS FLAGS`` to Parquet, ``index build`` on it (both print ``version``), then
    ``index query --text QUERY --k 2``: its top hit."""
    from postemb_rt.cli import main

    (tmp_path / "posts.txt").write_text("\n".join(POSTS) + "\n")
    assert main(["embed", str(tmp_path / "posts.txt"), "--out", str(tmp_path / "emb" / "part-0.parquet"), *flags,
                 "--no-progress"]) == 0
    assert f"model={version}," in capsys.readouterr().out
    assert main(["index", "build", "--input", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]) == 0
    assert f"vector version={version}" in capsys.readouterr().out
    assert main(["index", "query", "--index", str(tmp_path / "idx"), "--text", query, "--k", "2", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["hits"][0]


def test_embed_at_a_nested_dim_builds_an_index_that_queries_at_that_dim(tmp_path, capsys, default_encoder):
    """``postemb embed --truncate-dim 16`` writes 16-d vectors under version "<model>@16"; the index
    built from them records that version and dim, and ``index query --text`` encodes the query at 16."""
    from postemb_rt.cli import main

    hit = _embed_index_query(tmp_path, capsys, ["--truncate-dim", "16"], default_encoder.model_version + "@16",
                             POSTS[12])
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["dim"] == 16
    assert hit["id"] == 12 and hit["score"] > 0.9999
    assert main(["embed", str(tmp_path / "posts.txt"), "--out", str(tmp_path / "x.npy"), "--truncate-dim", "12"]) == 2
    assert "`--truncate-dim` must be one of" in capsys.readouterr().err  # the flag, as the command line says it


def test_a_shorter_max_length_is_its_own_vector_version_end_to_end(tmp_path, capsys, default_encoder):
    """``postemb embed --max-length 16`` cuts long posts shorter, so its vectors are not the model's:
    version "<model>+max16" (never the plain one), and ``index query --text`` on an index of them
    encodes the query with max_length 16 too."""
    from postemb_rt import Encoder

    assert Encoder.from_pretrained("default", max_length=default_encoder.max_length).vector_version == \
        default_encoder.model_version
    long_post = max(POSTS, key=len)
    assert len(default_encoder.tokenizer([long_post]).ids[0]) > 16  # cut at 16 or not: the test can tell
    hit = _embed_index_query(tmp_path, capsys, ["--max-length", "16"], default_encoder.model_version + "+max16",
                             long_post)
    cut = Encoder.from_pretrained("default", max_length=16).tokenizer
    assert cut([POSTS[hit["id"]]]).ids == cut([long_post]).ids and hit["score"] > 0.9999

"""An index records the prompt its posts were embedded with where its source says it (a backfill
output's ``_SUCCESS.json``, the near-line records), keeps it through save and load (older folders:
not known), and ``index query --text`` warns, without refusing, when a query takes the posts'
prompt on a model whose query and document prompts differ."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("faiss", reason="faiss is not installed (pip install -e '.[scale]')")

from postemb_rt.errors import ValidationError  # noqa: E402
from postemb_rt.retrieval import PostIndex  # noqa: E402
from tests.scale.conftest import POSTS, prompted_model  # noqa: E402
from tests.scale.test_retrieval import random_unit  # noqa: E402

WARNING = "`--text` queries are embedded as the index's posts were"


def _backfill_output(folder, vectors, version, prompt=...):
    """A committed backfill output file's folder: one part, and a _SUCCESS.json recording ``prompt``
    (left out: a _SUCCESS.json of a version before prompts)."""
    import pyarrow.parquet as pq

    from postemb_rt.backfill import SUCCESS, embeddings_table

    folder.mkdir(parents=True)
    ids = [f"{folder.name}-{i}" for i in range(len(vectors))]
    pq.write_table(embeddings_table(ids, vectors, version, "string"), folder / "part-00000.parquet")
    (folder / SUCCESS).write_text(json.dumps({"model_version": version, **({} if prompt is ... else
                                                                           {"prompt_name": prompt})}))
    return ids


def test_an_index_records_the_prompt_of_its_backfill_output_and_keeps_it(tmp_path, caplog):
    x = random_unit(30, 3)
    _backfill_output(tmp_path / "emb" / "a.parquet", x[:20], "m1", "passage")
    _backfill_output(tmp_path / "emb" / "sub" / "b.parquet", x[20:], "m1", "passage")
    idx = PostIndex.from_parquet(tmp_path / "emb")
    assert idx.prompt_name == "passage" and idx.describe()["prompt_name"] == "passage"
    idx.save(tmp_path / "idx")
    assert PostIndex.load(tmp_path / "idx").prompt_name == "passage"
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    del meta["prompt_name"]  # an index saved before it recorded the prompt
    (tmp_path / "idx" / "index.json").write_text(json.dumps(meta))
    assert PostIndex.load(tmp_path / "idx").prompt_name is None

    with pytest.raises(ValidationError, match=r"`prompt_name` 'query' is not the prompt '.*emb' records for its posts: "
                                              r"'passage' \(\"\": none\)\. Fix: leave `prompt_name` out"):
        PostIndex.from_parquet(tmp_path / "emb", prompt_name="query")
    assert PostIndex.from_parquet(tmp_path / "emb" / "a.parquet").prompt_name == "passage"  # one file's folder
    _backfill_output(tmp_path / "none" / "a.parquet", x[:5], "m1", None)  # a model without a default prompt
    assert PostIndex.from_parquet(tmp_path / "none").prompt_name == ""
    _backfill_output(tmp_path / "old" / "a.parquet", x[:5], "m1")  # a backfill of before prompts
    assert PostIndex.from_parquet(tmp_path / "old").prompt_name is None
    assert PostIndex.from_parquet(tmp_path / "old", prompt_name="document").prompt_name == "document"  # stated

    _backfill_output(tmp_path / "emb" / "c.parquet", random_unit(5, 4), "m1", "query")
    with caplog.at_level("WARNING", logger="postemb_rt"):
        assert PostIndex.from_parquet(tmp_path / "emb").prompt_name is None
    assert "its posts were embedded with several prompts ('passage' in" in caplog.text and "'query' in" in caplog.text
    (tmp_path / "emb" / "c.parquet" / "_SUCCESS.json").unlink()  # now as Parquet of `postemb embed`: no record
    assert PostIndex.from_parquet(tmp_path / "emb").prompt_name is None


def test_a_query_taking_the_posts_prompt_on_an_asymmetric_model_is_warned_and_still_runs(tmp_path, capsys,
                                                                                          default_encoder):
    from postemb_rt.cli import main

    version = default_encoder.vector_version
    ids = _backfill_output(tmp_path / "emb" / "a.parquet", default_encoder.encode(POSTS, prompt="passage: "), version,
                           "passage")
    assert main(["index", "build", "--input", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]) == 0
    assert f"vector version={version}, posts' prompt=passage -> " in capsys.readouterr().out
    q = ["index", "query", "--index", str(tmp_path / "idx"), "--text", POSTS[3], "--k", "3", "--json",
         "--model", str(prompted_model(tmp_path))]
    assert main(q) == 0  # the model's default prompt: the posts' own
    out, err = capsys.readouterr()
    assert (f"{WARNING} (prompt 'passage', 'passage: '), but this model's query and document prompts differ (query "
            "'query: ', document ''): a query and the posts it should find usually take one each. Fix: --prompt-name "
            "query (or leave it so when the queries are posts themselves).") in err
    hits = json.loads(out)["hits"]
    assert hits[0]["id"] == ids[3] and hits[0]["score"] > 0.999  # the same text and prompt: the post itself
    assert main([*q, "--prompt", "passage: "]) == 0  # the same prompt, given as its text
    assert WARNING in capsys.readouterr().err
    assert main([*q, "--prompt-name", "query"]) == 0
    out, err = capsys.readouterr()
    assert WARNING not in err and json.loads(out)["hits"][0]["id"] == ids[3]

    # posts embedded with the query prompt: the warning says so, whatever the query
    _backfill_output(tmp_path / "q" / "a.parquet", default_encoder.encode(POSTS, prompt="query: "), version, "query")
    assert main(["index", "build", "--input", str(tmp_path / "q"), "--out", str(tmp_path / "qidx")]) == 0
    assert main([*q[:3], str(tmp_path / "qidx"), *q[4:], "--prompt-name", "query"]) == 0
    assert "Fix: the posts were embedded with the query prompt: rebuild the index from posts embedded with the one " \
           "for documents" in capsys.readouterr().err


def test_no_warning_where_queries_and_posts_share_one_prompt_or_the_posts_prompt_is_not_known(tmp_path, capsys,
                                                                                              default_encoder):
    from postemb_rt.cli import main

    vectors = default_encoder.encode(POSTS)
    _backfill_output(tmp_path / "emb" / "a.parquet", vectors, default_encoder.vector_version, None)
    _backfill_output(tmp_path / "old" / "a.parquet", vectors, default_encoder.vector_version)
    for source, recorded in (("emb", "none"), ("old", "not known")):
        build = ["index", "build", "--input", str(tmp_path / source), "--out", str(tmp_path / f"{source}-idx")]
        assert main(build) == 0
        assert f"posts' prompt={recorded} -> " in capsys.readouterr().out
    # `default`: every prompt is "" (query and document alike): no side to get wrong
    assert main(["index", "query", "--index", str(tmp_path / "emb-idx"), "--text", POSTS[3], "--json"]) == 0
    assert WARNING not in capsys.readouterr().err
    # an index that does not know its posts' prompt: nothing to compare, even on an asymmetric model
    assert main(["index", "query", "--index", str(tmp_path / "old-idx"), "--text", POSTS[3], "--json", "--model",
                 str(prompted_model(tmp_path))]) == 0
    assert WARNING not in capsys.readouterr().err


def test_prompt_warning_compares_prompt_texts_not_names():
    """A name and the text it stands for are one prompt; posts of no prompt match a query of none."""
    from postemb_rt.commands.index import prompt_warning
    from postemb_rt.model_dir import PostEmbConfig

    cfg = PostEmbConfig(model_version="x", hidden_size=4, prompts={"query": "q: ", "passage": "p: "},
                        default_prompt_name=None)
    assert prompt_warning(cfg, None, None, "") is not None  # no prompt on either side; document is "" here too
    assert prompt_warning(cfg, "p: ", None, "passage") is not None
    assert prompt_warning(cfg, None, "passage", "passage") is not None
    assert prompt_warning(cfg, None, "query", "passage") is None
    assert prompt_warning(cfg, None, None, None) is None  # not known
    assert prompt_warning(cfg, None, None, "gone") is None  # a name this model does not have
    same = PostEmbConfig(model_version="x", hidden_size=4, prompts={"query": "s: ", "document": "s: "})
    assert prompt_warning(same, None, "query", "document") is None  # one prompt for both sides


def test_postemb_embed_parquet_records_its_prompt_and_an_index_built_from_it_says_so(tmp_path, capsys):
    """``postemb embed --out X.parquet`` records the prompt name in the file's schema metadata (the model's
    default, a --prompt-name, "" for none or --prompt ""; nothing for a --prompt text, which has no name)."""
    import pyarrow.parquet as pq

    from postemb_rt.backfill.splits import PROMPT_KEY
    from postemb_rt.cli import main

    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(POSTS[:4]) + "\n")
    model = str(prompted_model(tmp_path))  # default prompt: passage
    cases = (([], "passage"), (["--prompt-name", "query"], "query"), (["--prompt", ""], "none"),
             (["--prompt", "passage: "], "not known"))
    for i, (flags, shown) in enumerate(cases):
        out = tmp_path / f"e{i}" / "e.parquet"
        assert main(["embed", str(posts), "--out", str(out), "--model", model, *flags]) == 0
        meta = pq.read_schema(out).metadata or {}
        assert meta.get(PROMPT_KEY) == (None if shown == "not known" else b"" if shown == "none" else shown.encode())
        capsys.readouterr()
        assert main(["index", "build", "--input", str(out.parent), "--out", str(tmp_path / f"idx{i}")]) == 0
        assert f"posts' prompt={shown} -> " in capsys.readouterr().out, flags
    # a folder of two embed outputs with other prompts: not known (and said)
    (tmp_path / "e0" / "q.parquet").write_bytes((tmp_path / "e1" / "e.parquet").read_bytes())
    assert PostIndex.from_parquet(tmp_path / "e0").prompt_name is None

"""`postemb` end to end on small files."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from postemb_rt.cli import main
from tests.conftest import assert_exact

POSTS = ["first post about hiring", "", "second post: climate and energy 🌍", "third"]


def auto_backend() -> str:
    """What backend='auto' picks for the base model on this CPU (postemb_rt.backends.choose)."""
    from postemb_rt import backends
    from postemb_rt.model_dir import resolve

    return backends.choose(resolve("base"), "cpu", "fp32")[0]


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "postemb"  # the environment's bin/, not whatever is on PATH
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "embed" in out.stdout and "demo" in out.stdout


def test_embed_txt_to_npy_keeps_every_line_in_order(tmp_path, capsys, base_onnx):
    src = tmp_path / "posts.txt"
    src.write_text("\n".join(POSTS) + "\n")
    out = tmp_path / "out" / "emb.npy"
    assert main(["embed", str(src), "--out", str(out), "--model", "base"]) == 0
    got = np.load(out)
    assert got.shape == (4, 384) and got.dtype == np.float32
    assert_exact(got, base_onnx.encode(POSTS))
    summary = capsys.readouterr().out
    assert "embedded 4 posts" in summary and "posts/s" in summary and f"backend={auto_backend()}" in summary


def test_embed_jsonl_to_parquet_keeps_ids(tmp_path, base_onnx):
    import pyarrow.parquet as pq

    src = tmp_path / "posts.jsonl"
    src.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(POSTS)))
    out = tmp_path / "emb.parquet"
    assert main(["embed", str(src), "--out", str(out), "--model", "base", "--backend", "torch"]) == 0
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ["p0", "p1", "p2", "p3"]
    assert set(table.column("model_version").to_pylist()) == {"all-MiniLM-L6-v2"}
    emb = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert_exact(emb, base_onnx.encode(POSTS))


@pytest.mark.parametrize("quantize, dtype, width", [("int8", np.int8, 384), ("ubinary", np.uint8, 48)])
def test_embed_quantize_keeps_the_dtype_and_equals_encode(tmp_path, base_onnx, quantize, dtype, width):
    src = tmp_path / "posts.txt"
    src.write_text("\n".join(POSTS) + "\n")
    out = tmp_path / "emb.npy"
    argv = ["embed", str(src), "--out", str(out), "--model", "base", "--backend", "onnxruntime", "--device", "cpu"]
    assert main([*argv, "--quantize", quantize]) == 0
    got = np.load(out)
    assert got.shape == (4, width) and got.dtype == dtype
    np.testing.assert_array_equal(got, base_onnx.encode(POSTS, precision=quantize))


def test_embed_prompts_equal_encode_and_a_bad_one_is_named(tmp_path, base_onnx, capsys):
    src = tmp_path / "posts.txt"
    src.write_text("\n".join(POSTS) + "\n")
    out = tmp_path / "emb.npy"
    argv = ["embed", str(src), "--out", str(out), "--model", "base", "--backend", "onnxruntime", "--device", "cpu"]
    assert main([*argv, "--prompt", "query: "]) == 0
    np.testing.assert_array_equal(np.load(out), base_onnx.encode(POSTS, prompt="query: "))
    assert not np.allclose(np.load(out), base_onnx.encode(POSTS))  # the prompt changed the vectors
    assert main([*argv, "--prompt-name", "query"]) == 0  # every model has the empty query/document prompts
    np.testing.assert_array_equal(np.load(out), base_onnx.encode(POSTS))
    capsys.readouterr()
    assert main([*argv, "--prompt-name", "passage"]) == 2
    assert "passage" in capsys.readouterr().err
    assert main([*argv, "--prompt-name", "query", "--prompt", "q: "]) == 2


def test_backfill_and_nearline_take_the_prompt_name_flag_of_embed_and_not_a_prompt_text():
    """One definition of --prompt-name (commands.add_prompt_args): backfill and nearline say what embed
    says, plus what they do with the name; neither offers --prompt, a text they record nowhere."""
    from postemb_rt import cli

    parser = cli.build_parser(environ={})
    sub = next(a for a in parser._actions if a.dest == "command").choices

    def helps(command):
        return {o: a.help for a in sub[command]._actions for o in a.option_strings}

    shared = helps("embed")["--prompt-name"].split(" prepended to every ")[0]
    assert "--prompt" in helps("embed") and "e.g. query or document" in shared
    for command, says in (("backfill", "recorded in each _SUCCESS.json"), ("nearline", "is dead-lettered")):
        got = helps(command)
        assert got["--prompt-name"].startswith(shared + " prepended to every ") and says in got["--prompt-name"]
        assert "--prompt" not in got, command


def test_embed_quantize_refuses_parquet_output(tmp_path, capsys):
    src = tmp_path / "posts.txt"
    src.write_text("x\n")
    assert main(["embed", str(src), "--out", str(tmp_path / "o.parquet"), "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert "`--quantize int8` needs a .npy `--out`" in err and "o.parquet" in err


def test_embed_parquet_input(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "posts.parquet"
    pq.write_table(pa.table({"id": [10, 11], "text": ["a", "b"]}), src)
    out = tmp_path / "emb.npy"
    assert main(["embed", str(src), "--out", str(out), "--model", "base"]) == 0
    assert np.load(out).shape == (2, 384)


def test_bad_jsonl_line_is_named(tmp_path, capsys):
    src = tmp_path / "posts.jsonl"
    src.write_text('{"text": "ok"}\n{"txt": "wrong field"}\n')
    assert main(["embed", str(src), "--out", str(tmp_path / "o.npy"), "--model", "base"]) == 2
    assert "posts.jsonl:2: needs a string field `text`" in capsys.readouterr().err


def _parquet(path, **columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize("name, write, match", [
    ("p.jsonl", lambda p: p.write_text('{"text": "ok"}\n{"txt": "x"}\n'), r"p.jsonl:2: needs a string field `text`"),
    ("p.jsonl", lambda p: p.write_text('{"text": "ok"}\nnot json\n'), r"p.jsonl:2: not valid JSON"),
    ("p.parquet", lambda p: _parquet(p, text=["a", None]), r"row 1 column `text` must be a string. Given: NoneType"),
    ("p.parquet", lambda p: _parquet(p, body=["a"]), r"needs a column `text`. Given columns: \['body'\]"),
    ("p.parquet", lambda p: p.write_bytes(b"not parquet"), r"is not a readable Parquet file: [^\n]*[^.]\. Fix:"),
])
def test_every_input_error_names_the_fix(tmp_path, capsys, name, write, match):
    """README, Commands: errors print one line naming the argument, the value given and the fix."""
    write(tmp_path / name)
    assert main(["embed", str(tmp_path / name), "--out", str(tmp_path / "o.npy"), "--model", "base"]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and "Fix: " in err and err.count("\n") == 1, err


@pytest.mark.parametrize("name, out, match", [("posts.csv", "o.npy", "`INPUT` must end in one of"),
                                              ("posts.txt", "o.csv", "`--out` must end in one of")])
def test_unsupported_formats_are_named(tmp_path, capsys, name, out, match):
    (tmp_path / name).write_text("x\n")
    assert main(["embed", str(tmp_path / name), "--out", str(tmp_path / out)]) == 2
    assert match in capsys.readouterr().err


def test_too_long_post_with_no_truncate_fails_clearly(tmp_path, capsys):
    src = tmp_path / "posts.txt"
    src.write_text("short\n" + "word " * 400 + "\n")
    assert main(["embed", str(src), "--out", str(tmp_path / "o.npy"), "--model", "base", "--no-truncate"]) == 2
    err = capsys.readouterr().err
    assert "post 1 of" in err and "(id 1) is longer than max_length (256 tokens), and --no-truncate is given" in err


def test_a_lone_surrogate_from_a_json_escape_names_the_post(tmp_path, capsys):
    """json.loads keeps "\\ud800" as a lone surrogate, which the tokenizer cannot read: one line naming the post."""
    src = tmp_path / "posts.jsonl"
    src.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "text": "half \\ud800 a pair"}\n')
    assert main(["embed", str(src), "--out", str(tmp_path / "o.npy"), "--model", "base", "--backend", "torch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"postemb embed: error: post 1 of {src} (id 'b') holds a lone surrogate (U+D800") and \
        "Fix:" in err and err.count("\n") == 1


def test_cuda_without_a_gpu_names_the_flag_in_the_fix(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "p.txt").write_text("a post\n")
    assert main(["embed", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o.npy"), "--model", "base",
                 "--backend", "torch", "--device", "cuda"]) == 2
    assert "sees no CUDA device. Fix: `--device` 'cpu'" in capsys.readouterr().err


def test_a_wrong_postemb_data_is_said_once(tmp_path, monkeypatch, caplog):
    """demo (and every reader) calls data_root more than once: one warning, not one per call."""
    from postemb_rt.data import data_root

    found = tmp_path / "shared" / "data"
    (found / "tweeteval").mkdir(parents=True)
    (tmp_path / "wd").mkdir()
    monkeypatch.chdir(tmp_path / "wd")  # ../shared/data is the fallback
    monkeypatch.setenv("POSTEMB_DATA", str(tmp_path / "wd"))  # holds no tweeteval/
    assert data_root(required=False) == found and data_root() == found
    said = [r for r in caplog.records if "holds no tweeteval/" in r.getMessage()]
    assert len(said) == 1 and str(found) in said[0].getMessage()


def test_demo_prints_throughput_and_neighbours(capsys):
    assert main(["demo", "--n", "40", "--model", "base", "--queries", "1"]) == 0
    out = capsys.readouterr().out
    assert "posts/s" in out and "query:" in out and f"backend: {auto_backend()}" in out


def test_missing_model_is_an_error_not_a_traceback(tmp_path, capsys):
    src = tmp_path / "posts.txt"
    src.write_text("x\n")
    assert main(["embed", str(src), "--out", str(tmp_path / "o.npy"), "--model", str(tmp_path / "nope")]) == 2
    assert "Fix:" in capsys.readouterr().err


def test_embed_long_posts_chunk_reports_windows(tmp_path, capsys):
    src = tmp_path / "posts.txt"
    src.write_text("short\n" + "word " * 400 + "\n")
    out = tmp_path / "o.npy"
    assert main(["embed", str(src), "--out", str(out), "--model", "base", "--backend", "torch",
                 "--long-posts", "chunk"]) == 0
    assert "truncated=0, chunked=1 (2 windows)" in capsys.readouterr().out
    assert np.load(out).shape == (2, 384)


# -- ids and lines: every output loads in PostIndex.from_parquet ------------------------------
def test_txt_lines_end_at_newline_only(tmp_path):
    """U+2028, \\x0c and \\x85 are characters of a post, not line ends (str.splitlines would cut
    there); a \\r before \\n is dropped (Windows line ends); ids are line numbers."""
    from postemb_rt.commands.embed import read_posts

    src = tmp_path / "posts.txt"
    src.write_bytes("a\u2028b\nc\x0cd\r\n\ne\x85f\rg\nlast".encode("utf-8"))
    ids, texts = read_posts(src)
    assert texts == ["a\u2028b", "c\x0cd", "", "e\x85f\rg", "last"] and ids == [0, 1, 2, 3, 4]
    src.write_bytes(b"one\ntwo\n")  # the final newline ends the last line; it starts no post
    assert read_posts(src) == ([0, 1], ["one", "two"])
    src.write_bytes(b"")
    assert read_posts(src) == ([], [])


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is loaded: the ids must be refused before any work."""
    from postemb_rt.encoder import Encoder

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the ids were checked")

    monkeypatch.setattr(Encoder, "from_pretrained", refuse)


@pytest.mark.parametrize("rows, match", [
    ([{"id": 1, "text": "a"}, {"id": "x", "text": "b"}],
     r"posts.jsonl:2: `id` 'x' is a string, but .*posts.jsonl:1's is an integer.*Fix:"),
    ([{"text": "a"}, {"id": 0, "text": "b"}],  # numbered by position, the first post's id was 0 too
     r"posts.jsonl:2: has `id`, unlike .*posts.jsonl:1; posts without one are numbered by position.*Fix: give "),
    ([{"id": 1, "text": "a"}, {"text": "b"}], r"posts.jsonl:2: has no `id`, unlike .*posts.jsonl:1"),
    ([{"id": 7, "text": "a"}, {"id": 8, "text": "b"}, {"id": 7, "text": "c"}],
     r"posts.jsonl:3: `id` 7 was given before, at .*posts.jsonl:1; an id names one post. Fix: make the ids unique"),
    ([{"id": "a", "text": "a"}, {"id": None, "text": "b"}], r"posts.jsonl:2: `id` is null.*Fix:"),
    ([{"id": True, "text": "a"}], r"posts.jsonl:1: `id` must be an integer or a string. Given: bool"),
    ([{"id": 1.5, "text": "a"}], r"posts.jsonl:1: `id` must be an integer or a string. Given: float"),
])
def test_bad_or_mixed_jsonl_ids_are_refused_before_embedding(tmp_path, capsys, no_model, rows, match):
    src = tmp_path / "posts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["embed", str(src), "--out", str(tmp_path / "o.parquet"), "--model", "base"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    import re

    assert re.search(match, err), err
    assert not (tmp_path / "o.parquet").exists()


def test_null_parquet_ids_are_refused_before_embedding(tmp_path, capsys, no_model):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "posts.parquet"
    pq.write_table(pa.table({"id": [10, None], "text": ["a", "b"]}), src)
    assert main(["embed", str(src), "--out", str(tmp_path / "o.parquet"), "--model", "base"]) == 2
    assert "posts.parquet row 1: `id` is null" in capsys.readouterr().err
    pq.write_table(pa.table({"id": [1.5, 2.5], "text": ["a", "b"]}), src)
    assert main(["embed", str(src), "--out", str(tmp_path / "o.parquet"), "--model", "base"]) == 2
    assert "column `id` must be integers or strings. Given: double" in capsys.readouterr().err


@pytest.mark.parametrize("ids", [[5, 6, 7, 8], None])
def test_embed_parquet_output_loads_in_the_index_with_the_vector_version(tmp_path, ids):
    from postemb_rt.retrieval.index import PostIndex

    src = tmp_path / "posts.jsonl"
    src.write_text("".join(json.dumps({"text": t} if ids is None else {"id": ids[i], "text": t}) + "\n"
                           for i, t in enumerate(POSTS)))
    out = tmp_path / "emb.parquet"
    assert main(["embed", str(src), "--out", str(out), "--model", "base", "--backend", "torch",
                 "--long-posts", "chunk"]) == 0
    idx = PostIndex.from_parquet(out)
    assert idx.ids == (ids or [0, 1, 2, 3])
    assert idx.model_version == "all-MiniLM-L6-v2+chunk"  # the vector version: chunk vectors are not truncate's


@pytest.mark.parametrize("argv, env, words", [
    (["serve", "--precision", "bf17"], {}, "argument --precision: invalid choice: 'bf17'"),
    (["nearline", "--backend", "nosuch"], {}, "argument --backend: invalid choice: 'nosuch'"),
    (["serve"], {"POSTEMB_PRECISION": "bf17"}, "$POSTEMB_PRECISION must be one of"),
    (["serve", "--port", "70000"], {}, "`--port` must be in 0..65535"),
])
def test_serving_flags_are_checked_before_anything_starts(argv, env, words, monkeypatch, capsys):
    """A typo in a deployed command's flag or variable is exit 2 at once, naming it (the server
    used to open its port first, then fail to load with exit 1)."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        code = main(argv)  # a ValidationError: printed, 2 returned
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    assert code == 2 and words in capsys.readouterr().err


def test_a_bad_cpu_isa_variable_is_named_not_a_traceback(tmp_path, monkeypatch, capsys):
    src = tmp_path / "posts.txt"
    src.write_text("x\n")
    monkeypatch.setenv("POSTEMB_CPU_ISA", "foo")
    assert main(["embed", str(src), "--out", str(tmp_path / "o.npy"), "--model", "base", "--backend", "torch"]) == 2
    assert "POSTEMB_CPU_ISA must be one of auto, generic, avx2, avx512. Given: 'foo'. Fix:" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["embed", "{bad}", "--out", "{tmp}/o.npy"], "is not a readable Parquet file"),
    (["index", "build", "--input", "{bad}", "--out", "{tmp}/idx"], "is not readable as Parquet embeddings"),
    (["index", "build", "--input", "{tmp}/nosuch.parquet", "--out", "{tmp}/idx"], "does not exist. Fix:"),
    (["nearline", "--redis", "notaurl"], "`--redis` is not a Redis URL"),
])
def test_unreadable_inputs_are_named_not_tracebacks(tmp_path, capsys, argv, words):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    assert main([a.format(bad=bad, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_a_password_in_a_bad_redis_url_is_never_printed(capsys):
    assert main(["nearline", "--redis", "http://user:s3cret@host:6379/0"]) == 2
    err = capsys.readouterr().err
    assert "Given: 'http://user:***@host:6379/0'" in err and "s3cret" not in err


def test_library_errors_name_the_commands_flags(tmp_path, capsys):
    src = tmp_path / "posts.txt"
    src.write_text("x\n")
    assert main(["embed", str(src), "--out", str(tmp_path / "o.npy"), "--model", "nosuch"]) == 2
    assert "`--model` 'nosuch' is neither a registered name" in capsys.readouterr().err  # not `name_or_path`
    assert main(["embed", str(src), "--out", str(tmp_path / "o.npy"), "--model", "base", "--max-length", "2"]) == 2
    assert "`--max-length` must be between 3 " in capsys.readouterr().err  # the library's `max_length`
    assert main(["index", "build", "--input", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "idx")]) == 2
    assert "`--input` '" in capsys.readouterr().err  # index's reader names it `path`


def test_jsonl_bytes_that_are_not_utf8_are_named_and_a_byte_order_mark_is_read(tmp_path, capsys, no_model):
    from postemb_rt.commands.embed import read_posts

    src = tmp_path / "posts.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"id": 1, "text": "a"}\n{"id": 2, "text": "b\xff"}\n')
    assert main(["embed", str(src), "--out", str(tmp_path / "o.npy")]) == 2
    assert "posts.jsonl:2 is not valid UTF-8 (byte 20 of the line). Fix: save the file as UTF-8." in \
        capsys.readouterr().err
    src.write_bytes(b'\xef\xbb\xbf{"id": 1, "text": "a"}\n')
    assert read_posts(src) == ([1], ["a"])
    (tmp_path / "posts.txt").write_bytes(b"\xef\xbb\xbfone\ntwo\n")
    assert read_posts(tmp_path / "posts.txt") == ([0, 1], ["one", "two"])


@pytest.mark.parametrize("out, words", [
    ("{tmp}/folder.npy", "`--out` '{tmp}/folder.npy' is a folder. Fix: name a file in it"),
    ("{tmp}/afile/o.npy", "`--out` '{tmp}/afile/o.npy' cannot be written: {tmp}/afile is a file, not a folder. Fix:"),
])
def test_an_output_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, capsys, no_model, out, words):
    (tmp_path / "posts.txt").write_text("x\n")
    (tmp_path / "folder.npy").mkdir()
    (tmp_path / "afile").write_text("")
    assert main(["embed", str(tmp_path / "posts.txt"), "--out", out.format(tmp=tmp_path)]) == 2
    err = capsys.readouterr().err
    assert words.format(tmp=tmp_path) in err and "Traceback" not in err and err.count("\n") == 1


def test_an_os_error_is_one_line_with_a_fix(tmp_path, capsys, monkeypatch):
    from postemb_rt.commands import embed

    def fail(args):  # what a write that the OS refuses after the work raised: a traceback
        raise IsADirectoryError(21, "Is a directory", str(tmp_path / "o.npy"))
    monkeypatch.setattr(embed, "run", fail)
    assert main(["embed", "x.txt", "--out", "o.npy"]) == 2
    err = capsys.readouterr().err
    assert err == (f"postemb embed: error: Is a directory: '{tmp_path / 'o.npy'}'. Fix: check that path: a file "
                   "where a folder must be (or the reverse), a folder this user may not write, or a full disk\n")


def test_a_library_error_names_the_flag_of_a_nested_command(tmp_path, capsys):
    """`index query`'s flags live on its own parser, below `index`'s: they were not found."""
    src = tmp_path / "posts.txt"
    src.write_text("a post\nanother\n")
    assert main(["embed", str(src), "--out", str(tmp_path / "e.parquet"), "--model", "base"]) == 0
    assert main(["index", "build", "--input", str(tmp_path / "e.parquet"), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    query = ["index", "query", "--index", str(tmp_path / "idx"), "--text", "hi", "--model", "base"]
    assert main([*query, "--rescore", "2"]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert line.startswith("postemb index: error: `--rescore` ") and "`rescore`" not in line


@pytest.mark.parametrize("argv, words", [
    (["eval", "--out", "{tmp}", "--zs-posts", "-5"], "argument --zs-posts: must be an integer >= 1. Given: '-5'"),
    (["eval", "--out", "{tmp}", "--throughput-posts", "-1"], "argument --throughput-posts: must be an integer >= 0"),
])
def test_eval_sizes_are_checked_before_any_work(tmp_path, capsys, argv, words):
    """A negative size sliced the whole split from the end and started embedding 50,000 posts."""
    with pytest.raises(SystemExit) as exit_:
        main([a.format(tmp=tmp_path) for a in argv])
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_eval_refuses_an_unknown_teacher_before_any_row(tmp_path, capsys, no_model):
    assert main(["eval", "--out", str(tmp_path), "--teacher", "nope"]) == 2
    assert "`--teacher` 'nope' is neither a registered teacher" in capsys.readouterr().err


def test_a_config_files_key_is_named_as_the_file_names_it_not_as_the_flag(tmp_path, capsys):
    """`steps` in a training config is not `--steps`, though the command has that flag too."""
    config = tmp_path / "c.json"
    config.write_text('{"model_version": "x", "steps": "5"}')
    assert main(["train", "--config", str(config), "--plan"]) == 2
    err = capsys.readouterr().err
    assert f"error: `steps` in {config} must be >= 1" in err and "`--steps`" not in err
    config.write_text('{"model_version": "x", "steps": 5}')
    assert main(["train", "--config", str(config), "--plan", "--steps", "0"]) == 2
    assert "`--steps` must be >= 1. Given: 0." in capsys.readouterr().err  # the flag's own value: the flag


def test_teacher_without_its_action_names_the_actions(capsys):
    """`postemb teacher` alone said "required: action", a word the user cannot type."""
    with pytest.raises(SystemExit) as exc:
        main(["teacher"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "the following arguments are required: fetch|path" in err, err
    assert "Fix: see `postemb teacher --help`" in err

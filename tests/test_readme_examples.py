"""README.md's examples, run as a new user would, so that they cannot rot unseen: the Python
example at its top, the flags and defaults of the commands it lists ("Commands"), the paths of
its "Layout" table, and `postemb demo --n`."""
from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of README's section `## title`, up to the next `## ` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def test_the_first_python_example_runs_as_written():
    """README's opening example (encode, describe, submit, aencode), its top-level `await` run
    inside a coroutine; the results have the shapes its comments promise."""
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    namespace: dict = {}
    exec(compile("async def example():\n" + textwrap.indent(code, "    ") + "    return locals()\n",
                 "README.md", "exec"), namespace)
    found = asyncio.run(namespace["example"]())
    enc = found["enc"]
    try:
        assert found["emb"].dtype == np.float32 and found["emb"].shape == (2, enc.dim)
        assert np.allclose(np.linalg.norm(found["emb"], axis=1), 1.0, atol=1e-5)  # "unit rows"
        assert found["vecs"].shape == (1, enc.dim) and found["vec"].shape == (enc.dim,)
        assert np.allclose(found["vecs"][0], found["vec"], atol=1e-5)
    finally:
        enc.close()


def synopsis_defaults(block: str, command: str) -> dict[str, str | None]:
    """`[--flag value]` / `[--flag]` / `--flag VALUE` of `command`'s synopsis lines in the
    Commands block (its first line and the indented lines that continue it): flag -> the default
    shown (None: none shown, or a placeholder in capitals, or a choice list)."""
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(command + " "))
    text = lines[start]
    for line in lines[start + 1:]:
        if not line.startswith("              ["):  # a continuation of the synopsis, not a comment
            break
        text += " " + line
    text = re.sub(r"\s+#.*", "", text)
    flags: dict[str, str | None] = {}
    for m in re.finditer(r"(--[a-z][a-z0-9-]*)(?: ([^\s\]|]+))?", text):
        value = m.group(2)
        flags[m.group(1)] = None if value is None or value.isupper() or value.startswith("--") else value
    return flags


def parser_of(command: str):
    from postemb_rt.cli import build_parser

    parser = build_parser(environ={})
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices[command]


@pytest.mark.parametrize("command", ["embed", "demo", "teacher"])
def test_the_commands_synopsis_names_real_flags_and_their_defaults(command):
    """README "Commands": every flag it shows for `postemb COMMAND` exists, and a default it
    shows (`[--batch-size 64]`) is the parser's."""
    shown = synopsis_defaults(section("Commands"), f"postemb {command}")
    assert shown, command
    actions = {o: a for a in parser_of(command)._actions for o in a.option_strings}
    for flag, default in shown.items():
        assert flag in actions, f"README shows `postemb {command} {flag}`, which the parser does not take"
        if default is not None:  # (of `a|b`, the first shown is the default)
            assert str(actions[flag].default) == default, (flag, actions[flag].default, default)


def test_every_path_of_the_layout_table_exists():
    """README "Layout": each backticked file name in a row is in that row's folder (or below it, or
    in the folder above it)."""
    rows = [line for line in section("Layout").splitlines() if line.startswith("| `")]
    assert rows
    missing = []
    for row in rows:
        folder = re.match(r"\| `([^`]+)`", row).group(1)
        base = ROOT / folder if folder.endswith("/") else ROOT
        for name in re.findall(r"`([\w./-]+\.(?:py|cpp|c|h|md|sh))`", row):
            if name == "eval.md":  # a report `postemb eval` writes, not a source file
                continue
            # (a row may name a file of the folder above: serving's row cites `quantization.py`)
            if not any((d / name).exists() for d in (base, base.parent, ROOT)) and not any(base.rglob(name)):
                missing.append(f"{folder}: {name}")
    assert not missing, missing


def test_demo_n_limits_the_built_in_sample_too(monkeypatch, capsys):
    """`postemb demo --n N` embeds N posts also when the shared data is absent (it embedded the
    whole built-in sample, whatever --n said)."""
    import postemb_rt.data as data
    from postemb_rt.cli import main

    monkeypatch.setattr(data, "data_root", lambda required=True: None)
    assert main(["demo", "--n", "3", "--queries", "1", "--model", "base", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "embedded 3 posts (built-in sample" in out and "output (3, 384) float32" in out, out


def test_embed_given_a_folder_says_it_is_a_folder(tmp_path, capsys):
    """README "Commands": `postemb embed INPUT` takes one file; a folder of posts (no suffix) was
    told to end in .txt, .jsonl or .parquet, as if renaming it would do; it is now told it is a
    folder, and that a folder is `postemb backfill`'s input."""
    from postemb_rt.cli import main

    (tmp_path / "posts").mkdir()
    assert main(["embed", str(tmp_path / "posts"), "--out", str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "postemb backfill" in err and err.count("\n") == 1, err


def test_every_environment_variable_the_code_reads_is_in_the_readme():
    """README "Commands" lists the library's variables (the flags' own follow one rule, and
    `postemb serve`'s hand-off to its workers, POSTEMB_SERVE_*, is internal)."""
    pattern = re.compile(r"""(?:environ(?:\.get)?\(?\[?|getenv\()\s*["'](POSTEMB_[A-Z0-9_]+)["']""")
    read = set()
    for path in [*(ROOT / "postemb_rt").rglob("*.py"), *(ROOT / "csrc").glob("*.cpp")]:
        read |= set(pattern.findall(path.read_text(encoding="utf-8")))
    assert "POSTEMB_NATIVE" in read and "POSTEMB_CPU_ISA" in read  # the pattern finds them
    unnamed = sorted(v for v in read if not v.startswith("POSTEMB_SERVE_") and v not in README)
    assert not unnamed, unnamed


def test_a_cache_that_cannot_be_written_is_one_error_with_one_fix(tmp_path, monkeypatch, capsys):
    """README "Commands": one line naming the fix. A POSTEMB_CACHE that cannot hold the ONNX export
    got two fixes in a row ('Fix: check that path ... Fix: point POSTEMB_CACHE ...'); now one."""
    from postemb_rt.cli import main

    (tmp_path / "posts.txt").write_text("a post\n")
    (tmp_path / "cache").write_text("a file where the cache folder must be")
    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path / "cache"))
    assert main(["embed", str(tmp_path / "posts.txt"), "--out", str(tmp_path / "o.npy"), "--model", "base",
                 "--backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.count("Fix:") == 1 and "Fix: point POSTEMB_CACHE at a writable folder" in err
    assert str(tmp_path / "cache") in err, err

"""export/export_onnx.py: the round trip and its parity gate."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from postemb_rt import Encoder
from tests.conftest import assert_exact

SCRIPT = Path(__file__).resolve().parent.parent / "export" / "export_onnx.py"


def run_export(*args):
    """The script as a user runs it, in a new process."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def export_here(*args):
    """The script's main() in this process (it skips a new interpreter's imports of torch, transformers and
    onnxruntime): the same exit status and printed output as run_export."""
    import contextlib
    import importlib.util
    import io
    import types

    spec = importlib.util.spec_from_file_location("export_onnx_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = module.main(list(args))
        except SystemExit as exc:  # argparse's refusals
            rc = exc.code
    return types.SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())


def test_export_round_trip_writes_a_self_contained_directory(tmp_path, base_torch, sample_texts):
    out = tmp_path / "base-onnx"
    res = run_export("--model", "base", "--out", str(out), "--parity-posts", "16")
    assert res.returncode == 0, res.stderr
    assert "parity on" in res.stdout
    assert {p.name for p in out.iterdir()} == {"model.onnx", "tokenizer.json", "postemb.json"}
    enc = Encoder.from_pretrained(out)
    assert enc.describe()["backend"] == "openvino"  # backend auto on CPU runs the export on OpenVINO
    assert_exact(enc.encode(sample_texts), base_torch.encode(sample_texts))


def test_external_pooling_export_pools_outside_the_graph(tmp_path, base_torch, sample_texts):
    out = tmp_path / "base-onnx-external"
    res = export_here("--model", "base", "--out", str(out), "--pooling", "external", "--parity-posts", "8")
    assert res.returncode == 0, res.stderr
    enc = Encoder.from_pretrained(out)
    assert enc.model.config.onnx_pooling == "external"
    assert "C++" in enc.describe()["pooling_kernel"]
    assert_exact(enc.encode(sample_texts), base_torch.encode(sample_texts))


def test_parity_gate_fails_the_export_below_threshold(tmp_path):
    # cosine can never exceed 1 + float error, so a threshold of 1.01 must fail the gate
    res = export_here("--model", "base", "--out", str(tmp_path / "o"), "--no-optimize",
                     "--parity-posts", "4", "--min-cosine", "1.01")
    assert res.returncode == 3
    assert "parity FAILED" in res.stderr and "nothing written to" in res.stderr
    assert not (tmp_path / "o").exists()  # no loadable model behind a failed check


def test_missing_model_exits_2_with_a_message(tmp_path):
    res = run_export("--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "Fix:" in res.stderr


def test_a_re_export_leaves_exactly_the_files_it_wrote(tmp_path):
    # default has a projection: --pooling external writes projection.safetensors, which a graph export
    # (the head inside the ONNX model) must not leave behind; nor an engine built from the earlier ONNX
    out = tmp_path / "default-onnx"
    res = export_here("--model", "default", "--out", str(out), "--pooling", "external", "--no-optimize",
                     "--parity-posts", "4")
    assert res.returncode == 0, res.stderr
    assert (out / "projection.safetensors").is_file()
    (out / "model.plan").write_bytes(b"an engine of the earlier ONNX")  # what build_engine.py adds beside it
    (out / "engine.json").write_text("{}")
    res = export_here("--model", "default", "--out", str(out), "--pooling", "graph", "--no-optimize",
                     "--parity-posts", "4")
    assert res.returncode == 0, res.stderr
    assert {p.name for p in out.iterdir()} == {"model.onnx", "tokenizer.json", "postemb.json"}
    assert not [p.name for p in tmp_path.iterdir() if p.name != "default-onnx"]  # nothing left beside it
    enc = Encoder.from_pretrained(out, backend="onnxruntime")
    assert enc.model.config.onnx_pooling == "graph" and enc.dim == 50


def test_out_is_refused_when_it_holds_something_other_than_an_earlier_export(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    res = run_export("--model", "base", "--out", str(mine))
    assert res.returncode == 2
    assert f"`--out` {str(mine)!r}" in res.stderr and "not an earlier export" in res.stderr and "Fix:" in res.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]  # untouched


def test_out_is_refused_when_it_is_the_source_model(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(Path(__file__).resolve().parent.parent / "postemb_rt" / "models" / "default", src)
    before = sorted(p.name for p in src.iterdir())
    res = run_export("--model", str(src), "--out", str(src))
    assert res.returncode == 2 and "is the source model" in res.stderr and "Fix:" in res.stderr
    assert sorted(p.name for p in src.iterdir()) == before


def _model_copy(tmp_path, **config):
    """A copy of the registered default model with ``config`` merged into its postemb.json."""
    import json

    src = tmp_path / "src"
    shutil.copytree(Path(__file__).resolve().parent.parent / "postemb_rt" / "models" / "default", src)
    cfg = json.loads((src / "postemb.json").read_text())
    (src / "postemb.json").write_text(json.dumps({**cfg, **config}))
    return src


def test_the_export_keeps_the_models_output_settings(tmp_path, sample_texts):
    """truncate_dim (the prefix encode returns by default) and similarity_fn_name are the model's: the
    export embeds and compares as the source does (the parity check compared 16 dims with 50 and crashed)."""
    src = _model_copy(tmp_path, truncate_dim=16, similarity_fn_name="dot")
    out = tmp_path / "onnx"
    res = export_here("--model", str(src), "--out", str(out), "--no-optimize", "--parity-posts", "4")
    assert res.returncode == 0, res.stderr
    enc, ref = Encoder.from_pretrained(out), Encoder.from_pretrained(src, backend="torch")
    assert (enc.model.config.truncate_dim, enc.model.config.similarity_fn_name) == (16, "dot")
    assert enc.vector_version == ref.vector_version == "postemb-mt50-v4@16"
    assert_exact(enc.encode(sample_texts), ref.encode(sample_texts))


def test_the_parity_check_compares_cosines_of_a_model_that_does_not_normalize(tmp_path):
    """normalize=False: the check printed dot products of unnormalised rows as cosines (min 3.02)."""
    import re

    src = _model_copy(tmp_path, normalize=False)
    res = export_here("--model", str(src), "--out", str(tmp_path / "onnx"), "--no-optimize", "--parity-posts", "4")
    assert res.returncode == 0, res.stderr
    low, mean = map(float, re.search(r"min cosine (\S+), mean (\S+) ", res.stdout).groups())
    assert 0.9999 <= low <= mean <= 1 + 1e-6
    assert export_here("--model", str(src), "--out", str(tmp_path / "o"), "--min-cosine", "nan").returncode == 2


def test_an_onnx_export_as_model_is_refused_naming_the_flag(tmp_path):
    """It has no encoder to export from: the message spoke of the torch backend and backend='onnxruntime'."""
    import json

    from postemb_rt.model_dir import PostEmbConfig

    export = tmp_path / "an-export"
    export.mkdir()
    (export / "postemb.json").write_text(PostEmbConfig(model_version="v1", hidden_size=8, encoder=None,
                                                       onnx="model.onnx").to_json())
    (export / "model.onnx").write_bytes(b"")
    (export / "tokenizer.json").write_text(json.dumps({}))
    res = run_export("--model", str(export), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and f"`--model` {str(export)!r} is an ONNX export" in res.stderr
    assert "backend=" not in res.stderr and "Fix: pass the model it was exported from" in res.stderr
    assert not (tmp_path / "o").exists()


def test_a_killed_export_leaves_nothing_a_later_export_does_not_sweep(tmp_path):
    """A kill -9 (an OOM kill) leaves its staging folder beside OUT; the next export removes it (it left a
    hidden .fp32-* folder of a model's size that nothing removed) and OUT is whole."""
    import signal
    import time

    out = tmp_path / "o"
    run = subprocess.Popen([sys.executable, str(SCRIPT), "--model", "base", "--out", str(out), "--no-optimize"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".")] and time.monotonic() < deadline:
        assert run.poll() is None, "the export ended before it staged anything"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not out.exists() and [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    res = export_here("--model", "base", "--out", str(out), "--no-optimize", "--parity-posts", "4")
    assert res.returncode == 0, res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["o"]
    assert {p.name for p in out.iterdir()} == {"model.onnx", "tokenizer.json", "postemb.json"}


def test_too_few_fidelity_posts_are_refused_before_the_export(tmp_path):
    """overlap@10 needs more than 10 posts: 5 raised a ValueError traceback after the export and quantization."""
    res = run_export("--model", "base", "--out", str(tmp_path / "o"), "--precision", "int8", "--fidelity-posts", "5")
    assert res.returncode == 2 and "argument --fidelity-posts: must be an integer >= 11. Given: '5'" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "o").exists()

"""export/build_engine.py without TensorRT: argument handling, the dry run's engine.json, the checks of
--onnx and --out before any build, and clear exits when the ONNX model, TensorRT or CUDA is missing."""
import importlib.util
import json
from pathlib import Path

import pytest

from tests.gpu.conftest import HAS_TRT, needs_cuda, needs_trt, tiny_onnx

SCRIPT = Path(__file__).resolve().parents[2] / "export" / "build_engine.py"


@pytest.fixture(scope="module")
def build_engine():
    spec = importlib.util.spec_from_file_location("build_engine", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(mod, capsys, *args):
    code = mod.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_prints_the_profile_and_engine_json(build_engine, onnx_dir, capsys):
    code, out, err = run(build_engine, capsys, "--onnx", onnx_dir / "model.onnx", "--fp16", "--max-shape", "64x128",
                         "--dry-run")
    assert code == 0
    assert "min 1x1, opt 32x64, max 64x128; precision fp16" in err
    meta = json.loads(out)  # `--dry-run > engine.json` is the file
    assert meta["precision"] == "fp16" and meta["model_version"] == "test-v1" and meta["hidden_size"] == 384
    assert meta["inputs"]["attention_mask"] == {"min": [1, 1], "opt": [32, 64], "max": [64, 128]}


def test_max_batch_sets_the_default_max_shape(build_engine, onnx_dir, capsys):
    code, _, err = run(build_engine, capsys, "--onnx", onnx_dir / "model.onnx", "--max-batch", "16", "--dry-run")
    assert code == 0 and "opt 16x64, max 16x256; precision fp32" in err


@pytest.mark.parametrize("extra, match", [
    (["--max-shape", "8x1024"], "seq must be <= the model's max_length (256)"),
    (["--max-shape", "8x64", "--max-batch", "8"], "give `--max-batch` or `--max-shape`, not both"),
    (["--opt-shape", "banana"], "`--opt-shape` shapes must be BATCHxSEQ"),
])
def test_bad_shapes_exit_2_naming_the_flag(build_engine, onnx_dir, capsys, extra, match):
    code, _, err = run(build_engine, capsys, "--onnx", onnx_dir / "model.onnx", *extra, "--dry-run")
    assert code == 2 and match in err


def test_graph_pooling_onnx_is_refused_with_the_export_command(build_engine, onnx_dir, capsys):
    cfg = json.loads((onnx_dir / "postemb.json").read_text())
    (onnx_dir / "postemb.json").write_text(json.dumps({**cfg, "onnx_pooling": "graph"}))
    code, _, err = run(build_engine, capsys, "--onnx", onnx_dir / "model.onnx", "--dry-run")
    assert code == 2 and "onnx_pooling 'graph'" in err and "--pooling external" in err


def test_missing_onnx_exits_2(build_engine, tmp_path, capsys):
    code, _, err = run(build_engine, capsys, "--onnx", tmp_path / "nope.onnx")
    assert code == 2 and "`--onnx` must be an existing ONNX file" in err


def test_fp16_and_bf16_are_exclusive(build_engine, onnx_dir):
    with pytest.raises(SystemExit) as exc:
        build_engine.parse_args(["--onnx", str(onnx_dir / "model.onnx"), "--fp16", "--bf16"])
    assert exc.value.code == 2


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_without_tensorrt_the_build_exits_2_with_the_install_hint(build_engine, onnx_dir, capsys):
    code, _, err = run(build_engine, capsys, "--onnx", onnx_dir / "model.onnx", "--fp16")
    assert code == 2 and "the `tensorrt` Python package is not installed" in err and "pip install" in err
    assert not (onnx_dir / "model.plan").exists() and not (onnx_dir / "engine.json").exists()


def test_copy_model_dir_skips_engines(build_engine, onnx_dir, tmp_path):
    (onnx_dir / "model.plan").write_bytes(b"old")
    build_engine.copy_model_dir(onnx_dir, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "postemb.json", "tokenizer.json"]


@needs_cuda
@needs_trt
def test_builds_a_real_engine_for_the_base_model(build_engine, tmp_path, capsys):
    """GPU + TensorRT only: export base with external pooling, build, check engine.json."""
    from postemb_rt.model_dir import resolve
    from postemb_rt.onnx_export import export_onnx

    out = export_onnx(resolve("base"), tmp_path / "trt", optimize=False, pooling="external")
    code, _, err = run(build_engine, capsys, "--onnx", out.onnx_path, "--fp16", "--max-batch", "32",
                       "--timing-cache", tmp_path / "timing.cache")
    assert code == 0, err
    meta = json.loads((out.path / "engine.json").read_text())
    assert meta["precision"] == "fp16" and (out.path / "model.plan").stat().st_size == meta["engine_bytes"]
    assert (tmp_path / "timing.cache").stat().st_size > 0


def test_out_may_be_new_empty_the_onnx_folder_or_an_earlier_build(build_engine, onnx_dir, tmp_path, capsys):
    onnx = onnx_dir / "model.onnx"
    (tmp_path / "empty").mkdir()
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "engine.json").write_text("{}")
    for out in (tmp_path / "new", tmp_path / "empty", onnx_dir, tmp_path / "earlier"):
        assert run(build_engine, capsys, "--onnx", onnx, "--out", out, "--dry-run")[0] == 0, out


def test_an_out_folder_of_other_files_is_refused_before_the_build(build_engine, onnx_dir, tmp_path, capsys):
    """The build copies the model's files into --out over any of the same names: another model's
    folder would be left half one model, half the other."""
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "postemb.json").write_text("{}")
    (other / "adapters.safetensors").write_bytes(b"")
    code, _, err = run(build_engine, capsys, "--onnx", onnx_dir / "model.onnx", "--out", other, "--dry-run")
    assert code == 2 and f"`--out` '{other}' is a folder of other files" in err and "Fix:" in err
    (tmp_path / "a-file").write_text("")
    code, _, err = run(build_engine, capsys, "--onnx", onnx_dir / "model.onnx", "--out", tmp_path / "a-file",
                       "--dry-run")
    assert code == 2 and "is a file" in err and "Fix:" in err


def test_an_onnx_file_outside_an_export_folder_names_the_fix(build_engine, onnx_dir, tmp_path, capsys):
    """A folder whose model names no ONNX file (a sentence-transformers folder, a training run): the
    message must not point at a postemb.json that is not there."""
    import shutil

    from postemb_rt.model_dir import resolve

    (onnx_dir / "postemb.json").unlink()
    (onnx_dir / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 384}))
    # a Hugging Face folder's real tokenizer (the fixture's stand-in `{}` has no BERT normalizer, which a
    # plain Hugging Face folder's load now checks against transformers' rebuild of it)
    shutil.copy(resolve("base").tokenizer_path, onnx_dir / "tokenizer.json")
    code, _, err = run(build_engine, capsys, "--onnx", onnx_dir / "model.onnx", "--dry-run")
    assert code == 2 and "postemb.json" not in err.split("Fix:")[0]
    assert "names no ONNX file" in err and "Fix: python export/export_onnx.py" in err


def test_onnx_runtimes_fused_operators_are_refused_before_tensorrt_naming_no_optimize(build_engine, capsys,
                                                                                      tmp_path):
    """export_onnx.py's default fusions are ONNX Runtime's own operators (com.microsoft: Attention,
    EmbedLayerNormalization, ...), which TensorRT's ONNX parser does not know: the build would have failed
    on the GPU machine; it is refused at once, --dry-run included, and the unfused export passes."""
    from postemb_rt.model_dir import resolve
    from postemb_rt.onnx_export import export_onnx

    fused = export_onnx(resolve("base"), tmp_path / "fused", pooling="external")
    code, _, err = run(build_engine, capsys, "--onnx", fused.onnx_path, "--dry-run")
    assert code == 2 and "com.microsoft" in err and "Attention" in err
    assert "Fix: python export/export_onnx.py --pooling external --no-optimize" in err
    plain = export_onnx(resolve("base"), tmp_path / "plain", optimize=False, pooling="external")
    assert run(build_engine, capsys, "--onnx", plain.onnx_path, "--dry-run")[0] == 0


@pytest.mark.parametrize("what", ["not onnx", "contrib op", "int8"])
def test_an_onnx_file_tensorrt_cannot_build_from_exits_2_before_tensorrt(build_engine, onnx_dir, capsys, what):
    onnx = onnx_dir / "model.onnx"
    if what == "not onnx":
        onnx.write_bytes(b"not really onnx")
    elif what == "contrib op":
        tiny_onnx(onnx, domain="com.microsoft")
    else:
        cfg = json.loads((onnx_dir / "postemb.json").read_text())
        (onnx_dir / "postemb.json").write_text(json.dumps({**cfg, "precision": "int8"}))
    code, _, err = run(build_engine, capsys, "--onnx", onnx, "--fp16")  # no --dry-run: checked before TensorRT
    assert code == 2 and f"`--onnx` {str(onnx)!r}" in err and "Fix:" in err
    assert "tensorrt` Python package" not in err
    assert {"not onnx": "is not an ONNX model", "contrib op": "(com.microsoft: Gather)",
            "int8": "int8"}[what] in err


@pytest.mark.parametrize("value", ["nan", "inf", "0"])
def test_a_workspace_that_is_no_positive_finite_number_exits_2(build_engine, onnx_dir, capsys, value):
    """nan and inf passed the `<= 0` check, then int(nan * 2**30) raised inside the build."""
    with pytest.raises(SystemExit) as exc:
        build_engine.parse_args(["--onnx", str(onnx_dir / "model.onnx"), "--workspace-gib", value])
    assert exc.value.code == 2 and f"--workspace-gib must be a finite number > 0. Given: {value}" in \
        capsys.readouterr().err


def test_a_timing_cache_that_cannot_be_a_file_exits_2_before_the_build(build_engine, onnx_dir, tmp_path, capsys):
    """It was read before the build (a folder: IsADirectoryError) and written after it (a file on the way:
    the traceback came after minutes of building, and the engine was not written)."""
    (tmp_path / "a-file").write_text("")
    for cache, what in ((tmp_path, "is a folder"), (tmp_path / "a-file" / "timing.cache", "is a file")):
        code, _, err = run(build_engine, capsys, "--onnx", onnx_dir / "model.onnx", "--timing-cache", cache,
                           "--dry-run")
        assert code == 2 and f"`--timing-cache` {str(cache)!r}" in err and what in err and "Fix:" in err
    code, _, _ = run(build_engine, capsys, "--onnx", onnx_dir / "model.onnx", "--timing-cache",
                     tmp_path / "new" / "timing.cache", "--dry-run")
    assert code == 0

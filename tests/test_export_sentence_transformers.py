"""export/export_sentence_transformers.py: `default` as a sentence-transformers folder, round trip."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from postemb_rt import Encoder, ValidationError
from tests.test_st_folder import TEXTS, assert_parity

SCRIPT = Path(__file__).resolve().parent.parent / "export" / "export_sentence_transformers.py"


def run_export(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def export_here(*args):
    """The script's main() in this process (it skips a new interpreter's imports of torch, transformers and
    sentence-transformers): the same exit status and printed output as run_export."""
    import contextlib
    import io
    import types

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = _export_module().main(list(args))
        except SystemExit as exc:  # argparse's refusals
            rc = exc.code
    return types.SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture(scope="module")
def st_default(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "default-st"
    res = run_export("--model", "default", "--out", str(out), "--parity-posts", "16")
    assert res.returncode == 0, res.stderr
    assert "parity with sentence-transformers" in res.stdout
    return out


@pytest.fixture(scope="module")
def default_ref():
    """`default` on the torch backend: (its hidden size, its dim, its vectors of TEXTS), read by the tests."""
    with Encoder.from_pretrained("default", backend="torch") as ref:
        return ref.model.config.hidden_size, ref.dim, ref.encode(TEXTS)


def test_sentence_transformers_loads_it_and_matches_encoder(st_default, default_ref):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(st_default), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Dense", "Normalize"]
    got = st.encode(TEXTS, normalize_embeddings=True)
    _, dim, want = default_ref
    assert got.shape == (len(TEXTS), dim)
    assert_parity(got, want)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_the_folder_loads_back_into_encoder(st_default, default_ref, backend):
    hidden, dim, want = default_ref
    with Encoder.from_pretrained(st_default, backend=backend) as enc:
        d = enc.describe()
        assert (d["pooling"], d["head"], d["dim"]) == ("mean", f"Dense {hidden}->{dim} (identity)", dim)
        got = enc.encode(TEXTS)
        assert_parity(got, want)
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_the_folder_is_readable_as_the_umask_allows_and_nothing_is_left_beside_it(st_default):
    """It was built in a tempfile.TemporaryDirectory (0700) and renamed into place, with safetensors' 0600
    weights: another user (a text-embeddings-inference container, a hub upload job) could not read it."""
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    modes = {p.relative_to(st_default).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [st_default, *st_default.rglob("*")]}
    assert modes["model.safetensors"] == modes["2_Dense/model.safetensors"] == 0o666 & ~mask
    assert {m for name, m in modes.items() if (st_default / name).is_file()} == {0o666 & ~mask}
    assert {m for name, m in modes.items() if (st_default / name).is_dir()} == {0o777 & ~mask}
    assert [p.name for p in st_default.parent.iterdir()] == ["default-st"]


def test_a_non_empty_out_folder_is_refused(tmp_path):
    (tmp_path / "x").write_text("keep me")
    res = run_export("--model", "default", "--out", str(tmp_path))
    assert res.returncode == 2 and "is not an empty folder. Fix:" in res.stderr


def test_a_failed_parity_check_names_the_check_and_leaves_nothing(tmp_path):
    """It used to leave the folder behind (so the same command then failed on a non-empty --out)
    and to blame the cosine whichever bound failed."""
    pytest.importorskip("sentence_transformers")
    res = export_here("--model", "default", "--out", str(tmp_path / "st"), "--parity-posts", "8", "--max-abs", "0")
    assert res.returncode == 3, res.stderr
    assert "parity FAILED: post " in res.stderr and "> --max-abs 0.0" in res.stderr and "--min-cosine" not in res.stderr
    assert f"nothing written to {tmp_path / 'st'}" in res.stderr and list(tmp_path.iterdir()) == []


def test_the_models_prompts_and_similarity_fn_name_are_exported(tmp_path):
    """A model whose postemb.json declares prompts and a similarity function keeps them in the folder."""
    import importlib.util
    import json
    import shutil

    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from postemb_rt.model_dir import resolve

    src = Path(shutil.copytree(resolve("default").path, tmp_path / "src"))
    cfg = json.loads((src / "postemb.json").read_text())
    cfg.update(prompts={"query": "query: ", "document": ""}, default_prompt_name="document", similarity_fn_name="dot")
    (src / "postemb.json").write_text(json.dumps(cfg))
    spec = importlib.util.spec_from_file_location("export_st", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_st_folder(resolve(src), tmp_path / "out")
    st = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    assert st.prompts["query"] == "query: " and st.default_prompt_name == "document"
    assert st.similarity_fn_name == "dot"
    with Encoder.from_pretrained(tmp_path / "out", backend="torch") as enc:
        assert enc.similarity_fn_name == "dot" and enc.model.config.prompts["query"] == "query: "


def test_the_models_matryoshka_dims_are_exported_and_truncate_dim_matches(st_default, tmp_path, monkeypatch):
    """default's nested dims [32, 16, 8] are written to config_sentence_transformers.json (sentence-transformers
    still loads the folder, ignoring the key) and read back: truncate_dim=32 on the folder is default's @32 vector,
    and SentenceTransformer(folder, truncate_dim=32)'s (re-normalised, as normalize_embeddings=True)."""
    import json

    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from postemb_rt.model_dir import resolve

    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path))
    dims = resolve("default").config.matryoshka_dims
    assert dims and json.loads((st_default / "config_sentence_transformers.json").read_text())["matryoshka_dims"] \
        == dims
    st = SentenceTransformer(str(st_default), device="cpu", truncate_dim=32)
    with Encoder.from_pretrained("default", backend="torch", truncate_dim=32) as native, \
            Encoder.from_pretrained(st_default, backend="torch", truncate_dim=32) as enc:
        got = enc.encode(TEXTS)
        assert got.shape == (len(TEXTS), 32) and enc.describe()["matryoshka_dims"] == sorted({*dims, enc.dim})
        assert_parity(got, native.encode(TEXTS))
        assert_parity(got, st.encode(TEXTS, normalize_embeddings=True))
        with pytest.raises(ValidationError,
                           match=r"`matryoshka_dims` of .*config_sentence_transformers.json\)\. Given: 12"):
            enc.encode(TEXTS[:1], truncate_dim=12)


def _export_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_st", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model_with(tmp_path, **keys):
    """A copy of `default` whose postemb.json also says ``keys``."""
    import json
    import shutil

    from postemb_rt.model_dir import resolve

    src = Path(shutil.copytree(resolve("default").path, tmp_path / "src"))
    cfg = json.loads((src / "postemb.json").read_text())
    (src / "postemb.json").write_text(json.dumps({**cfg, **keys}))
    return resolve(src)


def test_the_models_truncate_dim_is_exported(tmp_path, monkeypatch):
    """A model whose postemb.json sets truncate_dim (encode's default prefix) keeps it: sentence-transformers reads
    it from config_sentence_transformers.json, so the folder embeds in 16 dims there too. It was left out: ST and
    the folder loaded back gave 50-d vectors, and the parity check failed on the shapes."""
    import argparse

    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path / "cache"))
    export, md = _export_module(), _model_with(tmp_path, truncate_dim=16)
    export.write_st_folder(md, tmp_path / "out")
    args = argparse.Namespace(parity_posts=8, min_cosine=0.99999, max_abs=1e-5)
    assert export.check_parity(md, tmp_path / "out", args) == 0
    st = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    assert st.truncate_dim == st.get_embedding_dimension() == 16
    with Encoder.from_pretrained(md.path, backend="torch") as src, \
            Encoder.from_pretrained(tmp_path / "out", backend="torch") as enc:
        want = src.encode(TEXTS)
        assert want.shape == (len(TEXTS), 16) and enc.truncate_dim == 16
        assert_parity(enc.encode(TEXTS), want)
        assert_parity(st.encode(TEXTS, normalize_embeddings=True), want)


def test_the_models_include_prompt_is_exported(tmp_path):
    """A model whose Pooling leaves prompt tokens out (include_prompt false) keeps that in 1_Pooling/config.json.
    It was written as true: sentence-transformers then pooled over the prompt, and the folder loaded back
    embedded prompts that the source model refuses."""
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    md = _model_with(tmp_path, include_prompt=False, prompts={"query": "query: ", "document": ""})
    _export_module().write_st_folder(md, tmp_path / "out")
    st = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    assert st[1].include_prompt is False
    want = st.encode(TEXTS)
    for path in (md.path, tmp_path / "out"):
        with Encoder.from_pretrained(path, backend="torch") as enc:
            assert_parity(enc.encode(TEXTS), want)  # no prompt: the same vectors
            with pytest.raises(ValidationError, match=r"include_prompt: false"):
                enc.encode(TEXTS[:1], prompt_name="query")


def test_a_folder_that_embeds_nan_fails_the_parity_check(st_default, tmp_path, capsys):
    """NaN compares false with both thresholds (`cos < min`, `err > max`): a folder whose vectors were NaN passed
    the check (0) and was written."""
    import argparse
    import shutil

    pytest.importorskip("sentence_transformers")
    from safetensors.torch import load_file, save_file

    from postemb_rt.model_dir import resolve

    folder = Path(shutil.copytree(st_default, tmp_path / "st"))
    dense = folder / "2_Dense" / "model.safetensors"
    state = load_file(str(dense))
    state["linear.weight"][0, 0] = float("nan")  # component 0 of every vector, then all of it after Normalize
    save_file(state, str(dense))
    args = argparse.Namespace(parity_posts=4, min_cosine=0.99999, max_abs=1e-5)
    assert _export_module().check_parity(resolve("default"), folder, args) == 3
    err = capsys.readouterr().err
    assert "parity FAILED: post 0 " in err and "cosine nan < --min-cosine" in err and "differs by nan" in err


@pytest.mark.parametrize("flag", ["--min-cosine", "--max-abs"])
def test_a_nan_threshold_is_refused(tmp_path, flag):
    """A NaN threshold turned its check off (every comparison with NaN is false)."""
    res = run_export("--model", "default", "--out", str(tmp_path / "st"), flag, "nan")
    assert res.returncode == 2 and f"argument {flag}: must be a number >= " in res.stderr
    assert "Given: 'nan'" in res.stderr
    assert not (tmp_path / "st").exists()

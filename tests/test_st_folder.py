"""sentence-transformers folders: the modules.json pipeline, parity with SentenceTransformer on
every backend, model versions, and the errors for folders the runtime cannot compute."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from postemb_rt import Encoder, ModelNotFoundError, ValidationError
from postemb_rt.data import BUILTIN_POSTS
from tests.conftest import SAMPLE_TEXTS, assert_exact
from tests.st_models import ARCHS, build_st_folder

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

# real posts of mixed lengths: short ones, the sample's odd cases, and posts past max_seq_length (64)
TEXTS = list(SAMPLE_TEXTS) + list(BUILTIN_POSTS) + [" ".join(BUILTIN_POSTS)]
TEACHER = Path("~/.cache/postemb_rt/teachers/all-mpnet-base-v2").expanduser()

# (name, build_st_folder kwargs): every architecture, every pooling mode, Dense heads of each kind
CASES = [
    *[(f"{a}-mean-dense-tanh", dict(arch=a, dense=[(16, True, torch.nn.Tanh())])) for a in ARCHS],
    ("bert-cls", dict(arch="bert", pooling="cls")),
    ("bert-max-unnormalized", dict(arch="bert", pooling="max", normalize=False)),
    ("bert-lasttoken", dict(arch="bert", pooling="lasttoken")),
    ("roberta-cls-dense-relu", dict(arch="roberta", pooling="cls", dense=[(24, True, torch.nn.ReLU())])),
    ("xlm-roberta-max", dict(arch="xlm-roberta", pooling="max")),
    ("mpnet-lasttoken-unnormalized", dict(arch="mpnet", pooling="lasttoken", normalize=False)),
    ("distilbert-cls", dict(arch="distilbert", pooling="cls")),
    ("bert-mean-identity-dense", dict(arch="bert", dense=[(20, False, None)])),  # the fused C++ kernel path
    ("bert-mean-two-dense-gelu", dict(arch="bert", dense=[(48, True, torch.nn.GELU()), (8, False, None)])),
    ("bert-mean-lowercase-unnormalized", dict(arch="bert", do_lower_case=True, normalize=False)),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("st")
    return {name: build_st_folder(root / name, **kw) for name, kw in CASES}


def st_reference(path, texts):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(path), device="cpu")
    normalize = any(type(m).__name__ == "Normalize" for m in st)
    return st.encode(texts, normalize_embeddings=normalize, batch_size=8)


def assert_parity(got, want):
    assert got.shape == want.shape
    assert_exact(got, want)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_matches_sentence_transformers(folders, name, backend):
    path = folders[name]
    want = st_reference(path, TEXTS)
    with Encoder.from_pretrained(path, backend=backend, device="cpu") as enc:
        assert_parity(enc.encode(TEXTS, batch_size=5), want)
        d = enc.describe()
        assert d["pooling"] == dict(CASES)[name].get("pooling", "mean")
        assert d["dim"] == want.shape[1] and d["normalize"] == ("unnormalized" not in name)


def test_describe_names_pooling_head_and_kernel(folders):
    with Encoder.from_pretrained(folders["bert-mean-identity-dense"], backend="torch") as enc:
        d = enc.describe()
    assert d["head"] == "Dense 32->20 (identity)" and d["pooling_kernel"].startswith(("C++", "torch reference"))
    with Encoder.from_pretrained(folders["roberta-cls-dense-relu"], backend="torch") as enc:
        d = enc.describe()
    assert d["head"] == "Dense 32->24 (relu)" and "torch (cls pooling" in d["pooling_kernel"]
    with Encoder.from_pretrained(folders["bert-mean-two-dense-gelu"], backend="torch") as enc:
        assert "then the head in torch" in enc.describe()["pooling_kernel"]


def test_submit_follows_the_folder(folders):
    path = folders["bert-max-unnormalized"]
    want = st_reference(path, TEXTS[:4])
    with Encoder.from_pretrained(path, backend="torch") as enc:
        assert_parity(enc.submit(TEXTS[:4]).result(timeout=60), want)


def test_base_package_folder_matches_sentence_transformers():
    """The real base model (all-MiniLM-L6-v2, from its pip package) read as a folder."""
    from postemb_rt.model_dir import base_encoder_path

    want = st_reference(base_encoder_path(), TEXTS)
    for backend in ("torch", "onnxruntime"):
        with Encoder.from_pretrained(base_encoder_path(), backend=backend) as enc:
            assert_parity(enc.encode(TEXTS), want)


@pytest.mark.skipif(not (TEACHER / "modules.json").exists(),
                    reason=f"teacher folder not fetched: {TEACHER} (training-time only, 419 MB; .ci/run "
                           "fetches it): `postemb teacher fetch` without POSTEMB_CACHE set puts it there")
def test_mpnet_teacher_matches_sentence_transformers():
    """The real 110M-parameter teacher, torch only: its ONNX export and optimisation take
    minutes on 2 cores (onnxruntime parity on MPNet is covered by the random MPNet folders;
    on this folder it was checked by hand, README "Unverified")."""
    texts = TEXTS[:12]
    want = st_reference(TEACHER, texts)
    with Encoder.from_pretrained(TEACHER, backend="torch") as enc:
        assert_parity(enc.encode(texts), want)


def test_model_version_is_name_plus_content_hash(folders, tmp_path):
    src = folders["bert-cls"]
    a = Encoder.from_pretrained(src, backend="torch", warmup=False).model_version
    copy = shutil.copytree(src, tmp_path / "bert-cls")
    assert Encoder.from_pretrained(copy, backend="torch", warmup=False).model_version == a  # stable
    assert a.startswith("bert-cls-") and len(a) == len("bert-cls-") + 12
    from safetensors.torch import load_file, save_file

    w = load_file(str(copy / "model.safetensors"))
    k = next(iter(w))
    w[k] = w[k] + 1e-3
    save_file(w, str(copy / "model.safetensors"))
    assert Encoder.from_pretrained(copy, backend="torch", warmup=False).model_version != a  # unique


# -- bad folders: one error naming the file, the value and the fix -------------------------
def _copy(folders, tmp_path, name="bert-mean-dense-tanh"):
    return Path(shutil.copytree(folders[name], tmp_path / name))


def _edit(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_unknown_module_type_is_named(folders, tmp_path):
    d = _copy(folders, tmp_path)
    mods = json.loads((d / "modules.json").read_text())
    mods[2]["type"] = "sentence_transformers.models.LayerNorm"
    (d / "modules.json").write_text(json.dumps(mods))
    with pytest.raises(ValidationError, match=r"modules.json` module 2 has type 'sentence_transformers.models."
                                              r"LayerNorm'.*Fix:"):
        Encoder.from_pretrained(d, backend="torch")


def test_unsupported_pooling_mode_is_named(folders, tmp_path):
    d = _copy(folders, tmp_path)
    _edit(d / "1_Pooling" / "config.json", pooling_mode="weightedmean")
    with pytest.raises(ValidationError, match=r"1_Pooling/config.json` asks for pooling 'weightedmean'.*Fix:"):
        Encoder.from_pretrained(d, backend="torch")


def test_mismatched_dense_sizes_are_named(folders, tmp_path):
    d = _copy(folders, tmp_path)
    _edit(d / "2_Dense" / "config.json", in_features=31)
    with pytest.raises(ValidationError, match=r"2_Dense/config.json` has in_features 31, but the module before it "
                                              r"outputs 32. Fix: set in_features to 32"):
        Encoder.from_pretrained(d, backend="torch")
    _edit(d / "2_Dense" / "config.json", in_features=32, out_features=17)  # config and weights disagree
    with pytest.raises(ValidationError, match=r"2_Dense/model.safetensors` holds .*\(16, 32\).*Fix:"):
        Encoder.from_pretrained(d, backend="torch")


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("victim", ["model.safetensors", "2_Dense/model.safetensors"])
def test_a_partly_written_weights_file_is_named_with_the_fix(folders, tmp_path, victim, backend):
    """A copy cut short (a full disk, an interrupted download): safetensors' own error names no file."""
    d = _copy(folders, tmp_path)
    f = d / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValidationError, match=rf"`{f}` \(.*\) is not a readable safetensors file: .*Fix: restore"):
        Encoder.from_pretrained(d, backend=backend, warmup=False)


def test_a_folder_that_lost_its_modules_json_is_refused_not_loaded_as_a_bare_encoder(folders, tmp_path):
    """Without modules.json the folder's config.json + tokenizer.json would load as a plain Hugging Face
    encoder: mean pooling, no Dense, no Normalize; other vectors of another dim, and no error."""
    d = _copy(folders, tmp_path)
    (d / "modules.json").unlink()
    with pytest.raises(ModelNotFoundError, match=rf"`{d}/modules.json` is missing, but the folder holds "
                                                 r"sentence-transformers files \(1_Pooling/, 2_Dense/, .*\).*Fix: "
                                                 r"restore modules.json"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_a_plain_hugging_face_folder_loads_and_its_bad_config_is_named(folders, tmp_path, arch):
    """config.json, tokenizer.json and weights alone: mean pooling, no head (DistilBERT's width is "dim")."""
    src, d = folders[f"{arch}-mean-dense-tanh"], tmp_path / arch
    d.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        shutil.copy(src / name, d / name)
    enc = Encoder.from_pretrained(d, backend="torch", warmup=False)
    assert enc.dim == 32 and enc.encode(["a post"]).shape == (1, 32)
    (d / "config.json").write_text("{")
    with pytest.raises(ValidationError, match=rf"`{d}/config.json` .* is not valid JSON.*Fix:"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)
    (d / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ValidationError, match=r"config.json` has no hidden_size.*'t5'.*Fix:"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)


def test_a_partly_written_tokenizer_is_named_with_the_fix(folders, tmp_path):
    """tokenizers' own error is a bare Exception ('EOF while parsing a string') naming no file."""
    d = _copy(folders, tmp_path)
    f = d / "tokenizer.json"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(ValidationError, match=rf"`{f}` \(tokenizer\) cannot be read: .*Fix: restore"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)


@pytest.mark.parametrize("arch", ARCHS)
def test_weights_that_lack_encoder_tensors_are_refused_not_filled_with_random_numbers(folders, tmp_path, arch):
    """transformers initialises a tensor missing from the checkpoint at random and only prints a report:
    the folder would load and give other vectors. Every architecture's own folder loads as it is."""
    from safetensors.torch import load_file, save_file

    d = _copy(folders, tmp_path, f"{arch}-mean-dense-tanh")
    Encoder.from_pretrained(d, backend="torch", warmup=False)  # complete: no tensor missing
    state = load_file(str(d / "model.safetensors"))
    dropped = sorted(k for k in state if ".1." in k and k.endswith("weight"))[0]  # a weight of the second layer
    save_file({k: v for k, v in state.items() if k != dropped}, str(d / "model.safetensors"))
    with pytest.raises(ValidationError, match=r"model.safetensors` lacks 1 of the encoder's tensors \(.*\): "
                                              r"transformers would fill them with random numbers.*Fix:"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)


def test_weights_of_other_sizes_than_config_json_are_named(folders, tmp_path):
    """transformers raises a RuntimeError pointing at a printed report: one ValidationError instead."""
    d = _copy(folders, tmp_path)
    _edit(d / "config.json", intermediate_size=40)
    with pytest.raises(ValidationError, match=r"model.safetensors` holds tensors of other sizes than .*config.json` "
                                              r"says \(.*intermediate.*\).*Fix:"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)


def test_unknown_activation_is_named(folders, tmp_path):
    d = _copy(folders, tmp_path)
    _edit(d / "2_Dense" / "config.json", activation_function="my.custom.Swish")
    with pytest.raises(ValidationError, match=r"activation_function 'my.custom.Swish'.*Fix:"):
        Encoder.from_pretrained(d, backend="torch")


def test_missing_tokenizer_names_the_fix(folders, tmp_path):
    d = _copy(folders, tmp_path)
    (d / "tokenizer.json").unlink()
    with pytest.raises(ModelNotFoundError, match=r"has no tokenizer.json .*Fix: write it with"):
        Encoder.from_pretrained(d, backend="torch")


def test_module_order_other_than_the_pipeline_is_refused(folders, tmp_path):
    d = _copy(folders, tmp_path)
    mods = json.loads((d / "modules.json").read_text())
    mods[2], mods[3] = mods[3], mods[2]  # Normalize before Dense
    (d / "modules.json").write_text(json.dumps(mods))
    with pytest.raises(ValidationError, match=r"lists \['Transformer', 'Pooling', 'Normalize', 'Dense'\].*Fix:"):
        Encoder.from_pretrained(d, backend="torch")


def test_default_prompt_loads_and_is_applied(folders, tmp_path):
    """Prompts are honoured (tests/test_prompts.py): a folder with a default prompt loads."""
    d = _copy(folders, tmp_path)
    _edit(d / "config_sentence_transformers.json", prompts={"query": "query: "}, default_prompt_name="query")
    with Encoder.from_pretrained(d, backend="torch") as enc:
        assert_parity(enc.encode(TEXTS[:4]), st_reference(d, TEXTS[:4]))


def test_transformer_in_a_subfolder_loads(folders, tmp_path):
    """Older sentence-transformers saves keep the Transformer in 0_Transformer/."""
    d = _copy(folders, tmp_path, "bert-cls")
    sub = d / "0_Transformer"
    sub.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "sentence_bert_config.json"):
        (d / name).rename(sub / name)
    mods = json.loads((d / "modules.json").read_text())
    mods[0]["path"] = "0_Transformer"
    (d / "modules.json").write_text(json.dumps(mods))
    want = st_reference(d, TEXTS)
    with Encoder.from_pretrained(d, backend="torch") as enc:
        assert enc.model.config.encoder == "0_Transformer"
        assert_parity(enc.encode(TEXTS), want)


# -- what the version covers, and paths that leave the folder -------------------------------
def test_tokenizer_config_max_length_is_part_of_the_model_version(tmp_path):
    """A newer save has no max_seq_length in sentence_bert_config.json: the tokenizer's
    model_max_length sets max_length, so changing it must change the version."""
    d = build_st_folder(tmp_path / "newer", arch="bert")
    st_cfg = json.loads((d / "sentence_bert_config.json").read_text())
    st_cfg.pop("max_seq_length", None)  # sentence-transformers >= 6 saves it in tokenizer_config.json only
    (d / "sentence_bert_config.json").write_text(json.dumps(st_cfg))
    _edit(d / "tokenizer_config.json", model_max_length=64)
    from postemb_rt.model_dir import load_model_dir

    a = load_model_dir(d).config
    _edit(d / "tokenizer_config.json", model_max_length=32)
    b = load_model_dir(d).config
    assert (a.max_length, b.max_length) == (64, 32)
    assert a.model_version != b.model_version


def test_the_default_prompt_is_part_of_the_model_version(tmp_path):
    """A default prompt changes every vector, so editing it must change the version; a folder
    without prompts keeps the version it had before prompts were read."""
    from postemb_rt.model_dir import load_model_dir

    d = build_st_folder(tmp_path / "e5", arch="bert")
    plain = load_model_dir(d).config.model_version
    _edit(d / "config_sentence_transformers.json", prompts={"query": "query: ", "passage": "passage: "},
          default_prompt_name="passage")
    a = load_model_dir(d).config.model_version
    _edit(d / "config_sentence_transformers.json", default_prompt_name="query")
    b = load_model_dir(d).config.model_version
    assert len({plain, a, b}) == 3


@pytest.mark.parametrize("escape", ["../victim", "/abs/victim", "link"])
def test_a_module_path_out_of_the_folder_is_refused_before_reading_it(tmp_path, monkeypatch, escape):
    from postemb_rt import st_folder

    d = build_st_folder(tmp_path / "model", arch="bert", normalize=False)
    victim = tmp_path / "victim"
    shutil.copytree(d / "1_Pooling", victim)
    if escape == "link":
        (d / "link").symlink_to(victim, target_is_directory=True)
    mods = json.loads((d / "modules.json").read_text())
    mods[1]["path"] = escape if escape != "/abs/victim" else str(victim)
    (d / "modules.json").write_text(json.dumps(mods))
    read = []
    real = st_folder._read_json
    monkeypatch.setattr(st_folder, "_read_json", lambda p, what: (read.append(Path(p).resolve()), real(p, what))[1])
    with pytest.raises(ValidationError, match=r"modules\[1\]\.path` in .*modules.json (must be a path inside|leads "
                                              r"out of) the model directory.*(victim|link).*Fix: copy the module"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)
    assert all(d.resolve() in p.parents for p in read), read  # nothing outside the folder was read


def test_matryoshka_dims_of_config_sentence_transformers_json_are_truncate_dims(tmp_path, monkeypatch):
    """A folder declaring matryoshka_dims (postemb_rt's key; sentence-transformers ignores it and loads the folder):
    from_pretrained(truncate_dim=k) as SentenceTransformer(folder, truncate_dim=k), the prefix re-normalised
    (ST's normalize_embeddings=True; without it ST's rows are shorter than 1 with the same cosines)."""
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path / "cache"))
    d = build_st_folder(tmp_path / "mrl", arch="bert", dense=[(24, True, None)])
    with pytest.raises(ValidationError, match=r"`truncate_dim` must be one of .* \[24\] \(its dim, and "
                                              r"`matryoshka_dims` of .*mrl/config_sentence_transformers.json\). "
                                              r"Given: 16\. Fix: .* or, for a model trained to embed in its "
                                              r"first 16 components \(Matryoshka\), add 16 to that matryoshka_dims"):
        Encoder.from_pretrained(d, backend="torch", truncate_dim=16)
    _edit(d / "config_sentence_transformers.json", matryoshka_dims=[16, 8])
    st = SentenceTransformer(str(d), device="cpu", truncate_dim=16)
    with Encoder.from_pretrained(d, backend="torch", truncate_dim=16) as enc:
        assert enc.describe()["matryoshka_dims"] == [8, 16, 24] and enc.get_sentence_embedding_dimension() == 16
        got = enc.encode(TEXTS)
        assert_exact(got, st.encode(TEXTS, normalize_embeddings=True))
        want = st.encode(TEXTS)
        assert np.allclose((got * want).sum(1) / np.linalg.norm(want, axis=1), 1.0, atol=1e-5)  # same direction
        with pytest.raises(ValidationError, match=r"\[8, 16, 24\] \(its dim, and `matryoshka_dims` of .*mrl/"
                                                  r"config_sentence_transformers.json\). Given: 12"):
            enc.encode(TEXTS[:2], truncate_dim=12)
    for bad in ([8, 24], ["8"], 8):
        _edit(d / "config_sentence_transformers.json", matryoshka_dims=bad)
        with pytest.raises(ValidationError, match=r"`matryoshka_dims` in .*config_sentence_transformers.json must be a "
                                                  r"list of ints between 1 and dim - 1 \(23\)"):
            Encoder.from_pretrained(d, backend="torch", warmup=False)


def test_a_folders_own_truncate_dim_is_encodes_default_as_in_sentence_transformers(tmp_path, monkeypatch):
    """sentence-transformers reads ``truncate_dim`` from config_sentence_transformers.json (what
    ``SentenceTransformer(..., truncate_dim=k).save()`` writes) as encode's default: so does Encoder, and
    from_pretrained(truncate_dim=) overrides it (the full dim: the whole vector)."""
    from sentence_transformers import SentenceTransformer

    import torch

    from postemb_rt.backfill.run import resolve_model_version
    from postemb_rt.backfill.splits import SplitEmbedder

    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path / "cache"))
    d = build_st_folder(tmp_path / "td", arch="bert", dense=[(24, True, None)])
    _edit(d / "config_sentence_transformers.json", truncate_dim=16)
    st = SentenceTransformer(str(d), device="cpu")
    assert st.truncate_dim == 16 and st.encode(TEXTS).shape == (len(TEXTS), 16)
    with Encoder.from_pretrained(d, backend="torch") as enc:
        assert enc.truncate_dim == 16 and enc.vector_version.endswith("@16")
        assert_exact(enc.encode(TEXTS), st.encode(TEXTS, normalize_embeddings=True))
        # None is the default everywhere a version is named with vectors: never 16-d rows under a 24-d version
        assert enc.vector_version_at(None) == enc.vector_version == resolve_model_version(str(d))
        with enc.truncate_embeddings(None):  # sentence-transformers' None: no truncation
            assert enc.encode(TEXTS).shape == (len(TEXTS), 24) and "@" not in enc.vector_version
    threads = torch.get_num_threads()
    monkeypatch.setenv("POSTEMB_NUM_THREADS", "1")  # restored after the test (the actor sets its own)
    try:
        full = SplitEmbedder(str(d), "torch", 1, 8, str(tmp_path / "out"), truncate_dim=None)  # a backfill, dim 24
        assert "@" not in full.vector_version
        assert full.enc.encode(TEXTS, truncate_dim=full.truncate_dim).shape[1] == 24
        full.enc.close()
    finally:
        torch.set_num_threads(threads)
    with Encoder.from_pretrained(d, backend="torch", truncate_dim=24) as full:
        assert full.truncate_dim is None and full.encode(TEXTS).shape == (len(TEXTS), 24)
    _edit(d / "config_sentence_transformers.json", truncate_dim=12, matryoshka_dims=[8])  # 12 declared by saying so
    with Encoder.from_pretrained(d, backend="torch", warmup=False) as enc:
        assert enc.truncate_dim == 12
        with pytest.raises(ValidationError, match=r"must be one of the dims this model was trained to embed in "
                                                  r"\[8, 12, 24\]"):
            enc.encode(TEXTS[:1], truncate_dim=16)
    _edit(d / "config_sentence_transformers.json", truncate_dim=16, matryoshka_dims=8)  # refused, not a crash
    with pytest.raises(ValidationError, match=r"`matryoshka_dims` in .*config_sentence_transformers.json must be a "
                                              r"list of ints"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)
    _edit(d / "config_sentence_transformers.json", truncate_dim="16", matryoshka_dims=None)
    with pytest.raises(ValidationError, match=r"`truncate_dim` in .*config_sentence_transformers.json must be one of "
                                              r"\[24\].*Given: '16'"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)

"""``Encoder.encode`` with sentence-transformers' keyword arguments (postemb_rt.encode_options):
each keyword with ST's meaning and numbers, and each conflict rule's error."""
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from postemb_rt import Encoder, ValidationError, durable, quantization
from postemb_rt.backends import resolve_device
from postemb_rt.data import BUILTIN_POSTS
from tests.conftest import SAMPLE_TEXTS, assert_exact
from tests.st_models import build_st_folder

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

TEXTS = list(SAMPLE_TEXTS) + list(BUILTIN_POSTS[:6])
MRL = [8, 16]  # matryoshka_dims of the postemb.json model below (dim 32)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A normalising and a raw sentence-transformers folder (dim 32), and a postemb.json model of the
    first's encoder (mean pooling, normalised) declaring matryoshka_dims."""
    root = tmp_path_factory.mktemp("stconv")
    norm = build_st_folder(root / "norm")
    raw = build_st_folder(root / "raw", normalize=False)
    mrl = Path(shutil.copytree(norm, root / "mrl"))
    (mrl / "postemb.json").write_text(json.dumps(dict(model_version="tiny-mrl", hidden_size=32, pooling="mean",
                                                      max_length=64, encoder=".", matryoshka_dims=MRL)))
    return {"norm": norm, "raw": raw, "mrl": mrl}


@pytest.fixture(scope="module")
def st(folders):
    from sentence_transformers import SentenceTransformer

    return {k: SentenceTransformer(str(folders[k]), device="cpu") for k in ("norm", "raw")}


@pytest.fixture(scope="module")
def enc(folders):
    with Encoder.from_pretrained(folders["norm"], backend="torch") as e:
        yield e


@pytest.fixture(scope="module")
def raw(folders):
    with Encoder.from_pretrained(folders["raw"], backend="torch") as e:
        yield e


@pytest.fixture(scope="module")
def mrl(folders):
    with Encoder.from_pretrained(folders["mrl"], backend="torch") as e:
        yield e


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# -- normalize_embeddings -------------------------------------------------------------------
@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize("name", ["norm", "raw"])
def test_normalize_embeddings_matches_sentence_transformers(enc, raw, st, name, flag):
    """True adds normalisation; False adds none: a folder with Normalize still gives unit rows."""
    e = enc if name == "norm" else raw
    assert_exact(e.encode(TEXTS, normalize_embeddings=flag), st[name].encode(TEXTS, normalize_embeddings=flag))


def test_normalize_and_normalize_embeddings_that_disagree_are_refused(enc):
    for a, b in ((False, True), (True, False)):
        with pytest.raises(ValidationError, match=r"`normalize` and `normalize_embeddings` disagree.*Fix:"):
            enc.encode(TEXTS[:2], normalize=a, normalize_embeddings=b)
    assert_exact(enc.encode(TEXTS[:2], normalize=True, normalize_embeddings=True), enc.encode(TEXTS[:2]))


# -- truncate_dim ---------------------------------------------------------------------------
@pytest.mark.parametrize("k", MRL)
def test_truncate_dim_is_the_normalised_prefix_as_sentence_transformers(mrl, st, k):
    """First k components before normalisation, normalised again: ST with normalize_embeddings=True."""
    got = mrl.encode(TEXTS, truncate_dim=k)
    assert got.shape == (len(TEXTS), k)
    assert_exact(got, st["norm"].encode(TEXTS, truncate_dim=k, normalize_embeddings=True))
    assert_exact(mrl.encode(TEXTS, truncate_dim=k, normalize=False), mrl.encode(TEXTS, normalize=False)[:, :k])
    assert mrl.encode(TEXTS[0], truncate_dim=k).shape == (k,) and mrl.encode([], truncate_dim=k).shape == (0, k)


def test_truncate_dim_in_chunk_mode_cuts_the_combined_vector(mrl):
    long = " ".join(BUILTIN_POSTS)
    got = mrl.encode([long, "hi"], truncate_dim=8, long_posts="chunk")
    full = mrl.encode([long, "hi"], normalize=False, long_posts="chunk")[:, :8]
    assert_exact(got, full / np.linalg.norm(full, axis=1, keepdims=True))


def test_truncate_dim_the_model_does_not_declare_is_refused(enc, mrl):
    assert_exact(enc.encode(TEXTS[:2], truncate_dim=32), enc.encode(TEXTS[:2]))
    with pytest.raises(ValidationError, match=r"`truncate_dim` must be one of .* \[32\].*Given: 16. Fix:"):
        enc.encode(TEXTS[:2], truncate_dim=16)
    with pytest.raises(ValidationError, match=r"one of .* \[8, 16, 32\].*Given: 12"):
        mrl.encode(TEXTS[:2], truncate_dim=12)


def test_matryoshka_dims_must_be_prefixes(folders, tmp_path):
    d = Path(shutil.copytree(folders["mrl"], tmp_path / "bad"))
    cfg = json.loads((d / "postemb.json").read_text())
    (d / "postemb.json").write_text(json.dumps({**cfg, "matryoshka_dims": [8, 32]}))
    with pytest.raises(ValidationError, match=r"`matryoshka_dims` in .* between 1 and dim - 1 \(31\): the prefixes "
                                              r"the model was trained to embed in. Given: \[8, 32\]"):
        Encoder.from_pretrained(d, backend="torch", warmup=False)


# -- precision: output quantization -----------------------------------------------------------
@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_precisions_match_sentence_transformers(enc, st, precision):
    from sentence_transformers import quantize_embeddings

    got = enc.encode(TEXTS, precision=precision)
    assert got.shape == (len(TEXTS), 4) and got.dtype == (np.int8 if precision == "binary" else np.uint8)
    np.testing.assert_array_equal(got, quantize_embeddings(enc.encode(TEXTS), precision=precision))
    want = st["norm"].encode(TEXTS, precision=precision)
    assert (got == want).mean() > 0.99  # equal but where a component is within float error of 0


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_scalar_precisions_use_the_models_cached_ranges(enc, precision):
    from sentence_transformers import quantize_embeddings

    ranges = quantization.ranges_for(enc)
    floats = enc.encode(BUILTIN_POSTS)
    np.testing.assert_allclose(ranges, [floats.min(0), floats.max(0)], atol=1e-6)  # calibrated on the built-in posts
    got = enc.encode(TEXTS, precision=precision)
    assert got.dtype == np.dtype(precision) and got.shape == (len(TEXTS), 32)
    np.testing.assert_array_equal(got, quantize_embeddings(enc.encode(TEXTS), precision=precision, ranges=ranges))
    # a text's bytes do not depend on what it is batched with (ST calibrates on the batch: they would)
    np.testing.assert_array_equal(enc.encode(TEXTS[3], precision=precision), got[3])
    assert enc.encode([], precision=precision).shape == (0, 32)


def test_ranges_are_stored_once_per_model_and_read_back(enc, mrl, tmp_path, monkeypatch):
    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path))
    monkeypatch.setattr(quantization, "_RANGES", {})
    a = quantization.ranges_for(enc)
    files = list((tmp_path / "quantization").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["calibration"]["posts"] == len(BUILTIN_POSTS)
    monkeypatch.setattr(quantization, "_RANGES", {})
    monkeypatch.setattr(enc, "encode", None)  # read from the cache, not computed again
    np.testing.assert_array_equal(quantization.ranges_for(enc), a)
    assert quantization.ranges_for(mrl, truncate_dim=8).shape == (2, 8)  # one entry per truncate_dim
    assert len(list((tmp_path / "quantization").glob("*.json"))) == 2


@pytest.mark.parametrize("damage", ["edited ranges", "moved from another model", "old format", "not finite"])
def test_an_edited_moved_or_old_ranges_entry_is_computed_again(enc, mrl, tmp_path, monkeypatch, caplog, damage):
    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path))
    monkeypatch.setattr(quantization, "_RANGES", {})
    good = quantization.ranges_for(enc)
    (path,) = (tmp_path / "quantization").glob("*.json")
    entry = json.loads(path.read_text())
    if damage == "edited ranges":  # sealed content changed after the fact: every vector would quantize wrongly
        entry["calibration"]["ranges"][1] = [v * 10 for v in entry["calibration"]["ranges"][1]]
    elif damage == "moved from another model":  # a whole, sealed entry of another key
        quantization.ranges_for(mrl, truncate_dim=32)
        (other,) = [p for p in (tmp_path / "quantization").glob("*.json") if p != path]
        entry = json.loads(other.read_text())
    elif damage == "old format":  # what the cache held before entries were sealed
        entry = {"ranges": entry["calibration"]["ranges"], "key": entry["key"], "posts": 1}
    else:  # sealed, but not ranges: NaN
        bad = {**entry["calibration"], "ranges": [[float("nan")] * 32, [1.0] * 32]}
        entry = {"key": entry["key"], "calibration": bad, "sha256": durable.seal(entry["key"], "calibration", bad)}
    path.write_text(json.dumps(entry))
    monkeypatch.setattr(quantization, "_RANGES", {})
    with caplog.at_level(logging.WARNING, logger="postemb_rt"):
        np.testing.assert_array_equal(quantization.ranges_for(enc), good)
    assert "is not trusted" in caplog.text


def test_precision_none_is_float32_as_in_sentence_transformers(enc, st):
    """ST's evaluators pass precision=None."""
    assert_exact(enc.encode(TEXTS, precision=None), enc.encode(TEXTS))
    assert_exact(enc.encode(TEXTS, precision=None), st["norm"].encode(TEXTS, precision=None))


def test_compute_precisions_are_refused_with_a_pointer_to_from_pretrained(enc):
    for p in ("fp32", "bf16", "fp16"):
        with pytest.raises(ValidationError, match=rf"output quantization.*Given: '{p}'. '{p}' is a compute precision: "
                                                  rf"Encoder.from_pretrained\(..., precision='{p}'\)"):
            enc.encode(TEXTS[:2], precision=p)
    with pytest.raises(ValidationError, match=r"one of \('float32', 'int8', 'uint8', 'binary', 'ubinary'\)"):
        enc.encode(TEXTS[:2], precision="int4")


def test_quantize_without_ranges_is_refused():
    with pytest.raises(ValidationError, match=r"`ranges` for int8 must be float32 \(2, 4\).*Fix: quantization.ranges_for"):
        quantization.quantize(np.ones((3, 4), np.float32), "int8")


# -- output types, device, output_value, batch_size, progress bar -------------------------------
def test_convert_to_tensor_and_numpy_as_sentence_transformers(enc, st):
    want = enc.encode(TEXTS)
    t = enc.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(t, torch.Tensor) and t.shape == (len(TEXTS), 32)
    assert_exact(t.numpy(), want)
    assert isinstance(enc.encode(TEXTS, convert_to_tensor=True, convert_to_numpy=True), torch.Tensor)  # tensor wins
    as_list = enc.encode(TEXTS, convert_to_numpy=False)
    ref = st["norm"].encode(TEXTS, convert_to_numpy=False)
    assert isinstance(as_list, list) and len(as_list) == len(ref) and as_list[0].shape == ref[0].shape == (32,)
    one = enc.encode(TEXTS[0], convert_to_tensor=True)
    assert isinstance(one, torch.Tensor) and one.shape == (32,)
    q = enc.encode(TEXTS, convert_to_tensor=True, precision="ubinary")
    assert q.dtype == torch.uint8 and q.shape == (len(TEXTS), 4)


def test_device_must_be_the_encoders_own(enc):
    assert_exact(enc.encode(TEXTS[:2], device="cpu"), enc.encode(TEXTS[:2]))
    assert_exact(enc.encode(TEXTS[:2], device=torch.device("cpu")), enc.encode(TEXTS[:2]))
    for d in ("cpu:0", torch.device("cpu:0")):  # torch's (and sentence-transformers') name of the same CPU
        assert_exact(enc.encode(TEXTS[:2], device=d), enc.encode(TEXTS[:2]))
    assert resolve_device("cpu:0") == "cpu"  # and Encoder.from_pretrained(device="cpu:0") loads on it
    for d in ("cuda", "cuda:1", torch.device("cuda:1")):
        with pytest.raises(ValidationError, match=r"`device` must be None or the device this Encoder was loaded on "
                                                  r"\('cpu'\).*Fix: Encoder.from_pretrained\(..., device='cuda"):
            enc.encode(TEXTS[:2], device=d)
    for d in ("mps", "CPU", 0):  # not a device this runtime loads on: the fix is not to load on it
        with pytest.raises(ValidationError, match=rf"loaded on \('cpu'\).*Given: {d!r}\. Fix: drop `device`"):
            enc.encode(TEXTS[:2], device=d)


# -- how the texts are passed: ST's keyword names, positional order, dicts and sets, the pool ----------
def test_sentences_and_inputs_are_the_texts_as_in_sentence_transformers(enc, st):
    """ST 6 names its first parameter ``inputs`` and still takes ``sentences`` (deprecated); both work here."""
    want = st["norm"].encode(TEXTS)
    for kw in ("sentences", "inputs"):
        assert_exact(st["norm"].encode(**{kw: TEXTS}), want)
        assert_exact(enc.encode(**{kw: TEXTS}), want)
    assert enc.encode(sentences=TEXTS[0]).shape == (32,)
    with pytest.raises(ValidationError, match=r"pass the texts once.*Given: texts, sentences. Fix: keep one"):
        enc.encode(TEXTS, sentences=TEXTS)
    with pytest.raises(ValidationError, match=r"`texts` must be a str or a list of str. Given: NoneType"):
        enc.encode()
    with pytest.raises(ValueError, match=r"foo"):  # ST refuses unknown keywords too (ValueError)
        st["norm"].encode(TEXTS, foo=1)
    with pytest.raises(ValidationError, match=r"keyword arguments it does not take: \['foo'\]. Fix: drop them"):
        enc.encode(TEXTS, foo=1)


def test_task_is_taken_and_changes_nothing_as_in_sentence_transformers(enc, st):
    """ST 6 takes ``task`` on every model: a Router module routes on it, and without one (postemb_rt loads no
    Router) it changes nothing. It was refused here as an unknown keyword."""
    want = st["norm"].encode(TEXTS[:3])
    assert_exact(st["norm"].encode(TEXTS[:3], task="query"), want)
    for task in ("query", "document", None):
        assert_exact(enc.encode(TEXTS[:3], task=task), want)


def test_processing_kwargs_is_refused_naming_the_value_and_max_seq_length(enc, st):
    """ST 6 takes per-call tokenizer settings (``processing_kwargs``); here the tokenizer is set at load: refused
    with the value and where a shorter cut is set (it said only 'keyword arguments it does not take')."""
    kwargs = {"text": {"max_length": 8, "truncation": True}}
    assert st["norm"].encode(TEXTS[:2], processing_kwargs=kwargs).shape == (2, 32)
    with pytest.raises(ValidationError, match=r"`processing_kwargs`.*Given: \{'text': \{'max_length': 8.*Fix: .*"
                                              r"max_seq_length = 8.*from_pretrained\(\.\.\., max_length=8\)"):
        enc.encode(TEXTS[:2], processing_kwargs=kwargs)
    assert_exact(enc.encode(TEXTS[:2], processing_kwargs=None), enc.encode(TEXTS[:2]))  # None: nothing to override


def test_arguments_after_the_texts_are_keyword_only(enc, st, folders):
    """ST 6.3 takes prompt_name second (older ST: batch_size): a positional value is refused, naming it."""
    import inspect

    from sentence_transformers import SentenceTransformer

    assert list(inspect.signature(SentenceTransformer.encode).parameters)[1:3] == ["inputs", "prompt_name"]
    assert_exact(st["norm"].encode(TEXTS[:3], "query"), st["norm"].encode(TEXTS[:3], prompt_name="query"))
    for args in (("query",), (16, False)):
        with pytest.raises(ValidationError, match=r"`encode` takes the texts as its only positional argument.*"
                                                  r"Fix: pass the others by keyword.*prompt_name='query'"):
            enc.encode(TEXTS[:3], *args)


@pytest.mark.parametrize("texts", [{"text": "a post"}, {"a post": 1, "another": 2}, {"a post", "another"},
                                   frozenset({"a post"})])
def test_a_dict_or_a_set_is_refused_not_iterated(enc, st, texts):
    """ST reads a dict as ONE input (a vector, not rows of its keys) and refuses a set; here both are refused,
    by encode and submit alike, with the fix."""
    if isinstance(texts, dict) and "text" in texts:
        assert st["norm"].encode(texts).shape == (32,)
    match = r"Given: dict\. sentence-transformers reads a dict as ONE" if isinstance(texts, dict) else \
        r"Given: (frozen)?set\. A set has no order.*Fix: pass a list"
    for call in (enc.encode, enc.submit):
        with pytest.raises(ValidationError, match=r"`texts` must be a str or a list of str. " + match):
            call(texts)


def test_multi_process_pool_is_refused_naming_submit(enc):
    """``pool=None, chunk_size=None`` (ST's defaults) are accepted; a pool, and the pool methods, are refused."""
    assert_exact(enc.encode(TEXTS[:3], pool=None, chunk_size=None), enc.encode(TEXTS[:3]))
    calls = [lambda: enc.encode(TEXTS[:3], pool={"processes": []}), lambda: enc.encode(TEXTS[:3], chunk_size=4),
             enc.start_multi_process_pool, lambda: enc.encode_multi_process(TEXTS[:3], None),
             lambda: enc.stop_multi_process_pool(None), lambda: enc.encode(TEXTS[:3], device=["cpu", "cpu"])]
    for call in calls:
        with pytest.raises(ValidationError, match=r"(multi-process pool|one process per device).*submit\(\)"):
            call()
    with pytest.raises(ValidationError, match=r"Fix: drop `device`") as err:
        enc.encode(TEXTS[:3], device=["cpu", "cpu"])
    assert "device=['cpu'" not in str(err.value)  # no advice to load an Encoder on a list of devices


def test_output_value_other_than_sentence_embedding_is_refused(enc):
    for v in ("token_embeddings", None):
        with pytest.raises(ValidationError, match=r"`output_value` must be 'sentence_embedding'.*Fix:"):
            enc.encode(TEXTS[:2], output_value=v)


def test_batch_size_must_be_positive(enc):
    for b in (0, -1, 2.5, True):
        with pytest.raises(ValidationError, match=rf"`batch_size` must be an int >= 1\. Given: {b!r}"):
            enc.encode(TEXTS[:2], batch_size=b)
    assert_exact(enc.encode(TEXTS, batch_size=1), enc.encode(TEXTS, batch_size=32))  # ST's default, same vectors


def test_numpy_integers_are_integers_and_floats_are_refused_by_name(mrl, folders):
    """Sizes computed with numpy (np.int64) are ints to sentence-transformers too; 16.0 is not a dim."""
    assert_exact(mrl.encode(TEXTS, batch_size=np.int64(3)), mrl.encode(TEXTS, batch_size=3))
    assert_exact(mrl.encode(TEXTS, truncate_dim=np.int64(16)), mrl.encode(TEXTS, truncate_dim=16))
    with pytest.raises(ValidationError, match=r"`truncate_dim` must be one of .*\[8, 16, 32\].*Given: 16\.0"):
        mrl.encode(TEXTS, truncate_dim=16.0)
    enc = Encoder.from_pretrained(folders["mrl"], backend="torch", warmup=False, max_length=np.int64(48),
                                  truncate_dim=np.int64(8))
    assert enc.vector_version == "tiny-mrl@8+max48" and enc.encode(TEXTS).shape == (len(TEXTS), 8)
    enc.max_seq_length = np.int64(40)
    assert enc.max_length == 40 and enc.vector_version == "tiny-mrl@8+max40"
    for bad in ("48", 48.0):
        with pytest.raises(ValidationError, match=rf"`max_length` must be between 3 \(2 special tokens and one of "
                                                  rf"text\) and the model's max_length "
                                                  rf"\(64\)\. Given: {bad!r}"):
            Encoder.from_pretrained(folders["mrl"], backend="torch", warmup=False, max_length=bad)


def test_the_progress_bar_is_closed_however_encode_ends(enc, capsys, monkeypatch):
    """A refused text or a failing backend left the bar open (shown at 0% and never finished); now a refusal
    shows none, and a failure closes it."""
    from tqdm import tqdm

    with pytest.raises(ValidationError, match="truncate=False"):
        enc.encode(["word " * 1000], show_progress_bar=True, truncate=False)
    assert "encode" not in capsys.readouterr().err  # refused before any bar
    open_bars = len(tqdm._instances)

    def fails(*args, **kwargs):
        raise RuntimeError("the backend failed")

    monkeypatch.setattr(enc.backend, "embed", fails)
    with pytest.raises(RuntimeError, match="the backend failed") as info:
        enc.encode(TEXTS[:3], show_progress_bar=True)
    assert info.value and len(tqdm._instances) == open_bars  # closed, though the traceback still holds it


def test_show_progress_bar_none_follows_the_log_level(enc, capsys):
    import logging

    log = logging.getLogger("postemb_rt")
    old = log.level
    try:
        log.setLevel(logging.WARNING)
        enc.encode(TEXTS[:2], show_progress_bar=None)
        assert "post" not in capsys.readouterr().err
        log.setLevel(logging.INFO)
        enc.encode(TEXTS[:2], show_progress_bar=None)
        assert "encode" in capsys.readouterr().err
    finally:
        log.setLevel(old)


def test_quantization_without_sentence_transformers_names_the_install(monkeypatch):
    import sys

    from postemb_rt import BackendUnavailableError

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    monkeypatch.setitem(sys.modules, "sentence_transformers.quantization", None)
    with pytest.raises(BackendUnavailableError, match=r"`precision` 'ubinary' .*Fix: pip install sentence-transformers"):
        quantization.quantize(np.ones((3, 4), np.float32), "ubinary")
    assert quantization.quantize(np.ones((3, 4), np.float32), "float32").dtype == np.float32  # needs nothing


@pytest.mark.parametrize("kwargs", [dict(truncate_dim=8, precision="int8"), dict(precision="ubinary"), {},
                                    dict(truncate_dim=16, convert_to_tensor=True)])
def test_postprocess_of_submit_equals_encode(mrl, kwargs):
    """The routes' and near-line's path: resolve once, submit with the resolved prompt, postprocess."""
    from postemb_rt import encode_options as eo

    opts = eo.resolve(mrl, **kwargs)
    submitted = mrl.submit(TEXTS, prompt=opts.prompt).result(timeout=60)
    got = eo.postprocess(submitted, opts, normalized=True)
    want = mrl.encode(TEXTS, **kwargs)
    floats = dict(kwargs, precision="float32")  # the vectors before the output quantization: equal
    assert_exact(np.asarray(eo.postprocess(submitted, eo.resolve(mrl, **floats), normalized=True)),
                 np.asarray(mrl.encode(TEXTS, **floats)))
    if opts.precision == "float32":
        assert_exact(np.asarray(got), np.asarray(want))
    elif opts.precision == "int8":
        # one level apart at most: the calibration posts (in TEXTS) set each dimension's range, so they sit on its
        # ends, where a float error of one ulp picks the level (floor) and the CPU's kernels pick the ulp
        diff = np.abs(np.asarray(got, np.int16) - np.asarray(want, np.int16))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.9
    else:
        assert (np.asarray(got) == want).mean() > 0.99  # a bit flips only at 0, within float error


def test_postprocess_normalises_a_raw_model_and_refuses_raw_from_a_normalising_one(raw, enc):
    from postemb_rt import encode_options as eo

    opts = eo.resolve(raw, normalize_embeddings=True)
    assert_exact(eo.postprocess(raw.submit(TEXTS).result(timeout=60), opts, normalized=False),
                 raw.encode(TEXTS, normalize_embeddings=True))
    with pytest.raises(ValidationError, match=r"`normalize` False .*Fix: Encoder.encode"):
        eo.postprocess(enc.submit(TEXTS).result(timeout=60), eo.resolve(enc, normalize=False), normalized=True)

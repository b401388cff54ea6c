"""Fast CPU precisions (bf16 on OpenVINO and torch, int8 on OpenVINO and onnxruntime) and the
fidelity bar that gates them."""
import argparse
import importlib.util
import itertools
import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from postemb_rt import BackendUnavailableError, Encoder, FidelityError, ValidationError, fidelity
from tests.conftest import EXACT_ATOL, EXACT_COS, LONG_POST, assert_exact, cosines, exact_errors

OPENERS = ["Excited to share", "Hot take:", "Lessons learned from", "Why I stopped", "Announcing",
           "A thread on"]
TOPICS = ["remote work", "our Series A", "learning Rust", "climate tech", "hiring juniors", "burnout",
          "open source maintainers", "the new office"]
CLOSERS = ["What do you think?", "🚀", "#leadership", "Link in comments."]
CORPUS = [f"{a} {t}. {c}" for a, t, c in itertools.product(OPENERS, TOPICS, CLOSERS)][:120]


@pytest.fixture(autouse=True)
def test_corpus(monkeypatch):
    """The fidelity check runs on this module's own 120 posts, not the shared data."""
    monkeypatch.setattr(fidelity, "posts", lambda n=None: (list(CORPUS), "test corpus"))


def load_export_tool():
    path = Path(__file__).resolve().parent.parent / "export" / "export_onnx.py"
    spec = importlib.util.spec_from_file_location("export_onnx_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_identical_embeddings_have_perfect_fidelity_and_noise_lowers_it():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 16)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    same = fidelity.measure(ref, ref.copy(), "unit test")
    assert (same.mean_cos, same.overlap_at_10) == (pytest.approx(1.0), 1.0) and same.ok and not same.failures()
    noisy = ref + rng.normal(scale=0.3, size=ref.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    worse = fidelity.measure(ref, noisy, "unit test")
    assert worse.min_cos < worse.mean_cos < 0.99 and worse.overlap_at_10 < 0.9
    assert not worse.ok and any(f.startswith("overlap_at_10") for f in worse.failures())


def test_fidelity_is_measured_by_cosine_for_rows_that_are_not_unit_and_a_nan_row_misses_the_bar():
    """A model with normalize=False embeds rows of any norm: their dot product is no cosine (a candidate
    pointing elsewhere but 10x longer passed the bar), and a NaN compared below no threshold."""
    rng = np.random.default_rng(0)
    ref = 5 * rng.normal(size=(200, 16))
    assert fidelity.measure(ref, 3 * ref, "unit test").min_cos == pytest.approx(1.0)  # same directions
    off = fidelity.measure(ref, 10 * ref + rng.normal(scale=50, size=ref.shape), "unit test")
    assert off.mean_cos < 0.9 and not off.ok and any(f.startswith("mean_cos") for f in off.failures())
    broken = ref.copy()
    broken[3] = np.nan
    nan = fidelity.measure(ref, broken, "unit test")
    assert not nan.ok and "min_cos nan < 0.98" in nan.failures()


def test_overlap_counts_shared_neighbours_and_needs_more_rows_than_k():
    ref = np.eye(12, dtype=np.float32)[:, :12]
    assert fidelity.overlap_at_k(ref, ref, k=3, every=1) == 1.0
    with pytest.raises(ValueError, match="more than k = 10 rows"):
        fidelity.overlap_at_k(ref[:10], ref[:10])


def test_the_check_cuts_its_long_posts_without_saying_a_users_texts_were_truncated(base_torch, caplog):
    users = []

    class Reference:  # the float32 side; meanwhile a user's long post is encoded on another thread
        def encode(self, texts):
            user = threading.Thread(target=lambda: users.append(base_torch.encode([LONG_POST])))
            user.start()
            user.join()
            return base_torch.encode(texts)

    with caplog.at_level(logging.WARNING, logger="postemb_rt"):
        f = fidelity.measure_encoders(Reference(), base_torch, [LONG_POST] + CORPUS[:20], "unit test")
    assert f.posts == 21 and len(users) == 1
    cut = [r for r in caplog.records if "were truncated" in r.getMessage()]
    assert [r.getMessage() for r in cut] == ["1 of 1 texts were longer than max_length (256 tokens) and were truncated"]
    assert cut[0].thread != threading.get_ident()  # the user's warning stays; the check's two are gone
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="postemb_rt"):
        base_torch.encode([LONG_POST])
    assert "1 of 1 texts were longer than max_length" in caplog.text  # and only while it measures


def test_int8_on_onnxruntime_is_measured_cached_and_described(base_onnx):
    enc = Encoder.from_pretrained("base", backend="onnxruntime", precision="int8")
    info = enc.describe()
    assert info["backend"] == "onnxruntime" and info["precision"] == "int8" and info["precision_reason"] == "asked for"
    assert info["fidelity"]["posts"] == len(CORPUS) and info["fidelity"]["source"] == "test corpus"
    assert info["fidelity"]["mean_cos"] >= fidelity.THRESHOLDS["mean_cos"]
    cos = cosines(enc.encode(CORPUS), base_onnx.encode(CORPUS))
    assert cos.mean() == pytest.approx(info["fidelity"]["mean_cos"], abs=1e-4)
    again = Encoder.from_pretrained("base", backend="onnxruntime", precision="int8")  # from the cache: same numbers
    assert again.describe()["fidelity"] == info["fidelity"]
    assert base_onnx.describe()["fidelity"] == "exact (float32)"


def test_int8_on_openvino_quantizes_the_recipe_matmuls_and_clears_the_bar(base_onnx):
    from postemb_rt.backends import cpu_vnni512

    if not cpu_vnni512():  # a CPU without AVX512-VNNI / AMX: not offered there (and said so)
        assert Encoder.from_pretrained("base", precision="int8").describe()["backend"] == "onnxruntime"
        with pytest.raises(BackendUnavailableError, match="needs a CPU with AVX512-VNNI or AMX"):
            Encoder.from_pretrained("base", backend="openvino", precision="int8")
        return
    enc = Encoder.from_pretrained("base", precision="int8")  # backend auto: openvino
    info = enc.describe()
    assert (info["backend"], info["precision"]) == ("openvino", "int8") and "OpenVINO" in info["backend_reason"]
    # onnxruntime's recipe's matmuls: 6 layers x (query/key/value, attention output, feed-forward
    # up-projection) + the down-projections of layers 3-5
    assert enc.backend.int8_matmuls == 21 and info["int8"].startswith("21 matmuls int8 x int8")
    assert info["fidelity"]["source"] == "test corpus" and info["fidelity"]["min_cos"] >= fidelity.THRESHOLDS["min_cos"]
    assert enc.vector_version == "all-MiniLM-L6-v2+int8"
    got, want = enc.encode(CORPUS), base_onnx.encode(CORPUS)
    cos = cosines(got, want)
    assert cos.mean() == pytest.approx(info["fidelity"]["mean_cos"], abs=1e-4)
    # quantized, not float32 under another name: measurably off, yet within the bar
    assert cos.min() < EXACT_COS and np.abs(got - want).max() > EXACT_ATOL


def test_static_int8_puts_fake_quantize_on_calibrated_token_matmuls_only(caplog):
    import openvino as ov
    import torch
    from openvino import opset13 as ops

    from postemb_rt.backends.openvino_backend import quantize_static
    from postemb_rt.int8_static import GELU_MIN

    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 8)).astype(np.float32) * np.linspace(0.1, 10, 8, dtype=np.float32)  # (K, N)
    w_t = rng.normal(size=(8, 16)).astype(np.float32)  # (N, K), transpose_b
    w_y = rng.normal(size=(16, 8)).astype(np.float32)
    w_proj = rng.normal(size=(8, 4)).astype(np.float32)
    x = ops.parameter([-1, -1, 16], ov.Type.f32, name="x")
    y = ops.parameter([-1, -1, 16], ov.Type.f32, name="y")
    g = ops.gelu(x, "erf")
    x.output(0).get_tensor().set_names({"x"})
    g.output(0).get_tensor().set_names({"x_gelu"})
    a = ops.matmul(x, ops.constant(w), False, False)  # calibrated input: symmetric
    b = ops.matmul(g, ops.constant(w_t), False, True)  # calibrated post-GELU input: asymmetric
    c = ops.matmul(y, ops.constant(w_y), False, False)  # not calibrated: left float
    pooled = ops.reduce_mean(a, ops.constant(np.array([1], dtype=np.int64)), False)  # (batch, 8)
    proj = ops.matmul(pooled, ops.constant(w_proj), False, False)  # one row per post: left float
    model = ov.Model([a.output(0), b.output(0), c.output(0), proj.output(0)], [x, y])
    inp, other = rng.normal(size=(2, 3, 16)).astype(np.float32), rng.normal(size=(2, 3, 16)).astype(np.float32)
    gelu = torch.nn.functional.gelu(torch.from_numpy(inp)).numpy()
    ranges = {"x": float(np.abs(inp).max()), "x_gelu": float(gelu.max())}

    # a calibrated tensor the graph lacks: its matmul cannot be quantized, and the log says so
    assert quantize_static(model.clone(), {**ranges, "not in the graph": 1.0}) == 2
    assert "1 of the 3 calibrated matmul inputs feed no token-level matmul" in caplog.text
    assert quantize_static(model, ranges) == 2
    fqs = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(fqs) == 4  # input and weight of a and b
    acts = {op.input(0).get_source_output().get_node().get_type_name(): op for op in fqs
            if op.input(0).get_source_output().get_node().get_type_name() != "Constant"}
    lo = {k: float(op.input(1).get_source_output().get_node().get_data()) for k, op in acts.items()}
    assert lo == {"Parameter": -ranges["x"], "Gelu": pytest.approx(GELU_MIN)}
    assert {k: op.get_attributes()["levels"] for k, op in acts.items()} == {"Parameter": 255, "Gelu": 256}
    weights = [op for op in fqs if op.input(0).get_source_output().get_node().get_type_name() == "Constant"]
    # one range per output channel: (1, N) for W (K, N), (N, 1) for W (N, K) read transposed
    assert sorted(tuple(op.input(2).get_source_output().get_node().get_output_shape(0)) for op in weights) == \
        [(1, 8), (8, 1)]
    out = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({"x": inp, "y": other})
    for got, want in ((out[0], inp @ w), (out[1], gelu @ w_t.T)):  # int8, not float: off, but by < 2% (0.5-0.8%)
        assert np.abs(got - want).max() > 0 and np.abs(got - want).max() < 0.02 * np.abs(want).max()
    np.testing.assert_allclose(out[2], other @ w_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out[3], out[0].mean(1) @ w_proj, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_bf16_on_cpu_keeps_the_embedding(base_torch, backend):
    from postemb_rt.backends import cpu_native_bf16

    if backend == "openvino" and not cpu_native_bf16():
        with pytest.raises(BackendUnavailableError, match="needs a CPU with native bf16"):
            Encoder.from_pretrained("base", backend=backend, precision="bf16")
        return
    enc = Encoder.from_pretrained("base", backend=backend, precision="bf16")
    assert enc.describe()["backend"] == backend and enc.describe()["fidelity"]["min_cos"] >= 0.99
    assert enc.vector_version == "all-MiniLM-L6-v2+bf16"
    assert cosines(enc.encode(CORPUS[:20]), base_torch.encode(CORPUS[:20])).min() >= 0.99


@pytest.mark.parametrize("native", [True, False])
def test_torch_bf16_warns_where_the_cpu_flags_say_bf16_is_emulated(monkeypatch, caplog, tmp_path, native):
    """One test of native bf16 (postemb_rt.cpu.native_bf16, the CPU's flags and ONEDNN_MAX_CPU_ISA), as the
    backend choice and precision="auto" use: torch's own check also says True on AVX-512 CPUs that emulate
    bf16, and ignores the oneDNN cap, so the torch backend did not warn there."""
    from postemb_rt import cpu
    from postemb_rt.backends.torch_backend import TorchBackend
    from postemb_rt.model_dir import resolve
    from tests.st_models import build_st_folder

    monkeypatch.setattr(cpu, "native_bf16", lambda *a, **k: native)
    with caplog.at_level("WARNING", logger="postemb_rt"):
        TorchBackend(resolve(build_st_folder(tmp_path / "st")), "cpu", "bf16").close()
    assert ("lacks native bf16" in caplog.text) is not native, caplog.text


def _fake_cpu(monkeypatch, native_bf16: bool):
    from postemb_rt import backends

    monkeypatch.setattr(backends, "cpu_native_bf16", lambda: native_bf16)


@pytest.mark.parametrize("native_bf16,expected", [(True, ["bf16", "int8", "fp32"]), (False, ["int8", "fp32"])])
def test_auto_precision_tries_native_bf16_first_then_int8_then_fp32(monkeypatch, native_bf16, expected):
    from postemb_rt import backends
    from postemb_rt.model_dir import resolve

    _fake_cpu(monkeypatch, native_bf16)
    got, why = backends.precision_candidates(resolve("base"), "cpu")
    assert got == expected and "fidelity bar" in why
    assert backends.precision_candidates(resolve("base"), "cpu", backend="onnxruntime")[0] == ["int8", "fp32"]
    assert backends.precision_candidates(resolve("base"), "cpu", backend="torch")[0] == expected[:1] * native_bf16 + ["fp32"]
    monkeypatch.setattr(backends, "cpu_vnni512", lambda: True)
    assert backends.precision_candidates(resolve("base"), "cpu", backend="openvino")[0] == expected
    assert backends.precision_candidates(resolve("base"), "cuda")[0] == ["fp32"]
    # no AVX512-VNNI nor AMX (AVX2-only, Skylake-SP): OpenVINO refuses int8, so it is not tried (it was, with a warning)
    monkeypatch.setattr(backends, "cpu_vnni512", lambda: False)
    got, why = backends.precision_candidates(resolve("base"), "cpu", backend="openvino")
    assert got == [p for p in expected if p != "int8"] and "openvino's int8 runs only on AVX512-VNNI or AMX" in why
    assert backends.precision_candidates(resolve("base"), "cpu", backend="onnxruntime")[0] == ["int8", "fp32"]


def test_auto_precision_loads_the_first_that_clears_the_bar_and_says_why(monkeypatch):
    from postemb_rt import backends

    _fake_cpu(monkeypatch, False)  # int8 first, on every CPU
    enc = Encoder.from_pretrained("base", precision="auto")
    info = enc.describe()
    assert (info["backend"], info["precision"]) == ("openvino" if backends.cpu_vnni512() else "onnxruntime", "int8")
    assert "no native bf16" in info["precision_reason"] and info["vector_version"] == "all-MiniLM-L6-v2+int8"
    monkeypatch.setitem(fidelity.THRESHOLDS, "mean_cos", 1.5)  # no fast precision can clear it now
    enc = Encoder.from_pretrained("base", precision="auto")
    info = enc.describe()
    assert info["precision"] == "fp32" and info["fidelity"] == "exact (float32)"
    assert "not offered here: int8 (FidelityError" in info["precision_reason"]
    assert info["vector_version"] == "all-MiniLM-L6-v2"
    assert Encoder.from_pretrained("base").describe()["precision_reason"] == "exact"


def test_the_exact_bar_catches_a_model_silently_running_in_bf16(base_torch):
    """The old "exact" bar (cosine >= 0.9999) let a bf16 model through; the float32 bar of
    tests.conftest.assert_exact (max abs error <= 1e-5 and cosine >= 0.999999) does not."""
    bf16 = Encoder.from_pretrained("base", backend="torch", precision="bf16")
    got, want = bf16.encode(CORPUS[:40]), base_torch.encode(CORPUS[:40])
    err, cos = exact_errors(got, want)
    assert cos >= 0.9999, cos  # the old bar passes it: that was the hole
    assert err > EXACT_ATOL and cos < EXACT_COS, (err, cos)  # the new bar fails it on both counts
    with pytest.raises(AssertionError, match="not exact"):
        assert_exact(got, want)
    assert_exact(base_torch.encode(CORPUS[:40]), want)  # and float32 itself still passes


def test_a_precision_below_the_bar_is_refused(monkeypatch):
    monkeypatch.setitem(fidelity.THRESHOLDS, "mean_cos", 1.5)  # no measurement can reach it
    with pytest.raises(FidelityError, match=r"mean_cos .* < 1.5.*Fix: precision='fp32'"):
        Encoder.from_pretrained("base", precision="int8")


def test_precisions_on_the_wrong_backend_say_where_they_run():
    with pytest.raises(ValidationError, match="int8 runs on backend='openvino' or 'onnxruntime'"):
        Encoder.from_pretrained("base", backend="torch", precision="int8")
    with pytest.raises(ValidationError, match="fp16 runs on backend='torch' on CUDA"):
        Encoder.from_pretrained("base", backend="openvino", precision="fp16")
    with pytest.raises(ValidationError, match="bf16 runs on backend='openvino' or 'torch'"):
        Encoder.from_pretrained("base", backend="onnxruntime", precision="bf16")


def test_export_tool_refuses_a_low_fidelity_int8_model_unless_forced(tmp_path, monkeypatch, base_onnx):
    tool = load_export_tool()
    fp32 = tmp_path / "fp32"
    shutil.copytree(base_onnx.backend.onnx_model.path, fp32)
    args = argparse.Namespace(fidelity_posts=None, force=False)
    assert tool.quantize_checked(fp32, tmp_path / "ok", args) == 0  # clears the real bar
    stored = json.loads((tmp_path / "ok" / "postemb.json").read_text())
    assert stored["precision"] == "int8" and stored["fidelity"]["forced"] is False
    loaded = Encoder.from_pretrained(tmp_path / "ok", precision="int8")  # fidelity read, not re-measured
    assert loaded.describe()["fidelity"] == stored["fidelity"]
    with pytest.raises(ValidationError, match="holds an int8 ONNX model"):
        Encoder.from_pretrained(tmp_path / "ok", precision="fp32")

    # the same fp32 graph quantizes to the same int8 graph: the runs below reuse the first's (seconds each)
    from postemb_rt import onnx_export
    from postemb_rt.model_dir import load_model_dir

    shutil.copytree(tmp_path / "ok", tmp_path / "int8-once")

    def quantized_once(md, out):
        shutil.rmtree(out, ignore_errors=True)  # a refused run leaves its int8 there, as quantize_int8 overwrites
        shutil.copytree(tmp_path / "int8-once", out)
        return load_model_dir(out)

    monkeypatch.setattr(onnx_export, "quantize_int8", quantized_once)
    monkeypatch.setitem(fidelity.THRESHOLDS, "overlap_at_10", 1.01)
    assert tool.quantize_checked(fp32, tmp_path / "refused", args) == 3
    assert not (tmp_path / "refused").exists()
    args.force = True
    assert tool.quantize_checked(fp32, tmp_path / "forced", args) == 0
    forced = Encoder.from_pretrained(tmp_path / "forced", precision="int8")  # warns, loads
    assert forced.describe()["fidelity"]["forced"] is True


@pytest.mark.parametrize("flags,cap,expected", [
    ({"avx512f", "avx512_bf16"}, "", True),             # Zen 4 / Zen 5, Cooper Lake
    ({"avx512f", "amx_bf16", "avx512_bf16"}, "", True),  # Sapphire Rapids and later
    ({"avx512f", "avx512_vnni"}, "", False),            # Skylake-SP / Cascade Lake: oneDNN would emulate bf16
    ({"avx2", "fma"}, "", False),
    ({"avx512f", "avx512_bf16"}, "AVX2", False),        # held below bf16 by ONEDNN_MAX_CPU_ISA
    ({"avx512f", "avx512_bf16"}, "avx512_core_vnni", False),
    ({"avx512f", "amx_bf16"}, "AVX512_CORE_AMX", True),
])
def test_native_bf16_reads_the_cpu_flags_and_the_onednn_cap(flags, cap, expected):
    from postemb_rt.cpu import native_bf16

    assert native_bf16(flags, {"ONEDNN_MAX_CPU_ISA": cap} if cap else {}) is expected


@pytest.mark.parametrize("flags,cap,expected", [
    ({"avx512f", "avx512_vnni", "avx512_bf16"}, "", True),  # Zen 4 / Zen 5, Cooper Lake
    ({"avx512f", "avx512_vnni"}, "", True),                 # Cascade Lake, Ice Lake
    ({"avx512f", "avx512_vnni", "amx_int8"}, "", True),     # Sapphire Rapids and later
    ({"avx512f"}, "", False),                               # Skylake-SP: int8 stays on onnxruntime
    ({"avx2", "avx_vnni"}, "", False),                      # AVX-VNNI without AVX-512: emulated, no faster than ORT
    ({"avx512f", "avx512_vnni"}, "AVX2", False),            # held below it by ONEDNN_MAX_CPU_ISA
    ({"avx512f", "avx512_vnni"}, "avx512_core", False),
    ({"avx512f", "avx512_vnni"}, "AVX512_CORE_VNNI", True),
])
def test_openvino_int8_needs_avx512_vnni_or_amx_and_no_lower_onednn_cap(flags, cap, expected):
    from postemb_rt.cpu import vnni512

    assert vnni512(flags, {"ONEDNN_MAX_CPU_ISA": cap} if cap else {}) is expected


def test_int8_without_avx512_vnni_runs_on_onnxruntime_and_says_why(monkeypatch):
    from postemb_rt import backends
    from postemb_rt.backends import openvino_backend
    from postemb_rt.model_dir import resolve

    monkeypatch.setattr(backends, "cpu_vnni512", lambda: False)
    name, why = backends.choose(resolve("base"), "cpu", "int8")
    assert name == "onnxruntime" and "only on AVX512-VNNI or AMX" in why
    monkeypatch.setattr(openvino_backend, "vnni512", lambda: False)
    with pytest.raises(BackendUnavailableError, match="needs a CPU with AVX512-VNNI or AMX.*Fix: backend='onnxruntime'"):
        Encoder.from_pretrained("base", backend="openvino", precision="int8")


@pytest.mark.parametrize("environ,expected", [
    ({}, None),
    ({"ONEDNN_VERBOSE": "0"}, None),
    ({"ONEDNN_VERBOSE": "dispatch"}, None),                # says which kernel was picked; compiles
    ({"ONEDNN_VERBOSE": "profile_create,error"}, None),
    ({"ONEDNN_VERBOSE": "1"}, "ONEDNN_VERBOSE=1"),
    ({"ONEDNN_VERBOSE": "error,profile_exec"}, "ONEDNN_VERBOSE=error,profile_exec"),
    ({"ONEDNN_VERBOSE": "ALL"}, "ONEDNN_VERBOSE=ALL"),
    ({"DNNL_VERBOSE": "2"}, "DNNL_VERBOSE=2"),             # the old name, which oneDNN still reads
])
def test_onednn_exec_verbose_names_the_variable_that_times_executions(environ, expected):
    from postemb_rt.cpu import onednn_exec_verbose

    assert onednn_exec_verbose(environ) == expected


def test_auto_leaves_openvino_out_under_onednn_exec_verbose_and_says_why(monkeypatch):
    from postemb_rt import backends
    from postemb_rt.model_dir import resolve

    monkeypatch.setenv("ONEDNN_VERBOSE", "1")
    for precision in ("fp32", "int8", "bf16"):
        name, why = backends.choose(resolve("base"), "cpu", precision)
        assert name != "openvino" and "openvino is left out" in why and "ONEDNN_VERBOSE=1" in why, (precision, why)
    monkeypatch.setenv("ONEDNN_VERBOSE", "dispatch")
    assert backends.choose(resolve("base"), "cpu", "fp32")[0] == "openvino"


def test_under_onednn_exec_verbose_auto_runs_and_openvino_by_name_fails_with_the_fix():
    """OpenVINO 2026.4's CPU plugin cannot compile our graph with oneDNN's verbose mode timing
    executions (oneDNN reads the variable once per process: a fresh one). By name, openvino either
    compiles (an OpenVINO that fixed it) or fails with BackendUnavailableError naming the variable."""
    import os
    import subprocess
    import sys

    probe = """
from postemb_rt import Encoder
from postemb_rt.errors import BackendUnavailableError
enc = Encoder.from_pretrained("base", warmup=False)
print("auto:", enc.describe()["backend"], enc.encode(["a post"]).shape)
try:
    Encoder.from_pretrained("base", backend="openvino", warmup=False)
    print("openvino: compiled")
except BackendUnavailableError as e:
    print("openvino:", e)
"""
    r = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "ONEDNN_VERBOSE": "1"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if not line.startswith("onednn_verbose")]
    assert "auto: onnxruntime (1, 384)" in lines, lines
    last = lines[-1]
    assert last == "openvino: compiled" or (
        "with oneDNN's verbose mode on (ONEDNN_VERBOSE=1)" in last and "Fix: unset ONEDNN_VERBOSE" in last), last

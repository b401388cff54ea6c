"""Every backend x pooling variant computes the same function as the torch reference, and
says which pooling kernel ran."""
import numpy as np
import pytest

from tests.conftest import assert_exact

from .conftest import model_dirs, reference_embeddings

VARIANTS = [("base", "torch"), ("base", "onnx-graph"), ("base", "onnx-external"),
            ("projected", "torch"), ("projected", "onnx-external"),
            ("base", "openvino-graph"), ("base", "openvino-external"), ("projected", "openvino-external")]


@pytest.fixture(scope="module")
def references(projected_model, sample_texts):
    return {name: (reference_embeddings(md, sample_texts), reference_embeddings(md, sample_texts, normalize=False))
            for name, md in model_dirs(projected_model).items()}


@pytest.mark.parametrize("model,variant", VARIANTS)
def test_embeddings_match_the_torch_reference(encoders, references, sample_texts, model, variant):
    enc = encoders[model, variant]
    unit, raw = references[model]
    got = enc.encode(sample_texts, batch_size=4)  # batches mix lengths: padding must not leak in
    assert got.dtype == np.float32 and got.shape == unit.shape
    assert_exact(got, unit)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    got_raw = enc.encode(sample_texts, batch_size=4, normalize=False)
    assert_exact(got_raw, raw)  # the raw vectors themselves, so their norms too


@pytest.mark.parametrize("model,variant", VARIANTS)
def test_describe_reports_the_pooling_kernel_that_ran(encoders, model, variant):
    kernel = encoders[model, variant].describe()["pooling_kernel"]
    if variant.endswith("-graph"):
        assert kernel.startswith("onnx graph")
    else:
        assert kernel.startswith("C++ masked_mean_pool_l2 (")


@pytest.mark.parametrize("model,variant", VARIANTS)
@pytest.mark.parametrize("bad", [-5, 10**6])
def test_token_ids_past_the_vocabulary_are_refused_not_embedded(encoders, model, variant, bad):
    """OpenVINO and onnxruntime read an id past the embedding table as garbage and returned a unit
    vector without a word: the batcher refuses it, on every backend alike."""
    from postemb_rt.errors import ValidationError

    batcher = encoders[model, variant].batcher
    with pytest.raises(ValidationError, match=rf"`posts\[0\]\[1\]` is {bad}, not a token id of this model "
                                              r"\(0..30521\). Fix:"):
        batcher.submit([[101, bad, 102]])


@pytest.mark.parametrize("variant", ["torch", "onnx-graph", "onnx-external", "openvino-graph", "openvino-external"])
def test_describe_after_close_reports_what_ran(encoders, variant):
    """close() releases the model, not the record of it: describe() afterwards (a server's last log
    line, a report) answers as before, with the batcher "closed", on every backend; so does the
    backend's own describe(), called on it directly (the Encoder keeps a copy of it from before)."""
    from postemb_rt import Encoder

    loaded = encoders["base", variant]
    enc = Encoder.from_pretrained(loaded.model.path, backend=loaded.backend.name, device="cpu", warmup=False)
    backend, before = enc.backend.describe(), enc.describe()
    enc.close()
    after = enc.describe()
    assert after.pop("batcher") == "closed" and before.pop("batcher") == "not started"
    assert after == before
    # no longer reads the released model (onnxruntime's session, OpenVINO's compiled model)
    assert enc.backend.describe() == backend


def test_external_export_stops_at_hidden_states(encoders):
    enc = encoders["projected", "onnx-external"]
    assert enc.model.config.onnx_pooling == "external"
    assert (enc.model.path / "projection.safetensors").exists()
    outputs = [o.name for o in enc.backend._session.get_outputs()]
    assert outputs == ["last_hidden_state"]


def test_inference_precision_reads_openvinos_type_as_its_short_name():
    import openvino as ov

    from postemb_rt.backends.openvino_backend import inference_precision

    class Compiled:
        def __init__(self, hint):
            self.hint = hint

        def get_property(self, name):
            assert name == "INFERENCE_PRECISION_HINT"
            return self.hint

    assert inference_precision(Compiled(ov.Type.bf16)) == "bf16"  # str() of it is "<Type: 'bfloat16'>"
    assert inference_precision(Compiled(ov.Type.f32)) == "f32"
    assert inference_precision(Compiled("f32")) == "f32"


def test_openvino_fp32_is_pinned_to_f32_and_bf16_needs_native_bf16(encoders, monkeypatch):
    """OpenVINO computes in bf16 by default on a CPU with native bf16: the exact backend must say f32.
    bf16 on a CPU without it is refused with the fix, never emulated silently."""
    from postemb_rt import Encoder
    from postemb_rt.backends import openvino_backend
    from postemb_rt.errors import BackendUnavailableError

    enc = encoders["base", "openvino-graph"]
    assert enc.describe()["inference_precision"] == "f32"

    class NoBf16Core:
        def get_property(self, device, name):
            return ["FP32", "INT8"]

    import openvino
    monkeypatch.setattr(openvino, "Core", NoBf16Core)
    assert openvino_backend.native_bf16() is False
    with pytest.raises(BackendUnavailableError, match="needs a CPU with native bf16.*Fix: precision='fp32'"):
        Encoder.from_pretrained(enc.model.path, backend="openvino", precision="bf16", warmup=False)


def test_openvino_never_pins_threads_to_cores(encoders):
    """The CPU plugin pins by default on Linux, and every process then pins to the same first core:
    near-line workers and backfill actors ran at half speed (benchmarks/RESULTS.md, "Thread pinning")."""
    from postemb_rt.backends.openvino_backend import compile_config

    compiled = encoders["base", "openvino-graph"].backend._compiled
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    for precision in ("fp32", "bf16", "int8"):
        assert compile_config(precision)["ENABLE_CPU_PINNING"] is False


def test_python_fallback_is_reported_and_exact(monkeypatch, encoders, sample_texts):
    from postemb_rt import native
    from postemb_rt.ops.masked_mean_pool_l2 import CpuPooler

    enc = encoders["projected", "torch"]
    expected = enc.encode(sample_texts)
    pool = enc.backend._pool
    monkeypatch.setattr(native, "_C", None)
    fallback = CpuPooler(pool.weight, pool.bias)
    assert fallback.name.startswith("torch reference composition (C++ kernel unavailable")
    monkeypatch.setattr(enc.backend, "_pool", fallback)
    assert_exact(enc.encode(sample_texts), expected)


def test_export_rejects_an_unknown_pooling(tmp_path):
    from postemb_rt.errors import ValidationError
    from postemb_rt.model_dir import resolve
    from postemb_rt.onnx_export import export_onnx

    with pytest.raises(ValidationError, match=r"`pooling` must be one of \('graph', 'external'\). Given: 'inside'"):
        export_onnx(resolve("base"), tmp_path, pooling="inside")

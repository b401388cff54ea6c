"""Short batches on AMX (postemb_rt.backends.openvino_backend, "Short batches on AMX"): where bf16 runs on
AMX tiles, bf16 and int8 batches of at most SHORT_TOKENS padded tokens per row run on a second
compilation with the attention as separate ops. The choice is faked here so that it runs on every CPU."""
import numpy as np
import pytest

from postemb_rt import Encoder
from postemb_rt.cpu import amx_tiles
from tests.conftest import SAMPLE_TEXTS, assert_exact

pytest.importorskip("openvino")


@pytest.mark.parametrize("flags, cap, kernel, expected", [
    ({"avx512_bf16", "amx_bf16", "amx_tile"}, "", True, True),
    ({"avx512_bf16", "amx_bf16", "amx_tile"}, "", None, True),  # not Linux x86-64: the flags are trusted
    ({"avx512_bf16", "amx_bf16", "amx_tile"}, "", False, False),  # a kernel before 5.16: no tile state
    ({"avx512_bf16", "amx_bf16", "amx_tile"}, "AVX512_CORE_BF16", True, False),  # oneDNN held below AMX
    ({"avx512_bf16", "amx_bf16", "amx_tile"}, "AVX512_CORE_FP16", True, False),
    ({"avx512_bf16", "amx_bf16", "amx_tile"}, "AVX512_CORE_AMX", True, True),
    ({"avx512_bf16", "avx512_vnni"}, "", True, False),  # AVX512-BF16 without AMX (Zen 4/5, Cooper Lake)
])
def test_amx_tiles_needs_the_flag_the_kernel_and_no_lower_onednn_cap(flags, cap, kernel, expected):
    assert amx_tiles(flags, {"ONEDNN_MAX_CPU_ISA": cap}, kernel_amx=kernel) is expected


def test_fp32_never_takes_the_short_path():
    from postemb_rt.backends import openvino_backend as ob

    assert ob.short_attention("fp32") is False
    enc = Encoder.from_pretrained("base", backend="openvino", precision="fp32")
    assert "short_batches" not in enc.describe() and "SNIPPETS_MODE" not in enc.backend.config_for(8)


def test_short_batches_run_on_the_second_compilation_and_compute_the_same_vectors(monkeypatch):
    from postemb_rt.backends import openvino_backend as ob

    monkeypatch.setattr(ob, "short_attention", lambda precision: True)  # fp32 here: exact on every CPU
    enc = Encoder.from_pretrained("base", backend="openvino", precision="fp32")
    be = enc.backend
    assert be.numerics.endswith(f"-shortattn{ob.SHORT_TOKENS}")  # the fidelity cache key changes with it
    assert "SNIPPETS_MODE=DISABLE" in enc.describe()["short_batches"]  # the plugin does not report it back
    assert be.config_for(ob.SHORT_TOKENS)["SNIPPETS_MODE"] == "DISABLE"
    assert "SNIPPETS_MODE" not in be.config_for(ob.SHORT_TOKENS + 1)
    assert be._request(8) is be._request(ob.SHORT_TOKENS) and be._request(8) is not be._request(ob.SHORT_TOKENS + 1)
    # the same posts padded to a short width and past it: one function, two compilations
    ids = [row for row in enc.tokenizer(SAMPLE_TEXTS).ids if len(row) <= ob.SHORT_TOKENS]
    assert len(ids) >= 4

    def padded(width):
        batch = np.full((len(ids), width), enc.tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros_like(batch)
        for i, row in enumerate(ids):
            batch[i, :len(row)], mask[i, :len(row)] = row, 1
        return batch, mask

    assert_exact(be.embed(*padded(ob.SHORT_TOKENS + 8)), be.embed(*padded(max(map(len, ids)))))
    assert_exact(enc.encode(SAMPLE_TEXTS), Encoder.from_pretrained("base", backend="onnxruntime").encode(SAMPLE_TEXTS))

"""benchmarks/ceilings.py: the per-precision matmul ceilings, the ISA peak and the >100% guard.
Tiny shapes only; no timing is asserted beyond "positive and finite"."""
import math
import shutil

import numpy as np
import pytest

from benchmarks import ceilings as ceil

TINY = dict(m=32, hidden=64, intermediate=128)  # _int_mm needs m > 16 and k, n multiples of 8


def fake_measurement(rates: dict) -> dict:
    """A measure()-shaped result with chosen rates (ops/s) for the tiny GEMMs."""
    gemms = ceil.model_gemms(TINY["m"], TINY["hidden"], TINY["intermediate"])
    return {"m": TINY["m"], "threads": 1, "gemms": gemms, "rates": rates, "unavailable": {}}


def test_model_gemms_are_one_layers_projections_and_ffn():
    g = {x["name"]: (x["m"], x["k"], x["n"], x["count"]) for x in ceil.model_gemms(1408)}
    assert g == {"attn_proj": (1408, 384, 384, 4), "ffn_up": (1408, 384, 1536, 1), "ffn_down": (1408, 1536, 384, 1)}
    flops = sum(2 * m * k * n * c for m, k, n, c in g.values())
    assert flops == 1408 * 2 * (4 * 384**2 + 2 * 384 * 1536)  # compare.py's FLOPs per token and layer, x M


def test_model_gemms_rejects_a_bad_size_naming_it():
    with pytest.raises(ValueError, match=r"`m` must be a positive int. Given: 0"):
        ceil.model_gemms(0)


def test_typical_rows_is_the_median_padded_batch_of_the_encode_planner():
    lengths = [10] * 64 + [5] * 64 + [3] * 64  # three full batches: 640, 320, 192 padded tokens
    assert ceil.typical_rows(lengths, batch_size=64, max_batch_tokens=4096) == 320
    with pytest.raises(ValueError, match="`lengths`"):
        ceil.typical_rows([])


def test_ceiling_is_the_flop_weighted_harmonic_mean_of_each_gemms_best_library():
    rates = {"fp32": {"attn_proj": {"a": 100e9, "b": 50e9}, "ffn_up": {"a": 10e9, "b": 200e9},
                      "ffn_down": {"b": 80e9}}}
    c = ceil.ceilings(fake_measurement(rates))["fp32"]
    assert c["best"] == {"attn_proj": "a", "ffn_up": "b", "ffn_down": "b"}
    f = {g["name"]: 2 * g["m"] * g["k"] * g["n"] * g["count"] for g in ceil.model_gemms(**TINY)}
    want = sum(f.values()) / (f["attn_proj"] / 100e9 + f["ffn_up"] / 200e9 + f["ffn_down"] / 80e9)
    assert c["ops_per_s"] == pytest.approx(want, rel=1e-12)
    assert 80e9 < c["ops_per_s"] < 200e9


def test_a_gemm_no_library_ran_gives_no_ceiling():
    c = ceil.ceilings(fake_measurement({"bf16": {"attn_proj": {"a": 1e9}, "ffn_up": {"a": 1e9}}}))
    assert c["bf16"]["ops_per_s"] is None


def test_merge_keeps_the_best_of_before_and_after():
    before = fake_measurement({"fp32": {"attn_proj": {"a": 1e9, "b": 5e9}}})
    after = fake_measurement({"fp32": {"attn_proj": {"a": 3e9, "b": 2e9}}})
    assert ceil.merge(before, after)["rates"]["fp32"]["attn_proj"] == {"a": 3e9, "b": 5e9}
    other = dict(after, m=64)
    with pytest.raises(ValueError, match="share m"):
        ceil.merge(before, other)


@pytest.mark.parametrize("fraction, over", [(0.5, False), (1.0, False), (1.0001, True), (1.35, True),
                                             (float("nan"), True)])
def test_guard_refuses_to_print_a_row_above_its_ceiling(fraction, over):
    assert ceil.over_ceiling(fraction) is over
    cell = ceil.fraction_cell(fraction)
    if over:
        assert "OVER CEILING" in cell and "%" not in cell
    else:
        assert cell == f"{fraction:.0%}"


def test_a_ceiling_above_the_isa_peak_is_flagged():
    ceils = {"fp32": {"ops_per_s": 300e9, "unit": "GFLOP/s", "best": {}},
             "bf16": {"ops_per_s": 100e9, "unit": "GFLOP/s", "best": {}}}
    peak = {"precisions": {"fp32": {"ops_per_s": 236e9}, "bf16": {"ops_per_s": 472e9}}}
    warn = ceil.ceiling_warnings(ceils, peak)
    assert len(warn) == 1 and warn[0].startswith("WARNING: the fp32 ceiling (300 GFLOP/s) exceeds the ISA peak (236)")


def test_measure_runs_every_precision_on_tiny_shapes_and_reports_what_could_not_run():
    def broken(m, k, n, threads):
        raise RuntimeError("no kernel for this")

    libs = {p: list(v) for p, v in ceil.LIBRARIES.items()}
    libs["fp32"] = libs["fp32"] + [("broken: test", broken)]
    meas = ceil.measure(TINY["m"], threads=1, repeats=1, hidden=TINY["hidden"], intermediate=TINY["intermediate"],
                        libraries=libs)
    assert set(meas["rates"]) == set(ceil.PRECISIONS)
    assert meas["unavailable"]["fp32"]["broken: test"] == "RuntimeError: no kernel for this"
    for prec, per_gemm in meas["rates"].items():
        assert set(per_gemm) == {"attn_proj", "ffn_up", "ffn_down"}, prec
        for per_lib in per_gemm.values():
            assert per_lib and all(math.isfinite(r) and r > 0 for r in per_lib.values())
            assert "broken: test" not in per_lib
    assert {"mkl: torch F.linear", "mlas: onnxruntime MatMul"} <= set(meas["rates"]["fp32"]["ffn_up"])
    assert "mlas: onnxruntime MatMulInteger" in meas["rates"]["int8"]["ffn_up"]
    ceils = ceil.ceilings(meas)
    for prec, c in ceils.items():
        best = [max(v.values()) for v in meas["rates"][prec].values()]
        assert min(best) <= c["ops_per_s"] <= max(best)  # a weighted mean of the per-GEMM best rates
    lines = ceil.describe(ceils, meas, None)
    assert sum(line.startswith("- ") for line in lines) == 3


def test_measure_rejects_bad_arguments_naming_them():
    with pytest.raises(ValueError, match=r"`threads` must be an int >= 1 .* Given: 0"):
        ceil.measure(32, threads=0)
    with pytest.raises(ValueError, match=r"`precisions` must be among .* Given: \['fp8'\]"):
        ceil.measure(32, threads=1, precisions=("fp8",))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler for benchmarks/isa_probe.c")
def test_isa_peak_is_cores_x_pipes_x_lanes_x_2_x_measured_clock():
    peak = ceil.isa_peak(cores=2, iters=20_000, repeats=3)
    assert peak["clock_source"].startswith("measured:")
    assert 0.3e9 < peak["clock_hz"] < 7e9
    flags = ceil.cpu_flags()
    for prec, (_, flag) in ceil.PROBES.items():
        p = peak["precisions"][prec]
        if flag not in flags or p["ops_per_s"] is None:
            assert p["reason"]
            continue
        assert p["per_cycle"] in np.arange(0.5, 8.5, 0.5)
        assert p["ops_per_s"] == pytest.approx(2 * p["per_cycle"] * ceil.LANES[prec] * 2 * peak["clock_hz"])
        assert p["formula"].startswith("2 cores x ")


def test_compare_charges_int8_rows_at_both_ceilings_and_a_missing_ceiling_is_not_a_number():
    from benchmarks.compare import ideal_seconds

    ceils = {"fp32": {"ops_per_s": 100e9}, "bf16": {"ops_per_s": None}, "int8": {"ops_per_s": 400e9}}
    assert ideal_seconds(1000, 1e6, "fp32", ceils, 0.35) == pytest.approx(1e9 / 100e9)
    assert ideal_seconds(1000, 1e6, "int8", ceils, 0.35) == pytest.approx(1e9 * (0.35 / 400e9 + 0.65 / 100e9))
    assert math.isnan(ideal_seconds(1000, 1e6, "bf16", ceils, 0.35))

"""benchmarks/ceilings.py: the per-precision matmul ceilings, the ISA peak and the >100% guard.
Tiny shapes only; no timing is asserted beyond "positive and finite"."""
import math
import os
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


def test_openvinos_int8_ceiling_runs_an_int8_fullyconnected_where_the_backend_offers_int8():
    """The openvino backend's int8 graphs are MatMuls between FakeQuantize nodes; the int8 ceiling times the
    same pattern, which the plugin must run as an int8 FullyConnected (else it measures a float matmul)."""
    from postemb_rt.cpu import vnni512

    if not vnni512():  # the backend refuses int8 here, and so does its ceiling
        with pytest.raises(RuntimeError, match="VNNI or AMX"):
            ceil._openvino_compiled("int8", 32, 64, 128, 1)
        return
    compiled, feeds = ceil._openvino_compiled("int8", 32, 64, 128, 1)
    ops = {op.get_rt_info()["layerType"].astype(str): op.get_rt_info()["runtimePrecision"].astype(str)
           for op in compiled.get_runtime_model().get_ordered_ops()}
    assert ops.get("FullyConnected") in ("u8", "i8"), ops
    assert compiled.create_infer_request().infer(feeds)[0].shape == (32, 128)


def test_measure_rejects_bad_arguments_naming_them():
    with pytest.raises(ValueError, match=r"`threads` must be an int >= 1 .* Given: 0"):
        ceil.measure(32, threads=0)
    with pytest.raises(ValueError, match=r"`precisions` must be among .* Given: \['fp8'\]"):
        ceil.measure(32, threads=1, precisions=("fp8",))


# -- the ISA peak's logic, on fake cores (no vendor's microarchitecture assumed) -------------------

ZMM_FLAGS = {"avx512f", "avx512_bf16", "avx512_vnni", "constant_tsc"}


class FakeCore:
    """A probe for a core of known clock. ``chain_per_cycle`` 1 is an honest one-cycle ALU chain;
    5 is a renamer folding it (issue 27: an add $1 chain at 18.6 GHz on a ~3.7 GHz Xeon)."""

    def __init__(self, clock_hz=3.0e9, chain_per_cycle=1.0, pipes=2.0, perf=False, tsc_hz=2.5e9):
        self.clock_hz, self.chain_per_cycle, self.pipes = clock_hz, chain_per_cycle, pipes
        self.perf, self.tsc = perf, tsc_hz

    def chain_seconds(self, iters, repeats):
        return ceil.CHAIN_OPS * iters / (self.chain_per_cycle * self.clock_hz)

    def chain_cycles_hz(self, iters, repeats):
        return self.clock_hz if self.perf else None

    def tsc_hz(self):
        return self.tsc

    def zmm_seconds(self, probe, iters, repeats):
        return ceil.ZMM_OPS * iters / (self.pipes * self.clock_hz)


def fake_peak(core, flags=ZMM_FLAGS, cpuinfo_mhz=2500.0, cores=2, kernel_amx=True):
    return ceil.isa_peak(cores, iters=1000, repeats=4, probe=core, flags=flags, cpuinfo_mhz=cpuinfo_mhz,
                         kernel_amx=kernel_amx)


def test_isa_peak_is_cores_x_pipes_x_lanes_x_2_x_measured_clock():
    for pipes in (1.0, 2.0):  # a core splitting zmm over two 256-bit halves, and a full-width one
        peak = fake_peak(FakeCore(clock_hz=3.1e9, pipes=pipes))
        assert peak["clock_hz"] == pytest.approx(3.1e9)
        assert peak["clock_source"].startswith("measured:") and "cross-checked: TSC" in peak["clock_source"]
        for prec in ceil.PRECISIONS:
            p = peak["precisions"][prec]
            assert p["per_cycle"] == pipes
            assert p["ops_per_s"] == pytest.approx(2 * pipes * ceil.LANES[prec] * 2 * 3.1e9)
            assert p["formula"].startswith(f"2 cores x {pipes:g} zmm ")


def test_a_turbo_clock_up_to_the_stated_factor_above_nominal_is_trusted():
    peak = fake_peak(FakeCore(clock_hz=3.9e9, tsc_hz=2.0e9))  # 1.95x: a Xeon 6's turbo over its base
    assert peak["clock_hz"] == pytest.approx(3.9e9) and peak["clock"]["disagreement"] is None


def test_a_chain_the_renamer_shortcuts_is_caught_by_the_tsc_and_the_tsc_is_used_marked_as_such():
    peak = fake_peak(FakeCore(clock_hz=3.7e9, chain_per_cycle=5, tsc_hz=2.0e9))  # chain "measures" 18.5 GHz
    assert peak["clock_hz"] == pytest.approx(2.0e9)
    assert peak["clock_source"].startswith("cross-check: TSC rate")
    assert "18.50 GHz" in peak["clock"]["disagreement"] and "not trusted" in peak["clock"]["disagreement"]
    for prec in ceil.PRECISIONS:
        p = peak["precisions"][prec]
        assert p["ops_per_s"] == pytest.approx(2 * p["per_cycle"] * ceil.LANES[prec] * 2 * 2.0e9)


def test_the_perf_cycle_counter_is_the_first_cross_check_and_the_tightest():
    # a chain folded 2x sits inside the TSC's 2.5x but not inside the perf counter's 1.25x
    peak = fake_peak(FakeCore(clock_hz=3.0e9, chain_per_cycle=2, perf=True, tsc_hz=2.5e9))
    assert peak["clock"]["cross_check"]["kind"] == "perf"
    assert peak["clock_hz"] == pytest.approx(3.0e9) and peak["clock_source"].startswith("cross-check: perf counter")
    honest = fake_peak(FakeCore(clock_hz=3.0e9, perf=True))
    assert honest["clock_source"].startswith("measured:") and "perf counter" in honest["clock_source"]


def test_without_tsc_or_perf_the_cpuinfo_clock_is_the_cross_check():
    peak = fake_peak(FakeCore(clock_hz=3.0e9, chain_per_cycle=5), flags={"avx512f"}, cpuinfo_mhz=2900.0)
    assert peak["clock_hz"] == pytest.approx(2.9e9) and peak["clock_source"].startswith("cross-check: /proc/cpuinfo")
    assert [r["kind"] for r in peak["clock"]["references"]] == ["cpuinfo"]


@pytest.mark.parametrize("chain_ghz, want", [(4.0, "measured:"), (9.0, "unknown:")])
def test_with_no_cross_check_at_all_only_a_plausible_chain_is_used(chain_ghz, want):
    peak = fake_peak(FakeCore(clock_hz=chain_ghz * 1e9), flags={"avx512f"}, cpuinfo_mhz=0.0)
    assert peak["clock_source"].startswith(want)
    if want == "unknown:":
        assert peak["clock_hz"] is None
        assert all(p["ops_per_s"] is None and p["reason"].startswith("no clock")
                   for p in peak["precisions"].values())


@pytest.mark.parametrize("ratio, trusted", [(1 / 2.5, True), (1 / 2.6, False), (2.5, True), (2.51, False)])
def test_choose_clock_trusts_the_chain_within_the_stated_factor_either_way(ratio, trusted):
    ref = {"kind": "tsc", "hz": 2.0e9, "source": "TSC"}
    c = ceil.choose_clock(2.0e9 * ratio, [ref])
    assert (c["clock_hz"] == pytest.approx(2.0e9 * ratio)) is trusted
    assert (c["disagreement"] is None) is trusted


def test_amx_flags_give_the_documented_tile_peak_for_bf16_and_int8_and_keep_the_zmm_figure():
    flags = ZMM_FLAGS | {"amx_tile", "amx_bf16", "amx_int8"}
    peak = fake_peak(FakeCore(clock_hz=3.0e9), flags=flags)
    bf16, int8, fp32 = (peak["precisions"][p] for p in ("bf16", "int8", "fp32"))
    assert bf16["ops_per_s"] == pytest.approx(2 * 1024 * 3.0e9)  # 16x16x32 x 2 FLOP per 16 cycles
    assert int8["ops_per_s"] == pytest.approx(2 * 2048 * 3.0e9)  # 16x16x64 x 2 OP per 16 cycles
    assert "AMX TDPBF16PS" in bf16["formula"] and "documented" in bf16["source"]
    assert bf16["zmm"]["ops_per_s"] == pytest.approx(2 * 2 * 32 * 2 * 3.0e9)
    assert fp32["ops_per_s"] == pytest.approx(2 * 2 * 16 * 2 * 3.0e9) and "zmm" not in fp32
    only_bf16 = fake_peak(FakeCore(), flags={"avx512f", "amx_bf16"})["precisions"]
    assert only_bf16["bf16"]["ops_per_s"] == pytest.approx(2 * 1024 * 3.0e9)
    assert only_bf16["bf16"]["zmm"]["reason"] == "no avx512_bf16 (this probe needs it)"
    assert only_bf16["int8"]["ops_per_s"] is None


def test_amx_flags_on_a_kernel_without_tile_state_keep_the_zmm_peak_and_say_why():
    """A kernel before 5.16 may list amx_* in /proc/cpuinfo without enabling tile state: no library
    can use the tiles there, so the tile peak would overstate the machine 4-8x."""
    flags = ZMM_FLAGS | {"amx_tile", "amx_bf16", "amx_int8"}
    peak = fake_peak(FakeCore(clock_hz=3.0e9), flags=flags, kernel_amx=False)["precisions"]
    for prec, lanes in (("bf16", 32), ("int8", 64)):
        assert peak[prec]["ops_per_s"] == pytest.approx(2 * 2 * lanes * 2 * 3.0e9) and "zmm" not in peak[prec]
        assert "this kernel does not enable AMX tile state" in peak[prec]["formula"]
    only_amx = fake_peak(FakeCore(), flags={"avx512f", "amx_bf16"}, kernel_amx=False)["precisions"]["bf16"]
    assert only_amx["ops_per_s"] is None and "this kernel does not enable AMX tile state" in only_amx["reason"]


@pytest.mark.parametrize("threads, physical, want", [(4, 2, 2), (2, 4, 2), (1, 1, 1)])
def test_the_peak_counts_threads_on_physical_cores_only(threads, physical, want):
    """SMT siblings share one core's vector pipes and AMX unit: 4 threads on 2 cores (a 4-vCPU VM
    with 2 threads per core) peak as 2 cores, not 4."""
    assert ceil.peak_cores(threads, physical) == want


def test_with_an_unreadable_topology_the_peak_counts_the_threads(monkeypatch):
    monkeypatch.setattr(ceil, "physical_cores", lambda: None)
    assert ceil.peak_cores(3) == 3


def test_the_ceilings_run_on_the_runtimes_threads_then_torchs(monkeypatch):
    """Under a cgroup quota (a 4-CPU pod on a 64-core host) torch's default counts the host's cores
    while the runtime's backends use the quota's: ceilings timed on torch's, throttled, sat below the
    rows and read as OVER CEILING."""
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # a launcher's (Ray, a container's env) decides first
    monkeypatch.setenv("POSTEMB_NUM_THREADS", "3")
    assert ceil.default_threads(usable=1) == 3
    monkeypatch.delenv("POSTEMB_NUM_THREADS")
    machine = os.cpu_count()
    if machine > 1:
        assert ceil.default_threads(usable=1) == 1  # a mask or quota of one CPU
    assert ceil.default_threads(usable=machine) == torch.get_num_threads()  # the whole machine: torch's
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # as torch's own threads follow it
    assert ceil.default_threads(usable=1) == ceil.default_threads(usable=machine) == 2


def test_a_probe_that_cannot_be_compiled_is_reported_not_guessed(monkeypatch):
    monkeypatch.setenv("CC", "false")
    peak = ceil.isa_peak(2, iters=10, repeats=1, flags=ZMM_FLAGS, cpuinfo_mhz=2500.0)
    assert peak["clock_source"].startswith("/proc/cpuinfo 'cpu MHz' (not measured: false failed")
    assert all(p["ops_per_s"] is None for p in peak["precisions"].values())


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler for benchmarks/isa_probe.c")
def test_isa_peak_on_this_machine_is_self_consistent_and_printed():
    """The real probe: only its own consistency is checked; the hardware figures are printed."""
    peak = ceil.isa_peak(cores=2, iters=20_000, repeats=3)
    print(f"\nISA clock: {peak['clock_source']}")
    assert peak["clock_source"].startswith(("measured:", "cross-check:"))
    assert math.isfinite(peak["clock_hz"]) and peak["clock_hz"] > 0
    assert peak["clock"]["chain_hz"] > 0
    for prec, p in peak["precisions"].items():
        print(f"{prec}: {p.get('formula') or p.get('reason')}")
        if p["ops_per_s"] is None:
            assert p["reason"]
            continue
        per_core_cycle = p["ops_per_s"] / (2 * peak["clock_hz"])
        assert per_core_cycle == pytest.approx(p["per_cycle"] * (1 if "source" in p else ceil.LANES[prec] * 2))
        assert p["formula"].startswith("2 cores x ")


def test_compare_charges_int8_rows_at_both_ceilings_and_a_missing_ceiling_is_not_a_number():
    from benchmarks.compare import ideal_seconds

    ceils = {"fp32": {"ops_per_s": 100e9}, "bf16": {"ops_per_s": None}, "int8": {"ops_per_s": 400e9}}
    assert ideal_seconds(1000, 1e6, "fp32", ceils, 0.35) == pytest.approx(1e9 / 100e9)
    assert ideal_seconds(1000, 1e6, "int8", ceils, 0.35) == pytest.approx(1e9 * (0.35 / 400e9 + 0.65 / 100e9))
    assert math.isnan(ideal_seconds(1000, 1e6, "bf16", ceils, 0.35))


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler for benchmarks/isa_probe.c")
def test_an_assembler_without_avx512_bf16_still_measures_the_clock_and_the_other_probes(monkeypatch, tmp_path):
    """GNU as before binutils 2.33 (RHEL 8, Ubuntu 18.04, Debian 10) cannot assemble vdpbf16ps: the whole probe
    failed to build there, so the clock and every peak were lost and the real-probe test above failed. Emulated
    with GNU as' -march (every extension the probe uses but AVX512-BF16); this CPU's own flags pick the probes."""
    cc = tmp_path / "cc"
    cc.write_text('#!/bin/sh\nexec cc -Wa,-march=generic64+avx512f+avx512bw+avx512vl+avx512dq+avx512_vnni "$@"\n')
    cc.chmod(0o755)
    (tmp_path / "t.c").write_text("int f(void) { return 1; }\n")
    import subprocess

    if subprocess.run([str(cc), "-c", "-o", str(tmp_path / "t.o"), str(tmp_path / "t.c")]).returncode != 0:
        pytest.skip("cc does not assemble with GNU as (-Wa,-march): the older assembler cannot be emulated")
    monkeypatch.setenv("CC", str(cc))
    peak = ceil.isa_peak(cores=1, iters=20_000, repeats=2)
    assert peak["clock_source"].startswith(("measured:", "cross-check:")), peak["clock_source"]
    flags = ceil.cpu_flags()
    bf16 = peak["precisions"]["bf16"]
    if "avx512_bf16" in flags:
        assert "vdpbf16ps" in bf16.get("reason", "") + str(bf16.get("zmm", {}).get("reason", "")), bf16
    if "avx512f" in flags:
        assert peak["precisions"]["fp32"]["ops_per_s"] > 0

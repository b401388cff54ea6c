"""The benchmarks size their multi-process configurations from the CPUs this process may use
(postemb_rt.cpu.usable_cpus), not from a 2-core machine or os.cpu_count(): on a larger machine
a fixed 2-core configuration against a baseline on every core reads as a regression."""
import pytest

from benchmarks import bench_backfill


@pytest.mark.parametrize("cpus, want", [(1, [(1, 1)]), (2, [(2, 1), (1, 2)]), (64, [(64, 1), (1, 64)])])
def test_backfill_configs_default_to_every_usable_cpu_both_ways(cpus, want):
    assert bench_backfill.parse_configs(bench_backfill.default_configs(cpus), cpus) == want


def test_backfill_configs_are_parsed_and_checked_against_the_cpus_naming_the_fix():
    assert bench_backfill.parse_configs("4x2, 2X4", 8) == [(4, 2), (2, 4)]
    with pytest.raises(ValueError, match=r"`--configs` '2x2': .* at most the 2 CPUs .* Given: '2x1,2x2'. "
                                         r"Fix: e.g. 2x1,1x2"):
        bench_backfill.parse_configs("2x1,2x2", 2)
    with pytest.raises(ValueError, match=r"`--configs` must be WORKERSxTHREADS pairs.*Given: '2 by 1'"):
        bench_backfill.parse_configs("2 by 1", 2)
    with pytest.raises(ValueError, match=r"`--configs` '0x1'"):
        bench_backfill.parse_configs("0x1", 2)


def test_nearline_workers_split_the_usable_cpus_not_the_machines(monkeypatch, tmp_path):
    import argparse

    from benchmarks import load_nearline

    started = []

    class FakePopen:
        def __init__(self, cmd, **kwargs):
            started.append(cmd)

    monkeypatch.setattr(load_nearline, "usable_cpus", lambda: 4)  # e.g. taskset -c 0-3 on a 64-core machine
    monkeypatch.setattr(load_nearline.subprocess, "Popen", FakePopen)
    args = argparse.Namespace(threads=None, model="base", backend="auto", precision="fp32", batch_size=64,
                              max_wait_ms=5)
    procs, threads = load_nearline.start_workers("redis://127.0.0.1:1/0", 2, "t", args, str(tmp_path))
    for _, log in procs:
        log.close()
    assert threads == 2 and all(cmd[cmd.index("--threads") + 1] == "2" for cmd in started) and len(started) == 2

"""How many threads the C++ pooling kernel starts on its own (num_threads=0): one per 4 MiB of hidden
states read, never more than the CPUs this process may use. Checked on the pure decision
(``_C.pool_threads``), in a subprocess with a one-CPU affinity mask, and on CpuPooler's cap; no timing,
and nothing that depends on how many cores this machine has."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from postemb_rt import native
from postemb_rt.ops import masked_mean_pool_l2 as ops

pytestmark = pytest.mark.skipif(not ops._has_cpu_kernel(), reason="postemb_rt._C is not built")
MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bytes_read, max_threads, want", [
    (0, 8, 1), (4 * MiB - 1, 8, 1), (8 * MiB, 8, 2), (64 * MiB, 8, 8), (64 * MiB, 3, 3), (1 << 40, 1, 1),
])
def test_one_thread_per_4_mib_up_to_the_cap(bytes_read, max_threads, want):
    assert native._C.pool_threads(bytes_read, max_threads) == min(want, len(os.sched_getaffinity(0)))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity (Linux)")
def test_the_default_cap_is_the_affinity_mask_not_the_host():
    """Pinned to one CPU (taskset, a container's cpuset), a batch of long posts (here 1 GiB read) ran on
    one thread per hardware thread of the host: std::thread::hardware_concurrency()."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from postemb_rt import _C; "
            "print(_C.pool_threads(1 << 30), _C.pool_threads(1 << 30, 16))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "1"]


class _FakeC:
    """Records the keyword arguments CpuPooler hands the kernel."""

    def __init__(self):
        self.calls = []

    def cpu_isa(self, isa="auto"):
        return "generic"

    def pool_threads(self, bytes_read, max_threads=0):
        return 1

    def masked_mean_pool_l2(self, hidden, mask, weight, bias, normalize, isa, **kwargs):
        self.calls.append(kwargs)
        return np.zeros((hidden.shape[0], hidden.shape[2]), np.float32)


@pytest.mark.parametrize("env, want", [({"POSTEMB_NUM_THREADS": "1"}, 1), ({"OMP_NUM_THREADS": "1"}, 1),
                                       ({"POSTEMB_NUM_THREADS": "3", "OMP_NUM_THREADS": "1"}, 3)])
def test_cpu_pooler_caps_its_threads_as_the_model_threads(monkeypatch, env, want):
    """A Ray worker (OMP_NUM_THREADS=1) or POSTEMB_NUM_THREADS=1 gets one pooling thread, as its model."""
    for name in ("POSTEMB_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fake = _FakeC()
    monkeypatch.setattr(native, "_C", fake)
    pool = ops.CpuPooler()
    pool(np.zeros((2, 3, 4), np.float32), np.ones((2, 3), np.int64))
    assert fake.calls == [{"max_threads": want}]
    assert pool.max_threads == want


def test_cpu_pooler_without_a_setting_caps_at_the_usable_cpus(monkeypatch):
    for name in ("POSTEMB_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(ops.cpu, "usable_cpus", lambda *a, **k: 2)
    fake = _FakeC()
    monkeypatch.setattr(native, "_C", fake)
    ops.CpuPooler()(np.zeros((1, 1, 4), np.float32), np.ones((1, 1), np.int64))
    assert fake.calls == [{"max_threads": 2}]


class _StaleC:
    """An extension built before max_threads: no pool_threads, and masked_mean_pool_l2 refuses the keyword."""

    def cpu_isa(self, isa="auto"):
        return "generic"

    def masked_mean_pool_l2(self, hidden, mask, weight, bias, normalize, isa):
        return np.zeros((hidden.shape[0], hidden.shape[2]), np.float32)


def test_an_extension_built_before_max_threads_is_named_and_not_called(monkeypatch):
    """Sources updated without a rebuild: every pooling call would raise TypeError mid-encode."""
    monkeypatch.setattr(native, "_C", _StaleC())
    pool = ops.CpuPooler()
    assert pool.isa is None and "postemb_rt._C predates it" in pool.name
    out = pool(np.ones((2, 3, 4), np.float32), np.ones((2, 3), np.int64))
    np.testing.assert_allclose(out, np.full((2, 4), 0.5, np.float32))

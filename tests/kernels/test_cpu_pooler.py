"""CpuPooler, the runtime's handle on the C++ pooling kernel: it runs the ISA its name reports."""
import numpy as np
import pytest

from postemb_rt.ops.masked_mean_pool_l2 import CpuPooler, _has_cpu_kernel

pytestmark = pytest.mark.skipif(not _has_cpu_kernel(), reason="postemb_rt._C is not built")


def test_the_isa_is_fixed_when_the_pooler_is_made(monkeypatch):
    """describe()["pooling_kernel"] names the ISA read at load; a later change of $POSTEMB_CPU_ISA must
    not switch (or, when invalid, break) the kernel under a name that no longer says what runs."""
    monkeypatch.setenv("POSTEMB_CPU_ISA", "generic")
    pool = CpuPooler(np.eye(4, 3, dtype=np.float32))
    assert pool.name == "C++ masked_mean_pool_l2 (generic)"
    hidden = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    want = pool(hidden, mask)
    monkeypatch.setenv("POSTEMB_CPU_ISA", "sse9")  # read per call, this raised ValueError mid-encode
    assert np.array_equal(pool(hidden, mask), want)
    assert pool.name == "C++ masked_mean_pool_l2 (generic)"

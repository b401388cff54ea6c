"""postemb_rt._C.DynamicBatcher left open at interpreter exit: its queued requests are computed before
Python tears down. Its scheduler thread used to ask for the GIL after finalisation had begun, and
Python ended it inside the `run` callback: a segfault at exit (the Python face's atexit hook closed
only its own batchers)."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from postemb_rt import native

pytestmark = pytest.mark.skipif(not native.NATIVE, reason="postemb_rt._C is not built")
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import atexit, time
    import numpy as np
    done = []
    atexit.register(lambda: print("completed", len(done), sorted({s for _, s, *_ in done}), flush=True))
    from postemb_rt import _C  # its exit hook runs before the one above (atexit runs last-in first-out)

    def run(ids, mask):
        time.sleep(0.01)
        return np.zeros((ids.shape[0], 4), np.float32)

    b = _C.DynamicBatcher(run, done.extend, max_wait_us=0, max_batch_size=2)
    for i in range(20):
        b.submit(i, [[1, 2, 3]])
    print("exiting", flush=True)
""")


def test_an_open_batcher_is_drained_at_exit_not_killed_mid_batch():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-2000:]}"
    assert out.stdout.split("\n")[-2] == "completed 20 [0]"

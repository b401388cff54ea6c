"""A forked child of a process that used the Encoder (postemb_rt/forks.py): its inherited batcher is
abandoned, a new one starts on the child's first submit(), torch runs on one thread there, and the child
exits. Before: the child's submit() never resolved, a torch model hung in its first parallel region, and a
child that merely inherited a started batcher hung at exit. Each case runs in a fresh interpreter: a fork
of the test process would inherit pytest itself."""
import ast
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import os, sys, time
    from postemb_rt import Encoder
    from postemb_rt.errors import BatcherClosedError
    enc = Encoder.from_pretrained("default", backend=sys.argv[1])
    texts = ["a post about the weather", "word " * 100]
    want = enc.submit(texts).result()  # the parent's batcher is started, and torch's threads have run
    inherited = enc.batcher
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            inherited.submit([[101, 2000, 102]])
            said = "no error"
        except BatcherClosedError as exc:
            said = str(exc)
        got = [enc.submit(texts).result(timeout=30), enc.encode(texts)]
        ok = all(abs(g - want).max() < 1e-4 for g in got) and enc.batcher is not inherited
        os.write(write, f"{ok}|{said}".encode())
        sys.exit(0)  # the interpreter's own exit: the exit hook must not wait for the parent's thread
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("exit", os.waitstatus_to_exitcode(status), os.read(read, 4096).decode())
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        print("hung: the child did not exit in 60 s")
""")


def test_a_forked_child_submits_through_its_own_batcher_and_exits():
    # torch: the backend whose exit does not hang on its own (onnxruntime's and OpenVINO's teardown in a forked
    # child can: plain onnxruntime does the same; README "Forked processes")
    res = subprocess.run([sys.executable, "-c", CHILD, "torch"], capture_output=True, text=True, timeout=240)
    out = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-2000:]
    assert out.startswith("exit 0 True|"), out
    assert "inherited through fork()" in out and "Fix:" in out  # the parent's batcher refuses, naming the fix


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_multiprocessing_fork_pool_uses_the_parents_encoder(backend):
    """multiprocessing's workers end with os._exit: no runtime teardown, every backend works."""
    script = textwrap.dedent("""
        import multiprocessing as mp, sys
        from postemb_rt import Encoder
        enc = Encoder.from_pretrained("default", backend=sys.argv[1])
        want = enc.submit(["post 0", "post 1"]).result()
        def child(i):
            return float(abs(enc.submit([f"post {i}"]).result(timeout=30) - want[i]).max())
        if __name__ == "__main__":
            with mp.get_context("fork").Pool(2) as pool:
                print("diffs", pool.map_async(child, range(2)).get(timeout=60))
    """)
    res = subprocess.run([sys.executable, "-c", script, backend], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    diffs = ast.literal_eval(res.stdout.strip().splitlines()[-1].removeprefix("diffs "))
    assert len(diffs) == 2 and max(diffs) < 1e-4, diffs


def test_a_child_forked_during_an_encode_on_another_thread_encodes_and_closes():
    """close() waits for encode calls running on other threads (Encoder._computing); in a child forked while a
    parent thread was in one, that call does not exist, so the child's close() must not wait for it."""
    script = textwrap.dedent("""
        import os, threading, time
        from postemb_rt import Encoder
        enc = Encoder.from_pretrained("base", backend="torch", warmup=False)
        inside, release, real = threading.Event(), threading.Event(), enc.backend.embed
        def held(*args, **kwargs):
            inside.set()
            release.wait(60)
            return real(*args, **kwargs)
        enc.backend.embed = held
        worker = threading.Thread(target=enc.encode, args=(["a post"],))
        worker.start()
        inside.wait(60)
        pid = os.fork()
        if pid == 0:
            enc.backend.embed = real
            enc.encode(["a post in the child"])
            enc.close()  # waited for ever for the parent thread's encode
            os._exit(0)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print("exit", os.waitstatus_to_exitcode(status))
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            print("hung: the child did not exit in 60 s")
        release.set()
        worker.join()
        enc.close()
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    out = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-2000:]
    assert out == "exit 0", out

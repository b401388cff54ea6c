"""The model's threads follow the CPUs a process may use: its affinity mask (taskset, a cpuset)
and its cgroup CPU quota (postemb_rt.cpu.usable_cpus, model_threads)."""
import os
import subprocess
import sys
import textwrap

import pytest

from postemb_rt import cpu
from postemb_rt.errors import ValidationError


def _cgroups(tmp_path, proc_lines, files):
    proc = tmp_path / "proc_cgroup"
    proc.write_text("\n".join(proc_lines) + "\n")
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return str(proc), str(root)


def test_cgroup_v2_quota_is_the_smallest_over_the_cgroup_and_its_ancestors(tmp_path):
    proc, root = _cgroups(tmp_path, ["0::/kubepods/pod1/ctr"],
                          {"kubepods/cpu.max": "400000 100000\n", "kubepods/pod1/cpu.max": "max 100000\n",
                           "kubepods/pod1/ctr/cpu.max": "150000 100000\n"})
    assert cpu.cgroup_cpu_quota(proc, root) == 1.5


def test_cgroup_v1_quota_reads_the_cpu_controllers_mount(tmp_path):
    proc, root = _cgroups(tmp_path, ["5:memory:/docker/abc", "4:cpu,cpuacct:/docker/abc", "0::/"],
                          {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
                           "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
                           "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cpu.cgroup_cpu_quota(proc, root) == 2.0


def test_no_quota_where_none_is_set_or_nothing_can_be_read(tmp_path):
    proc, root = _cgroups(tmp_path, ["0::/user.slice"], {"user.slice/cpu.max": "max 100000\n"})
    assert cpu.cgroup_cpu_quota(proc, root) is None
    proc, root = _cgroups(tmp_path, ["garbage", "0::/x"], {"x/cpu.max": "lots 100000\n"})
    assert cpu.cgroup_cpu_quota(proc, root) is None
    assert cpu.cgroup_cpu_quota(str(tmp_path / "absent"), root) is None


def test_usable_cpus_is_the_affinity_mask_capped_by_the_quota_rounded_up(tmp_path):
    mask = len(os.sched_getaffinity(0))
    proc, root = _cgroups(tmp_path, ["0::/"], {"cpu.max": "50000 100000\n"})
    assert cpu.usable_cpus(proc, root) == 1  # half a CPU still runs one thread
    proc, root = _cgroups(tmp_path, ["0::/"], {"cpu.max": f"{100000 * (mask + 7)} 100000\n"})
    assert cpu.usable_cpus(proc, root) == mask


def test_model_threads_takes_the_environment_then_a_limit_then_the_librarys_default(monkeypatch):
    machine = os.cpu_count()
    assert cpu.model_threads({"POSTEMB_NUM_THREADS": "3"}, usable=1) == 3
    assert cpu.model_threads({}, usable=machine) == 0  # the whole machine: the library's default
    if machine > 1:
        assert cpu.model_threads({}, usable=machine - 1) == machine - 1
    with pytest.raises(ValidationError, match=r"`POSTEMB_NUM_THREADS` must be an integer >= 0.*Given: 'two'"):
        cpu.model_threads({"POSTEMB_NUM_THREADS": "two"})


def test_postemb_num_threads_0_is_the_default_which_keeps_to_the_cpu_limit():
    """0 is documented as "the default" (as `postemb serve --threads 0`): it let onnxruntime pin a thread to
    every physical core of the machine, outside a taskset mask or cpuset, as if no limit were set."""
    machine = os.cpu_count()
    assert cpu.model_threads({"POSTEMB_NUM_THREADS": "0"}, usable=machine) == 0
    if machine > 1:
        assert cpu.model_threads({"POSTEMB_NUM_THREADS": "0"}, usable=1) == 1
        assert cpu.model_threads({"POSTEMB_NUM_THREADS": " 0 "}, usable=machine - 1) == machine - 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: a thread has no other CPU to run on")
@pytest.mark.parametrize("backend, env", [("onnxruntime", {}), ("openvino", {}),
                                          ("onnxruntime", {"POSTEMB_NUM_THREADS": "0"})])
def test_the_backends_threads_stay_on_the_cpus_the_process_was_given(backend, env):
    """onnxruntime's default pins a thread to every physical core of the machine, outside a
    taskset mask: two processes set to a core each ran at 126-135 posts/s each, 167-173 once
    they kept to it (benchmarks/RESULTS.md, "CPU limits")."""
    script = textwrap.dedent(f"""
        import glob, os
        first = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {{first}})
        from postemb_rt import Encoder
        enc = Encoder.from_pretrained("base", backend={backend!r}, device="cpu")
        enc.encode(["a post to run the threads", "and a second, longer one to run them a bit more"] * 8)
        allowed = set()
        for task in glob.glob("/proc/self/task/*/status"):
            line = next(x for x in open(task) if x.startswith("Cpus_allowed_list"))
            allowed.add(line.split(":")[1].strip())
        print(enc.describe()["threads"], first, sorted(allowed))
    """)
    env = {**{k: v for k, v in os.environ.items() if k not in ("POSTEMB_NUM_THREADS", "OMP_NUM_THREADS")}, **env}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    threads, first, allowed = out.stdout.split(maxsplit=2)
    assert allowed.strip() == repr([first])
    assert threads == "1"  # describe() (and the server's /info) says so


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: torch's default is one thread already")
def test_the_torch_backend_takes_postemb_num_threads_as_the_others_do():
    """torch reads neither $POSTEMB_NUM_THREADS (the server's --threads) nor a cgroup quota: its default is one
    thread per CPU of the mask, so `postemb serve --backend torch --threads 1` ran on every core."""
    script = textwrap.dedent("""
        import torch
        from postemb_rt import Encoder
        enc = Encoder.from_pretrained("base", backend="torch", device="cpu")
        enc.encode(["a post"])
        print(enc.describe()["threads"], torch.get_num_threads())
    """)
    env = {**os.environ, "POSTEMB_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "1"]


def test_model_threads_follows_omp_num_threads_when_postemb_num_threads_is_unset():
    """OMP_NUM_THREADS is the thread count every worker launcher sets (Ray sets it to a task's num_cpus,
    1 by default; gunicorn / Celery deployments set it per worker) and torch, so sentence-transformers,
    honours it; onnxruntime and OpenVINO do not read it, so a worker told to use one thread ran one per core."""
    machine = os.cpu_count()
    assert cpu.model_threads({"OMP_NUM_THREADS": "1"}, usable=machine) == 1
    assert cpu.model_threads({"OMP_NUM_THREADS": " 2 "}, usable=1) == 2  # explicit, as torch takes it
    assert cpu.model_threads({"OMP_NUM_THREADS": "3,1"}, usable=machine) == 3  # OpenMP's nested list: the outer level
    assert cpu.model_threads({"POSTEMB_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}, usable=machine) == 2  # ours first
    assert cpu.model_threads({"POSTEMB_NUM_THREADS": "0", "OMP_NUM_THREADS": "1"}, usable=machine) == 1  # 0: unset
    for ignored in ("0", "", "many", "-2"):  # not a thread count (OpenMP ignores these too): the CPU limit decides
        assert cpu.model_threads({"OMP_NUM_THREADS": ignored}, usable=machine) == 0


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_backends_run_omp_num_threads_threads_as_torch_does(backend):
    script = textwrap.dedent(f"""
        from postemb_rt import Encoder
        enc = Encoder.from_pretrained("base", backend={backend!r}, device="cpu")
        print(enc.describe()["threads"])
    """)
    env = {**{k: v for k, v in os.environ.items() if k != "POSTEMB_NUM_THREADS"}, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1"]

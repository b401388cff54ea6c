"""Where ``postemb backfill`` runs Ray (``backfill/ray_setup.py``): a new Ray on this machine when no
address is given, the cluster in $RAY_ADDRESS when that is set (as Ray jobs set it), and an address
that cannot be reached refused at once, naming where it came from. Ray itself is stood in for: these
check the choice, not Ray."""
import logging
import re
import socket

import pytest

from postemb_rt.backfill import ray_setup
from postemb_rt.errors import ValidationError


@pytest.fixture
def fake_ray(monkeypatch):
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


@pytest.fixture
def listening():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket closes


def test_no_address_starts_a_new_ray_here_even_beside_a_ray_start_cluster(fake_ray):
    assert ray_setup.ray_init(None, 3) is True
    assert fake_ray[0]["address"] == "local" and fake_ray[0]["num_cpus"] == 3


def test_ray_address_in_the_environment_is_joined_and_said(fake_ray, monkeypatch, listening, caplog):
    monkeypatch.setenv("RAY_ADDRESS", listening)
    with caplog.at_level(logging.WARNING, "postemb_rt.backfill"):
        ray_setup.ray_init(None, 3)
    assert fake_ray[0]["address"] == listening and "num_cpus" not in fake_ray[0]  # a cluster's CPUs are its own
    assert f"joining the Ray cluster at {listening} ($RAY_ADDRESS" in caplog.text


@pytest.mark.parametrize("where", ["flag", "env"])
def test_an_address_nothing_listens_on_is_refused_at_once_naming_its_source(fake_ray, monkeypatch, closed_port, where):
    if where == "env":
        monkeypatch.setenv("RAY_ADDRESS", closed_port)
    source, fix = ("--ray-address", "omit --ray-address") if where == "flag" else ("$RAY_ADDRESS", "unset RAY_ADDRESS")
    with pytest.raises(ValidationError, match=rf"`{re.escape(source)}` '{closed_port}': cannot reach a Ray cluster there "
                                              rf"\(Connection refused\)\. Fix: .*{fix}"):
        ray_setup.ray_init(closed_port if where == "flag" else None, 3)
    assert fake_ray == []


def test_auto_with_no_cluster_names_our_flag_not_rays(monkeypatch, fake_ray):
    import ray

    def no_cluster(**kw):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to by "
                              "setting `--address` flag or `RAY_ADDRESS` environment variable.")

    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(ValidationError, match=r"`--ray-address` 'auto': no Ray cluster found \(Could not find .*\)\. "
                                              r"Fix: start one .*omit --ray-address"):
        ray_setup.ray_init("auto", None)


def test_backfill_refuses_an_unreachable_cluster_before_it_makes_the_output(tmp_path, fake_ray, closed_port):
    from postemb_rt.backfill import backfill

    (tmp_path / "posts.jsonl").write_text('{"id": 1, "text": "hello"}\n')
    with pytest.raises(ValidationError, match="cannot reach a Ray cluster there"):
        backfill(tmp_path / "posts.jsonl", tmp_path / "out", ray_address=closed_port)
    assert not (tmp_path / "out").exists() and fake_ray == []


def test_an_actor_larger_than_the_local_ray_is_refused_before_any_work(tmp_path, fake_ray, monkeypatch, capsys):
    """`--threads-per-worker 4` on a 2-CPU machine: every actor asked Ray for 4 CPUs, none could start, and the run
    waited (Ray Data: "The job may hang forever unless the cluster scales up"; it gives up after 30 minutes)."""
    from postemb_rt.backfill import backfill
    from postemb_rt.cli import main

    monkeypatch.setattr(ray_setup, "usable_cpus", lambda: 2)
    (tmp_path / "posts.jsonl").write_text('{"id": 1, "text": "hello"}\n')
    with pytest.raises(ValidationError, match=r"`threads_per_worker` 3: each model actor asks Ray for 3 CPUs, and the "
                                              r"Ray this run starts on this machine has 2 .*Fix: 2 or fewer"):
        backfill(tmp_path / "posts.jsonl", tmp_path / "out", threads_per_worker=3)
    assert main(["backfill", "--input", str(tmp_path / "posts.jsonl"), "--output", str(tmp_path / "out"),
                 "--threads-per-worker", "4"]) == 2
    assert "`--threads-per-worker` 4: each model actor asks Ray for 4 CPUs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and fake_ray == []
    ray_setup.check_actor_size(2, None)  # fits: no error
    ray_setup.check_actor_size(8, "127.0.0.1:6379")  # a cluster's nodes are its own (an autoscaler may add them)

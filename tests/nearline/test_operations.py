"""Near-line operations: shutdown against a Redis that does not answer, a least-privilege
Redis user, dead consumers forgotten, the command's flag checks and ``--stats`` on bad keys, and what ``embedded_at``
means. Each against a real redis-server, with the fake model of ``test_faults``.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from postemb_rt import ValidationError, nearline
from tests.nearline.conftest import RedisServer, _need_binary
from tests.nearline.test_faults import FakeEncoder, pending, publish_all, stored_ids
from tests.nearline.test_nearline import _WORKER_ENV, drained, has_consumer, wait_until

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'redis>=5')")

ROOT = Path(__file__).resolve().parents[2]

# `postemb nearline` in a process of its own, with the fake model and a short socket timeout
# (argv[1], seconds) in place of nearline.connect's 10 s, so the test takes seconds, not minutes.
CLI_WITH_FAKE_MODEL = """
import functools, sys
from postemb_rt import nearline
from postemb_rt.commands import nearline as command
from postemb_rt.encoder import Encoder
from tests.nearline.test_faults import FakeEncoder
nearline.connect = functools.partial(nearline.connect, socket_timeout=float(sys.argv[1]))
Encoder.from_pretrained = classmethod(lambda cls, *a, **k: FakeEncoder())
sys.exit(command.main(sys.argv[2:]))
"""


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own (it may freeze it)."""
    _need_binary()
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGCONT)
    server.stop()


# -- shutdown is bounded --------------------------------------------------------------------


def test_sigterm_exits_0_within_a_bound_while_redis_is_frozen(own_redis, tmp_path):
    """SIGSTOP on redis-server: the kernel still accepts connections, nothing answers. The
    worker used to wait minutes in redis-py's nested retries (connect, health-check PING, the
    command, each with its socket timeout) and in the final heartbeat."""
    timeout_s = 1.5
    client = nearline.connect(own_redis.url)
    ids = publish_all(client, 5)
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", CLI_WITH_FAKE_MODEL, str(timeout_s), "--redis", own_redis.url,
                             "--consumer", "frozen", "--group", "embedder"], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env=_WORKER_ENV)
    try:
        wait_until(lambda: has_consumer(client, "frozen") and drained(client), 30, "the worker's first batch")
        assert stored_ids(client) == set(ids)
        own_redis.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.2)  # the worker is blocked in XREADGROUP on a server that will never answer
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            rc = proc.wait(4 * timeout_s + 3)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not exit within {4 * timeout_s + 3} s of SIGTERM with redis frozen")
        took = time.monotonic() - t0
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert rc == 0, (tmp_path / "worker.log").read_text()
    assert took < 4 * timeout_s + 3


def test_connect_retries_a_dropped_connection_about_1_5_s_and_never_a_timeout():
    """redis-py's own retry stays small and flat: no retry of a timeout, no health-check PING
    (whose retry loop nested inside the command's)."""
    conn = nearline.connect("redis://127.0.0.1:1/0").connection_pool.make_connection()
    retry = conn.retry
    assert retry.get_retries() == 5 and conn.health_check_interval == 0
    assert sum(retry._backoff.compute(n) for n in range(1, 6)) == pytest.approx(1.55)
    assert issubclass(redis.ConnectionError, retry._supported_errors)
    assert not any(issubclass(redis.TimeoutError, e) or issubclass(TimeoutError, e) for e in retry._supported_errors)


# -- a least-privilege Redis user ------------------------------------------------------------


def _acl_user(client, name: str, rules: str) -> str:
    """A Redis user with password pw and ``rules`` (as ACL SETUSER takes them); returns its URL part."""
    client.execute_command("ACL", "SETUSER", name, "reset", "on", ">pw", *rules.split())
    return f"{name}:pw@"


def _hint_rules() -> str:
    """The ACL rules `fix_hint` tells an operator to grant for a NOPERM (what they would paste)."""
    hint = nearline.store.fix_hint(redis.exceptions.NoPermissionError("No permissions to access a key"))
    return hint.split("ACL SETUSER <user> ", 1)[1].split(" (", 1)[0]


def _commands_since_reset(admin) -> tuple[set, set]:
    """(commands called, commands refused) since CONFIG RESETSTAT, from INFO commandstats (subcommands as
    ``xgroup|create``; the commands scripts run are counted too)."""
    stats = admin.info("commandstats")
    return ({k[len("cmdstat_"):] for k, v in stats.items() if v["calls"]},
            {k[len("cmdstat_"):] for k, v in stats.items() if v.get("rejected_calls")})


def test_the_user_the_fix_hint_describes_runs_every_worker_publish_and_stats_command(own_redis, caplog, capsys):
    """A user granted `acl_rules()` and nothing else, on database 3 (SELECT on every connection), runs publish,
    publish_delete, the worker (store, a deletion's tombstone, acknowledge, dead-letter, SCRIPT LOAD after a
    flush, XAUTOCLAIM of a dead consumer's event and its XPENDING, the XCLAIM that keeps a batch ours while a
    dropped write is retried, forgetting a dead consumer, the heartbeat, INFO) and `postemb nearline --stats` (PING and every read): Redis refuses nothing,
    and every command the rules grant is used by one of them."""
    from postemb_rt.commands import nearline as command

    admin = redis.Redis(host="127.0.0.1", port=own_redis.port, db=3)
    rules = _hint_rules()
    url = f"redis://{_acl_user(admin, 'least', rules)}127.0.0.1:{own_redis.port}/3"
    _dead_consumers(admin)  # idle-done: nothing pending (forgotten); idle-holding: p101 pending (claimed)
    admin.script_flush()  # the worker loads its three scripts itself
    admin.config_resetstat()
    admin.execute_command("ACL", "LOG", "RESET")

    ids = publish_all(nearline.connect(url), 4)
    nearline.connect(url).xadd("posts", {"post_id": "bad"})  # poison: the dead-letter script
    nearline.publish_delete(nearline.connect(url), "p0")  # a tombstone: DEL in the store script
    w = nearline.Worker(nearline.connect(url), FakeEncoder(), batch_size=8, max_wait_ms=50, claim_idle_ms=1,
                        forget_idle_ms=10, heartbeat_s=1)
    script, drops = w._script, []

    def dropped_once(keys, args):  # the first store fails as a dropped connection does: retried, batch kept ours
        if not drops:
            drops.append(time.time())
            raise redis.ConnectionError("Connection closed by server (simulated)")
        return script(keys=keys, args=args)

    w._script = dropped_once
    with caplog.at_level("WARNING", logger="postemb_rt.nearline"):
        w.run(max_events=7)
    assert command.main(["--redis", url, "--stats", "--json"]) == 0
    called, refused = _commands_since_reset(admin)
    denied = [dict(zip(e[::2], e[1::2])) for e in admin.execute_command("ACL", "LOG")]
    # redis-py's optional CLIENT SETINFO on connecting (Redis >= 7.2; ignored when refused) cannot be granted
    # portably: ACL SETUSER refuses the name on older servers
    assert [d for d in denied if d.get(b"object") != b"client|setinfo"] == [] and not refused - {"client|setinfo"}
    granted = {r[1:] for r in rules.split() if r.startswith("+")}
    assert granted - called == set(), "granted but never used: a rule to spare, or a path this test misses"
    stats = json.loads(capsys.readouterr().out)
    assert [b["consumer"] for b in stats["workers"]] == [w.consumer] and stats["pending"] == 0
    assert stored_ids(admin) == set(ids) | {"p101"} and pending(admin) == 0
    assert drops and w.stats.claimed >= 1 and w.stats.forgotten >= 1 and w.stats.dead == 1 and w.stats.deleted == 1
    assert nearline.fetch(admin, "fake-v1", "p0") is None and admin.hexists("postemb:fake-v1:p0", "deleted_at")
    assert [f[b"post_id"] for _, f in admin.xrange("posts-dead")] == [b"bad"]
    assert not [r for r in caplog.records if "refused" in r.getMessage()]


def test_stats_refused_by_redis_is_one_line_with_the_grant(redis_server, redis_client, capsys):
    """A user set up from an older fix hint (the worker's commands only): --stats was a NoPermissionError traceback."""
    from postemb_rt.commands import nearline as command
    from postemb_rt.nearline.keys import WORKER_COMMANDS

    publish_all(redis_client, 1)
    user = _acl_user(redis_client, "nostats", " ".join(f"+{c}" for c in WORKER_COMMANDS) + " ~posts ~postemb:*")
    assert command.main(["--redis", redis_server.url.replace("redis://", "redis://" + user), "--stats"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("postemb nearline: error: --stats: redis 127.0.0.1:") and "NoPermissionError" in err
    assert f"Fix: grant the worker's Redis user every command and key it needs: ACL SETUSER <user> " \
           f"{nearline.keys.acl_rules()}" in err and "\n" not in err
    redis_client.acl_deluser("nostats")


def test_a_refused_heartbeat_warns_once_and_the_worker_goes_on(redis_server, redis_client, caplog):
    """A user allowed everything but the heartbeat key: the batch is stored and acknowledged,
    and the worker keeps embedding (it used to stop, saying nothing was acknowledged)."""
    user = _acl_user(redis_client, "nobeat", "+@all ~posts ~posts-dead ~embeddings ~postemb:fake-v1:*")
    w = nearline.Worker(nearline.connect(redis_server.url.replace("redis://", "redis://" + user)), FakeEncoder(),
                        batch_size=2, max_wait_ms=0, heartbeat_s=0.01)
    ids = publish_all(redis_client, 6)
    with caplog.at_level("WARNING", logger="postemb_rt.nearline"):
        w.run(max_events=6)  # three batches, a heartbeat after each
    assert stored_ids(redis_client) == set(ids) and pending(redis_client) == 0 and w.stats.stored == 6
    (warning,) = [r.getMessage() for r in caplog.records if "heartbeat" in r.getMessage()]
    assert f"may not SET '{w.heartbeat_key()}'" in warning and "NoPermissionError" in warning
    assert "goes on embedding" in warning and "Fix: ACL SETUSER <user> +set ~postemb:nearline:worker:*" in warning
    redis_client.acl_deluser("nobeat")


# -- dead consumers are forgotten -----------------------------------------------------------


def _consumers(client) -> dict[str, int]:
    return {c["name"].decode(): c["pending"] for c in client.xinfo_consumers("posts", "embedder")}


def _dead_consumers(client) -> None:
    """Two consumers that stopped: "idle-done" finished its event, "idle-holding" holds one."""
    publish_all(client, 2, start=100)
    client.xgroup_create("posts", "embedder", id="0")
    done = client.xreadgroup("embedder", "idle-done", {"posts": ">"}, count=1)
    client.xack("posts", "embedder", done[0][1][0][0])
    client.xreadgroup("embedder", "idle-holding", {"posts": ">"}, count=1)
    time.sleep(0.02)


def test_idle_consumers_with_nothing_pending_are_forgotten_and_no_event_is_lost(redis_server, redis_client, caplog):
    """Restarts under the HOST-PID default name used to pile up in the group and in --stats."""
    _dead_consumers(redis_client)
    ids = publish_all(redis_client, 3)
    w = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(), batch_size=8, max_wait_ms=50,
                        forget_idle_ms=10, claim_idle_ms=60_000, heartbeat_s=0.01)
    with caplog.at_level("INFO", logger="postemb_rt.nearline"):
        w.run(max_events=3)
    assert stored_ids(redis_client) == set(ids) and w.stats.forgotten == 1
    assert _consumers(redis_client) == {"idle-holding": 1, w.consumer: 0}  # its event stays, to be claimed
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("forgot ")]
    assert "forgot 1 consumers of group 'embedder' idle over 10 ms with nothing pending: idle-done" == line
    claimer = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(), claim_idle_ms=1)
    claimer.run(max_events=1)
    assert stored_ids(redis_client) == set(ids) | {"p101"} and pending(redis_client) == 0


def test_forget_idle_ms_0_keeps_every_consumer(redis_server, redis_client):
    _dead_consumers(redis_client)
    publish_all(redis_client, 2)
    w = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(), forget_idle_ms=0, claim_idle_ms=60_000)
    w.run(max_events=2)
    assert _consumers(redis_client) == {"idle-done": 0, "idle-holding": 1, w.consumer: 0} and w.stats.forgotten == 0
    with pytest.raises(ValidationError, match=r"`forget_idle_ms` must be an integer number of milliseconds >= 0"):
        nearline.Worker(None, FakeEncoder(), forget_idle_ms=-1)


def test_a_user_not_granted_forgetting_is_warned_once_and_the_worker_goes_on(redis_server, redis_client, caplog):
    """A user set up from an older fix hint (without XINFO CONSUMERS / XGROUP DELCONSUMER)."""
    rules = _hint_rules().replace(" +xinfo|consumers", "").replace(" +xgroup|delconsumer", "")
    user = _acl_user(redis_client, "older", rules)
    _dead_consumers(redis_client)
    ids = publish_all(redis_client, 4)
    w = nearline.Worker(nearline.connect(redis_server.url.replace("redis://", "redis://" + user)), FakeEncoder(),
                        batch_size=1, max_wait_ms=0, forget_idle_ms=10, claim_idle_ms=60_000)
    with caplog.at_level("WARNING", logger="postemb_rt.nearline"):
        for _ in range(2):  # a second sweep, a minute later: refused again, not warned again
            w._next_forget = 0.0
            w.run(max_events=w.stats.events + 2)
    assert stored_ids(redis_client) == set(ids) and w.stats.forgotten == 0 and "idle-done" in _consumers(redis_client)
    (warning,) = [r.getMessage() for r in caplog.records if "forgetting" in r.getMessage()]
    assert "was refused" in warning and "goes on" in warning
    assert "Fix: ACL SETUSER <user> +xinfo|consumers +xgroup|delconsumer, or --forget-idle-ms 0" in warning
    redis_client.acl_deluser("older")


# -- the command's flags and --stats ---------------------------------------------------------


@pytest.mark.parametrize("argv, flag", [
    (["--max-deliveries", "0"], "--max-deliveries"), (["--max-deliveries", "-3"], "--max-deliveries"),
    (["--forget-idle-ms", "-1"], "--forget-idle-ms"),
    (["--model-timeout", "-1"], "--model-timeout"), (["--threads", "-1"], "--threads"),
    (["--stats", "--window", "0"], "--window"), (["--stats", "--window", "-5"], "--window")])
def test_the_command_refuses_out_of_range_flags_naming_them(argv, flag, monkeypatch, capsys):
    """Refused with exit 2 before anything connects (nothing listens on port 1) or loads."""
    from postemb_rt.commands import nearline as command
    from postemb_rt.encoder import Encoder

    monkeypatch.setattr(Encoder, "from_pretrained", classmethod(lambda cls, *a, **k: pytest.fail("model loaded")))
    assert command.main(["--redis", "redis://127.0.0.1:1/0", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"postemb nearline: error: `{flag}` must be ") and f"Given: {argv[-1]}" in err
    assert "Fix: " in err and "\n" not in err


def test_max_deliveries_below_1_is_refused_by_the_worker_and_by_postemb(monkeypatch, capsys):
    """0 used to switch poison detection off: a post that crashes the worker looped forever."""
    from postemb_rt import cli

    for bad in (0, -1):
        with pytest.raises(ValidationError, match=rf"`max_deliveries` must be an integer >= 1\. Given: {bad}\. Fix"):
            nearline.Worker(None, FakeEncoder(), max_deliveries=bad)
    monkeypatch.setenv("POSTEMB_MAX_DELIVERIES", "0")
    assert cli.main(["nearline", "--redis", "redis://127.0.0.1:1/0"]) == 2
    assert "`--max-deliveries` (from $POSTEMB_MAX_DELIVERIES) must be an integer >= 1. Given: 0." in \
        capsys.readouterr().err


@pytest.mark.parametrize("key, flag", [("posts", "posts_stream"), ("embeddings", "embeddings_stream")])
def test_stats_on_a_key_of_the_wrong_type_is_one_line_naming_it(redis_server, redis_client, key, flag, capsys):
    from postemb_rt.commands import nearline as command

    publish_all(redis_client, 2)
    redis_client.delete(key)
    redis_client.hset(key, "not", "a stream")
    with pytest.raises(ValidationError, match=rf"`{flag}`: key '{key}' holds a hash, not a stream"):
        nearline.stats(redis_client)
    assert command.main(["--redis", redis_server.url, "--stats"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"postemb nearline: error: `{flag}`: key '{key}' holds a hash") and "\n" not in err
    assert "Traceback" not in err and "Fix:" in err


# -- embedded_at ------------------------------------------------------------------------------


def test_embedded_at_is_the_time_of_the_write_that_stored_it(redis_server, redis_client):
    """A store that fails (transiently) and succeeds later stamps the successful attempt."""
    ids = publish_all(redis_client, 3)
    w = nearline.Worker(nearline.connect(redis_server.url), FakeEncoder(), batch_size=3, max_wait_ms=50)
    script, failures = w._script, []

    def loading_then_ok(keys, args):
        if len(failures) < 3 and len(keys) > 1:
            failures.append(time.time())
            raise redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory")
        return script(keys=keys, args=args)

    w._script = loading_then_ok
    w.run(max_events=3)
    assert stored_ids(redis_client) == set(ids) and len(failures) == 3
    for i in ids:
        assert nearline.fetch(redis_client, "fake-v1", i).embedded_at >= failures[-1]

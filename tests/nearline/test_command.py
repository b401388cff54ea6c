"""``postemb nearline`` as an operator runs it: ``python -m postemb_rt.commands.nearline`` and its
environment, ``--stats`` on a group that does not exist and after a trim, a second Ctrl-C. Against a
real redis-server, with the fake model of ``test_faults``.
"""
from __future__ import annotations

import json

import pytest

from postemb_rt import nearline
from tests.nearline.test_faults import publish_all

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'redis>=5')")


def test_python_m_reads_the_environment_as_postemb_nearline_does(redis_server, redis_client, monkeypatch, capsys):
    """`--help` names $POSTEMB_REDIS (and every flag's variable); `python -m postemb_rt.commands.nearline`
    used to ignore it and every other POSTEMB_* variable, and asked 127.0.0.1:6379."""
    from postemb_rt.commands import nearline as command

    publish_all(redis_client, 3)
    monkeypatch.setenv("POSTEMB_REDIS", redis_server.url)
    monkeypatch.setenv("POSTEMB_REDIS_URL", "redis://127.0.0.1:1/0")  # the older name loses
    monkeypatch.setenv("POSTEMB_JSON", "1")
    assert command.main(["--stats"]) == 0
    assert json.loads(capsys.readouterr().out)["posts_len"] == 3
    monkeypatch.delenv("POSTEMB_REDIS")
    monkeypatch.setenv("POSTEMB_REDIS_URL", redis_server.url)
    assert command.main(["--stats"]) == 0

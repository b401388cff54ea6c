"""Benchmark scripts refuse sizes they cannot run before they start a server or load a model,
naming the argument, the value and the fix (a smoke run with tiny sizes must not crash late)."""
import re

import pytest

from benchmarks import load_server


@pytest.mark.parametrize("argv, match", [
    (["--posts", "50"],
     r"--posts must be >= 64 with --batch-clients .* Given: 50. Fix: --posts 64 or more, or --batch-clients ''"),
    (["--posts", "0", "--batch-clients", ""], r"--posts must be >= 1. Given: 0"),
    (["--requests", "0"], r"--requests must be >= 1. Given: 0"),
    (["--batch-requests", "0"], r"--batch-requests must be >= 1. Given: 0"),
])
def test_load_server_refuses_sizes_it_cannot_run_before_starting_anything(argv, match, monkeypatch, capsys):
    monkeypatch.setattr(load_server, "start_server", lambda *a: pytest.fail("started a server"))
    with pytest.raises(SystemExit) as e:
        load_server.main(argv)
    assert e.value.code == 2
    assert re.search(match, capsys.readouterr().err)

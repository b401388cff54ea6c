"""Every flag of the deployed commands (serve, nearline, backfill) from the environment, by one
naming rule; --version; JSON logs."""
import json
import logging
import re
import subprocess
import sys

import pytest

from postemb_rt import cli
from postemb_rt.errors import ValidationError


def parse(argv, env):
    return cli.build_parser(environ=env).parse_args(argv)


def test_one_naming_rule_for_every_flag_of_the_deployed_commands():
    parser = cli.build_parser(environ={})
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in cli.ENV_COMMANDS:
        for action in sub.choices[command]._actions:
            longs = [o for o in action.option_strings if o.startswith("--")]
            if longs and longs[0] != "--help":
                assert f"[env: {cli.env_name(longs[0])}]" in action.help, (command, longs[0])
    assert cli.env_name("--max-batch-size") == "POSTEMB_MAX_BATCH_SIZE"


def test_environment_sets_defaults_and_the_command_line_wins():
    env = {"POSTEMB_PORT": "9090", "POSTEMB_MAX_WAIT_US": "250", "POSTEMB_ACCESS_LOG": "true",
           "POSTEMB_LONG_POSTS": "chunk", "POSTEMB_MODEL": "base"}
    args = parse(["serve"], env)
    assert (args.port, args.max_wait_us, args.access_log, args.long_posts, args.model) == (9090, 250, True, "chunk", "base")
    args = parse(["serve", "--port", "7000", "--model", "default"], env)
    assert (args.port, args.model) == (7000, "default")
    assert parse(["serve"], {}).port == 8080  # unset: the built-in default
    assert parse(["backfill"], {"POSTEMB_INPUT": "in/", "POSTEMB_OUTPUT": "out/"}).input == "in/"  # required flags too
    assert parse(["embed", "x.txt", "--out", "y.npy"], {"POSTEMB_BATCH_SIZE": "7"}).batch_size != 7  # embed: flags only


@pytest.mark.parametrize("var,value,match", [
    ("POSTEMB_PORT", "eighty", r"\$POSTEMB_PORT must be an integer. Given: 'eighty'. Fix: .*--port"),
    ("POSTEMB_LONG_POSTS", "split", r"\$POSTEMB_LONG_POSTS must be one of \['truncate', 'chunk'\]. Given: 'split'"),
    ("POSTEMB_ACCESS_LOG", "maybe", r"\$POSTEMB_ACCESS_LOG must be a boolean"),
    ("POSTEMB_REQUEST_TIMEOUT", "soon", r"must be a number"),
])
def test_a_bad_value_names_the_variable_the_value_and_the_fix(var, value, match):
    with pytest.raises(ValidationError, match=match):
        cli.build_parser(environ={var: value})


def test_version_and_a_bad_variable_exit_cleanly():
    out = subprocess.run([sys.executable, "-m", "postemb_rt.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("postemb ")
    bad = subprocess.run([sys.executable, "-m", "postemb_rt.cli", "serve", "--help"], capture_output=True, text=True,
                         env={**__import__("os").environ, "POSTEMB_MAX_INPUTS": "many"})
    assert bad.returncode == 2 and "$POSTEMB_MAX_INPUTS must be an integer" in bad.stderr


def test_json_logs_are_one_object_per_line(capsys):
    try:
        cli.configure_logging(verbose=False, log_format="json")
        logging.getLogger("postemb_rt").warning("disk %s is full", "/tmp")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        rec = json.loads(line)
        assert rec["level"] == "WARNING" and rec["logger"] == "postemb_rt" and rec["message"] == "disk /tmp is full"
    finally:
        cli.configure_logging(verbose=False, log_format="text")


def test_serve_takes_device_and_max_batch_tokens():
    from postemb_rt.commands.serve import config_from_args

    args = parse(["serve", "--device", "cpu", "--max-batch-tokens", "2048"], {})
    cfg = config_from_args(args)
    assert (cfg.device, cfg.max_batch_tokens) == ("cpu", 2048)
    assert config_from_args(parse(["serve"], {"POSTEMB_MAX_BATCH_TOKENS": "1024"})).max_batch_tokens == 1024
    assert config_from_args(parse(["serve"], {})).max_batch_tokens is None
    with pytest.raises(ValidationError, match=r"`--max-batch-tokens` must be >= 1. Given: 0"):
        config_from_args(parse(["serve", "--max-batch-tokens", "0"], {}))


@pytest.mark.parametrize("flag, value, words", [
    ("--request-timeout", "0", "must be > 0 seconds. Given: 0.0"), ("--request-timeout", "nan", "must be > 0 seconds. Given: nan"),
    ("--header-timeout", "-1", "must be > 0 seconds"), ("--drain-timeout", "-1", "must be >= 0 seconds. Given: -1.0"),
])
def test_serve_refuses_a_timeout_that_would_fail_every_request(flag, value, words):
    from postemb_rt.commands.serve import config_from_args

    with pytest.raises(ValidationError, match=re.escape(f"`{flag}` {words}")):
        config_from_args(parse(["serve", flag, value], {}))


def test_serve_leaves_model_threads_to_the_backend_and_shares_the_cores_among_workers(monkeypatch):
    import postemb_rt.cpu
    from postemb_rt.commands.serve import default_threads

    monkeypatch.delenv("POSTEMB_NUM_THREADS", raising=False)
    monkeypatch.setattr(postemb_rt.cpu, "usable_cpus", lambda: 8)
    assert default_threads(1) is None  # the backend's own default, as Encoder.encode has
    assert (default_threads(2), default_threads(3), default_threads(16)) == (4, 2, 1)
    monkeypatch.setenv("POSTEMB_NUM_THREADS", "3")
    assert default_threads(2) is None  # the environment's value stands


def test_a_value_the_environment_gave_is_named_by_its_variable_in_a_later_error(monkeypatch, capsys):
    """A variable's value can parse and still be refused (``--max-inputs`` -1): the error names the
    flag and, when the value came from the environment, the variable too."""
    monkeypatch.setenv("POSTEMB_MAX_INPUTS", "-1")
    assert cli.main(["serve", "--model", "base"]) == 2
    assert "`--max-inputs` (from $POSTEMB_MAX_INPUTS) must be >= 1. Given: -1." in capsys.readouterr().err
    assert cli.main(["serve", "--model", "base", "--max-inputs=-2"]) == 2  # the command line won: no variable
    assert "error: `--max-inputs` must be >= 1. Given: -2." in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["serve", "--precision", "fp64"], "postemb serve: error: argument --precision: invalid choice: 'fp64'"),
    (["backfill"], "postemb backfill: error: the following arguments are required: --input, --output"),
    (["nearline", "--batch-size", "x"], "postemb nearline: error: argument --batch-size: invalid int value: 'x'"),
    (["embed", "--bogus"], "postemb embed: error: the following arguments are required"),
    (["--bogus"], "postemb: error: the following arguments are required: COMMAND")])
def test_a_flag_the_parser_refuses_is_one_line_with_the_fix(argv, says, capsys):
    """argparse printed its usage block first, and no fix."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(says) and err.count("\n") == 1, err
    assert err.rstrip().endswith(f". Fix: see `{says.split(': error')[0]} --help`.")


def test_serve_threads_0_is_the_default_and_below_0_is_refused(capsys):
    assert cli.main(["serve", "--model", "base", "--threads", "-1"]) == 2
    assert "`--threads` must be >= 0 (0: the default). Given: -1." in capsys.readouterr().err


def test_a_parser_error_that_names_its_fix_gets_no_second_fix(monkeypatch, capsys):
    """A list in $POSTEMB_MODEL for a one-model command names its own fix; the parser added
    "Fix: see `postemb nearline --help`." after it, two fixes on one line."""
    monkeypatch.setenv("POSTEMB_MODEL", "default,base")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["nearline", "--stats"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("Fix:") == 1 and err.count("\n") == 1, err
    assert err.rstrip().endswith("or pass --model VALUE."), err


BAD_DEPLOY_ENV = {"POSTEMB_PORT": "", "POSTEMB_MAX_INPUTS": "many"}


@pytest.fixture(scope="module")
def served_with_bad_variables():
    """`postemb -v serve --port 0` under BAD_DEPLOY_ENV, run once: the same command and environment for every
    case below (each asserts on it)."""
    env = {**__import__("os").environ, **BAD_DEPLOY_ENV}
    return subprocess.run([sys.executable, "-m", "postemb_rt.cli", "-v", "serve", "--port", "0"],
                          capture_output=True, text=True, env=env)


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["demo", "--help"], ["embed", "--help"],
                                  ["index", "query", "--help"], ["--log-format", "text", "embed", "--help"]])
def test_a_bad_variable_of_a_deployed_command_leaves_the_other_commands_alone(argv, served_with_bad_variables):
    """Only serve, nearline and backfill read POSTEMB_<FLAG>: a container's $POSTEMB_PORT left empty
    (``POSTEMB_PORT=${PORT}``, PORT unset) made `postemb --version`, `postemb embed` and every other
    command exit 2 on a variable they never read."""
    env = {**__import__("os").environ, **BAD_DEPLOY_ENV}
    out = subprocess.run([sys.executable, "-m", "postemb_rt.cli", *argv], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "POSTEMB_PORT" not in out.stderr, out.stderr
    served = served_with_bad_variables  # the command that reads it still refuses it
    assert served.returncode == 2 and "$POSTEMB_PORT must be an integer. Given: ''" in served.stderr, served.stderr

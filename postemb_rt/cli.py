"""The ``postemb`` command.

Each subcommand lives in its own module, which defines ``register(subparsers)``: it adds
its parser and sets ``func`` (called with the parsed args; returns an exit code).

Deployed commands (``ENV_COMMANDS``: serve, nearline, backfill) take every flag from the
environment too, by one rule: ``--max-batch-size`` <- ``POSTEMB_MAX_BATCH_SIZE``. The command
line wins over the environment, the environment over the built-in default; ``--help`` names
each variable. A flag two commands share (``--model``, ``--precision``) reads one variable; where
one command takes a list of it (``serve --model``, repeatable: ``POSTEMB_MODEL=default,base``) and
another one value (``nearline``, ``backfill``), the latter refuses a list from the variable, naming it.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import select
import signal
import sys
from pathlib import Path

from .commands import Parser
from .errors import PostEmbError, ValidationError
from .logs import configure_logging

# subcommand modules, in the order `postemb --help` lists them
COMMANDS = ["postemb_rt.commands.embed", "postemb_rt.commands.demo", "postemb_rt.commands.train",
            "postemb_rt.commands.teacher", "postemb_rt.commands.eval", "postemb_rt.commands.nearline",
            "postemb_rt.commands.serve", "postemb_rt.commands.backfill", "postemb_rt.commands.index"]


ENV_COMMANDS = ("serve", "nearline", "backfill")
ENV_PREFIX = "POSTEMB_"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def env_name(option: str) -> str:
    """``--max-batch-size`` -> ``POSTEMB_MAX_BATCH_SIZE``."""
    return ENV_PREFIX + option.lstrip("-").replace("-", "_").upper()


def env_items(raw: str) -> list[str]:
    """A list-valued environment variable's items: comma-separated, stripped, empty ones dropped."""
    return [part.strip() for part in raw.split(",") if part.strip()]


def _is_list(action: argparse.Action) -> bool:
    """Whether the variable of ``action`` holds a comma-separated list: a multi-value flag, or one
    that declares ``env_list`` (``serve --model``, which splits it itself)."""
    return (action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction)
            or getattr(action, "env_list", False))


def apply_env_defaults(parser: argparse.ArgumentParser, environ=None, list_vars: dict | None = None) -> None:
    """Every long option of ``parser`` (but --help) takes its default from ``env_name(option)``
    when that variable is set, converted and checked as the flag's own value would be; a value
    that does not parse raises ValidationError naming the variable. ``--help`` shows the name.
    ``list_vars``: {variable: the command that reads it as a list}; a one-value flag of this command
    given a list by one of them fails when this command runs without the flag (argparse converts a
    string default through ``type`` only then), naming the variable and the fix."""
    environ = os.environ if environ is None else environ
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        var = env_name(longs[0])
        action.help = f"{action.help or ''} [env: {var}]".strip()
        raw = environ.get(var)
        if raw is None:
            continue
        action.default = _env_value(action, var, raw)
        action.required = False  # the environment gave it
        parts = env_items(raw)
        if var in (list_vars or {}) and not _is_list(action) and len(parts) > 1:
            action.type = _refuse_list(action, var, raw, parts, list_vars[var], parser.prog)


def _refuse_list(action: argparse.Action, var: str, raw: str, parts: list[str], lister: str, prog: str):
    """``action.type`` for a one-value flag whose variable holds a list (meant for another command)."""
    convert = action.type or str

    def one(text: str):
        if text == raw:
            raise argparse.ArgumentTypeError(
                f"${var} holds {len(parts)} values, a list for `{lister}`; `{prog}` takes one. Given: {raw!r}. "
                f"Fix: set {var} to one value for this command, or pass {action.option_strings[-1]} VALUE.")
        return convert(text)

    return one


def _env_value(action: argparse.Action, var: str, raw: str):
    def bad(why: str):
        return ValidationError(f"${var} must be {why}. Given: {raw!r}. Fix: set it to a valid "
                               f"{action.option_strings[-1]} value, or unset it.")

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if raw.strip().lower() not in _TRUE | _FALSE:
            raise bad("a boolean (1/0, true/false, yes/no, on/off)")
        on = raw.strip().lower() in _TRUE
        return on if isinstance(action, argparse._StoreTrueAction) else not on

    def one(text: str):
        try:
            value = action.type(text) if action.type is not None else text
        except (TypeError, ValueError):
            raise bad({int: "an integer", float: "a number"}.get(action.type, "a valid value")) from None
        if action.choices is not None and value not in action.choices:
            raise bad(f"one of {list(action.choices)}")
        return value

    if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction):
        return [one(part) for part in env_items(raw)]  # (env_list flags split it themselves, by env_items)
    return one(raw)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("postemb_rt")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser(environ=None, refuse_for=ENV_COMMANDS) -> argparse.ArgumentParser:
    """The ``postemb`` parser, the deployed commands' defaults read from ``environ``. A variable that
    does not parse raises ValidationError only for a command in ``refuse_for`` (the one being run):
    a bad $POSTEMB_PORT is serve's error, not that of `postemb embed` or `postemb --version`."""
    parser = Parser(prog="postemb", description="Post embeddings: embed, serve, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action="version", version=f"postemb {_version()}")
    parser.add_argument("--log-format", choices=["text", "json"],
                        default=(os.environ if environ is None else environ).get(env_name("--log-format"), "text"),
                        help="log lines as text or as one JSON object each (default: text) [env: POSTEMB_LOG_FORMAT]")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    list_vars = {env_name(longs[0]): sub.choices[name].prog for name in ENV_COMMANDS
                 for a in sub.choices[name]._actions
                 if (longs := [o for o in a.option_strings if o.startswith("--")]) and _is_list(a)}
    for name in ENV_COMMANDS:
        try:
            apply_env_defaults(sub.choices[name], environ, list_vars)
        except ValidationError:
            if name in refuse_for:
                raise
    return parser


def _command_word(argv: list[str]) -> str | None:
    """The command ``argv`` names (its first word that is not an option of ``postemb`` or its value)."""
    words = iter(argv)
    for word in words:
        if word == "--log-format":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


ARGUMENT_FLAGS = {"name_or_path": "model"}  # a library argument whose flag has another name
COMMAND_ARGUMENT_FLAGS = {"index": {"path": "input"}}  # the same, in one command only (`path` of read_parquet)


def _as_flags(message: str, parser: argparse.ArgumentParser, command: str, argv: list[str]) -> str:
    """A library error as the command line says it: each `argument` the command has a flag for
    becomes that flag (`batch_size` -> `--batch-size`, `name_or_path` -> `--model`); one whose
    value came from the environment (a deployed command, the flag not in ``argv``) also names
    its variable: `--max-inputs` (from $POSTEMB_MAX_INPUTS)."""
    sub = _subparser(parser, [command, *argv[argv.index(command) + 1:]] if command in argv else [command])
    flags = {o[2:].replace("-", "_"): o for a in sub._actions for o in a.option_strings if o.startswith("--")}
    renamed = {**ARGUMENT_FLAGS, **COMMAND_ARGUMENT_FLAGS.get(command, {})}

    def flag(m: re.Match) -> str:
        name = m.group(1).removeprefix("--").replace("-", "_")
        opt = flags.get(renamed.get(name, name))
        if opt is None:
            return m.group(0)
        given = any(a == opt or a.startswith(opt + "=") for a in argv)
        from_env = command in ENV_COMMANDS and not given and env_name(opt) in os.environ
        return f"`{opt}` (from ${env_name(opt)})" if from_env else f"`{opt}`"
    # a key of a file (`steps` in c.json) is not the flag of the same name: left as the file names it
    return re.sub(r"`((?:--)?[\w-]+)`(?! (?:in|of) \S+\.json)", flag, message)


def _subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    """The parser of the deepest (sub)command ``words`` name (``index query`` -> its own parser)."""
    for word in words:
        nested = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if nested is None or word not in nested.choices:
            break
        parser = nested.choices[word]
    return parser


def _os_message(exc: Exception) -> str:
    """An OS error as one line with one fix (the project's own FileNotFoundErrors carry theirs);
    inside the cache, the cache's fix (:func:`_cache_hint`) instead of the general one."""
    if not isinstance(exc, OSError) or exc.strerror is None:
        return str(exc)
    where = f": {exc.filename!r}" + (f" -> {exc.filename2!r}" if exc.filename2 else "") if exc.filename else ""
    return f"{exc.strerror}{where}" + (_cache_hint(exc) or (
        ". Fix: check that path: a file where a folder must be (or the reverse), a folder this user may not write, "
        "or a full disk" if where else ". Fix: check the command's paths and its stdout (a full disk, a folder "
        "this user may not write)"))


def _cache_hint(exc: Exception) -> str:
    """For a missing file inside the cache: which folder that is and how to move it."""
    from .onnx_export import cache_root

    name = getattr(exc, "filename", None)
    root = cache_root()
    if not name or not (Path(name) == root or root in Path(name).parents):
        return ""
    return (f" (in the cache folder, {root}: $POSTEMB_CACHE, else $XDG_CACHE_HOME/postemb_rt, else "
            "~/.cache/postemb_rt). Fix: point POSTEMB_CACHE at a writable folder")


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has left (poll reports POLLERR), so a BrokenPipeError
    was stdout's, not that of a socket or a child process inside the command."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor (a captured stdout)
        return False


GLOBAL_OPTIONS = ("-v", "--verbose", "--log-format")  # options of `postemb` itself, given before the command


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but an option of ``postemb`` itself given after the command
    (``postemb embed ... -v``) is refused saying where it goes, not as an unrecognized argument."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        given = next((i for i, a in enumerate(extra) if a.split("=")[0] in GLOBAL_OPTIONS), None)
        if given is None:  # what parse_args says, from the (sub)command's parser: its --help lists its flags
            words = argv[argv.index(args.command):] if args.command in argv else []
            _subparser(parser, words).error(f"unrecognized arguments: {' '.join(extra)}")
        option = extra[given].split("=")[0]
        takes_value = option == "--log-format" and "=" not in extra[given]
        words = extra[given:given + 2 if takes_value else given + 1]
        parser.error(f"`{option}` is an option of `postemb` itself, given after the command. Fix: put it before the "
                     f"command: postemb {' '.join(words)} {args.command} ...")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(refuse_for=(_command_word(argv),))
    except ValidationError as exc:  # a POSTEMB_* variable of this command that does not parse
        print(f"postemb: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while the commands' modules import
        return 130
    args = _parse(parser, argv)
    if args.log_format not in ("text", "json"):
        parser.error(f"$POSTEMB_LOG_FORMAT must be 'text' or 'json'. Given: {args.log_format!r}.")
    configure_logging(args.verbose, args.log_format)
    try:
        code = int(args.func(args) or 0)
        try:
            if sys.stdout is not None:  # None: started with fd 1 closed (`>&-`), where print() writes nothing
                sys.stdout.flush()  # a reader gone (`| head`) fails here, not in the interpreter's last flush
        except OSError as exc:
            if isinstance(exc, BrokenPipeError) or exc.filename is not None:
                raise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no second report at exit)
            raise PostEmbError(f"writing to stdout failed: {exc.strerror or exc}. Fix: send stdout to a file or "
                               "device with room (or to /dev/null); what the command wrote to files is kept") from None
        return code
    except (PostEmbError, OSError) as exc:  # OSError: a path that cannot be read or written, as one line
        if isinstance(exc, BrokenPipeError) and _stdout_gone():  # `| head`: quiet, as a unix tool killed by SIGPIPE
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python's "Note on SIGPIPE")
            return 128 + signal.SIGPIPE
        message = _as_flags(_os_message(exc), parser, args.command, argv)
        line = f"postemb {args.command}: error: {message}"
        if args.log_format == "json":  # as every other line on stderr
            logging.getLogger("postemb_rt").error(line)
        else:
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

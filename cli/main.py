"""The ``imgpipe`` command: argument parsing, dispatch, and one error line per failure.

Each verb lives in its own small module (``cli/cmd_*.py``) with a ``register`` function
that adds its subparser and binds ``func``; :func:`cli.parser.finish` then gives every
verb the global options, its usage for bad options and its examples (cli/helptext.py).
Heavy imports happen inside the verbs, so ``imgpipe --version`` stays fast: building the
parser loads neither the formats, the error tree nor rich (tests/test_cli.py pins it).
With ``--json``, a failure also ends stdout with an ``error`` line (docs/json.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from importlib import import_module
from typing import Any, Final, NoReturn

from . import interrupts
from .entry import STOP_FLAGS, first_word
from .exitcodes import EXIT_USAGE, exit_code_for
from .parser import PARSER_DEST, Formatter, Parser, add_global_options, finish, has_option


class UsageError(Exception):
    """A command line the verb refuses after parsing (two flags that exclude each other)."""


def _version() -> str:
    from imgpipe import __version__

    return __version__


class _VersionAction(argparse.Action):
    """``--version``: prints ``imgpipe.__version__`` (a constant of imgpipe/_version.py,
    not the installed metadata, whose reader costs ~20 ms of imports) and exits."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"imgpipe {_version()}")
        parser.exit()


class _Absent:
    """What a verb's ``register`` builds into when the command line runs another verb:
    every call and attribute is itself, so nothing is built (about 6 ms of argparse and
    gettext per start-up for the 30-odd verbs, and the imports some of them make)."""

    def __getattr__(self, name: str) -> _Absent:
        return self

    def __call__(self, *args: object, **kwargs: object) -> _Absent:
        return self

    def __setattr__(self, name: str, value: object) -> None:
        pass

    def __iter__(self) -> Iterator[object]:
        return iter(())


class _OneVerb:
    """The subparsers action seen by the verbs' ``register``: only ``verb`` gets a real
    parser; :attr:`found` says whether one did."""

    def __init__(self, sub: Any, verb: str) -> None:
        self.sub, self.verb, self.found = sub, verb, False

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if name != self.verb and self.verb not in kwargs.get("aliases", ()):
            return _Absent()
        self.found = True
        return self.sub.add_parser(name, **kwargs)


def _verb_of(argv: Sequence[str]) -> str | None:
    """The verb a command line runs, when only its parser is needed: None when the
    whole tree is (``--help``/``--version`` before the verb, no verb at all)."""
    word = first_word(argv)
    return None if word is None or word in STOP_FLAGS else word


def build_parser(*, json_errors: bool = False, verb: str | None = None) -> argparse.ArgumentParser:
    """The whole command's parser; ``json_errors``: the command line asked for --json, so
    a refused one also prints the JSON error line (cli.parser.Parser). With ``verb``,
    only that verb's subparser is built (the one a command line needs); the whole tree
    when no verb of that name exists."""
    parser = Parser(
        prog="imgpipe",
        description="containerd's image pipeline: pull, verify, store, inspect and export images.",
        epilog="Global options go before or after the command. "
        "'imgpipe help COMMAND' (or 'imgpipe COMMAND --help') shows a command's options "
        "and examples; 'imgpipe completion bash|zsh' prints a completion script.",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="print the version")
    add_global_options(parser, top=True)
    parser.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output (docs/json.md), for commands that have --json",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    target: Any = sub if verb is None else _OneVerb(sub, verb)
    for module in _VERB_MODULES:
        if verb is None or verb in _VERB_MODULES[module]:
            import_module(f"{__package__}.{module}").register(target)
    if verb is not None and not target.found:
        return build_parser(json_errors=json_errors)  # a typo: the full list in the error
    finish(parser, json_errors=json_errors)
    return parser


#: The verbs' modules, in the order the verbs are listed, each with the top-level verbs
#: (and aliases) its ``register`` adds: a command line imports only its verb's module
#: (the 13 of them and what they import cost ~5 ms of every start-up).
#: tests/test_cli_oneverb.py checks the names against what each module registers.
_VERB_MODULES: Final[dict[str, tuple[str, ...]]] = {
    "cmd_transfer": ("pull", "push"),
    "cmd_images": ("images", "ls", "inspect", "tag", "rmi"),
    "cmd_content": ("content", "gc"),
    "cmd_leases": ("leases",),
    "cmd_login": ("login", "logout"),
    "cmd_run": ("run",),
    "cmd_containers": ("ps", "rm", "logs", "stop", "wait"),
    "cmd_convert": ("convert", "encrypt", "decrypt"),
    "cmd_unpack": ("unpack", "mount", "umount", "snapshots"),
    "cmd_estargz": ("estargz",),
    "cmd_sync": ("sync",),
    "cmd_report": ("report",),
    "cmd_help": ("help", "completion"),
}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a command line as `imgpipe` does; a bad one exits 2 with the verb's usage."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(json_errors="--json" in argv, verb=_verb_of(argv))
    args, extra = parser.parse_known_args(argv)
    verb: argparse.ArgumentParser = getattr(args, PARSER_DEST, parser)
    if extra:
        verb.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.json and not has_option(verb, "--json"):
        verb.error("this command has no --json output")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["__complete"]:
        # what the completion scripts call on every <Tab>; see cli/completion.py
        from .completion import complete_main

        return complete_main(build_parser(), argv[1:])
    args = parse(argv)
    try:
        with interrupts.installed():
            code: int = args.func(args)
            sys.stdout.flush()
        return code
    except BrokenPipeError:
        # `imgpipe images | head`: the reader left; stop quietly, as Go tools do on SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (KeyboardInterrupt, Exception) as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        message = str(exc) or type(exc).__name__
        code = exit_code_for(exc)
        if isinstance(exc, OSError) and exc.strerror:
            message = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
        if isinstance(exc, KeyboardInterrupt):
            message = interrupts.message(exc)
        elif isinstance(exc, UsageError):
            code = EXIT_USAGE
        elif not _is_expected(exc):
            message = f"internal error ({type(exc).__name__}): {message}"
        code = _fail(args, code, message)
        if isinstance(exc, KeyboardInterrupt):
            interrupts.leave_stuck_transfers(code)
        return code


def _fail(args: argparse.Namespace, code: int, message: str) -> int:
    """One line on stderr, whatever the message held; with --json also the final
    ``error`` object on stdout (docs/json.md)."""
    from .output import print_error

    message = " ".join(message.split())
    print(f"imgpipe: error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        with contextlib.suppress(BrokenPipeError):  # the reader left: stderr has it
            print_error(code, message)
    return code


def _is_expected(exc: BaseException) -> bool:
    from imgpipe.errors import ImgpipeError

    return isinstance(exc, ImgpipeError | OSError)


def usage_error(message: str) -> NoReturn:
    """Refuse the command line: exit 2 with ``message`` (raised, so that ``--json``
    output still ends with its ``error`` line)."""
    raise UsageError(message)


if __name__ == "__main__":
    sys.exit(main())

"""``imgpipe help [COMMAND...]`` and ``imgpipe completion bash|zsh``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import flags

SHELLS = ("bash", "zsh")


def register(sub: Any) -> None:
    p = flags.verb(sub, "help", help_)
    p.add_argument(
        "topic",
        nargs="*",
        metavar="COMMAND",
        help="a command, or a command and its subcommand (content ls); none: the overview",
    )
    p = flags.verb(sub, "completion", completion)
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash or zsh")


def help_(args: argparse.Namespace) -> int:
    """show a command's help, options and examples

    The same text as `imgpipe COMMAND --help`; without COMMAND the list of commands.
    """
    from .main import build_parser, usage_error
    from .parser import find

    top = build_parser()
    target = find(top, args.topic)
    if target is None:
        known = " ".join(args.topic)
        return usage_error(f"no command '{known}'; 'imgpipe help' lists them")
    sys.stdout.write(target.format_help())
    return 0


def completion(args: argparse.Namespace) -> int:
    """print a shell completion script (bash or zsh)

    Completes commands, options, option values with fixed choices and the names of the
    local images. The script asks `imgpipe` itself on each <Tab>, so it never goes stale.
    """
    from .completion import script

    sys.stdout.write(script(args.shell))
    return 0

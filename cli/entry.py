"""The ``imgpipe`` console script: ``--version`` at once, every other command line to
:func:`imgpipe.cli.main.main`.

``imgpipe --version`` is what scripts and package managers run to see what is
installed. Answered here, it costs the interpreter's start-up and two tiny modules
(measured with a regular install: 5.1x -> ~1.1x ``python -c pass``); through
:mod:`imgpipe.cli.main` it would import typing, argparse and build every verb's parser
first. This module imports nothing at the top, not even typing (``TYPE_CHECKING`` below
is a constant mypy treats as true).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["first_word", "main"]

#: Global options that take a value: the word after one is its value, never the verb.
VALUED_GLOBALS = frozenset({"--root"})
#: Flags that end the search: argparse acts on the first of them it meets.
STOP_FLAGS = frozenset({"-h", "--help", "--version"})


def first_word(argv: Sequence[str]) -> str | None:
    """What decides a command line: the first verb or help/version flag in ``argv``,
    skipping the other options and ``--root``'s value; None when there is neither or
    ``--`` comes first (the rest are operands)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in VALUED_GLOBALS:
            skip = True
        elif arg == "--":
            return None
        elif arg in STOP_FLAGS or not arg.startswith("-"):
            return arg
    return None


def main() -> int:
    argv = sys.argv[1:]
    if first_word(argv) == "--version":
        from imgpipe import __version__

        print(f"imgpipe {__version__}")
        return 0
    from .main import main as run

    return run(argv)

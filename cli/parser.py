"""The finishing pass over the whole parser tree, and the walks help and completion need.

The verbs' modules build their subparsers (``cli/cmd_*.py``); :func:`finish` then makes
the habits of docker, nerdctl and skopeo users work on every one of them at once:

- the global options (``--root``, ``--debug``, ``-q/--quiet``) are accepted before or
  after the verb, and ``--json`` before the verb where the verb has it. argparse copies
  every attribute of a subparser's namespace over the parent's, so an option the parent
  set would be reset by the subparser's default: every copy below the top has
  ``default=SUPPRESS``, and the top-level parser holds the one default;
- each verb's parser is recorded in the namespace (:data:`PARSER_DEST`), so an unknown
  option is reported with that verb's usage, not the top-level one;
- ``CMD [ARG...]``-style remainders are optional (argparse calls them required);
- the examples of :mod:`cli.helptext` become each verb's epilog, and its help for
  positionals fills those defined without one.

Nothing here imports more than argparse: the tree is finished on every start-up.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Iterator
from typing import Any, Final, NoReturn, cast

__all__ = [
    "GLOBAL_DESTS",
    "PARSER_DEST",
    "Formatter",
    "Parser",
    "add_global_options",
    "find",
    "finish",
    "has_option",
    "sentence",
    "verbs",
]

#: Where the namespace keeps the parser of the verb that was chosen.
PARSER_DEST: Final = "_imgpipe_parser"
#: The destinations of the global options; ``json`` only where a verb defines it.
GLOBAL_DESTS: Final = frozenset({"root", "debug", "quiet", "json"})

ROOT_HELP: Final = (
    "state directory (default: $IMGPIPE_ROOT, /var/lib/imgpipe as root, "
    "else $XDG_DATA_HOME/imgpipe)"
)


class Formatter(argparse.HelpFormatter):
    """argparse's formatter, except that a paragraph whose lines are indented (the
    examples) is printed as written instead of being refilled into one line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.split("\n\n"):
            lines = para.splitlines()
            if (
                lines
                and all(not line or line[0].isspace() for line in lines[1:])
                and (len(lines) > 1 or para.startswith(" "))
            ):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(super()._fill_text(para, width, indent))
        return "\n\n".join(out)


class Parser(argparse.ArgumentParser):
    """The parser of the command and (argparse creates them of the parent's class) of
    every verb: when the command line asked for ``--json`` (:func:`finish` sets
    ``json_errors`` on each), a refused command line also ends stdout with the
    ``error`` object of docs/json.md, so a script reading JSON always gets its last line."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            import json
            import sys

            obj = {"event": "error", "exitCode": 2, "message": f"{self.prog}: {message}"}
            sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
            sys.stdout.flush()
        super().error(message)

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse makes a formatter for every add_argument (to check the metavar), and
        # each asks for the terminal's size (an ioctl, environment lookups): ~7 ms of
        # every start-up over ~190 arguments. Asked once per COLUMNS/LINES setting.
        env = os.environ
        width = _terminal_width(env.get("COLUMNS"), env.get("LINES"))
        # every formatter argparse ships (and ours) takes ``width``; typeshed says only prog
        factory = cast(type[argparse.HelpFormatter], self.formatter_class)
        return factory(prog=self.prog, width=width)


@functools.cache
def _terminal_width(columns: str | None, lines: str | None) -> int:
    """argparse's default width (the arguments are the cache key: what it reads)."""
    import shutil

    return shutil.get_terminal_size().columns - 2


def sentence(text: str) -> str:
    """A one-line help ("list images") as a description ("List images.")."""
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def add_global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """``--root``, ``--debug`` and ``-q/--quiet``; below the top with SUPPRESS defaults
    (see the module docstring). A spelling the verb defines itself stays the verb's (a
    ``ps -q`` of docker's kind): only the others are added."""
    kw: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    g = p.add_argument_group(
        "global options" if top else "global options (also accepted before the verb)"
    )
    options: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
        (("--root",), {"metavar": "DIR", "help": ROOT_HELP}),
        (("--debug",), {"action": "store_true", "help": "print tracebacks on errors"}),
        (("-q", "--quiet"), {"action": "store_true", "help": "print only results"}),
    )
    for flags, more in options:
        free = [f for f in flags if f not in p._option_string_actions]
        if free:
            g.add_argument(*free, dest=flags[-1].lstrip("-"), **more, **kw)


def _subparsers(
    p: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _children(
    p: argparse.ArgumentParser,
) -> Iterator[tuple[str, list[str], argparse.ArgumentParser]]:
    """(name, aliases, parser) of each subcommand, in the order they were added."""
    sub = _subparsers(p)
    if sub is None:
        return
    seen: dict[int, tuple[str, list[str], argparse.ArgumentParser]] = {}
    for name, child in sub.choices.items():
        if id(child) in seen:
            seen[id(child)][1].append(name)  # aliases come after their primary name
        else:
            seen[id(child)] = (name, [], child)
    yield from seen.values()


def verbs(
    p: argparse.ArgumentParser, *, leaves_only: bool = True, _path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], list[str], argparse.ArgumentParser]]:
    """Every subcommand below ``p`` as (path, aliases, parser): ``("content", "ls")``...
    Only the leaves (verbs that run something) unless ``leaves_only`` is false.
    Hidden subcommands (added without ``help=``, such as ``__complete``) are skipped."""
    sub = _subparsers(p)
    if sub is None:
        return
    listed = {a.dest for a in sub._choices_actions}
    for name, aliases, child in _children(p):
        if name not in listed:
            continue
        path = (*_path, name)
        is_leaf = _subparsers(child) is None
        if is_leaf or not leaves_only:
            yield path, aliases, child
        if not is_leaf:
            yield from verbs(child, leaves_only=leaves_only, _path=path)


def find(p: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser | None:
    """The parser of the subcommand ``path`` (aliases allowed), or None."""
    for name in path:
        sub = _subparsers(p)
        if sub is None or name not in sub.choices:
            return None
        p = sub.choices[name]
    return p


def has_option(p: argparse.ArgumentParser, option: str) -> bool:
    return option in p._option_string_actions


def finish(top: argparse.ArgumentParser, *, json_errors: bool = False) -> None:
    """Apply the module docstring's rules to every parser below ``top``; with
    ``json_errors`` each :class:`Parser` reports a refused command line as JSON too."""
    from .helptext import ARGUMENTS, epilog

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        p.formatter_class = Formatter
        if isinstance(p, Parser):
            p.json_errors = json_errors
        for action in p._actions:
            if action.dest in GLOBAL_DESTS and path:
                action.default = argparse.SUPPRESS
            if not action.option_strings and path:
                if action.nargs == argparse.REMAINDER:
                    # argparse lists a remainder among "the following arguments are required"
                    action.required = False
                if action.help is None:
                    action.help = ARGUMENTS.get(f"{' '.join(path)} {action.dest}")
        if path:
            add_global_options(p, top=False)
            p.set_defaults(**{PARSER_DEST: p})
            if p.epilog is None:
                p.epilog = epilog(" ".join(path))
        sub = _subparsers(p)
        helps = {a.dest: a.help for a in sub._choices_actions} if sub is not None else {}
        for name, _aliases, child in _children(p):
            if child.description is None and helps.get(name):
                # a group such as `content` has a one-line help; it describes it too
                child.description = sentence(str(helps[name]))
            walk(child, (*path, name))

    walk(top, ())

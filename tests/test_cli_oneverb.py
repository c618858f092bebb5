"""A command line builds only its verb's parser (cli/main.py): the same parser as in the
whole tree, and the whole tree whenever the verb is not known."""

from __future__ import annotations

import argparse

import pytest

from imgpipe.cli.main import _verb_of, build_parser
from imgpipe.cli.parser import find

FULL = build_parser()
TOP_VERBS = sorted(
    next(a for a in FULL._actions if isinstance(a, argparse._SubParsersAction)).choices
)


@pytest.mark.parametrize(
    ("argv", "verb"),
    [
        (["run", "--rm", "busybox"], "run"),
        (["--root", "run", "images"], "images"),  # a root directory named like a verb
        (["--root=/x", "-q", "--debug", "ps"], "ps"),
        (["--json", "images"], "images"),
        (["--help", "run"], None),
        (["-h"], None),
        (["--version"], None),
        ([], None),
        (["--", "run"], None),
    ],
)
def test_verb_of(argv: list[str], verb: str | None) -> None:
    assert _verb_of(argv) == verb


@pytest.mark.parametrize("verb", TOP_VERBS)
def test_one_verb_parser_is_the_full_trees(verb: str) -> None:
    one = build_parser(verb=verb)
    sub = next(a for a in one._actions if isinstance(a, argparse._SubParsersAction))
    mine, full = find(one, [verb]), find(FULL, [verb])
    assert mine is not None and full is not None
    assert mine.format_help() == full.format_help()
    # only that verb (and its aliases) was built
    assert {id(p) for p in sub.choices.values()} == {id(mine)}


def test_unknown_verb_builds_the_whole_tree() -> None:
    parser = build_parser(verb="no-such-verb")
    assert find(parser, ["run"]) is not None and find(parser, ["images"]) is not None


def test_verb_table_names_what_each_module_registers() -> None:
    """cli/main.py imports a verb's module by the table's word for it: the table must list
    exactly the top-level verbs (and aliases) each module's ``register`` adds."""
    from importlib import import_module

    from imgpipe.cli.main import _VERB_MODULES

    for module, names in _VERB_MODULES.items():
        top = argparse.ArgumentParser()
        sub = top.add_subparsers()
        import_module(f"imgpipe.cli.{module}").register(sub)
        assert tuple(sub.choices) == names, module
    assert sorted(n for names in _VERB_MODULES.values() for n in names) == sorted(
        next(a for a in FULL._actions if isinstance(a, argparse._SubParsersAction)).choices
    )
